"""Loading a `.bsi` and running it: `bsvit_int.load(path).predict(images)`.

The model is validated completely at load time (container, metadata, config, tensor table,
value ranges, accumulator bounds), so `predict` never meets a malformed model.
A Model is immutable after loading: one instance may be used from many threads at once.
"""
from __future__ import annotations

import math
import os
from typing import Dict, Optional

import numpy as np

from . import oracle, spec
from .config import BSViTConfig
from .container import BsiFile, read_bsi
from .errors import BsiFormatError

BACKENDS = ("numpy", "cython")


def validate_model(bsi: BsiFile) -> tuple:
    """(config, shifts) of a structurally valid container, or BsiFormatError naming the fault."""
    meta = bsi.metadata
    if meta.get("format") != spec.FORMAT:
        raise BsiFormatError(f"metadata.format is {meta.get('format')!r}, expected "
                             f"{spec.FORMAT!r}")
    opset = meta.get("opset")
    if isinstance(opset, bool) or opset != spec.OPSET:
        raise BsiFormatError(f"metadata.opset is {meta.get('opset')!r}; this engine runs "
                             f"op-set {spec.OPSET}")
    try:
        cfg = BSViTConfig.from_dict(meta.get("config"))
    except (TypeError, ValueError) as e:
        raise BsiFormatError(f"metadata.config: {e}") from None
    table = spec.tensor_table(cfg)
    missing = [n for n in table if n not in bsi.tensors]
    if missing:
        raise BsiFormatError(f"required tensor '{missing[0]}' is missing "
                             f"({len(missing)} missing in all)")
    extra = [n for n in bsi.tensors if n not in table]
    if extra:
        raise BsiFormatError(f"tensor '{extra[0]}' is not part of a model with this config")
    for name, (dtype, shape) in table.items():
        a = bsi.tensors[name]
        if a.dtype != dtype or a.shape != shape:
            raise BsiFormatError(f"tensor '{name}' is {a.dtype}{list(a.shape)}, the config "
                                 f"requires {dtype}{list(shape)}")
        if name.endswith(".threshold") and a.size and a.min() < 1:
            raise BsiFormatError(f"tensor '{name}': threshold {int(a.min())} is below 1")
        if dtype == np.int8 and a.size and a.min() == -128:
            raise BsiFormatError(f"tensor '{name}': weight -128 is outside [-127, 127]")
    layers = meta.get("layers")
    if not isinstance(layers, dict):
        raise BsiFormatError("metadata.layers is missing or not an object")
    shifts: Dict[str, int] = {}
    for layer in spec.layers(cfg):
        entry = layers.get(layer.name)
        shift = entry.get("shift") if isinstance(entry, dict) else None
        if not isinstance(shift, int) or isinstance(shift, bool) or \
                not 0 <= shift <= spec.MAX_SHIFT:
            raise BsiFormatError(f"metadata.layers['{layer.name}'].shift is {shift!r}, "
                                 f"expected an integer in 0..{spec.MAX_SHIFT}")
        shifts[layer.name] = shift
    scale = meta.get("logit_scale")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or \
            not (isinstance(scale, float) or abs(scale) < 2**53) or \
            not math.isfinite(float(scale)) or not scale > 0:
        raise BsiFormatError(f"metadata.logit_scale is {scale!r}, expected a positive number")
    labels = meta.get("labels")
    if labels is not None and (not isinstance(labels, list)
                               or len(labels) != cfg.num_classes
                               or not all(isinstance(x, str) for x in labels)):
        raise BsiFormatError(f"metadata.labels must be a list of {cfg.num_classes} strings, "
                             f"got {str(labels)[:80]}")
    try:
        spec.model_bounds(cfg, bsi.tensors, shifts)
    except ValueError as e:
        raise BsiFormatError(str(e)) from None
    return cfg, shifts


class Model:
    """An integer BSViT ready to run. Build with `bsvit_int.load`."""

    def __init__(self, bsi: BsiFile, backend: str = "cython", path: Optional[str] = None,
                 threads: int = 1):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.config, self._shifts = validate_model(bsi)
        self.metadata = bsi.metadata
        self.tensors = bsi.tensors
        self.backend = backend
        self._runner = None
        if backend == "cython":     # threads: OpenMP threads of the Cython backend (0 = all)
            from .engine_cython import CythonRunner
            self._runner = CythonRunner(self.config, self.tensors, self._shifts, threads)
        self.path = path
        self.logit_scale = float(bsi.metadata["logit_scale"])
        self.labels = bsi.metadata.get("labels")

    def __repr__(self) -> str:
        c = self.config
        return (f"<bsvit_int.Model {c.height}x{c.width}x{c.in_chans} D={c.embed_dim} "
                f"depth={c.depth} T={c.timesteps} Bmax={c.burst_max} backend={self.backend}>")

    def _images(self, images) -> np.ndarray:
        if not isinstance(images, np.ndarray):
            raise TypeError(f"images must be a numpy.ndarray of uint8, got {type(images).__name__}")
        if images.dtype != np.uint8:
            raise TypeError(f"images must be uint8 (raw pixels 0..255), got {images.dtype}")
        c = self.config
        want = (c.height, c.width, c.in_chans)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or tuple(images.shape[1:]) != want:
            raise ValueError(f"images must be [H, W, C] or [B, H, W, C] with H, W, C = "
                             f"{want}, got shape {list(images.shape)}")
        return np.ascontiguousarray(images)

    def predict(self, images, record: Optional[dict] = None) -> np.ndarray:
        """int32 logits [B, classes] for uint8 images [H, W, C] or [B, H, W, C].

        record: optional dict; receives every neuron layer's spikes as int8 [B, T, N, C]
        under the layer's name ("embed", "blocks.0.attn.q", ...).
        """
        if record is not None and not isinstance(record, dict):
            raise TypeError(f"record must be a dict (or None), got {type(record).__name__}")
        x = self._images(images)
        if self._runner is not None:
            return self._runner.run(x, record)
        return oracle.run(self.config, self.tensors, self._shifts, x, record)

    def float_logits(self, logits_int: np.ndarray) -> np.ndarray:
        """The documented exact map: int logit * logit_scale / (T*N), in float64."""
        if not isinstance(logits_int, np.ndarray) or logits_int.dtype != np.int32:
            raise TypeError("float_logits takes the int32 logits predict returned, got "
                            f"{getattr(logits_int, 'dtype', type(logits_int).__name__)}")
        if logits_int.ndim != 2 or logits_int.shape[1] != self.config.num_classes:
            raise ValueError(f"logits must be [B, {self.config.num_classes}], got "
                             f"{list(logits_int.shape)}")
        c = self.config
        return logits_int.astype(np.float64) * self.logit_scale / (c.timesteps * c.num_tokens)

    def classify(self, images) -> np.ndarray:
        """Predicted class indices [B] (argmax of the int32 logits, lowest index on ties)."""
        return np.argmax(self.predict(images), axis=1)


def load(path, backend: str = "cython", *, threads: int = 1,
         verify_checksums: bool = True) -> Model:
    """Load and validate a `.bsi` model (memory-mapped; weights are not copied).

    backend: "cython" (compiled kernels, the default; ImportError if they are not built) or
    "numpy" (the oracle); threads: OpenMP threads of the cython backend, 0 for all cores.
    """
    path = os.fspath(path)
    return Model(read_bsi(path, verify_checksums=verify_checksums), backend=backend, path=path,
                 threads=threads)
