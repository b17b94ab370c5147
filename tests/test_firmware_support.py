"""Shared helpers of the firmware tests (no tests here): host builds of the C runtime,
parsing the harness's output, integer models drawn at random, and tool detection that
fails rather than skips under CI.

The host harness (firmware/host/harness.c) prints "L <i> <logits...>" per image and, when
built with -DBSVIT_TRACE, "S <layer> <block> <step> <token> <spikes...>" for every neuron
layer, so a mismatch is reported at the first differing layer, not only at the logits.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import pytest

from bsvit_int import spec
from bsvit_int.config import BSViTConfig
from bsvit_int.container import write_bsi

REPO = Path(__file__).resolve().parent.parent
RUNTIME = REPO / "firmware" / "runtime"
HARNESS = REPO / "firmware" / "host" / "harness.c"
CC = os.environ.get("CC", "gcc")
# The flags the issue asks for, plus -pedantic: the runtime is plain C99.
STRICT = ["-std=c99", "-Wall", "-Wextra", "-Wconversion", "-Werror", "-pedantic"]
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all",
            "-fno-omit-frame-pointer", "-g"]
STATUS_EXIT_BASE = 10      # harness exit code = 10 + bsvit_status


def load_footprint_tool():
    """firmware/tools/footprint.py as a module (the MCU tests reuse its build helpers)."""
    path = REPO / "firmware" / "tools" / "footprint.py"
    spec_ = importlib.util.spec_from_file_location("bsvit_footprint", path)
    module = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(module)
    return module


def require_tools(*tools: str) -> None:
    """Skip when a tool is missing, but fail under CI (the CI installs all of them)."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        msg = (f"missing {', '.join(missing)}: apt-get install -y --no-install-recommends "
               "gcc gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm")
        if os.environ.get("CI"):
            pytest.fail(msg + " (CI is set: the toolchain must be there)")
        pytest.skip(msg)


def run(cmd, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))}\n{r.stdout[-4000:]}{r.stderr[-4000:]}"
    return r


# --------------------------------------------------------------------------- host builds

class HostBuild:
    """The runtime compiled once per flag set; each model adds its .c and the harness."""

    def __init__(self, workdir: Path, flags=("-O2",), trace: bool = False):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.flags = list(STRICT) + list(flags) + (["-DBSVIT_TRACE"] if trace else [])
        self.runtime_o = self.dir / "bsvit.o"
        run([CC, *self.flags, "-I", RUNTIME, "-c", RUNTIME / "bsvit.c", "-o", self.runtime_o])

    def link(self, model_dir: Path, name: str) -> Path:
        exe = Path(model_dir) / f"harness-{name}"
        run([CC, *self.flags, "-I", RUNTIME, "-I", model_dir, f"-DBSVIT_MODEL={name}_model",
             HARNESS, Path(model_dir) / f"{name}_model.c", self.runtime_o, "-o", exe])
        return exe


def run_harness(exe: Path, images: np.ndarray, *args, workdir: Optional[Path] = None
                ) -> subprocess.CompletedProcess:
    workdir = Path(workdir or exe.parent)
    path = workdir / "images.bin"
    path.write_bytes(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
    return subprocess.run([str(exe), str(path), *map(str, args)], capture_output=True,
                          text=True, timeout=600)


def parse_output(text: str, cfg: BSViTConfig, batch: int
                 ) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """(logits int64 [B, classes], spikes {layer: int8 [B, T, N, C]}) from harness output."""
    widths = {layer.name: layer.cout for layer in spec.layers(cfg)}
    spikes = {name: np.full((batch, cfg.timesteps, cfg.num_tokens, c), -128, dtype=np.int8)
              for name, c in widths.items()}
    logits = []
    image = 0
    for line in text.splitlines():
        p = line.split()
        if p[0] == "S":
            name = p[1] if p[1] == "embed" else f"blocks.{p[2]}.{p[1]}"
            spikes[name][image, int(p[3]), int(p[4])] = np.array(p[5:], dtype=np.int64)
        elif p[0] == "L":
            assert int(p[1]) == image
            logits.append([int(v) for v in p[2:]])
            image += 1
    return np.array(logits, dtype=np.int64).reshape(len(logits), -1), spikes


def first_difference(want: np.ndarray, got: np.ndarray):
    if want.shape != got.shape:
        return ("shape", want.shape, got.shape)
    diff = np.argwhere(want != got)
    if diff.size == 0:
        return None
    idx = tuple(int(i) for i in diff[0])
    return idx, want[idx].item(), got[idx].item()


def assert_same_as_oracle(cfg: BSViTConfig, record: dict, want_logits: np.ndarray,
                          got_logits: np.ndarray, got_spikes: Optional[dict] = None) -> None:
    """Spikes first, in execution order (the first layer that differs is the one named),
    then the logits; no tolerance anywhere."""
    if got_spikes is not None:
        for layer in spec.layers(cfg):
            d = first_difference(record[layer.name], got_spikes[layer.name])
            assert d is None, (f"layer '{layer.name}': C spikes differ from the oracle first "
                               f"at [image, step, token, channel] {d[0]}: oracle={d[1]}, "
                               f"C={d[2]}")
    d = first_difference(want_logits.astype(np.int64), got_logits)
    assert d is None, (f"logits differ from the oracle first at [image, class] {d[0]}: "
                       f"oracle={d[1]}, C={d[2]}")


# --------------------------------------------------------------------------- integer models

def integer_model_images(cfg: BSViTConfig, batch: int, seed: int, kind: str) -> np.ndarray:
    """uint8 images [batch, H, W, C] for the random integer models: "uniform" pixels,
    "extremes" (0 or 255 only) or "constant" (one value per image)."""
    rng = np.random.default_rng(seed)
    shape = (batch, cfg.height, cfg.width, cfg.in_chans)
    if kind == "extremes":
        return (rng.integers(0, 2, shape) * 255).astype(np.uint8)
    if kind == "constant":
        return np.broadcast_to(rng.integers(0, 256, (batch, 1, 1, 1)), shape).astype(np.uint8)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def random_integer_model(cfg: BSViTConfig, seed: int, weight_max: int = 127,
                         theta_scale: float = 1.0, max_shift: int = 2
                         ) -> Tuple[Dict[str, np.ndarray], Dict[str, int]]:
    """An integer model drawn directly (no converter): weights in [-weight_max, weight_max]
    with some zeros, thresholds near the typical current (times theta_scale, down to 1),
    biases of both signs, random shifts. Small weights and thresholds make v == theta,
    v == -theta, Bmax clamping and negative leak floors frequent."""
    rng = np.random.default_rng(seed)
    tensors: Dict[str, np.ndarray] = {}
    shifts: Dict[str, int] = {}
    for layer in spec.layers(cfg):
        n = layer.name
        if layer.cin:
            shift = int(rng.integers(0, max_shift + 1))
            shifts[n] = shift
            w = rng.integers(-weight_max, weight_max + 1, (layer.cin, layer.cout))
            w[rng.random(w.shape) < 0.3] = 0
            typical_x = 128.0 if n == "embed" else 1.0
            typical = max(1.0, typical_x * np.sqrt(layer.cin) * max(weight_max, 1) / 2
                          ) * 2.0**shift
            bshape = (cfg.num_tokens, layer.cout) if n == "embed" else (layer.cout,)
            bias = np.round(rng.normal(0.2, 0.6, bshape) * typical)
            theta = np.round(rng.uniform(0.2, 1.2, layer.cout) * typical * theta_scale)
            tensors[n + ".weight"] = w.astype(np.int8)
            tensors[n + ".bias"] = bias.astype(np.int32)
        else:
            shifts[n] = 0
            theta = rng.integers(1, 3 * cfg.head_dim + 2, layer.cout) * theta_scale
        tensors[n + ".threshold"] = np.maximum(1, np.round(theta)).astype(np.int32)
    tensors["head.weight"] = rng.integers(-127, 128, (cfg.embed_dim, cfg.num_classes)
                                          ).astype(np.int8)
    tensors["head.bias"] = rng.integers(-1000, 1001, cfg.num_classes).astype(np.int32)
    spec.model_bounds(cfg, tensors, shifts)      # ValueError if a bound fails
    return tensors, shifts


def write_integer_model(path: Path, cfg: BSViTConfig, tensors, shifts) -> Path:
    metadata = {"format": spec.FORMAT, "opset": spec.OPSET, "config": cfg.to_dict(),
                "layers": {k: {"shift": v} for k, v in shifts.items()}, "logit_scale": 1.0}
    table = spec.tensor_table(cfg)
    write_bsi(path, metadata, {name: tensors[name] for name in table})
    return path


def digits_bsi(tmp_dir: Path) -> Path:
    """The digits model as .bsi: the bundled checkpoint converted, or BSVIT_DIGITS_BSI.
    Missing both: skip, or fail under CI (the bundled model ships with the package)."""
    from bsvit_int.cli import BUNDLED
    ckpt = Path(BUNDLED) / "digits.pt"
    if ckpt.is_file():
        from bsvit_int.converters import convert
        dst = Path(tmp_dir) / "digits.bsi"
        convert(ckpt, dst, eval_data=None)
        return dst
    env = os.environ.get("BSVIT_DIGITS_BSI")
    if env and Path(env).is_file():
        return Path(env)
    msg = f"{ckpt} is missing and BSVIT_DIGITS_BSI is not set"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)
