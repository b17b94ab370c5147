"""Reader and writer for `.bsi` model files (format version 1).

A `.bsi` file holds a JSON metadata object and a set of named integer tensors; the layout,
every field's rule and the order in which a reader validates them are specified in
docs/bsi-format.md, which this module implements.

Public API:

* `to_bytes(metadata, tensors, alignment=64) -> bytes` and
  `write_bsi(path, metadata, tensors, alignment=64)`: validate the inputs (ValueError /
  TypeError on bad input) and serialise deterministically; `write_bsi` replaces `path`
  atomically (temporary file in the same directory, fsync, `os.replace`).
* `from_bytes(buf, *, verify_checksums=True)` and
  `read_bsi(path, *, verify_checksums=True, mmap=True)`: validate the whole file before
  returning a `BsiFile`; any problem in the file's bytes raises `BsiFormatError`. OS errors
  propagate unchanged: a missing file raises FileNotFoundError and a directory raises
  IsADirectoryError (both OSError, not BsiFormatError).

Returned tensors are read-only numpy arrays that view the input buffer (or the read-only
file mapping when `mmap=True`), so loading never copies tensor data.
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap as mmap_module
import os
import re
import stat
import struct
import types
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from .atomic import atomic_write_bytes
from .errors import BsiFormatError

MAGIC = b"\x89BSI\r\n\x1a\n"
VERSION = 1
HEADER_SIZE = 64
ENTRY_SIZE = 128
MAX_TENSORS = 4096
MIN_ALIGNMENT = 16
MAX_ALIGNMENT = 4096
DEFAULT_ALIGNMENT = 64
MIN_META_SIZE = 2
MAX_META_SIZE = 16 * 1024 * 1024
MAX_NAME_LENGTH = 63
MAX_NDIM = 6
MAX_ELEMENTS = 2**31

# The single code <-> dtype table; the writer's reverse lookup is derived from it.
DTYPES: Mapping[int, np.dtype] = types.MappingProxyType(
    {
        1: np.dtype("<i1"),
        2: np.dtype("<u1"),
        3: np.dtype("<i2"),
        4: np.dtype("<u2"),
        5: np.dtype("<i4"),
        6: np.dtype("<u4"),
    }
)

# magic, version, header_size, file_size, tensor_count, alignment, meta_offset, meta_size,
# meta_crc32, table_crc32, reserved, header_crc32
_HEADER = struct.Struct("<8sIIQIIQQIIII")
# name, dtype, ndim, dims[6], offset, nbytes, crc32, reserved
_ENTRY = struct.Struct("<64sII6IQQI12s")
_HEADER_CRC_OFFSET = 60
_NAME_FIELD_SIZE = 64
_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.]+")
assert _HEADER.size == HEADER_SIZE and _ENTRY.size == ENTRY_SIZE


@dataclass(eq=False)
class BsiFile:
    """The contents of a `.bsi` file: its metadata object and its tensors in table order."""

    metadata: dict
    tensors: dict[str, np.ndarray]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BsiFile):
            return NotImplemented
        return self.metadata == other.metadata and _same_tensors(self.tensors, other.tensors)


def _same_tensors(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    # Table order is part of the file, so names must match in order, not just as sets.
    if list(a) != list(b):
        return False
    return all(
        a[name].dtype == b[name].dtype
        and a[name].shape == b[name].shape
        and np.array_equal(a[name], b[name])
        for name in a
    )


# --------------------------------------------------------------------------- writing


class _PlannedTensor(NamedTuple):
    name: str
    code: int
    shape: tuple[int, ...]
    data: np.ndarray  # C-contiguous, little-endian, flattened to uint8
    offset: int


def write_bsi(
    path: str | os.PathLike,
    metadata: dict,
    tensors: dict[str, np.ndarray],
    alignment: int = DEFAULT_ALIGNMENT,
) -> None:
    """Write a `.bsi` file atomically; `path` is either fully replaced or left untouched.

    Inputs are validated and serialised (see `to_bytes`) before the file system is touched.
    A new file gets mode 0o644; an existing destination keeps its mode.
    """
    data = to_bytes(metadata, tensors, alignment)
    atomic_write_bytes(path, data)


def to_bytes(
    metadata: dict,
    tensors: dict[str, np.ndarray],
    alignment: int = DEFAULT_ALIGNMENT,
) -> bytes:
    """Serialise metadata and tensors to the bytes of a `.bsi` file (deterministic)."""
    _check_alignment_argument(alignment)
    meta_bytes = _encode_metadata(metadata)
    meta_offset = HEADER_SIZE + ENTRY_SIZE * _check_tensor_count(tensors)
    planned = _plan_tensors(tensors, meta_offset + len(meta_bytes), alignment)
    file_size = planned[-1].offset + planned[-1].data.size

    out = bytearray(file_size)
    table = b"".join(_pack_entry(t) for t in planned)
    out[HEADER_SIZE:meta_offset] = table
    out[meta_offset : meta_offset + len(meta_bytes)] = meta_bytes
    for tensor in planned:
        out[tensor.offset : tensor.offset + tensor.data.size] = memoryview(tensor.data)
    header = _HEADER.pack(
        MAGIC, VERSION, HEADER_SIZE, file_size, len(planned), alignment, meta_offset,
        len(meta_bytes), zlib.crc32(meta_bytes), zlib.crc32(table), 0, 0,
    )
    out[:_HEADER_CRC_OFFSET] = header[:_HEADER_CRC_OFFSET]
    struct.pack_into("<I", out, _HEADER_CRC_OFFSET, zlib.crc32(header[:_HEADER_CRC_OFFSET]))
    return bytes(out)


def _check_alignment_argument(alignment: Any) -> None:
    if isinstance(alignment, bool) or not isinstance(alignment, int):
        raise TypeError(f"alignment must be an int, got {type(alignment).__name__}")
    if not _is_valid_alignment(alignment):
        raise ValueError(
            f"alignment {alignment} is not a power of two in {MIN_ALIGNMENT}..{MAX_ALIGNMENT}"
        )


def _is_valid_alignment(alignment: int) -> bool:
    is_power_of_two = alignment > 0 and alignment & (alignment - 1) == 0
    return is_power_of_two and MIN_ALIGNMENT <= alignment <= MAX_ALIGNMENT


def _encode_metadata(metadata: Any) -> bytes:
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict (a JSON object), got {type(metadata).__name__}")
    try:
        _check_json_value(metadata, "metadata")
        text = json.dumps(
            metadata, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=False
        )
    except RecursionError:
        raise ValueError("metadata is nested too deeply or contains a reference cycle") from None
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"metadata contains a string that is not valid UTF-8: {exc}") from None
    if len(encoded) > MAX_META_SIZE:
        raise ValueError(f"metadata is {len(encoded)} bytes as JSON, more than {MAX_META_SIZE}")
    return encoded


def _check_json_value(value: Any, where: str) -> None:
    # Walk the value ourselves so errors say where the bad value is, and so keys that json
    # would silently turn into strings (ints, None) are rejected: they would not round-trip.
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where} is {value!r}; JSON has no NaN or Infinity")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(
                    f"{where} has key {key!r} of type {type(key).__name__}; keys must be str"
                )
            _check_json_value(item, f"{where}[{key!r}]")
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_json_value(item, f"{where}[{index}]")
        return
    raise TypeError(f"{where} is of type {type(value).__name__}, which is not JSON-serialisable")


def _check_tensor_count(tensors: Any) -> int:
    if not isinstance(tensors, Mapping):
        raise TypeError(f"tensors must be a dict of name -> ndarray, got {type(tensors).__name__}")
    if not 1 <= len(tensors) <= MAX_TENSORS:
        raise ValueError(f"a .bsi file holds 1..{MAX_TENSORS} tensors, got {len(tensors)}")
    return len(tensors)


def _plan_tensors(
    tensors: Mapping[str, np.ndarray], data_start: int, alignment: int
) -> list[_PlannedTensor]:
    planned = []
    cursor = data_start
    for name, array in tensors.items():
        _check_name_argument(name)
        code, data = _tensor_bytes(name, array)
        offset = _align_up(cursor, alignment)
        planned.append(_PlannedTensor(name, code, array.shape, data, offset))
        cursor = offset + data.size
    return planned


def _check_name_argument(name: Any) -> None:
    if not isinstance(name, str):
        raise TypeError(f"tensor name {name!r} must be a str, got {type(name).__name__}")
    if not 1 <= len(name) <= MAX_NAME_LENGTH:
        raise ValueError(f"tensor name {name!r} must be 1..{MAX_NAME_LENGTH} characters long")
    if not _NAME_PATTERN.fullmatch(name):
        raise ValueError(f"tensor name {name!r} may only contain ASCII [A-Za-z0-9_.]")


def _tensor_bytes(name: str, array: Any) -> tuple[int, np.ndarray]:
    if not isinstance(array, np.ndarray):
        raise TypeError(f"tensor {name!r} must be a numpy.ndarray, got {type(array).__name__}")
    code = _dtype_code(array.dtype)
    if code is None:
        known = ", ".join(str(dtype) for dtype in DTYPES.values())
        raise TypeError(f"tensor {name!r} has dtype {array.dtype}; supported dtypes are {known}")
    if not 1 <= array.ndim <= MAX_NDIM:
        raise ValueError(f"tensor {name!r} has ndim {array.ndim}; it must be 1..{MAX_NDIM}")
    if 0 in array.shape:
        raise ValueError(f"tensor {name!r} has shape {array.shape}; every dim must be >= 1")
    if array.size > MAX_ELEMENTS:
        raise ValueError(f"tensor {name!r} has {array.size} elements, more than 2^31")
    # Converts big-endian or strided input to the file's C-ordered little-endian layout.
    contiguous = np.ascontiguousarray(array, dtype=DTYPES[code])
    return code, contiguous.reshape(-1).view(np.uint8)


def _dtype_code(dtype: np.dtype) -> int | None:
    little_endian = dtype.newbyteorder("<")
    for code, table_dtype in DTYPES.items():
        if little_endian == table_dtype:
            return code
    return None


def _align_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def _pack_entry(tensor: _PlannedTensor) -> bytes:
    dims = tensor.shape + (0,) * (MAX_NDIM - len(tensor.shape))
    return _ENTRY.pack(
        tensor.name.encode("ascii"), tensor.code, len(tensor.shape), *dims,
        tensor.offset, tensor.data.size, zlib.crc32(tensor.data), bytes(12),
    )


# --------------------------------------------------------------------------- reading


class _Header(NamedTuple):
    file_size: int
    tensor_count: int
    alignment: int
    meta_offset: int
    meta_size: int
    meta_crc32: int
    table_crc32: int


class _Entry(NamedTuple):
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    crc32: int


def read_bsi(
    path: str | os.PathLike, *, verify_checksums: bool = True, mmap: bool = True
) -> BsiFile:
    """Read and fully validate a `.bsi` file.

    With `mmap=True` the file is mapped read-only and the tensors view the mapping; with
    `mmap=False` the file is read into memory. Tensors are read-only either way. Tensor
    CRCs are checked unless `verify_checksums=False`. Raises BsiFormatError for a malformed
    file or one that is not a regular file (a device or FIFO would never end or never
    open); OS errors (FileNotFoundError, IsADirectoryError, PermissionError) propagate.
    """
    # fspath first: open() would take an int as a file descriptor and close it afterwards.
    path = os.fspath(path)
    _check_regular_file(path, os.stat(path).st_mode)
    with open(path, "rb") as file:
        status = os.fstat(file.fileno())
        _check_regular_file(path, status.st_mode)
        size = status.st_size
        # mmap refuses empty files, and a file shorter than the header is rejected anyway.
        # Reading `size` bytes, not to EOF, keeps a file growing under us bounded too.
        if not mmap or size < HEADER_SIZE:
            return from_bytes(file.read(size), verify_checksums=verify_checksums)
        mapping = mmap_module.mmap(file.fileno(), 0, access=mmap_module.ACCESS_READ)
    try:
        return from_bytes(mapping, verify_checksums=verify_checksums)
    except BaseException:
        # A traceback may still reference a view of the mapping; then gc closes it later.
        with contextlib.suppress(BufferError):
            mapping.close()
        raise


def _check_regular_file(path: str | bytes, mode: int) -> None:
    # A device (/dev/zero) would be read forever and a FIFO would block open() forever;
    # directories are left to open(), which raises IsADirectoryError.
    if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        raise BsiFormatError(f"{os.fsdecode(path)}: not a regular file (a device, FIFO or "
                             "socket), so not a .bsi model")


def from_bytes(buf: Any, *, verify_checksums: bool = True) -> BsiFile:
    """Parse and fully validate the bytes of a `.bsi` file (any contiguous 1-D byte buffer).

    The returned tensors are read-only arrays that view `buf` without copying it.
    """
    entries, metadata = _validate(buf, verify_checksums)
    tensors = {entry.name: _tensor_view(buf, entry) for entry in entries}
    return BsiFile(metadata=metadata, tensors=tensors)


def _validate(buf: Any, verify_checksums: bool) -> tuple[list[_Entry], dict]:
    # The memoryview is released on exit so a failed mmap read can close its mapping.
    with memoryview(buf) as view:
        if view.ndim != 1 or view.itemsize != 1 or not view.c_contiguous:
            raise TypeError("buf must be a contiguous 1-D buffer of bytes")
        header = _read_header(view)
        entries = _read_table(view, header)
        metadata = _read_metadata(view, header)
        _check_file_end(header, entries)
        if verify_checksums:
            _check_tensor_crcs(view, entries)
    return entries, metadata


def _read_header(view: memoryview) -> _Header:
    size = len(view)
    if size < HEADER_SIZE:
        raise BsiFormatError(f"file is {size} bytes, shorter than the {HEADER_SIZE}-byte header")
    (magic, version, header_size, file_size, tensor_count, alignment, meta_offset, meta_size,
     meta_crc32, table_crc32, reserved, header_crc32) = _HEADER.unpack_from(view, 0)
    if magic != MAGIC:
        raise BsiFormatError(f"magic {magic!r} is not {MAGIC!r}: not a .bsi file")
    if version != VERSION:
        raise BsiFormatError(f"version {version} is not supported (this reader reads {VERSION})")
    if header_size != HEADER_SIZE:
        raise BsiFormatError(f"header_size {header_size} is not {HEADER_SIZE}")
    _check_crc("header_crc32", header_crc32, zlib.crc32(view[:_HEADER_CRC_OFFSET]))
    header = _Header(file_size, tensor_count, alignment, meta_offset, meta_size,
                     meta_crc32, table_crc32)
    _check_header_fields(header, size)
    if reserved != 0:
        raise BsiFormatError(f"header reserved field is {reserved}, not 0")
    return header


def _check_header_fields(header: _Header, size: int) -> None:
    if header.file_size != size:
        raise BsiFormatError(
            f"file_size {header.file_size} does not match the actual file size {size}"
        )
    if not 1 <= header.tensor_count <= MAX_TENSORS:
        raise BsiFormatError(f"tensor_count {header.tensor_count} is not in 1..{MAX_TENSORS}")
    if not _is_valid_alignment(header.alignment):
        raise BsiFormatError(
            f"alignment {header.alignment} is not a power of two in "
            f"{MIN_ALIGNMENT}..{MAX_ALIGNMENT}"
        )
    expected_meta_offset = HEADER_SIZE + ENTRY_SIZE * header.tensor_count
    if header.meta_offset != expected_meta_offset:
        raise BsiFormatError(
            f"meta_offset {header.meta_offset} is not 64 + tensor_count*128 = "
            f"{expected_meta_offset}"
        )
    if not MIN_META_SIZE <= header.meta_size <= MAX_META_SIZE:
        raise BsiFormatError(
            f"meta_size {header.meta_size} is not in {MIN_META_SIZE}..{MAX_META_SIZE}"
        )
    meta_end = header.meta_offset + header.meta_size
    if meta_end > header.file_size:
        raise BsiFormatError(
            f"metadata (meta_offset {header.meta_offset} + meta_size {header.meta_size} = "
            f"{meta_end}) extends past file_size {header.file_size}"
        )


def _check_crc(field: str, stored: int, computed: int) -> None:
    if computed != stored:
        raise BsiFormatError(
            f"{field} 0x{stored:08x} does not match the computed CRC 0x{computed:08x}"
        )


def _read_table(view: memoryview, header: _Header) -> list[_Entry]:
    table_crc32 = zlib.crc32(view[HEADER_SIZE : header.meta_offset])
    _check_crc("table_crc32", header.table_crc32, table_crc32)
    entries: list[_Entry] = []
    first_index_of: dict[str, int] = {}
    previous_end = header.meta_offset + header.meta_size
    for index in range(header.tensor_count):
        fields = _ENTRY.unpack_from(view, HEADER_SIZE + index * ENTRY_SIZE)
        entry = _parse_entry(index, fields, header, previous_end, entries)
        if entry.name in first_index_of:
            raise BsiFormatError(
                f"tensor {index} {entry.name!r}: name duplicates tensor "
                f"{first_index_of[entry.name]}"
            )
        if any(fields[-1]):
            raise BsiFormatError(
                f"tensor {index} {entry.name!r}: reserved bytes are {fields[-1].hex()}, not zero"
            )
        first_index_of[entry.name] = index
        entries.append(entry)
        previous_end = entry.offset + entry.nbytes
    return entries


def _parse_entry(
    index: int, fields: tuple, header: _Header, previous_end: int, previous: list[_Entry]
) -> _Entry:
    raw_name, dtype_code, ndim, *dims, offset, nbytes, crc32, _reserved = fields
    name = _decode_name(index, raw_name)
    where = f"tensor {index} {name!r}"
    if dtype_code not in DTYPES:
        known = ", ".join(f"{code} {dtype}" for code, dtype in DTYPES.items())
        raise BsiFormatError(f"{where}: dtype code {dtype_code} is unknown (known: {known})")
    dtype = DTYPES[dtype_code]
    shape = _parse_shape(where, ndim, dims)
    element_count = math.prod(shape)
    if element_count > MAX_ELEMENTS:
        raise BsiFormatError(f"{where}: dims {shape} hold {element_count} elements, more than 2^31")
    if nbytes != element_count * dtype.itemsize:
        raise BsiFormatError(
            f"{where}: nbytes {nbytes} is not product(dims) * itemsize = "
            f"{element_count * dtype.itemsize}"
        )
    _check_placement(where, offset, nbytes, header, previous_end, previous)
    return _Entry(name, dtype, shape, offset, nbytes, crc32)


def _decode_name(index: int, raw_name: bytes) -> str:
    name, _, padding = raw_name.partition(b"\0")
    if not name:
        raise BsiFormatError(f"tensor {index}: name is empty")
    if len(name) > MAX_NAME_LENGTH:
        raise BsiFormatError(f"tensor {index}: name {name!r} is not NUL-terminated within 64 bytes")
    if any(padding):
        raise BsiFormatError(f"tensor {index}: name {raw_name!r} has non-NUL bytes after its end")
    try:
        text = name.decode("ascii")
    except UnicodeDecodeError:
        raise BsiFormatError(f"tensor {index}: name {name!r} is not ASCII") from None
    if not _NAME_PATTERN.fullmatch(text):
        raise BsiFormatError(f"tensor {index}: name {text!r} has characters outside [A-Za-z0-9_.]")
    return text


def _parse_shape(where: str, ndim: int, dims: list[int]) -> tuple[int, ...]:
    if not 1 <= ndim <= MAX_NDIM:
        raise BsiFormatError(f"{where}: ndim {ndim} is not in 1..{MAX_NDIM}")
    for axis, dim in enumerate(dims):
        if axis < ndim and dim == 0:
            raise BsiFormatError(f"{where}: dims[{axis}] is 0; dims below ndim must be >= 1")
        if axis >= ndim and dim != 0:
            raise BsiFormatError(
                f"{where}: dims[{axis}] is {dim}; dims at or beyond ndim {ndim} must be 0"
            )
    return tuple(dims[:ndim])


def _check_placement(
    where: str, offset: int, nbytes: int, header: _Header, previous_end: int,
    previous: list[_Entry],
) -> None:
    if offset % header.alignment:
        raise BsiFormatError(
            f"{where}: offset {offset} is not a multiple of alignment {header.alignment}"
        )
    if offset < previous_end:
        if previous:
            raise BsiFormatError(
                f"{where}: offset {offset} overlaps tensor {len(previous) - 1} "
                f"{previous[-1].name!r}, which ends at {previous_end}"
            )
        raise BsiFormatError(
            f"{where}: offset {offset} is before the end of the metadata at {previous_end}"
        )
    end = offset + nbytes
    if end > header.file_size:
        raise BsiFormatError(
            f"{where}: data (offset {offset} + nbytes {nbytes} = {end}) extends past "
            f"file_size {header.file_size}"
        )


class _RejectedJson(ValueError):
    pass


def _reject_constant(token: str) -> None:
    raise _RejectedJson(f"{token} is not valid JSON")


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    result: dict = {}
    for key, value in pairs:
        if key in result:
            raise _RejectedJson(f"duplicate key {key!r} in an object")
        result[key] = value
    return result


def _read_metadata(view: memoryview, header: _Header) -> dict:
    raw = bytes(view[header.meta_offset : header.meta_offset + header.meta_size])
    _check_crc("meta_crc32", header.meta_crc32, zlib.crc32(raw))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BsiFormatError(f"metadata is not valid UTF-8: {exc}") from None
    try:
        # Python's json accepts NaN/Infinity and silently keeps the last of duplicate keys;
        # neither is JSON a conforming writer produces, so both are rejected.
        metadata = json.loads(
            text, parse_constant=_reject_constant, object_pairs_hook=_reject_duplicate_keys
        )
    except (ValueError, RecursionError) as exc:
        raise BsiFormatError(f"metadata is not valid JSON: {exc}") from None
    if not isinstance(metadata, dict):
        raise BsiFormatError(f"metadata is a JSON {_json_type_name(metadata)}, not an object")
    return metadata


def _json_type_name(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


def _check_file_end(header: _Header, entries: list[_Entry]) -> None:
    last = entries[-1]
    data_end = last.offset + last.nbytes
    if data_end != header.file_size:
        raise BsiFormatError(
            f"file has {header.file_size - data_end} trailing bytes after the last tensor "
            f"{last.name!r}, which ends at {data_end} (file_size {header.file_size})"
        )


def _check_tensor_crcs(view: memoryview, entries: list[_Entry]) -> None:
    for index, entry in enumerate(entries):
        computed = zlib.crc32(view[entry.offset : entry.offset + entry.nbytes])
        if computed != entry.crc32:
            raise BsiFormatError(
                f"tensor {index} {entry.name!r}: crc32 0x{entry.crc32:08x} does not match the "
                f"computed CRC 0x{computed:08x} (tensor data corrupted)"
            )


def _tensor_view(buf: Any, entry: _Entry) -> np.ndarray:
    count = entry.nbytes // entry.dtype.itemsize
    array = np.frombuffer(buf, dtype=entry.dtype, count=count, offset=entry.offset)
    array = array.reshape(entry.shape)
    # A writable input (bytearray) would otherwise give writable views into the caller's data.
    array.flags.writeable = False
    return array
