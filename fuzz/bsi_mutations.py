"""Mutations of valid `.bsi` files and the one check every mutated file must pass.

Shared by the Hypothesis worker (fuzz/bsi_worker.py, run by tests/test_hardening_fuzz.py
and fuzz/run_fuzz.py) and the atheris harness (fuzz/atheris_bsi.py). Needs NumPy and
bsvit_int only: no torch, no Hypothesis.

A mutation draws its parameters from a `Chooser` over a byte string (Hypothesis's
`st.binary()` or atheris's input), so both fuzzers explore the same space:

* raw byte damage: flips, truncation, extension, splices from another model, with the
  CRCs left as they are (the checksums must catch it) or resealed (so the structural and
  semantic validation behind the checksums is reached);
* field rewrites: a header or tensor-table field set to a boundary value, CRCs resealed;
* semantic rewrites: metadata JSON edits (config, layers, shift, logit_scale, format,
  opset, ...) and tensor edits (extreme values, dtype, shape, missing, unknown, swapped),
  re-serialised with the real writer so the container is valid and only the model is not.

`Checker.check` is the property: `bsvit_int.load` either raises BsiFormatError or returns a
model; a model that differs from its seed runs `predict` on worst-case images (all 255,
and for the tiny seeds a fixed pseudo-random one too) and must return int32 logits of the
right shape, with no other exception (OverflowError from the int64-checked oracle
included). With the compiled backend built, it runs every changed model as well and must
equal the NumPy oracle bit for bit (on the digits seed the oracle runs on every 4th
changed model, for time). A raw mutation (CRCs not resealed) that loads must load exactly
the seed's model: only alignment padding is outside every CRC.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

import bsvit_int
from bsvit_int.container import DTYPES, from_bytes, to_bytes
from bsvit_int.errors import BsiFormatError

# Field positions, from docs/bsi-format.md.
HEADER_FIELDS = {
    "version": (8, "<I"), "header_size": (12, "<I"), "file_size": (16, "<Q"),
    "tensor_count": (24, "<I"), "alignment": (28, "<I"), "meta_offset": (32, "<Q"),
    "meta_size": (40, "<Q"), "meta_crc32": (48, "<I"), "table_crc32": (52, "<I"),
    "reserved": (56, "<I"),
}
ENTRY_FIELDS = {
    "dtype": (64, "<I"), "ndim": (68, "<I"),
    **{f"dims{k}": (72 + 4 * k, "<I") for k in range(6)},
    "offset": (96, "<Q"), "nbytes": (104, "<Q"), "crc32": (112, "<I"),
}
U32_EDGES = [0, 1, 2, 3, 4, 5, 6, 7, 8, 15, 16, 17, 31, 32, 63, 64, 65, 127, 128, 255, 256,
             4095, 4096, 4097, 2**16, 2**31 - 1, 2**31, 2**32 - 1]
U64_EDGES = U32_EDGES + [2**32, 2**48, 2**63 - 1, 2**63, 2**64 - 1]
JSON_EDGES: List[Any] = [
    0, 1, -1, 2, 3, 15, 16, 17, 63, 64, 65, 255, 256, 4096, 2**31 - 1, 2**31, -(2**31),
    2**32, 2**63, 10**30, 0.5, 1.5, 2.0, -0.0, 1e-300, 1e300, 1e308, "", "x", "1", "bsvit-int",
    None, True, False, [], [1], [1, 2], [2, 2], [0, 0], {}, {"shift": 0},
]

def is_known_gap(path: Tuple, value: Any) -> bool:
    """Metadata values the engine is known not to refuse yet, kept out of CI fuzzing.

    None today: the gaps this once listed (float `burst_max`/`timesteps`, huge
    `mlp_ratio`, integer `logit_scale` >= 2**64) are refused since the change recorded in
    docs/hardening.md. A newly found gap is pinned here and by a strict xfail until fixed.
    """
    return False


class Chooser:
    """The mutation's source of decisions: a byte string, consumed front to back.

    Hypothesis supplies the bytes (`st.binary`: uniform bytes, one draw per case, shrinks
    towards zeros); atheris supplies its input. Drawing integers from Hypothesis directly
    would be slower per case and skewed towards the low end of every range, so positions
    in a 90 KB file would cluster in the header. Past the end the bytes read as zero.
    """

    def __init__(self, entropy: bytes):
        self.entropy = entropy
        self.pos = 0

    def _take(self, n: int) -> bytes:
        chunk = self.entropy[self.pos:self.pos + n]
        self.pos += n
        return chunk.ljust(n, b"\0")

    def integer(self, lo: int, hi: int) -> int:          # inclusive
        span = hi - lo + 1
        if span <= 1:
            return lo
        nbytes = (span.bit_length() + 7) // 8 + 1          # one spare byte: little bias
        return lo + int.from_bytes(self._take(nbytes), "big") % span

    def choice(self, options: Sequence[Any]) -> Any:
        return options[self.integer(0, len(options) - 1)]

    def raw(self, n: int) -> bytes:
        # Random tails may be long; stretch the entropy rather than consume all of it.
        seed = self._take(8)
        return np.random.default_rng(int.from_bytes(seed, "big")).bytes(n)


# --------------------------------------------------------------------------- seeds


@dataclass
class Seed:
    """A valid model file and what a mutation needs to know about it."""
    name: str
    data: bytes
    metadata: dict
    tensors: Dict[str, np.ndarray]
    meta_offset: int
    meta_size: int
    tensor_count: int
    tensor_offsets: List[int]
    digest: str
    images: np.ndarray                       # uint8 [B, H, W, C]: all 255 (, pseudo-random)
    paths: List[Tuple] = field(default_factory=list)   # JSON paths inside the metadata
    model_paths: List[Tuple] = field(default_factory=list)   # ... that the engine reads
    oracle_every: int = 1                    # run the NumPy oracle on every n-th change
    changed: int = 0                         # changed models seen so far


def model_digest(model) -> str:
    """What determines a model's logits: config, shifts and tensor contents."""
    h = hashlib.sha256()
    h.update(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    h.update(json.dumps(model._shifts, sort_keys=True).encode())
    for name in sorted(model.tensors):
        a = model.tensors[name]
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _json_paths(value: Any, prefix: Tuple = (), depth: int = 0) -> List[Tuple]:
    out = []
    if isinstance(value, dict):
        for key, item in value.items():
            out.append(prefix + (key,))
            if depth < 3:
                out += _json_paths(item, prefix + (key,), depth + 1)
    elif isinstance(value, list) and depth < 3:
        for i, item in enumerate(value[:4]):
            out.append(prefix + (i,))
            out += _json_paths(item, prefix + (i,), depth + 1)
    return out


def load_seed(path: str) -> Seed:
    data = open(path, "rb").read()
    f = from_bytes(data)
    model = bsvit_int.load(path, backend="numpy")
    c = model.config
    rng = np.random.default_rng(20260)
    images = np.stack([np.full((c.height, c.width, c.in_chans), 255, np.uint8),
                       rng.integers(0, 256, (c.height, c.width, c.in_chans), dtype=np.uint8)])
    big = len(data) > 32 * 1024      # a bigger model: the worst-case image only (cost)
    if big:
        images = images[:1]
    count, = struct.unpack_from("<I", data, 24)
    meta_offset, meta_size = struct.unpack_from("<QQ", data, 32)
    offsets = [struct.unpack_from("<Q", data, 64 + 128 * i + 96)[0] for i in range(count)]
    paths = _json_paths(f.metadata)
    model_paths = [p for p in paths if p[0] in ("config", "format", "opset", "logit_scale")
                   or (p[0] == "layers" and (len(p) < 3 or p[2] == "shift"))]
    return Seed(os.path.basename(path), data, f.metadata,
                {k: np.array(v) for k, v in f.tensors.items()}, meta_offset, meta_size, count,
                offsets, model_digest(model), images, paths, model_paths,
                oracle_every=4 if big else 1)


# --------------------------------------------------------------------------- CRCs


def reseal(buf: bytearray) -> bytearray:
    """Recompute every CRC the file's own fields let us find, so only the damage speaks."""
    n = len(buf)
    if n < 64:
        return buf
    count, = struct.unpack_from("<I", buf, 24)
    meta_offset, meta_size = struct.unpack_from("<QQ", buf, 32)
    table_end = min(64 + 128 * min(count, 4096), n)
    for i in range((table_end - 64) // 128):
        base = 64 + 128 * i
        offset, nbytes = struct.unpack_from("<QQ", buf, base + 96)
        if offset + nbytes <= n:
            struct.pack_into("<I", buf, base + 112, zlib.crc32(buf[offset:offset + nbytes]))
    struct.pack_into("<I", buf, 52, zlib.crc32(buf[64:min(meta_offset, n)]))
    meta_start = min(meta_offset, n)
    struct.pack_into("<I", buf, 48, zlib.crc32(buf[meta_start:min(meta_start + meta_size, n)]))
    struct.pack_into("<I", buf, 60, zlib.crc32(buf[:60]))
    return buf


# --------------------------------------------------------------------------- mutations


def _position(c: Chooser, seed: Seed, size: int) -> int:
    """A byte position, biased towards the header, table and metadata (the parsed part)."""
    region = c.integer(0, 3)
    if region == 0:
        return c.integer(0, min(63, size - 1))
    if region == 1:
        return c.integer(0, min(seed.meta_offset, size) - 1)
    if region == 2:
        return c.integer(0, min(seed.meta_offset + seed.meta_size, size) - 1)
    return c.integer(0, size - 1)


def mutate_flip(c: Chooser, seed: Seed) -> Tuple[bytes, str]:
    buf = bytearray(seed.data)
    spots = []
    for _ in range(c.integer(1, 4)):
        pos = _position(c, seed, len(buf))
        xor = c.integer(1, 255)
        buf[pos] ^= xor
        spots.append(f"{pos}^{xor:#x}")
    return bytes(buf), "flip " + ",".join(spots)


def mutate_truncate(c: Chooser, seed: Seed) -> Tuple[bytes, str]:
    size = c.choice([0, 1, 8, 63, 64, 65, seed.meta_offset - 1, seed.meta_offset,
                     seed.meta_offset + 1, len(seed.data) - 1] + seed.tensor_offsets) \
        if c.integer(0, 1) else c.integer(0, len(seed.data) - 1)
    size = max(0, min(size, len(seed.data) - 1))
    buf = bytearray(seed.data[:size])
    fix = c.integer(0, 1) and size >= 64
    if fix:
        struct.pack_into("<Q", buf, 16, size)
    return bytes(buf), f"truncate to {size}{' (file_size fixed)' if fix else ''}"


def mutate_extend(c: Chooser, seed: Seed) -> Tuple[bytes, str]:
    kind = c.integer(0, 2)
    n = c.choice([1, 7, 63, 64, 4096]) if kind != 2 else len(seed.data)
    tail = bytes(n) if kind == 0 else (c.raw(n) if kind == 1 else seed.data)
    buf = bytearray(seed.data + tail)
    fix = c.integer(0, 1)
    if fix:
        struct.pack_into("<Q", buf, 16, len(buf))
    return bytes(buf), f"extend by {n} {('zeros', 'random', 'copy')[kind]} bytes" \
                       f"{' (file_size fixed)' if fix else ''}"


def _edge(c: Chooser, edges: List[int], original: int, bits: int) -> int:
    options = edges + [original + 1, original - 1, original * 2, original + 64,
                       original - 64, original ^ 0x80]
    return c.choice(options) % (1 << bits)


def mutate_header_field(c: Chooser, seed: Seed) -> Tuple[bytes, str]:
    name = c.choice(sorted(HEADER_FIELDS))
    pos, fmt = HEADER_FIELDS[name]
    buf = bytearray(seed.data)
    original, = struct.unpack_from(fmt, buf, pos)
    bits = 64 if fmt == "<Q" else 32
    value = _edge(c, (U64_EDGES if bits == 64 else U32_EDGES) + [len(buf)], original, bits)
    struct.pack_into(fmt, buf, pos, value)
    return bytes(buf), f"header {name}={value}"


def mutate_entry_field(c: Chooser, seed: Seed) -> Tuple[bytes, str]:
    index = c.integer(0, seed.tensor_count - 1)
    buf = bytearray(seed.data)
    base = 64 + 128 * index
    if c.integer(0, 4) == 0:                    # the name: a byte of it, or all of it
        name = c.choice([b"", b"x" * 64, b"a-b", b"\xff", b"embed.weight", b"head.bias",
                         bytes(buf[64 + 128 * c.integer(0, seed.tensor_count - 1):][:64])])
        buf[base:base + 64] = name[:64].ljust(64, b"\0")
        return bytes(buf), f"entry {index} name={name[:16]!r}"
    name = c.choice(sorted(ENTRY_FIELDS))
    pos, fmt = ENTRY_FIELDS[name]
    original, = struct.unpack_from(fmt, buf, base + pos)
    bits = 64 if fmt == "<Q" else 32
    value = _edge(c, (U64_EDGES if bits == 64 else U32_EDGES) + [len(buf)], original, bits)
    struct.pack_into(fmt, buf, base + pos, value)
    return bytes(buf), f"entry {index} {name}={value}"


def mutate_splice(c: Chooser, seed: Seed, other: Seed) -> Tuple[bytes, str]:
    n = c.choice([4, 16, 64, 128, 512])
    src = c.integer(0, max(0, len(other.data) - n))
    dst = _position(c, seed, len(seed.data))
    buf = bytearray(seed.data)
    chunk = other.data[src:src + n]
    buf[dst:dst + len(chunk)] = chunk
    return bytes(buf[:len(seed.data)]), f"splice {len(chunk)} bytes of {other.name}@{src} at {dst}"


def _get(obj: Any, path: Tuple) -> Any:
    for key in path:
        obj = obj[key]
    return obj


def mutate_metadata(c: Chooser, seed: Seed, allow_known_gaps: bool) -> Tuple[bytes, str]:
    meta = copy.deepcopy(seed.metadata)
    # Half the edits go to the fields the engine reads; the rest are mostly report data.
    path = c.choice(seed.model_paths if c.integer(0, 1) else seed.paths)
    parent = _get(meta, path[:-1])
    key = path[-1]
    op = c.integer(0, 3)
    if op == 0:
        if isinstance(parent, dict):
            del parent[key]
        else:
            parent.pop(key)
        desc = f"delete {path}"
    else:
        old = parent[key]
        if op == 1 and isinstance(old, (int, float)) and not isinstance(old, bool):
            value = c.choice([old + 1, old - 1, old * 2, -old, old * 1000, old + 2**31])
        else:
            value = copy.deepcopy(c.choice(JSON_EDGES))
        if not allow_known_gaps and is_known_gap(path, value):
            value = 0
        parent[key] = value
        desc = f"set {path}={value!r}"
    if c.integer(0, 7) == 0:
        meta[c.choice(["extra", "config2", "x"])] = c.choice([1, "y", None, {"a": [1]}])
        desc += " +unknown key"
    return to_bytes(meta, seed.tensors), desc


def mutate_tensors(c: Chooser, seed: Seed) -> Tuple[bytes, str]:
    tensors = {k: v.copy() for k, v in seed.tensors.items()}
    names = list(tensors)
    name = c.choice(names)
    a = tensors[name]
    info = np.iinfo(a.dtype)
    op = c.integer(0, 11)
    extremes = [int(info.min), int(info.max), 0, 1, -1 if info.min < 0 else 2,
                int(info.min) + 1, int(info.max) - 1]
    if op in (0, 1, 2):                                    # one element, to an extreme
        flat = a.reshape(-1)
        i = c.integer(0, flat.size - 1)
        flat[i] = c.choice(extremes)
        desc = f"{name}[{i}]={flat[i]}"
    elif op in (10, 11):                                   # one element, a little or x2
        flat = a.reshape(-1)
        i = c.integer(0, flat.size - 1)
        old = int(flat[i])
        new = c.choice([old + 1, old - 1, old * 2, -old, old + 100, old // 2, 127, -127])
        flat[i] = int(np.clip(new, max(int(info.min), -127), int(info.max)))
        desc = f"{name}[{i}]: {old} -> {flat[i]}"
    elif op == 3:                                          # every element
        value = c.choice(extremes)
        a[...] = value
        desc = f"{name}[:]={value}"
    elif op == 4:                                          # another dtype
        dtype = c.choice(list(DTYPES.values()))
        tensors[name] = a.astype(dtype)
        desc = f"{name} as {dtype}"
    elif op == 5:                                          # another shape
        shapes = [(a.size,), (1,) + a.shape, a.shape + (1,), a.shape[::-1]]
        shape = c.choice(shapes)
        tensors[name] = a.reshape(shape)
        desc = f"{name} reshaped {shape}"
    elif op == 6:
        del tensors[name]
        desc = f"drop {name}"
    elif op == 7:
        tensors[c.choice(["extra", "blocks.9.attn.q.weight", "head.weight2"])] = a.copy()
        desc = f"add a copy of {name}"
    elif op == 8 and a.shape[0] > 1:                       # fewer rows
        tensors[name] = a[: c.integer(1, a.shape[0] - 1)].copy()
        desc = f"{name} truncated to {tensors[name].shape}"
    else:                                                  # swap with a same-shaped tensor
        same = [n for n in names if n != name and tensors[n].shape == a.shape
                and tensors[n].dtype == a.dtype]
        if same:
            other = c.choice(same)
            tensors[name], tensors[other] = tensors[other], a
            desc = f"swap {name} <-> {other}"
        else:
            tensors = dict(reversed(list(tensors.items())))
            desc = "reverse table order"
    if tensors and c.integer(0, 5) == 0:
        other = c.choice(list(tensors))
        if tensors[other].dtype.kind == "i":
            tensors[other] = np.negative(tensors[other])      # int8 -128 stays -128
            desc += f" and {other} negated"
    return to_bytes(seed.metadata, tensors), desc


# Kinds with repeats for weight: the semantic rewrites reach the most code per case.
KINDS = ("flip", "flip", "flip+reseal", "flip+reseal", "truncate", "extend", "splice",
         "header", "header", "entry", "entry", "entry", "metadata", "metadata", "metadata",
         "metadata", "tensors", "tensors", "tensors", "tensors", "tensors")


def mutate(c: Chooser, seeds: List[Seed], allow_known_gaps: bool = False
           ) -> Tuple[Seed, bytes, str, bool]:
    """(seed, mutated bytes, description, may_differ: CRCs resealed or a semantic rewrite)."""
    seed = seeds[c.integer(0, len(seeds) - 1)]
    kind = c.choice(KINDS)
    if kind in ("flip", "flip+reseal"):
        data, desc = mutate_flip(c, seed)
    elif kind == "truncate":
        data, desc = mutate_truncate(c, seed)
    elif kind == "extend":
        data, desc = mutate_extend(c, seed)
    elif kind == "splice":
        data, desc = mutate_splice(c, seed, seeds[c.integer(0, len(seeds) - 1)])
    elif kind == "header":
        data, desc = mutate_header_field(c, seed)
    elif kind == "entry":
        data, desc = mutate_entry_field(c, seed)
    elif kind == "metadata":
        data, desc = mutate_metadata(c, seed, allow_known_gaps)
    else:
        data, desc = mutate_tensors(c, seed)
    # Field rewrites are always resealed (else the header CRC stops them at once); raw
    # damage is resealed half the time.
    resealed = kind in ("flip+reseal", "header", "entry") or (
        kind in ("truncate", "extend", "splice") and bool(c.integer(0, 1)))
    if resealed:
        data = bytes(reseal(bytearray(data)))
    semantic = kind in ("metadata", "tensors")
    return seed, data, f"{seed.name}: {kind}: {desc}", resealed or semantic


# --------------------------------------------------------------------------- the property


class Outcome:
    REJECTED = "rejected"            # BsiFormatError
    LOADED_SAME = "loaded-same"      # loaded the seed's own model (padding damage)
    PREDICTED = "predicted"          # loaded a different valid model and ran it


@dataclass
class Checker:
    workdir: str
    backends: Tuple[str, ...] = ("numpy",)
    counter: int = 0

    def write(self, data: bytes) -> str:
        # A new inode per case (unlink, then create): a model still mapped from the last
        # case never sees its file shrink under it, which would be a SIGBUS, not a reader
        # bug. (Renaming over the old file would do too, but ext4 flushes on such renames.)
        self.counter += 1
        path = os.path.join(self.workdir, "case.bsi")
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        with open(path, "wb") as f:
            f.write(data)
        return path

    def check(self, seed: Seed, data: bytes, may_differ: bool) -> Tuple[str, str]:
        """(outcome, detail); raises AssertionError for anything not allowed."""
        path = self.write(data)
        try:
            model = bsvit_int.load(path, backend="numpy")
        except BsiFormatError as e:
            return Outcome.REJECTED, str(e)
        except Exception as e:       # noqa: BLE001 -- this is the bug being looked for
            raise AssertionError(f"load raised {type(e).__name__}, not BsiFormatError: "
                                 f"{e}") from e
        digest = model_digest(model)
        if digest == seed.digest:
            return Outcome.LOADED_SAME, ""
        if not may_differ:
            raise AssertionError("a mutation that no CRC was recomputed for loaded a model "
                                 "different from its seed")
        # The oracle costs ~25 ms an image on the digits model and ~2 ms on the tiny ones:
        # bigger seeds run it on every `oracle_every`-th changed model, the compiled
        # backend (fast, and the code that could crash) on every one.
        seed.changed += 1
        logits = None
        if seed.changed % seed.oracle_every == 0 or "cython" not in self.backends:
            logits = self.predict(model, seed)
        if "cython" in self.backends:
            images = self.images_for(model, seed)
            try:
                fast = bsvit_int.load(path, backend="cython").predict(images)
            except Exception as e:   # noqa: BLE001
                raise AssertionError(f"the compiled backend raised {type(e).__name__} on a "
                                     f"model that loaded: {e}") from e
            if logits is not None and not np.array_equal(fast, logits):
                raise AssertionError(f"cython logits {fast.tolist()} != numpy oracle "
                                     f"{logits.tolist()}")
            if fast.dtype != np.int32 or fast.shape != (len(images), model.config.num_classes):
                raise AssertionError(f"cython returned {fast.dtype} {fast.shape}")
        return Outcome.PREDICTED, ""

    @staticmethod
    def images_for(model, seed: Seed) -> np.ndarray:
        c = model.config
        if seed.images.shape[1:] == (c.height, c.width, c.in_chans):
            return seed.images
        # A config edit changed the input shape: worst case and a ramp of that shape.
        shape = (c.height, c.width, c.in_chans)
        ramp = (np.arange(int(np.prod(shape))) * 37 % 256).astype(np.uint8).reshape(shape)
        return np.stack([np.full(shape, 255, np.uint8), ramp])

    def predict(self, model, seed: Seed) -> np.ndarray:
        images = self.images_for(model, seed)
        try:
            logits = model.predict(images)
        except Exception as e:       # noqa: BLE001
            raise AssertionError(f"predict on a model that loaded raised "
                                 f"{type(e).__name__}: {e}") from e
        want = (len(images), model.config.num_classes)
        if not (isinstance(logits, np.ndarray) and logits.dtype == np.int32
                and logits.shape == want):
            raise AssertionError(f"predict returned {type(logits).__name__} "
                                 f"{getattr(logits, 'dtype', '')} {getattr(logits, 'shape', '')}"
                                 f", expected int32 {want}")
        return logits


def cython_available() -> bool:
    try:
        from bsvit_int.engine_cython import require_kernels
        require_kernels()
        return "cython" in getattr(bsvit_int.engine, "BACKENDS", ())
    except Exception:                # noqa: BLE001 -- any failure means "not available"
        return False


def message_class(message: str) -> str:
    """A short key for a BsiFormatError message (its words up to the first number/quote)."""
    words = []
    for word in message.split()[:8]:
        if any(ch.isdigit() for ch in word) or "'" in word or '"' in word:
            words.append("#")
        else:
            words.append(word)
    return " ".join(words)

