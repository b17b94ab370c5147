"""The Python calls behind the command-line tools: each CLI is one of these.

    bsvit_int.run("model.bsi", ["img.png", "dir/"], top_k=3)   # bsvit-run
    bsvit_int.info("model.bsi")                                 # bsvit-info
    bsvit_int.profile("model.bsi", images)                      # bsvit-profile
"""
from __future__ import annotations

import hashlib
import os
import zlib
from typing import List, Optional, Sequence, Union

import numpy as np

from . import profile as _profile
from .container import read_bsi
from .engine import Model, load
from .images import load_images

ModelLike = Union[str, os.PathLike, Model]


def _model(model: ModelLike) -> Model:
    return model if isinstance(model, Model) else load(model)


def _paths(inputs) -> List[str]:
    """One path or a sequence of paths (a bare string is one path, not characters)."""
    if isinstance(inputs, (str, bytes, os.PathLike)):
        return [os.fsdecode(inputs)]
    return [os.fsdecode(p) for p in inputs]


def run(model: ModelLike, inputs: Union[Sequence[str], np.ndarray], top_k: int = 1,
        resize: bool = False) -> List[dict]:
    """Classify images; one dict per image: name, top-k (class, label, logit), logits.

    inputs: file/directory paths (see bsvit_int.images) or a uint8 array [B, H, W, C].
    """
    m = _model(model)
    c = m.config
    if isinstance(inputs, np.ndarray):
        images = m._images(inputs)
        names = [f"[{i}]" for i in range(len(images))]
    else:
        images, names = load_images(_paths(inputs), (c.height, c.width, c.in_chans), resize)
    if not 1 <= top_k <= c.num_classes:
        raise ValueError(f"top_k must be in 1..{c.num_classes}, got {top_k}")
    logits = m.predict(images)
    results = []
    for name, row in zip(names, logits):
        order = np.argsort(-row.astype(np.int64), kind="stable")[:top_k]
        results.append({
            "input": name,
            "top": [{"class": int(k), "label": m.labels[k] if m.labels else str(int(k)),
                     "logit": int(row[k])} for k in order],
            "logits": [int(v) for v in row],
        })
    return results


def info(path) -> dict:
    """Everything a .bsi says about itself: config, tensors, checksums, provenance, report."""
    path = os.fspath(path)
    f = read_bsi(path)
    m = Model(f, path=path)
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    tensors = [{"name": name, "dtype": str(a.dtype), "shape": list(a.shape),
                "bytes": int(a.nbytes), "crc32": f"{zlib.crc32(a.tobytes()):08x}"}
               for name, a in f.tensors.items()]
    meta = f.metadata
    c = m.config
    return {
        "path": path,
        "file_bytes": os.path.getsize(path),
        "sha256": h.hexdigest(),
        "format": meta.get("format"),
        "opset": meta.get("opset"),
        "config": c.to_dict(),
        "tokens": c.num_tokens,
        "parameters": int(sum(t["bytes"] // np.dtype(t["dtype"]).itemsize for t in tensors)),
        "weight_bytes": int(sum(t["bytes"] for t in tensors)),
        "labels": m.labels,
        "logit_scale": m.logit_scale,
        "logit_map": meta.get("logit_map"),
        "tensors": tensors,
        "layers": meta.get("layers"),
        "provenance": meta.get("provenance"),
        "report": meta.get("report"),
    }


def profile(model: ModelLike, inputs: Union[Sequence[str], np.ndarray],
            resize: bool = False, e_ac_pj: float = _profile.E_AC_PJ,
            e_mac_pj: float = _profile.E_MAC_PJ, repeats: int = 1,
            plot: Optional[str] = None) -> dict:
    """Firing rates, burst histograms, ACs/MACs, energy and latency (see bsvit_int.profile)."""
    m = _model(model)
    c = m.config
    if isinstance(inputs, np.ndarray):
        images = inputs
    else:
        images, _ = load_images(_paths(inputs), (c.height, c.width, c.in_chans), resize)
    report = _profile.profile(m, images, e_ac_pj=e_ac_pj, e_mac_pj=e_mac_pj, repeats=repeats)
    if plot:
        _profile.plot(report, plot)
    return report
