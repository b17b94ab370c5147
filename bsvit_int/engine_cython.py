"""The compiled backend: `bsvit_int.load(path, backend="cython", threads=N)`.

`CythonRunner` turns a validated model (bsvit_int.engine.validate_model has already checked
every tensor, value range and accumulator bound) into a `bsvit_int._kernels.Network` that
points into the model's own (memory-mapped) arrays, and runs it. Results equal the NumPy
oracle (bsvit_int.oracle.run) bit for bit, for any thread count and any kernels build.

Which build of the kernels runs ("variant": baseline, x86-64-v2/v3/v4) is decided once per
process by the CPU (see bsvit_int._kernels.default_variant; BSVIT_ISA overrides it).
"""
from __future__ import annotations

import os
from typing import Dict, Optional

import numpy as np

from . import spec
from .config import BSViTConfig

# OpenMP threads that finish a pass early spin at the barrier (libgomp: about 300,000
# iterations) before they sleep. When other processes share the cores, the spinning steals
# the time the last thread needs, and a 2-thread pass took 7-10x longer than 1 thread
# (measured on a busy 2-core machine); with a short spin the same runs matched or beat
# 1 thread. So, unless the user chose a policy, spin briefly. libgomp reads this when it
# is loaded, i.e. at the import below (not if another module loaded libgomp before).
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "10000"

try:
    from . import _kernels
    _IMPORT_ERROR: Optional[BaseException] = None
except ImportError as e:                    # not built (source checkout) or broken build
    _kernels = None
    _IMPORT_ERROR = e


def require_kernels():
    """The compiled kernels module, or ImportError saying how to get it."""
    if _kernels is None:
        raise ImportError(
            "backend='cython' needs the compiled kernels (bsvit_int._kernels), which failed "
            f"to import: {_IMPORT_ERROR}. Build them with `pip install .` (needs a C "
            "compiler and Cython), or use backend='numpy'.") from _IMPORT_ERROR
    return _kernels


def all_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def resolve_threads(threads) -> int:
    """threads: a positive int, or 0 / None for every core this process may use."""
    if threads is None or (isinstance(threads, int) and not isinstance(threads, bool)
                           and threads == 0):
        return all_cores()
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 0:
        raise ValueError(f"threads must be a positive integer, or 0 for all cores; "
                         f"got {threads!r}")
    return threads


class CythonRunner:
    """A model's compiled form; `run(images, record)` -> int32 logits [B, classes]."""

    def __init__(self, cfg: BSViTConfig, tensors: Dict[str, np.ndarray],
                 shifts: Dict[str, int], threads=1, variant: Optional[str] = None):
        k = require_kernels()
        self.threads = resolve_threads(threads)
        gh, gw = cfg.grid
        dims = {
            "T": cfg.timesteps, "N": cfg.num_tokens, "D": cfg.embed_dim,
            "H": cfg.num_heads, "Dm": cfg.mlp_hidden, "K": cfg.patch_dim,
            "p": cfg.patch_size, "grid_w": gw, "img_h": cfg.height, "img_w": cfg.width,
            "chans": cfg.in_chans, "classes": cfg.num_classes, "depth": cfg.depth,
            "bmax": cfg.burst_max, "leak": -1 if cfg.leak_shift is None else cfg.leak_shift,
        }
        # Memory-mapped tensors are C-contiguous and used in place; only arrays that are not
        # (e.g. the converter's in-memory transposes) are made contiguous, once.
        arrays = {name: np.ascontiguousarray(a) for name, a in tensors.items()}
        input_max = {layer.name: layer.input_max for layer in spec.layers(cfg)}
        n = cfg.num_tokens
        if cfg.adjacency_window is None:
            # global attention: every token's window is the same list 0..N-1, stored once
            start = np.zeros(n, dtype=np.int32)
            count = np.full(n, n, dtype=np.int32)
            idx = np.arange(n, dtype=np.int32)
        else:
            neighbours = spec.grid_neighbours(cfg)
            count = np.array([len(w) for w in neighbours], dtype=np.int32)
            start = np.zeros(n, dtype=np.int32)
            start[1:] = np.cumsum(count)[:-1]
            idx = np.array([j for w in neighbours for j in w], dtype=np.int32)
        self.config = cfg
        self.network = k.Network(dims, arrays, dict(shifts), input_max, start, idx,
                                 variant=variant, nbr_count=count)
        self.variant = self.network.variant

    def run(self, images: np.ndarray, record: Optional[dict] = None) -> np.ndarray:
        """images: C-contiguous uint8 [B, H, W, C]. record: as Model.predict."""
        bufs = None
        if record is not None:
            b, c = images.shape[0], self.config
            bufs = [np.zeros((b, c.timesteps, c.num_tokens, ch), dtype=np.int8)
                    for _, ch in self.network.record_channels()]
        logits = self.network.run(images, threads=self.threads, record=bufs)
        if record is not None:
            for (name, _), a in zip(self.network.record_channels(), bufs):
                record[name] = a
        return logits
