"""bsvit-firmware: C sources that run a `.bsi` model on a microcontroller. NumPy only.

`emit_firmware("model.bsi", "out/")` writes

* `out/<name>_model.h`: the config as `#define`s, op-set and format versions, the source
  model's SHA-256 and CRC-32, `<NAME>_ARENA_BYTES` (the arena the runtime needs, planned
  offline over buffer lifetimes by `plan_arena`) and `extern const bsvit_model <name>_model;`
* `out/<name>_model.c`: the weights as aligned `const` arrays (they stay in flash) and the
  `bsvit_model` that points at them,
* `out/bsvit.h`, `out/bsvit.c`: the portable C99 runtime (a copy of firmware/runtime/),

so `out/` is everything an MCU project needs. Output is deterministic: the same model gives
byte-identical files. Every file is written atomically. The model is validated completely
(container, tensor table, value ranges, accumulator bounds) before anything is written.

The weight packing and the arena plan are the two contracts with firmware/runtime/bsvit.c;
both are described there and in firmware/README.md.
"""
from __future__ import annotations

import hashlib
import os
import re
import stat
import zlib
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from . import __version__, spec
from .atomic import atomic_write_bytes
from .config import BSViTConfig
from .container import VERSION as BSI_VERSION
from .container import from_bytes
from .engine import validate_model
from .errors import BsiFormatError

GENERATOR = f"bsvit-firmware {__version__}"
ABI_VERSION = 1                      # BSVIT_ABI_VERSION in bsvit.h
ARENA_ALIGN = 4                      # BSVIT_ARENA_ALIGN
LEAK_NONE = 255                      # BSVIT_LEAK_NONE
RUNTIME_FILES = ("bsvit.h", "bsvit.c")
U16_MAX = 0xFFFF
INDEX_LIMIT = 2**31                  # C indexes the arena with uint32 arithmetic

# Arena regions in the order of `bsvit_arena_plan` (bsvit.h) and `region_needs` (bsvit.c).
REGIONS = ("stream", "keys", "queries", "values_pos", "values_neg", "current", "membrane_a",
           "membrane_b", "spikes", "active", "patch", "sums")

C_KEYWORDS = frozenset("""auto break case char const continue default do double else enum
extern float for goto if inline int long register restrict return short signed sizeof static
struct switch typedef union unsigned void volatile while _Bool _Complex _Imaginary""".split())
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class FirmwareError(ValueError):
    """The model cannot be emitted as firmware (a size beyond the C runtime's types, a bad
    name, a missing runtime); the message names the field at fault."""


# --------------------------------------------------------------------------- runtime sources

def runtime_dir() -> Path:
    """Directory holding bsvit.h and bsvit.c: the installed package data
    (`bsvit_int.firmware_runtime`), else firmware/runtime/ of a source checkout."""
    candidates = []
    try:
        import importlib.util
        found = importlib.util.find_spec("bsvit_int.firmware_runtime")
        if found is not None and found.submodule_search_locations:
            candidates += [Path(p) for p in found.submodule_search_locations]
    except (ImportError, ValueError):
        pass
    candidates.append(Path(__file__).resolve().parent.parent / "firmware" / "runtime")
    for c in candidates:
        if all((c / f).is_file() for f in RUNTIME_FILES):
            return c
    raise FirmwareError("the C runtime (bsvit.h, bsvit.c) is not installed: looked in "
                        + ", ".join(str(c) for c in candidates))


# --------------------------------------------------------------------------- arena plan

def _padded(n: int) -> int:
    return 4 * ((n + 3) // 4)


def _align(n: int) -> int:
    return (n + ARENA_ALIGN - 1) // ARENA_ALIGN * ARENA_ALIGN


def region_sizes(cfg: BSViTConfig) -> Dict[str, int]:
    """Bytes of each arena region (the same formulas as `region_needs` in bsvit.c)."""
    t, n, d = cfg.timesteps, cfg.num_tokens, cfg.embed_dim
    dp, hp = _padded(d), _padded(cfg.mlp_hidden)
    words = (d + 31) // 32
    blocks = cfg.depth > 0
    widest = max(dp, hp) if blocks else dp
    # bit-plane row lists: the most (inputs x bits of the largest input count) of any layer
    rows = max(layer.cin * int(layer.input_max).bit_length()
               for layer in spec.layers(cfg) if layer.cin)
    bits = 4 * t * n * words if blocks else 0
    return {
        "stream": t * n * d,
        "keys": t * n * d if blocks else 0,
        "queries": bits, "values_pos": bits, "values_neg": bits,
        "current": 4 * widest,
        "membrane_a": 4 * widest,
        "membrane_b": 4 * dp if blocks else 0,
        "spikes": widest if blocks else 0,
        "active": 4 * rows,
        "patch": cfg.patch_dim,
        "sums": 4 * d,
    }


def region_lifetimes(cfg: BSViTConfig) -> Dict[str, frozenset]:
    """Phases in which each region is live: 0 embedding, 1+2l block l's attention (Q, K, V,
    attention neuron, out-projection), 2+2l block l's MLP, 2L+1 the head."""
    depth = cfg.depth
    attn = frozenset(1 + 2 * l for l in range(depth))
    mlp = frozenset(2 + 2 * l for l in range(depth))
    embed, head = frozenset({0}), frozenset({2 * depth + 1})
    every = embed | attn | mlp | head
    return {
        "stream": every,
        "keys": attn, "queries": attn, "values_pos": attn, "values_neg": attn,
        "current": embed | attn | mlp,
        "membrane_a": embed | attn | mlp,
        "membrane_b": attn | mlp,
        "spikes": attn | mlp,
        "active": embed | attn | mlp,
        "patch": embed,
        "sums": head,
    }


def plan_arena(cfg: BSViTConfig) -> Tuple[Dict[str, Tuple[int, int]], int]:
    """({region: (offset, bytes)}, arena_bytes): greedy first-fit, largest region first;
    two regions share bytes only if no phase has both live."""
    sizes, lives = region_sizes(cfg), region_lifetimes(cfg)
    placed: List[Tuple[int, int, frozenset]] = []
    plan: Dict[str, Tuple[int, int]] = {}
    for name in sorted(REGIONS, key=lambda r: (-sizes[r], REGIONS.index(r))):
        size = _align(sizes[name])
        if size == 0:
            plan[name] = (0, 0)
            continue
        offset = 0
        for o, s in sorted((o, s) for o, s, live in placed if live & lives[name]):
            if offset + size <= o:
                break
            offset = max(offset, _align(o + s))
        placed.append((offset, size, lives[name]))
        plan[name] = (offset, sizes[name])
    arena = _align(max(o + s for o, s, _ in placed))
    return {name: plan[name] for name in REGIONS}, arena


# --------------------------------------------------------------------------- C text

def pack_weight(w: np.ndarray) -> np.ndarray:
    """int8 [cin, cout] -> uint32 [cin, ceil(cout/4)]: byte i of word k of row j is
    w[j, 4k+i] + 128; padding channels hold 128 (weight 0)."""
    cin, cout = w.shape
    pad = (-cout) % 4
    biased = (w.astype(np.int16) + 128).astype(np.uint32)
    biased = np.pad(biased, ((0, 0), (0, pad)), constant_values=128)
    b = biased.reshape(cin, -1, 4)
    return b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16) | (b[..., 3] << 24)


def _c_int(v: int) -> str:
    # -2**31 is not an int literal in C (2147483648 is, then negated, a long).
    return "(-2147483647 - 1)" if v == -2**31 else str(v)


def _c_values(values: Iterable[str], per_line: int) -> str:
    vals = list(values)
    lines = [", ".join(vals[i:i + per_line]) for i in range(0, len(vals), per_line)]
    return ",\n".join("    " + line for line in lines)


def _c_array(ctype: str, name: str, shape: Sequence[int], values: Iterable[str],
             per_line: int, comment: str) -> str:
    dims = " * ".join(str(s) for s in shape)
    return (f"/* {comment} */\nstatic const {ctype} {name}[{dims}] BSVIT_ALIGNED(16) = {{\n"
            f"{_c_values(values, per_line)}\n}};\n")


def _ints(a: np.ndarray) -> List[str]:
    return [_c_int(int(v)) for v in a.reshape(-1)]


def _hex_words(a: np.ndarray) -> List[str]:
    return [f"0x{int(v):08x}u" for v in a.reshape(-1)]


def check_name(name: str) -> str:
    """A valid C identifier usable as a prefix, or FirmwareError saying why not."""
    if not isinstance(name, str) or not _IDENT.match(name):
        raise FirmwareError(f"name {name!r} is not a C identifier ([A-Za-z_][A-Za-z0-9_]*)")
    if name in C_KEYWORDS:
        raise FirmwareError(f"name {name!r} is a C keyword")
    if name.lower() == "bsvit" or name.lower().startswith("bsvit_"):
        raise FirmwareError(f"name {name!r} would collide with the runtime's bsvit_ names")
    if len(name) > 40:
        raise FirmwareError(f"name {name!r} is longer than 40 characters")
    return name


def default_name(bsi_path) -> str:
    """C prefix from a file name: 'my-model.bsi' -> 'my_model', '8x8.bsi' -> 'm_8x8'."""
    stem = re.sub(r"[^A-Za-z0-9_]", "_", Path(bsi_path).stem) or "model"
    if stem[0].isdigit():
        stem = "m_" + stem
    if stem in C_KEYWORDS or stem.lower() == "bsvit" or stem.lower().startswith("bsvit_"):
        stem = "m_" + stem
    return stem[:40]


def _check_sizes(cfg: BSViTConfig, arena: int) -> None:
    fields = {"img_size[0]": cfg.height, "img_size[1]": cfg.width, "in_chans": cfg.in_chans,
              "patch_size": cfg.patch_size, "num_tokens": cfg.num_tokens,
              "patch_dim": cfg.patch_dim, "embed_dim": cfg.embed_dim,
              "num_heads": cfg.num_heads, "mlp_hidden": cfg.mlp_hidden,
              "num_classes": cfg.num_classes,
              "adjacency_window": cfg.adjacency_window or 0}
    for field, value in fields.items():
        if value > U16_MAX:
            raise FirmwareError(f"config {field} is {value}; the C runtime holds it in "
                                f"uint16 (at most {U16_MAX})")
    cells = cfg.timesteps * cfg.num_tokens * max(cfg.embed_dim, cfg.mlp_hidden)
    if cells >= INDEX_LIMIT or arena >= INDEX_LIMIT:
        raise FirmwareError(f"the model needs a {arena}-byte arena (T*N*width = {cells}); "
                            f"the C runtime indexes it with 32-bit arithmetic (< 2^31)")


class _Emitter:
    """Builds the model's .c text: one const array per tensor, then the structs."""

    def __init__(self, name: str, tensors: Dict[str, np.ndarray]):
        self.name, self.tensors = name, tensors
        self.parts: List[str] = []
        self.const_bytes = 0

    def ident(self, tensor: str, suffix: str = "") -> str:
        return f"{self.name}_{tensor.replace('.', '_')}{suffix}"

    def int32(self, tensor: str) -> str:
        a = self.tensors[tensor]
        ident = self.ident(tensor)
        self.parts.append(_c_array("int32_t", ident, a.shape, _ints(a), 10,
                                   f"{tensor}: int32 {list(a.shape)}"))
        self.const_bytes += 4 * a.size
        return ident

    def linear(self, layer: str, shift: int) -> str:
        """The arrays of one linear layer; returns its bsvit_linear initialiser."""
        w = self.tensors[layer + ".weight"]
        packed = pack_weight(w)
        ident = self.ident(layer, "_weight")
        self.parts.append(_c_array(
            "uint32_t", ident, packed.shape, _hex_words(packed), 8,
            f"{layer}.weight: int8 {list(w.shape)} input-major, packed 4 per word, +128"))
        self.const_bytes += 4 * packed.size
        bias, theta = self.int32(layer + ".bias"), self.int32(layer + ".threshold")
        cin, cout = w.shape
        return (f"{{ .weight = {ident}, .bias = {bias}, .threshold = {theta}, "
                f".cin = {cin}, .cout = {cout}, .row_words = {packed.shape[1]}, "
                f".shift = {shift} }}")


def _model_c(name: str, hname: str, cfg: BSViTConfig, tensors: Dict[str, np.ndarray],
             shifts: Dict[str, int], plan: Dict[str, Tuple[int, int]], arena: int,
             banner: str, crc: int) -> Tuple[str, int]:
    e = _Emitter(name, tensors)
    embed = e.linear("embed", shifts["embed"])
    blocks = []
    for l in range(cfg.depth):
        p = f"blocks.{l}."
        fields = {k: e.linear(p + "attn." + k, shifts[p + "attn." + k]) for k in "qkv"}
        attn_theta = e.int32(p + "attn.threshold")
        fields["proj"] = e.linear(p + "attn.proj", shifts[p + "attn.proj"])
        fields["fc1"] = e.linear(p + "mlp.fc1", shifts[p + "mlp.fc1"])
        fields["fc2"] = e.linear(p + "mlp.fc2", shifts[p + "mlp.fc2"])
        blocks.append("    {\n" + "".join(f"        .{k} = {fields[k]},\n" for k in "qkv")
                      + f"        .attn_threshold = {attn_theta},\n"
                      + "".join(f"        .{k} = {fields[k]},\n" for k in ("proj", "fc1", "fc2"))
                      + "    }")
    hw = tensors["head.weight"]
    head_w = e.ident("head.weight")
    e.parts.append(_c_array("int8_t", head_w, hw.shape, _ints(hw), 16,
                            f"head.weight: int8 {list(hw.shape)}"))
    e.const_bytes += hw.size
    head_b = e.int32("head.bias")
    if blocks:
        e.parts.append(f"static const bsvit_block {name}_blocks[{cfg.depth}] = {{\n"
                       + ",\n".join(blocks) + "\n};\n")
        blocks_ref = f"{name}_blocks"
    else:
        blocks_ref = "NULL"
    plan_text = "".join(f"        .{r} = {{ {o}u, {b}u }},\n" for r, (o, b) in plan.items())
    model = (
        f"const bsvit_model {name}_model = {{\n"
        "    .magic = BSVIT_MODEL_MAGIC,\n"
        "    .abi_version = BSVIT_ABI_VERSION,\n"
        "    .opset = BSVIT_OPSET,\n"
        f"    .height = {cfg.height}, .width = {cfg.width}, .in_chans = {cfg.in_chans}, "
        f".patch_size = {cfg.patch_size},\n"
        f"    .grid_h = {cfg.grid[0]}, .grid_w = {cfg.grid[1]}, .tokens = {cfg.num_tokens}, "
        f".patch_dim = {cfg.patch_dim},\n"
        f"    .dim = {cfg.embed_dim}, .heads = {cfg.num_heads}, .head_dim = {cfg.head_dim}, "
        f".mlp_dim = {cfg.mlp_hidden}, .classes = {cfg.num_classes},\n"
        f"    .window = {cfg.adjacency_window or 0},\n"
        f"    .depth = {cfg.depth}, .timesteps = {cfg.timesteps}, "
        f".burst_max = {cfg.burst_max},\n"
        f"    .leak_shift = {LEAK_NONE if cfg.leak_shift is None else cfg.leak_shift},\n"
        f"    .embed = {embed},\n"
        f"    .blocks = {blocks_ref},\n"
        f"    .head_weight = {head_w},\n"
        f"    .head_bias = {head_b},\n"
        f"    .arena_bytes = {arena}u,\n"
        "    .plan = {\n" + plan_text + "    },\n"
        "};\n")
    # The .h and .c are written one after the other; if a run was interrupted between
    # them, refuse to compile a header and weights from different models.
    pair_check = (f"#if {name.upper()}_MODEL_SOURCE_CRC32 != 0x{crc:08x}u\n"
                  f"#error \"{hname} and {name}_model.c come from different models (an "
                  "interrupted bsvit-firmware?): run it again\"\n#endif\n\n")
    text = (f"{banner}\n#include \"{hname}\"\n\n" + pair_check
            + "\n".join(e.parts) + "\n" + model)
    return text, e.const_bytes


def _banner(source: str, sha: str) -> str:
    return (f"/* Generated by {GENERATOR} from {source} (sha256 {sha}).\n"
            " * Do not edit: regenerate with `bsvit-firmware`. */")


def _model_h(name: str, cfg: BSViTConfig, meta: dict, arena: int, const_bytes: int,
             sha: str, crc: int, banner: str) -> str:
    up = name.upper()
    guard = f"{up}_MODEL_H"
    defines = [
        ("MODEL_OPSET", spec.OPSET, "docs/integer-spec.md op-set"),
        ("MODEL_BSI_VERSION", BSI_VERSION, ".bsi format version of the source"),
        ("MODEL_GENERATOR", f'"{GENERATOR}"', None),
        ("MODEL_SOURCE_SHA256", f'"{sha}"', "SHA-256 of the source .bsi"),
        ("MODEL_SOURCE_CRC32", f"0x{crc:08x}u", "CRC-32 (zlib) of the source .bsi"),
        ("IMG_HEIGHT", cfg.height, None), ("IMG_WIDTH", cfg.width, None),
        ("IN_CHANS", cfg.in_chans, None),
        ("INPUT_BYTES", cfg.height * cfg.width * cfg.in_chans,
         "uint8 [height][width][in_chans] raw pixels"),
        ("PATCH_SIZE", cfg.patch_size, None), ("NUM_TOKENS", cfg.num_tokens, None),
        ("EMBED_DIM", cfg.embed_dim, None), ("DEPTH", cfg.depth, None),
        ("NUM_HEADS", cfg.num_heads, None), ("MLP_HIDDEN", cfg.mlp_hidden, None),
        ("WINDOW", cfg.adjacency_window or 0, "0: global attention"),
        ("BURST_MAX", cfg.burst_max, None), ("TIMESTEPS", cfg.timesteps, None),
        ("LEAK_SHIFT", LEAK_NONE if cfg.leak_shift is None else cfg.leak_shift,
         "255: integrate-and-fire"),
        ("ATTN_THRESHOLD", cfg.attn_threshold, None),
        ("NUM_CLASSES", cfg.num_classes, "int32 logits, one scale: argmax is the class"),
        ("ARENA_BYTES", f"{arena}u", "bsvit_infer's arena, planned offline"),
        ("CONST_BYTES", f"{const_bytes}u", "flash taken by the model's const arrays"),
    ]
    lines = [banner, f"#ifndef {guard}", f"#define {guard}", "", '#include "bsvit.h"', "",
             f"#if BSVIT_ABI_VERSION != {ABI_VERSION} || BSVIT_OPSET != {spec.OPSET}",
             f'#error "{name}_model.h needs bsvit.h ABI {ABI_VERSION}, op-set {spec.OPSET}: '
             'regenerate with the matching bsvit-firmware"',
             "#endif", ""]
    for key, value, comment in defines:
        line = f"#define {up}_{key} {value}"
        lines.append(f"{line:<60} /* {comment} */" if comment else line)
    scale = meta.get("logit_scale")
    lines += ["",
              f"/* float logit = int logit * {float(scale)!r} / {cfg.timesteps * cfg.num_tokens}",
              " * (logit_scale / (T * N)); never needed on the device: argmax of the int32",
              " * logits is the prediction. */",
              f"extern const bsvit_model {name}_model;", "", f"#endif /* {guard} */", ""]
    return "\n".join(lines)


def emit_firmware(bsi_path, outdir, name: Optional[str] = None, *,
                  copy_runtime: bool = True) -> dict:
    """Write `<name>_model.h`, `<name>_model.c` (and the runtime) for a `.bsi` into `outdir`.

    name: C prefix (default from the file name). Raises BsiFormatError for a malformed or
    invalid model, FirmwareError for one the C runtime cannot hold; nothing is written then.
    Returns {"name", "files", "arena_bytes", "const_bytes", "plan", "config"}.
    """
    bsi_path = os.fspath(bsi_path)
    name = check_name(name if name is not None else default_name(bsi_path))
    # One read: the bytes hashed into the header are exactly the bytes validated.
    if not stat.S_ISREG(os.stat(bsi_path).st_mode):
        raise BsiFormatError(f"{bsi_path}: not a regular file")
    raw = Path(bsi_path).read_bytes()
    bsi = from_bytes(raw)
    cfg, shifts = validate_model(bsi)
    plan, arena = plan_arena(cfg)
    _check_sizes(cfg, arena)
    sha = hashlib.sha256(raw).hexdigest()
    crc = zlib.crc32(raw)
    banner = _banner(os.path.basename(bsi_path), sha)
    hname = f"{name}_model.h"
    c_text, const_bytes = _model_c(name, hname, cfg, bsi.tensors, shifts, plan, arena, banner,
                                   crc)
    h_text = _model_h(name, cfg, bsi.metadata, arena, const_bytes, sha, crc, banner)
    outputs = {hname: h_text.encode("ascii"), f"{name}_model.c": c_text.encode("ascii")}
    if copy_runtime:
        src = runtime_dir()
        for f in RUNTIME_FILES:
            outputs[f] = (src / f).read_bytes()
    os.makedirs(outdir, exist_ok=True)
    files = []
    for fname, data in outputs.items():
        path = os.path.join(os.fspath(outdir), fname)
        atomic_write_bytes(path, data)
        files.append(path)
    return {"name": name, "files": files, "arena_bytes": arena, "const_bytes": const_bytes,
            "plan": plan, "config": cfg.to_dict(), "source_sha256": sha}


def emit_test_vectors(path, model_name: str, images: np.ndarray, logits: np.ndarray) -> None:
    """Write a C header of golden vectors for the board target: `test_images` (uint8
    [count][input bytes]) and `test_expected` (int32 [count][classes], from the oracle)."""
    model_name = check_name(model_name)
    images = np.ascontiguousarray(images, dtype=np.uint8)
    logits = np.asarray(logits)
    if logits.dtype != np.int32 or logits.ndim != 2 or logits.shape[0] != images.shape[0]:
        raise FirmwareError(f"logits must be int32 [count, classes] for {images.shape[0]} "
                            f"images, got {logits.dtype}{list(logits.shape)}")
    n = images.shape[0]
    flat = images.reshape(n, -1)
    up = model_name.upper()
    text = "\n".join([
        f"/* Golden vectors generated by {GENERATOR}: {n} images and the logits the NumPy",
        " * oracle (bsvit_int.oracle) computes for them. Do not edit. */",
        "#ifndef BSVIT_TEST_VECTORS_H", "#define BSVIT_TEST_VECTORS_H", "",
        f'#include "{model_name}_model.h"', "",
        f"#define TEST_MODEL {model_name}_model",
        f"#define TEST_ARENA_BYTES {up}_ARENA_BYTES",
        f"#define TEST_COUNT {n}",
        f"#define TEST_INPUT_BYTES {flat.shape[1]}",
        f"#define TEST_CLASSES {logits.shape[1]}", "",
        f"#if TEST_INPUT_BYTES != {up}_INPUT_BYTES || TEST_CLASSES != {up}_NUM_CLASSES",
        '#error "test vectors do not match the model"', "#endif", "",
        f"static const uint8_t test_images[{n}][{flat.shape[1]}] = {{",
        ",\n".join("    { " + ", ".join(str(int(v)) for v in row) + " }" for row in flat),
        "};", "",
        f"static const int32_t test_expected[{n}][{logits.shape[1]}] = {{",
        ",\n".join("    { " + ", ".join(_c_int(int(v)) for v in row) + " }" for row in logits),
        "};", "", "#endif", ""])
    atomic_write_bytes(path, text.encode("ascii"))
