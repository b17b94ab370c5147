"""Tests for bsvit_int.container, the `.bsi` reader/writer (spec: docs/bsi-format.md)."""

from __future__ import annotations

import json
import os
import struct
import tempfile
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bsvit_int.container import (
    DTYPES,
    BsiFile,
    from_bytes,
    read_bsi,
    to_bytes,
    write_bsi,
)
from bsvit_int.errors import BsiFormatError

# Field positions and struct formats, written out from the spec rather than imported, so a
# layout mistake in the module cannot hide behind a matching mistake here.
HEADER_FIELDS = {
    "magic": (0, "8s"), "version": (8, "<I"), "header_size": (12, "<I"),
    "file_size": (16, "<Q"), "tensor_count": (24, "<I"), "alignment": (28, "<I"),
    "meta_offset": (32, "<Q"), "meta_size": (40, "<Q"), "meta_crc32": (48, "<I"),
    "table_crc32": (52, "<I"), "reserved": (56, "<I"), "header_crc32": (60, "<I"),
}
ENTRY_FIELDS = {
    "name": (0, "64s"), "dtype": (64, "<I"), "ndim": (68, "<I"),
    **{f"dims{k}": (72 + 4 * k, "<I") for k in range(6)},
    "offset": (96, "<Q"), "nbytes": (104, "<Q"), "crc32": (112, "<I"), "reserved": (116, "12s"),
}


# --------------------------------------------------------------------------- strategies

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=16,
)
metadata_dicts = st.dictionaries(st.text(max_size=10), json_values, max_size=6)

tensor_names = st.from_regex(r"[A-Za-z0-9_.]{1,63}", fullmatch=True)


@st.composite
def integer_arrays(draw):
    dtype = draw(st.sampled_from(list(DTYPES.values())))
    info = np.iinfo(dtype)
    # Bias towards the dtype's extremes, where sign and width mistakes show up.
    elements = st.sampled_from([info.min, info.max, 0, -1 if info.min < 0 else 1]) | st.integers(
        int(info.min), int(info.max)
    )
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=6, min_side=1, max_side=3))
    return draw(hnp.arrays(dtype, shape, elements=elements))


tensor_dicts = st.dictionaries(tensor_names, integer_arrays(), min_size=1, max_size=8)


# --------------------------------------------------------------------------- round trips


@settings(max_examples=150, deadline=None)
@given(metadata=metadata_dicts, tensors=tensor_dicts, alignment=st.sampled_from([16, 64, 4096]))
def test_bytes_round_trip(metadata, tensors, alignment):
    loaded = from_bytes(to_bytes(metadata, tensors, alignment))
    assert loaded == BsiFile(metadata, tensors)
    assert all(not array.flags.writeable for array in loaded.tensors.values())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(metadata=metadata_dicts, tensors=tensor_dicts)
def test_file_round_trip(metadata, tensors):
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "model.bsi")
        write_bsi(path, metadata, tensors)
        for use_mmap in (True, False):
            loaded = read_bsi(path, mmap=use_mmap)
            assert loaded == BsiFile(metadata, tensors)
            for array in loaded.tensors.values():
                assert not array.flags.writeable
                with pytest.raises(ValueError):
                    array.reshape(-1)[0] = 0
        assert os.listdir(directory) == ["model.bsi"]


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=str)
def test_dtype_extremes_round_trip(dtype):
    info = np.iinfo(dtype)
    array = np.array([[info.min, info.max], [0, info.max]], dtype=dtype)
    loaded = from_bytes(to_bytes({}, {"extremes": array}))
    assert loaded.tensors["extremes"].dtype == dtype
    np.testing.assert_array_equal(loaded.tensors["extremes"], array)


def test_mmap_tensors_view_the_mapping(tmp_path):
    path = tmp_path / "model.bsi"
    write_bsi(path, {"k": 1}, {"w": np.arange(100, dtype=np.int32).reshape(10, 10)})
    array = read_bsi(path, mmap=True).tensors["w"]
    assert not array.flags.owndata and not array.flags.writeable
    base = array
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):  # numpy wraps foreign buffers in a memoryview
        base = base.obj
    assert type(base).__name__ == "mmap"


def test_from_bytes_on_writable_buffer_gives_read_only_views():
    buf = bytearray(to_bytes({}, {"w": np.ones(4, np.uint16)}))
    array = from_bytes(buf).tensors["w"]
    assert not array.flags.writeable


def test_writer_normalises_byte_order_and_strides():
    big_endian = np.arange(-6, 6, dtype=">i4").reshape(3, 4)
    strided = np.arange(24, dtype=np.uint16).reshape(4, 6)[:, ::2].T
    loaded = from_bytes(to_bytes({}, {"be": big_endian, "strided": strided}))
    assert loaded.tensors["be"].dtype == DTYPES[5]
    np.testing.assert_array_equal(loaded.tensors["be"], big_endian)
    np.testing.assert_array_equal(loaded.tensors["strided"], strided)


def test_bsifile_equality_is_strict():
    a = BsiFile({"x": 1}, {"a": np.zeros(2, np.int8), "b": np.ones(2, np.int8)})
    assert a == BsiFile({"x": 1}, {"a": np.zeros(2, np.int8), "b": np.ones(2, np.int8)})
    assert a != BsiFile({"x": 2}, dict(a.tensors))
    assert a != BsiFile({"x": 1}, {"b": a.tensors["b"], "a": a.tensors["a"]})
    assert a != BsiFile({"x": 1}, {"a": np.zeros(2, np.uint8), "b": a.tensors["b"]})
    assert a != BsiFile({"x": 1}, {"a": np.zeros((1, 2), np.int8), "b": a.tensors["b"]})
    assert a != BsiFile({"x": 1}, {"a": np.zeros(2, np.int8), "b": np.zeros(2, np.int8)})
    assert a != "not a BsiFile"


# --------------------------------------------------------------------------- layout and determinism


def test_layout_matches_spec():
    metadata = {"format": "bsvit-int", "opset": 1}
    tensors = {"a": np.arange(3, dtype=np.int8), "b.w": np.ones((2, 3), dtype=np.int16)}
    buf = to_bytes(metadata, tensors)
    get = lambda field: struct.unpack_from(HEADER_FIELDS[field][1], buf, HEADER_FIELDS[field][0])[0]
    meta = json.dumps(metadata, sort_keys=True, separators=(",", ":")).encode()
    assert get("magic") == b"\x89BSI\r\n\x1a\n"
    assert (get("version"), get("header_size"), get("file_size")) == (1, 64, len(buf))
    assert (get("tensor_count"), get("alignment"), get("reserved")) == (2, 64, 0)
    assert (get("meta_offset"), get("meta_size")) == (64 + 2 * 128, len(meta))
    assert buf[320 : 320 + len(meta)] == meta
    assert get("meta_crc32") == zlib.crc32(meta)
    assert get("table_crc32") == zlib.crc32(buf[64:320])
    assert get("header_crc32") == zlib.crc32(buf[:60])
    first, second = entry_fields(buf, 0), entry_fields(buf, 1)
    assert first["name"].rstrip(b"\0") == b"a" and (first["dtype"], first["ndim"]) == (1, 1)
    assert first["offset"] == 384 and first["nbytes"] == 3
    assert second["name"].rstrip(b"\0") == b"b.w" and (second["dtype"], second["ndim"]) == (3, 2)
    assert (second["dims0"], second["dims1"], second["dims2"]) == (2, 3, 0)
    assert second["offset"] == 448 and second["nbytes"] == 12 == len(buf) - 448
    assert second["crc32"] == zlib.crc32(np.ones(6, "<i2").tobytes())
    assert buf[320 + len(meta) : 384] == bytes(384 - 320 - len(meta))  # zero padding
    assert buf[387:448] == bytes(61)


def test_serialisation_is_deterministic():
    tensors = {"z": np.arange(5, dtype=np.int8), "a": np.full((2, 2), 7, np.uint32)}
    first = to_bytes({"b": 1, "a": {"y": [1, 2], "x": "é"}}, tensors)
    second = to_bytes({"a": {"x": "é", "y": [1, 2]}, "b": 1}, dict(tensors))
    assert first == second


def test_write_bsi_writes_to_bytes_output(tmp_path):
    tensors = {"t": np.arange(10, dtype=np.int16)}
    write_bsi(tmp_path / "m.bsi", {"a": 1}, tensors)
    assert (tmp_path / "m.bsi").read_bytes() == to_bytes({"a": 1}, tensors)
    assert (tmp_path / "m.bsi").stat().st_mode & 0o777 == 0o644


# --------------------------------------------------------------------------- writer input validation


@pytest.mark.parametrize(
    "metadata, tensors, alignment, error, message",
    [
        ({}, {}, 64, ValueError, "1..4096 tensors"),
        ({}, [np.zeros(1, np.int8)], 64, TypeError, "tensors must be a dict"),
        ({}, {"": np.zeros(1, np.int8)}, 64, ValueError, "1..63 characters"),
        ({}, {"x" * 64: np.zeros(1, np.int8)}, 64, ValueError, "1..63 characters"),
        ({}, {"a-b": np.zeros(1, np.int8)}, 64, ValueError, "[A-Za-z0-9_.]"),
        ({}, {"café": np.zeros(1, np.int8)}, 64, ValueError, "[A-Za-z0-9_.]"),
        ({}, {3: np.zeros(1, np.int8)}, 64, TypeError, "must be a str"),
        ({}, {"w": [1, 2]}, 64, TypeError, "must be a numpy.ndarray"),
        ({}, {"w": np.zeros(2, np.float64)}, 64, TypeError, "dtype float64"),
        ({}, {"w": np.zeros(2, np.int64)}, 64, TypeError, "dtype int64"),
        ({}, {"w": np.zeros(2, bool)}, 64, TypeError, "dtype bool"),
        ({}, {"w": np.array(5, np.int8)}, 64, ValueError, "ndim 0"),
        ({}, {"w": np.zeros((1,) * 7, np.int8)}, 64, ValueError, "ndim 7"),
        ({}, {"w": np.zeros((2, 0), np.int8)}, 64, ValueError, "every dim must be >= 1"),
        ([], {"w": np.zeros(1, np.int8)}, 64, TypeError, "metadata must be a dict"),
        ({"a": [1, float("nan")]}, {"w": np.zeros(1, np.int8)}, 64, ValueError, "metadata['a'][1] is nan"),
        ({"a": float("inf")}, {"w": np.zeros(1, np.int8)}, 64, ValueError, "metadata['a'] is inf"),
        ({"a": {1: 2}}, {"w": np.zeros(1, np.int8)}, 64, TypeError, "keys must be str"),
        ({"a": np.int64(3)}, {"w": np.zeros(1, np.int8)}, 64, TypeError, "int64"),
        ({"a": "\ud800"}, {"w": np.zeros(1, np.int8)}, 64, ValueError, "UTF-8"),
        ({}, {"w": np.zeros(1, np.int8)}, 48, ValueError, "alignment 48"),
        ({}, {"w": np.zeros(1, np.int8)}, 8, ValueError, "alignment 8 "),
        ({}, {"w": np.zeros(1, np.int8)}, 8192, ValueError, "alignment 8192"),
        ({}, {"w": np.zeros(1, np.int8)}, 64.0, TypeError, "alignment must be an int"),
    ],
)
def test_writer_rejects_bad_input(metadata, tensors, alignment, error, message):
    with pytest.raises(error) as excinfo:
        to_bytes(metadata, tensors, alignment)
    assert message in str(excinfo.value)


def test_writer_rejects_oversized_metadata():
    with pytest.raises(ValueError, match="more than 16777216"):
        to_bytes({"blob": "x" * (16 * 2**20)}, {"w": np.zeros(1, np.int8)})


# --------------------------------------------------------------------------- corrupt files


BASE_METADATA = {"format": "bsvit-int", "opset": 1, "note": "x" * 20}
BASE_TENSORS = {
    "a": np.arange(3, dtype=np.int8),
    "b.weight": np.arange(-3, 3, dtype=np.int16).reshape(2, 3),
    "c_2": np.array([0, 1, 2**32 - 1, 7, 9], dtype=np.uint32),
}
BASE = to_bytes(BASE_METADATA, BASE_TENSORS)
META_OFFSET = 64 + 3 * 128
META_SIZE = struct.unpack_from("<Q", BASE, 40)[0]


def entry_fields(buf, index):
    base = 64 + 128 * index
    return {name: struct.unpack_from(fmt, buf, base + pos)[0] for name, (pos, fmt) in ENTRY_FIELDS.items()}


def set_header(buf, field, value):
    pos, fmt = HEADER_FIELDS[field]
    struct.pack_into(fmt, buf, pos, value)


def set_entry(buf, index, field, value):
    pos, fmt = ENTRY_FIELDS[field]
    struct.pack_into(fmt, buf, 64 + 128 * index + pos, value)


def reseal(buf):
    """Recompute table, metadata and header CRCs so that only the intended check can fire."""
    get = lambda field: struct.unpack_from(HEADER_FIELDS[field][1], buf, HEADER_FIELDS[field][0])[0]
    meta_offset = min(get("meta_offset"), len(buf))
    meta_end = min(meta_offset + get("meta_size"), len(buf))
    set_header(buf, "table_crc32", zlib.crc32(buf[64:meta_offset]))
    set_header(buf, "meta_crc32", zlib.crc32(buf[meta_offset:meta_end]))
    set_header(buf, "header_crc32", zlib.crc32(buf[:60]))
    return buf


def header_edit(field, value):
    def edit(buf):
        set_header(buf, field, value)
        return reseal(buf)
    return edit


def entry_edit(index, **fields):
    def edit(buf):
        for field, value in fields.items():
            set_entry(buf, index, field, value)
        return reseal(buf)
    return edit


def truncate(size, fix_file_size):
    def edit(buf):
        del buf[size:]
        if fix_file_size and size >= 64:
            set_header(buf, "file_size", size)
            reseal(buf)
        return buf
    return edit


def replace_metadata(text):
    raw = text.encode("utf-8") if isinstance(text, str) else text
    assert len(raw) <= META_SIZE

    def edit(buf):
        buf[META_OFFSET : META_OFFSET + META_SIZE] = raw.ljust(META_SIZE, b" ")
        return reseal(buf)
    return edit


def with_long_metadata(raw):
    """Ignore the base file; build one whose metadata is exactly `raw` (any length >= 8)."""
    def edit(_buf):
        placeholder = {"p": "x" * (len(raw) - len('{"p":""}'))}
        buf = bytearray(to_bytes(placeholder, BASE_TENSORS))
        buf[META_OFFSET : META_OFFSET + len(raw)] = raw
        return reseal(buf)
    return edit


def flip_byte(position, then_reseal):
    def edit(buf):
        buf[position] ^= 0xFF
        return reseal(buf) if then_reseal else buf
    return edit


def append_bytes(count):
    def edit(buf):
        buf.extend(bytes(count))
        set_header(buf, "file_size", len(buf))
        return reseal(buf)
    return edit


TENSOR_OFFSETS = [entry_fields(BASE, i)["offset"] for i in range(3)]
LAST_END = len(BASE)

CORRUPT_CASES = [
    ("empty_file", truncate(0, False), "file is 0 bytes, shorter than the 64-byte header"),
    ("truncated_header", truncate(40, False), "file is 40 bytes"),
    ("bad_magic", header_edit("magic", b"\x89BSJ\r\n\x1a\n"), "magic b'\\x89BSJ"),
    ("text_mode_mangled_magic", header_edit("magic", b"\x89BSI\n\x1a\n\0"), "not a .bsi file"),
    ("version_0", header_edit("version", 0), "version 0 is not supported"),
    ("version_2", header_edit("version", 2), "version 2 is not supported"),
    ("header_size_wrong", header_edit("header_size", 128), "header_size 128 is not 64"),
    ("bad_header_crc", flip_byte(60, False), "header_crc32"),
    ("header_bit_flip", flip_byte(20, False), "header_crc32"),
    ("file_size_mismatch", header_edit("file_size", LAST_END + 64), f"file_size {LAST_END + 64} does not match the actual file size {LAST_END}"),
    ("truncated_table", truncate(200, False), f"file_size {LAST_END} does not match the actual file size 200"),
    ("truncated_table_consistent_size", truncate(200, True), "extends past file_size 200"),
    ("truncated_metadata", truncate(META_OFFSET + 5, False), f"does not match the actual file size {META_OFFSET + 5}"),
    ("truncated_metadata_consistent_size", truncate(META_OFFSET + 5, True), f"meta_size {META_SIZE} = {META_OFFSET + META_SIZE}) extends past file_size {META_OFFSET + 5}"),
    ("truncated_data", truncate(LAST_END - 3, False), f"does not match the actual file size {LAST_END - 3}"),
    ("truncated_data_consistent_size", truncate(LAST_END - 3, True), f"tensor 2 'c_2': data (offset {TENSOR_OFFSETS[2]} + nbytes 20"),
    ("tensor_count_0", header_edit("tensor_count", 0), "tensor_count 0 is not in 1..4096"),
    ("tensor_count_4097", header_edit("tensor_count", 4097), "tensor_count 4097"),
    ("tensor_count_absurd", header_edit("tensor_count", 2**31), "tensor_count 2147483648 is not in 1..4096"),
    ("alignment_not_power_of_two", header_edit("alignment", 48), "alignment 48 is not a power of two"),
    ("alignment_zero", header_edit("alignment", 0), "alignment 0 is not"),
    ("alignment_too_small", header_edit("alignment", 8), "alignment 8 is not"),
    ("alignment_too_large", header_edit("alignment", 8192), "alignment 8192 is not"),
    ("meta_offset_wrong", header_edit("meta_offset", META_OFFSET + 64), f"meta_offset {META_OFFSET + 64} is not 64 + tensor_count*128 = {META_OFFSET}"),
    ("meta_size_0", header_edit("meta_size", 0), "meta_size 0 is not in 2..16777216"),
    ("meta_size_above_16MiB", header_edit("meta_size", 16 * 2**20 + 1), "meta_size 16777217 is not in"),
    ("meta_size_absurd", header_edit("meta_size", 2**63), f"meta_size {2**63} is not in"),
    ("meta_size_past_end", header_edit("meta_size", LAST_END), "extends past file_size"),
    ("header_reserved", header_edit("reserved", 1), "header reserved field is 1"),
    ("bad_table_crc", flip_byte(64 + 128 + 70, False), "table_crc32"),
    ("bad_meta_crc", flip_byte(META_OFFSET + 3, False), "meta_crc32"),
    ("metadata_not_utf8", replace_metadata(b'{"a":"\xff"}'), "metadata is not valid UTF-8"),
    ("metadata_not_json", replace_metadata("{format: bsvit}"), "metadata is not valid JSON"),
    ("metadata_json_array", replace_metadata("[1, 2]"), "metadata is a JSON array, not an object"),
    ("metadata_json_string", replace_metadata('"hello"'), "metadata is a JSON string, not an object"),
    ("metadata_nan", replace_metadata('{"a": NaN}'), "NaN is not valid JSON"),
    ("metadata_duplicate_key", replace_metadata('{"a": 1, "a": 2}'), "duplicate key 'a'"),
    ("metadata_truncated_json", replace_metadata("[" * (META_SIZE - 1)), "metadata is not valid JSON"),
    ("metadata_too_deep", with_long_metadata(b"[" * 100_000 + b"]" * 100_000), "maximum recursion depth"),
    ("name_empty", entry_edit(1, name=b""), "tensor 1: name is empty"),
    ("name_non_ascii", entry_edit(1, name="café".encode()), "tensor 1: name b'caf\\xc3\\xa9' is not ASCII"),
    ("name_bad_character", entry_edit(1, name=b"b-weight"), "tensor 1: name 'b-weight' has characters outside"),
    ("name_not_terminated", entry_edit(1, name=b"n" * 64), "is not NUL-terminated within 64 bytes"),
    ("name_garbage_after_nul", entry_edit(1, name=b"b\0junk"), "has non-NUL bytes after its end"),
    ("duplicate_names", entry_edit(2, name=b"a"), "tensor 2 'a': name duplicates tensor 0"),
    ("dtype_0", entry_edit(0, dtype=0), "tensor 0 'a': dtype code 0 is unknown"),
    ("dtype_7", entry_edit(2, dtype=7), "tensor 2 'c_2': dtype code 7 is unknown"),
    ("ndim_0", entry_edit(0, ndim=0), "tensor 0 'a': ndim 0 is not in 1..6"),
    ("ndim_7", entry_edit(0, ndim=7), "tensor 0 'a': ndim 7 is not in 1..6"),
    ("zero_dim", entry_edit(1, dims1=0), "tensor 1 'b.weight': dims[1] is 0"),
    ("dim_beyond_ndim", entry_edit(1, dims2=1), "tensor 1 'b.weight': dims[2] is 1; dims at or beyond ndim 2"),
    ("dims_product_overflow", entry_edit(1, ndim=6, **{f"dims{k}": 2**32 - 1 for k in range(6)}), "more than 2^31"),
    ("dims_product_just_over", entry_edit(0, ndim=2, dims0=2**16, dims1=2**15 + 1), f"hold {2**31 + 2**16} elements"),
    ("nbytes_inconsistent", entry_edit(1, nbytes=13), "tensor 1 'b.weight': nbytes 13 is not product(dims) * itemsize = 12"),
    ("nbytes_dtype_mismatch", entry_edit(1, dtype=5), "nbytes 12 is not product(dims) * itemsize = 24"),
    ("misaligned_offset", entry_edit(1, offset=TENSOR_OFFSETS[1] + 4), f"tensor 1 'b.weight': offset {TENSOR_OFFSETS[1] + 4} is not a multiple of alignment 64"),
    ("overlapping_tensors", entry_edit(1, offset=TENSOR_OFFSETS[0]), f"offset {TENSOR_OFFSETS[0]} overlaps tensor 0 'a'"),
    ("out_of_order_tensors", entry_edit(2, offset=TENSOR_OFFSETS[0]), "overlaps tensor 1 'b.weight'"),
    ("offset_inside_metadata", entry_edit(0, offset=0), "offset 0 is before the end of the metadata"),
    ("offset_beyond_file", entry_edit(2, offset=2**40), f"tensor 2 'c_2': data (offset {2**40} + nbytes 20"),
    ("offset_near_u64_max", entry_edit(2, offset=2**64 - 64), "extends past file_size"),
    ("entry_reserved", entry_edit(1, reserved=b"\0" * 11 + b"\1"), "tensor 1 'b.weight': reserved bytes are"),
    ("trailing_garbage", append_bytes(64), "file has 64 trailing bytes after the last tensor 'c_2'"),
    ("tensor_crc_mismatch", flip_byte(TENSOR_OFFSETS[1] + 1, False), "tensor 1 'b.weight': crc32"),
    ("tensor_crc_field_wrong", entry_edit(2, crc32=12345), "tensor 2 'c_2': crc32 0x00003039"),
]


def read_via_from_bytes(raw, tmp_path, **kwargs):
    return from_bytes(raw, **kwargs)


def read_via_mmap(raw, tmp_path, **kwargs):
    path = tmp_path / "corrupt.bsi"
    path.write_bytes(raw)
    return read_bsi(path, mmap=True, **kwargs)


def read_via_file(raw, tmp_path, **kwargs):
    path = tmp_path / "corrupt.bsi"
    path.write_bytes(raw)
    return read_bsi(path, mmap=False, **kwargs)


READERS = [read_via_from_bytes, read_via_mmap, read_via_file]


def test_base_file_is_valid():
    assert from_bytes(BASE) == BsiFile(BASE_METADATA, BASE_TENSORS)
    assert TENSOR_OFFSETS[0] >= META_OFFSET + META_SIZE


@pytest.mark.parametrize("reader", READERS, ids=lambda r: r.__name__.removeprefix("read_via_"))
@pytest.mark.parametrize("edit, message", [c[1:] for c in CORRUPT_CASES], ids=[c[0] for c in CORRUPT_CASES])
def test_corrupt_file_is_rejected(edit, message, reader, tmp_path):
    corrupt = bytes(edit(bytearray(BASE)))
    with pytest.raises(BsiFormatError) as excinfo:
        reader(corrupt, tmp_path)
    assert message in str(excinfo.value)
    assert isinstance(excinfo.value, ValueError)


@pytest.mark.parametrize("reader", READERS, ids=lambda r: r.__name__.removeprefix("read_via_"))
def test_tensor_crc_check_can_be_skipped(reader, tmp_path):
    corrupt = bytearray(BASE)
    corrupt[TENSOR_OFFSETS[1]] ^= 0x01
    loaded = reader(bytes(corrupt), tmp_path, verify_checksums=False)
    assert loaded.tensors["b.weight"][0, 0] == BASE_TENSORS["b.weight"][0, 0] ^ 0x01
    np.testing.assert_array_equal(loaded.tensors["c_2"], BASE_TENSORS["c_2"])


@settings(max_examples=200, deadline=None)
@given(
    position=st.integers(0, len(BASE) - 1),
    xor=st.integers(1, 255),
    truncate_to=st.none() | st.integers(0, len(BASE) - 1),
)
def test_random_damage_raises_only_bsi_format_error(position, xor, truncate_to):
    damaged = bytearray(BASE)
    damaged[position] ^= xor
    if truncate_to is not None:
        del damaged[truncate_to:]
    try:
        loaded = from_bytes(bytes(damaged))
    except BsiFormatError:
        return
    # Only alignment padding is outside every CRC, so a load must return the original data.
    assert loaded == BsiFile(BASE_METADATA, BASE_TENSORS)


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_bsi(tmp_path / "absent.bsi")


@pytest.mark.parametrize("use_mmap", [True, False])
def test_directory_raises_is_a_directory(tmp_path, use_mmap):
    with pytest.raises(IsADirectoryError):
        read_bsi(tmp_path, mmap=use_mmap)


# --------------------------------------------------------------------------- atomic writes


@pytest.fixture
def existing_model(tmp_path):
    path = tmp_path / "model.bsi"
    write_bsi(path, {"version": "old"}, {"w": np.arange(4, dtype=np.int8)})
    return path, path.read_bytes()


@pytest.mark.parametrize(
    "metadata, tensors, error",
    [
        ({"scale": float("nan")}, {"w": np.zeros(2, np.int8)}, ValueError),
        ({"ok": 1}, {"w": np.zeros(2, np.float64)}, TypeError),
    ],
    ids=["nan_metadata", "float64_tensor"],
)
def test_failed_serialisation_leaves_destination_untouched(existing_model, metadata, tensors, error):
    path, before = existing_model
    with pytest.raises(error):
        write_bsi(path, metadata, tensors)
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == [path.name]


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_failed_write_leaves_destination_untouched(existing_model, monkeypatch, failing):
    path, before = existing_model

    def fail(*args, **kwargs):
        raise OSError(f"simulated {failing} failure")

    monkeypatch.setattr(os, failing, fail)
    with pytest.raises(OSError, match=f"simulated {failing} failure"):
        write_bsi(path, {"version": "new"}, {"w": np.arange(8, dtype=np.int8)})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == [path.name]


def test_write_replaces_existing_file_and_keeps_its_mode(existing_model):
    path, _ = existing_model
    os.chmod(path, 0o640)
    write_bsi(path, {"version": "new"}, {"w": np.arange(8, dtype=np.int8)})
    assert read_bsi(path).metadata == {"version": "new"}
    assert path.stat().st_mode & 0o777 == 0o640
    assert os.listdir(path.parent) == [path.name]
