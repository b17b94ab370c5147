#!/usr/bin/env python3
"""Footprint and cost of bsvit-int firmware on a Cortex-M4 (mps2-an386 under QEMU).

    python firmware/tools/footprint.py [--digits MODEL.bsi] [--images 20] [--json OUT]

For the digits model and an MCU-size CIFAR-shape model (CIFAR_CONFIG below) it emits the
firmware, builds the board target (firmware/boards/mps2-an386, arm-none-eabi-gcc -O2,
-mfloat-abi=soft), runs held-out images under qemu-system-arm, checks every logit against
the NumPy oracle, and reports

* flash: runtime code (bsvit.o) and model constants (NAME_model.o), and the whole image
  without the golden vectors; RAM: data, bss, the arena and the stack (reserved and the
  measured high-water mark);
* executed instructions per inference, counted exactly by a QEMU TCG plugin
  (firmware/tools/insn_count.c) between two marker functions around bsvit_infer, and the
  milliseconds they take at 120 MHz assuming 1.3 cycles per instruction, next to MLPerf
  Tiny image classification on a Cortex-M4 at 120 MHz (ResNet-8, CIFAR-10: 704 ms with
  TFLM reference kernels, 173 ms best optimised).

The plugin needs QEMU's qemu-plugin.h (GPL-2.0-or-later), which Debian ships only in the
qemu source package: it is fetched once with apt-get (a private apt configuration with
deb-src lines, no change to the system's) into ~/.cache/bsvit-int (override with
BSVIT_CACHE) and compiled there; it is never copied into this repository.

Needs: arm-none-eabi-gcc, libnewlib-arm-none-eabi, qemu-system-arm, gcc, apt-get
(Debian 12), and bsvit_int with its `convert` extra (torch) for the models.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

HERE = Path(__file__).resolve().parent
FIRMWARE = HERE.parent
BOARD = FIRMWARE / "boards" / "mps2-an386"
PLUGIN_SOURCE = HERE / "insn_count.c"

MHZ = 120
CYCLES_PER_INSTRUCTION = 1.3
MLPERF_TINY_MS = {"TFLM reference kernels": 704, "best optimised": 173}

# The MCU-size CIFAR-shape model: 32x32x3 input, 4x4 patches (8x8 = 64 tokens), D = 64,
# three blocks of 4 heads, MLP x1.5 (96), 3x3 windows, Bmax 4, T 4: 89,728 int8 weights
# (87.6 KB), about 117 KB of constants with the int32 biases and thresholds.
CIFAR_CONFIG = dict(img_size=32, in_chans=3, patch_size=4, embed_dim=64, depth=3,
                    num_heads=4, mlp_ratio=1.5, adjacency_window=3, burst_max=4,
                    timesteps=4, num_classes=10)
CIFAR_SEED = 0
# The stand-in has random weights, so its activity is not a trained model's. Two points:
# BatchNorm bias ~ N(0.3, 0.5) fires densely (mean spike rate 0.45, counts ~2); N(-0.3, 0.5)
# fires about like the trained digits model (mean rate 0.30 vs 0.34, counts 1.6 vs 1.5).
CIFAR_VARIANTS = {"cifar_shape": 0.3, "cifar_shape_sparse": -0.3}

QEMU_CMD = ["qemu-system-arm", "-M", "mps2-an386", "-cpu", "cortex-m4", "-nographic",
            "-monitor", "none", "-semihosting-config", "enable=on,target=native"]
TOOLS = ("arm-none-eabi-gcc", "arm-none-eabi-nm", "arm-none-eabi-size", "qemu-system-arm",
         "make")
# Soft-float and double helpers of libgcc (ARM EABI names and generic names).
FLOAT_HELPER = re.compile(r"^(__aeabi_[fd]\w*|__aeabi_[il]2[fd]|__aeabi_ui2[fd]|"
                          r"__(add|sub|mul|div|neg|cmp|eq|ne|lt|le|gt|ge|unord)[sdtx]f[23]|"
                          r"__float\w+|__fix\w+|__extend\w+|__trunc\w+|__pow[sdx]f2)$")


class ToolError(RuntimeError):
    """A build or run step failed; the message carries its output."""


def missing_tools() -> List[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise ToolError(f"{' '.join(map(str, cmd))} failed ({r.returncode}):\n"
                        f"{r.stdout[-3000:]}{r.stderr[-3000:]}")
    return r


# --------------------------------------------------------------------------- board build

def write_vectors(model_dir: Path, name: str, bsi: Path, images: np.ndarray) -> np.ndarray:
    """Golden vectors (the oracle's logits) for `images`; returns those logits."""
    import bsvit_int
    from bsvit_int.firmware import emit_test_vectors
    logits = bsvit_int.load(bsi).predict(images)
    emit_test_vectors(model_dir / "test_vectors.h", name, images, logits)
    return logits


def build_board(model_dir: Path, name: str, build_dir: Path, opt: str = "-O2",
                stack: int = 0x800) -> Path:
    """make the board image for a generated model with test_vectors.h in model_dir."""
    _run(["make", "-s", "-C", str(BOARD), f"MODEL_DIR={model_dir}", f"MODEL={name}",
          f"VECTORS={model_dir / 'test_vectors.h'}", f"BUILD={build_dir}", f"OPT={opt}",
          f"STACK_SIZE={stack:#x}"], timeout=600)
    return build_dir / "bsvit-test.elf"


def run_qemu(elf: Path, plugin: Optional[Path] = None, counts: Optional[Path] = None,
             timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the image; semihosting output (SYS_WRITE0) arrives on stderr."""
    cmd = QEMU_CMD + ["-kernel", str(elf)]
    if plugin is not None:
        syms = symbols(elf)
        cmd += ["-plugin", f"{plugin},begin={syms['bsvit_mark_begin'][0]:#x},"
                           f"end={syms['bsvit_mark_end'][0]:#x},out={counts}"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def parse_logits(text: str) -> np.ndarray:
    rows = [[int(v) for v in line.split()[2:] if v != "MISMATCH"]
            for line in text.splitlines() if line.startswith("L ")]
    return np.array(rows, dtype=np.int64)


def symbols(elf: Path) -> Dict[str, tuple]:
    """name -> (address, size, type) of the defined symbols."""
    out = _run(["arm-none-eabi-nm", "-S", "--defined-only", str(elf)]).stdout
    syms = {}
    for line in out.splitlines():
        p = line.split()
        if len(p) == 4:
            syms[p[3]] = (int(p[0], 16), int(p[1], 16), p[2])
        elif len(p) == 3:
            syms[p[2]] = (int(p[0], 16), 0, p[1])
    return syms


def float_helpers(elf: Path) -> List[str]:
    """Every soft-float/double helper symbol in the image (defined or not)."""
    out = _run(["arm-none-eabi-nm", str(elf)]).stdout
    return sorted({line.split()[-1] for line in out.splitlines()
                   if line.split() and FLOAT_HELPER.match(line.split()[-1])})


def berkeley_size(path: Path) -> Dict[str, int]:
    out = _run(["arm-none-eabi-size", str(path)]).stdout.splitlines()[1].split()
    return {"text": int(out[0]), "data": int(out[1]), "bss": int(out[2])}


def footprint(build_dir: Path, name: str, stack_used: Optional[int]) -> dict:
    elf = build_dir / "bsvit-test.elf"
    syms = symbols(elf)
    whole = berkeley_size(elf)
    runtime = berkeley_size(build_dir / "bsvit.o")
    model = berkeley_size(build_dir / f"{name}_model.o")
    vectors = syms["test_images"][1] + syms["test_expected"][1]
    arena = syms["arena"][1]
    stack = syms["_stack_top"][0] - syms["_stack_bottom"][0]
    flash = whole["text"] + whole["data"] - vectors
    bss = whole["bss"] - arena - stack
    ram = whole["data"] + bss + arena + stack
    return {
        "flash_runtime": runtime["text"] + runtime["data"],
        "flash_model": model["text"] + model["data"],
        "flash_image_without_vectors": flash,
        "ram_data": whole["data"], "ram_bss_other": bss, "ram_arena": arena,
        "ram_stack_reserved": stack, "ram_stack_used": stack_used,
        "ram_total": ram,
    }


# --------------------------------------------------------------------------- the plugin

def cache_dir() -> Path:
    return Path(os.environ.get("BSVIT_CACHE", Path.home() / ".cache" / "bsvit-int"))


def qemu_source_version() -> str:
    r = _run(["dpkg-query", "-W", "-f=${source:Version}", "qemu-system-arm"])
    return r.stdout.strip()


def plugin_header(cache: Path) -> Path:
    """qemu-plugin.h of the installed QEMU, from Debian's source package (fetched once)."""
    version = qemu_source_version()
    dest = cache / f"qemu-{version.replace(':', '_')}" / "qemu-plugin.h"
    if dest.is_file():
        return dest
    work = Path(tempfile.mkdtemp(prefix="qemu-src-", dir=cache if cache.exists() else None))
    try:
        for d in ("lists/partial", "archives/partial", "dl"):
            (work / d).mkdir(parents=True, exist_ok=True)
        keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
        (work / "sources.list").write_text("".join(
            f"deb-src [signed-by={keyring}] http://deb.debian.org/{repo} {suite} main\n"
            for repo, suite in (("debian", "bookworm"), ("debian", "bookworm-updates"),
                                ("debian-security", "bookworm-security"))))
        apt = ["apt-get", "-q", "-o", f"Dir::Etc::SourceList={work / 'sources.list'}",
               "-o", "Dir::Etc::SourceParts=/dev/null", "-o", f"Dir::State::Lists={work / 'lists'}",
               "-o", f"Dir::Cache::Archives={work / 'archives'}", "-o", "Debug::NoLocking=1",
               "-o", "APT::Sandbox::User=root"]
        _run(apt + ["update"], timeout=600)
        _run(apt + ["source", "--download-only", f"qemu={version}"], cwd=work / "dl",
             timeout=600)
        tarball = next((work / "dl").glob("qemu_*.orig.tar.*"))
        member = _run(["tar", "-tf", str(tarball)]).stdout.split()
        member = next(m for m in member if m.endswith("include/qemu/qemu-plugin.h"))
        _run(["tar", "-xf", str(tarball), "-C", str(work), member])
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(work / member, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest


def build_plugin(cache: Optional[Path] = None) -> Path:
    cache = cache or cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    header = plugin_header(cache)
    so = header.parent / "libinsn_count.so"
    if not so.is_file() or so.stat().st_mtime < PLUGIN_SOURCE.stat().st_mtime:
        _run(["gcc", "-O2", "-shared", "-fPIC", "-Wall", "-Wextra", "-I", str(header.parent),
              str(PLUGIN_SOURCE), "-o", str(so)])
    return so


def instruction_counts(path: Path) -> List[int]:
    return [int(line.split()[2]) for line in path.read_text().splitlines()
            if line.startswith("window ")]


# --------------------------------------------------------------------------- models

def digits_images(n: int) -> np.ndarray:
    from bsvit_int.converters import data
    return data.digits()["test"][0][:n]


def cifar_shape_images(n: int) -> np.ndarray:
    """Held-out digits scaled 4x to 32x32, as three channels (x, 255 - x, x / 2): real,
    structured images of the CIFAR shape (no CIFAR data ships with the package)."""
    x = digits_images(n)
    big = np.repeat(np.repeat(x, 4, axis=1), 4, axis=2)
    return np.concatenate([big, 255 - big, big // 2], axis=3).astype(np.uint8)


def make_cifar_shape_model(dst: Path, bias_mean: float = 0.3) -> Path:
    """The CIFAR_CONFIG model with seeded random weights and BatchNorm statistics (there
    is no trained one): a stand-in for footprint and cost; accuracy is meaningless.
    bias_mean sets how densely it fires (CIFAR_VARIANTS)."""
    import torch
    from bsvit_int.converters import BSViT, BSViTConfig, convert
    torch.manual_seed(CIFAR_SEED)
    model = BSViT(BSViTConfig(**CIFAR_CONFIG))
    g = torch.Generator().manual_seed(CIFAR_SEED + 1)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm1d):
                n = mod.num_features
                mod.running_mean.copy_(torch.randn(n, generator=g))
                mod.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)
                mod.weight.copy_(torch.randn(n, generator=g) * 0.5 + 1)
                mod.bias.copy_(torch.randn(n, generator=g) * 0.5 + bias_mean)
        model.embed.mean.copy_(torch.tensor([125.3, 123.0, 113.9]))
        model.embed.std.copy_(torch.tensor([63.0, 62.1, 66.7]))
    pt = dst.with_suffix(".pt")
    model.eval().save(pt)
    convert(pt, dst, eval_data=None)
    return dst


def bundled_digits_model(dst: Path) -> Path:
    from bsvit_int.cli import BUNDLED
    from bsvit_int.converters import convert
    src = Path(BUNDLED) / "digits.pt"
    if not src.is_file():
        raise ToolError(f"{src} is missing: pass --digits MODEL.bsi")
    convert(src, dst, eval_data=None)
    return dst


def activity(bsi: Path, images: np.ndarray) -> dict:
    """Spike rates, and the synaptic additions the runtime performs per image: for every
    linear layer, popcount of each input count (one row addition per set bit of a
    bit-plane) times the layer's outputs; beside it the dense MACs of the same layers."""
    import bsvit_int
    from bsvit_int import oracle
    model = bsvit_int.load(bsi)
    cfg = model.config
    rec: dict = {}
    model.predict(images, record=rec)

    def adds(counts: np.ndarray, cout: int) -> int:
        c = counts.astype(np.int64)
        return int(sum(((c >> b) & 1).sum() for b in range(8))) * cout

    d, dm, b = cfg.embed_dim, cfg.mlp_hidden, len(images)
    total = adds(oracle.patches(images, cfg.patch_size), d)
    dense = cfg.num_tokens * cfg.patch_dim * d
    x = rec["embed"].astype(np.int64)
    for l in range(cfg.depth):
        p = f"blocks.{l}."
        total += 3 * adds(x, d) + adds(rec[p + "attn"], d)
        x = x + rec[p + "attn.proj"]
        total += adds(x, dm) + adds(rec[p + "mlp.fc1"], d)
        x = x + rec[p + "mlp.fc2"]
        dense += cfg.timesteps * cfg.num_tokens * (4 * d * d + 2 * d * dm)
    rates = np.array([np.mean(v != 0) for v in rec.values()])
    nonzero = np.concatenate([np.abs(v[v != 0]) for v in rec.values()] + [np.zeros(0)])
    return {"spike_rate_mean": float(rates.mean()), "spike_rate_min": float(rates.min()),
            "spike_rate_max": float(rates.max()),
            "spike_count_mean": float(nonzero.mean()) if nonzero.size else 0.0,
            "synaptic_adds": total / b, "dense_macs": dense}


# --------------------------------------------------------------------------- measuring

def measure(bsi: Path, name: str, images: np.ndarray, work: Path, plugin: Path,
            opt: str = "-O2") -> dict:
    from bsvit_int.firmware import emit_firmware
    model_dir, build_dir = work / name, work / f"build-{name}"
    shutil.rmtree(build_dir, ignore_errors=True)
    emitted = emit_firmware(bsi, model_dir, name=name)
    want = write_vectors(model_dir, name, bsi, images)
    elf = build_board(model_dir, name, build_dir, opt=opt)
    counts_path = work / f"{name}-counts.txt"
    r = run_qemu(elf, plugin=plugin, counts=counts_path)
    text = r.stdout + r.stderr
    got = parse_logits(text)
    used = re.search(r"stack_used (\d+)", text)
    counts = instruction_counts(counts_path)
    mean = float(np.mean(counts)) if counts else float("nan")
    result = {
        "model": name, "config": emitted["config"], "images": int(len(images)),
        "qemu_exit": r.returncode,
        "mismatches": int(np.sum(np.any(got != want, axis=1))) if got.shape == want.shape
        else None,
        "float_helpers": float_helpers(elf),
        "footprint": footprint(build_dir, name, int(used.group(1)) if used else None),
        "int8_weight_bytes": int(sum(np.prod(s) for n, s in _weight_shapes(emitted))),
        "const_bytes": emitted["const_bytes"],
        "instructions_mean": mean, "instructions_min": min(counts, default=0),
        "instructions_max": max(counts, default=0),
        "ms_at_120MHz": mean * CYCLES_PER_INSTRUCTION / (MHZ * 1e3),
        "activity": activity(bsi, images[:8]),
        "opt": opt,
    }
    return result


def _weight_shapes(emitted: dict):
    from bsvit_int import spec
    from bsvit_int.config import BSViTConfig
    cfg = BSViTConfig.from_dict(emitted["config"])
    return [(n, shape) for n, (dtype, shape) in spec.tensor_table(cfg).items()
            if n.endswith(".weight")]


def report(results: List[dict]) -> str:
    lines = []
    for r in results:
        f = r["footprint"]
        c = r["config"]
        a = r["activity"]
        lines += [
            f"== {r['model']}: {c['img_size'][0]}x{c['img_size'][1]}x{c['in_chans']}, "
            f"patch {c['patch_size']}, D {c['embed_dim']}, depth {c['depth']}, "
            f"heads {c['num_heads']}, mlp x{c['mlp_ratio']}, window {c['adjacency_window']}, "
            f"Bmax {c['burst_max']}, T {c['timesteps']}",
            f"  exact: {r['images'] - (r['mismatches'] or 0)}/{r['images']} images equal the "
            f"NumPy oracle (mismatches {r['mismatches']}, qemu exit {r['qemu_exit']}); "
            f"float helpers linked: {r['float_helpers'] or 'none'}",
            f"  flash: runtime {f['flash_runtime']} B + model {f['flash_model']} B "
            f"= {f['flash_runtime'] + f['flash_model']} B "
            f"({(f['flash_runtime'] + f['flash_model']) / 1024:.1f} KB); whole test image "
            f"without golden vectors {f['flash_image_without_vectors']} B "
            f"(int8 weights {r['int8_weight_bytes']} B, all constants {r['const_bytes']} B)",
            f"  RAM: data {f['ram_data']} + bss {f['ram_bss_other']} + arena {f['ram_arena']} "
            f"+ stack {f['ram_stack_reserved']} (used {f['ram_stack_used']}) "
            f"= {f['ram_total']} B ({f['ram_total'] / 1024:.1f} KB)",
            f"  instructions per inference ({r['opt']}): mean {r['instructions_mean']:,.0f} "
            f"(min {r['instructions_min']:,}, max {r['instructions_max']:,}) -> "
            f"{r['ms_at_120MHz']:.1f} ms at {MHZ} MHz, {CYCLES_PER_INSTRUCTION} cycles/instr",
            "  vs MLPerf Tiny ResNet-8 on a Cortex-M4 at 120 MHz: "
            + ", ".join(f"{k} {v} ms ({v / r['ms_at_120MHz']:.1f}x)"
                        for k, v in MLPERF_TINY_MS.items()),
            f"  activity: spike rate {a['spike_rate_mean']:.2f} (layers {a['spike_rate_min']:.2f}"
            f"..{a['spike_rate_max']:.2f}), mean nonzero count {a['spike_count_mean']:.2f}; "
            f"{a['synaptic_adds'] / 1e6:.2f} M synaptic additions per image "
            f"({r['instructions_mean'] / a['synaptic_adds']:.2f} instructions each, all "
            f"overheads included; dense equivalent {a['dense_macs'] / 1e6:.2f} M MACs)",
        ]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--digits", type=Path,
                    help="digits model (.bsi); default: convert bsvit_int/models/digits.pt")
    ap.add_argument("--cifar", type=Path,
                    help="CIFAR-shape model (.bsi); default: build CIFAR_CONFIG, seeded, at "
                         "two activity levels (CIFAR_VARIANTS)")
    ap.add_argument("--images", type=int, default=20,
                    help="held-out images per model to run and check (default 20)")
    ap.add_argument("--opt", default="-O2", help="optimisation flags (default -O2)")
    ap.add_argument("--work", type=Path, help="build directory (default: a temporary one)")
    ap.add_argument("--json", type=Path, help="also write the results as JSON")
    args = ap.parse_args(argv)
    missing = missing_tools()
    if missing:
        print("footprint: missing " + ", ".join(missing) + " (apt-get install -y "
              "--no-install-recommends gcc-arm-none-eabi libnewlib-arm-none-eabi "
              "qemu-system-arm)", file=sys.stderr)
        return 1
    work = args.work or Path(tempfile.mkdtemp(prefix="bsvit-footprint-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        plugin = build_plugin()
        digits = args.digits or bundled_digits_model(work / "digits.bsi")
        results = [measure(digits, "digits", digits_images(args.images), work, plugin,
                           args.opt)]
        variants = {"cifar_shape": args.cifar} if args.cifar else CIFAR_VARIANTS
        for name, bias_mean in variants.items():
            bsi = args.cifar or make_cifar_shape_model(work / f"{name}.bsi", bias_mean)
            results.append(measure(bsi, name, cifar_shape_images(args.images), work, plugin,
                                   args.opt))
    except (ToolError, subprocess.TimeoutExpired) as e:
        print(f"footprint: {e}", file=sys.stderr)
        return 1
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    bad = [r["model"] for r in results if r["mismatches"] != 0 or r["qemu_exit"] != 0
           or r["float_helpers"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
