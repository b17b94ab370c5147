"""bsvit-convert as a function: checkpoint (.pt) → integer model (.bsi) + report.

    report = bsvit_int.converters.convert("model.pt", "model.bsi", report_path="r.json")

The report says what quantization cost: per-layer shift, accumulator bound, weight error
and, when evaluation data is available, float vs integer accuracy, top-1 agreement and
per-layer spike agreement on held-out images.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
from typing import Callable, Optional, Tuple, Union

import numpy as np
import torch

import bsvit_int
from bsvit_int import spec
from bsvit_int.atomic import atomic_write_bytes
from bsvit_int.container import BsiFile, write_bsi
from bsvit_int.engine import Model
from bsvit_int.errors import ConversionError

from bsvit_int import datasets as data

from . import checkpoint
from .model import BSViT
from .quantizer import QuantizedModel, quantize

EvalData = Union[None, str, Tuple[np.ndarray, np.ndarray]]


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_model(src) -> Tuple[BSViT, dict]:
    """Load and check a checkpoint; returns the eval-mode float model and the raw dict."""
    ckpt = checkpoint.load_checkpoint(src)
    checkpoint.check_modules(ckpt)
    cfg = checkpoint.check_config(ckpt)
    model = BSViT(cfg)
    checkpoint.check_state_dict(ckpt["state_dict"], model.state_dict())
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt


def build_metadata(q: QuantizedModel, ckpt: dict, src: str) -> dict:
    """Metadata of the .bsi: config, per-layer integer facts, exact logit map, provenance."""
    layers = {}
    for name, info in q.layers.items():
        entry = {k: v for k, v in info.items() if k != "weight_scale"}
        scales = info.get("weight_scale")
        if scales:   # summary only: per-channel lists would double a small model's file
            entry["weight_scale_min"] = float(min(scales))
            entry["weight_scale_max"] = float(max(scales))
        layers[name] = entry
    training = ckpt.get("training") if isinstance(ckpt.get("training"), dict) else {}
    meta = {
        "format": spec.FORMAT,
        "opset": spec.OPSET,
        "config": q.config.to_dict(),
        "layers": layers,
        "logit_scale": q.logit_scale,
        "logit_map": "float_logit = int_logit * logit_scale / (timesteps * num_tokens)",
        "provenance": {
            "converter": f"bsvit-int {bsvit_int.__version__}",
            "source": os.path.basename(src),
            "source_sha256": _sha256(src),
            "created": datetime.datetime.now(datetime.timezone.utc)
                               .strftime("%Y-%m-%dT%H:%M:%SZ"),
            "dataset": training.get("dataset"),
        },
    }
    labels = ckpt.get("labels")
    if isinstance(labels, (list, tuple)) and len(labels) == q.config.num_classes \
            and all(isinstance(x, str) for x in labels):
        meta["labels"] = list(labels)
    return meta


def _resolve_eval(eval_data: EvalData, ckpt: dict):
    """(images uint8 [B,H,W,C], labels, description) or None."""
    if eval_data is None:
        return None
    if isinstance(eval_data, str):
        auto = eval_data == "auto"
        name = (ckpt.get("training") or {}).get("dataset") if auto else eval_data
        if auto and name not in data.DATASETS:
            return None
        try:
            x, y = data.load(name)["test"]
        except ImportError as e:
            if auto:    # the data set's package is missing here: convert without evaluating
                return None, None, f"evaluation skipped: {e}"
            raise
        return x, y, f"{name} held-out test split ({len(x)} images)"
    x, y = eval_data
    return np.asarray(x), np.asarray(y), f"{len(x)} given images"


@torch.no_grad()
def evaluate(model: BSViT, engine: Model, images: np.ndarray, labels: np.ndarray,
             batch: int = 128, progress: Optional[Callable[[int, int], None]] = None) -> dict:
    """Float vs integer accuracy, top-1 agreement and per-layer spike agreement."""
    cfg = model.config
    if images.dtype != np.uint8 or tuple(images.shape[1:]) != (cfg.height, cfg.width,
                                                                 cfg.in_chans):
        raise ConversionError(f"evaluation images must be uint8 [B, {cfg.height}, {cfg.width}, "
                              f"{cfg.in_chans}], got {images.dtype}{list(images.shape)}")
    f_pred, i_pred = [], []
    same = {}
    total = {}
    for start in range(0, len(images), batch):
        xb = images[start:start + batch]
        rec_f, rec_i = {}, {}
        f_logits = model(torch.from_numpy(xb).permute(0, 3, 1, 2).float(), rec_f)
        i_logits = engine.predict(xb, rec_i)
        f_pred.append(f_logits.argmax(1).numpy())
        i_pred.append(np.argmax(i_logits, axis=1))
        for name, s_int in rec_i.items():
            s_f = rec_f[name].numpy()
            same[name] = same.get(name, 0) + int(np.sum(s_f == s_int))
            total[name] = total.get(name, 0) + s_int.size
        if progress:
            progress(min(start + batch, len(images)), len(images))
    f_pred, i_pred = np.concatenate(f_pred), np.concatenate(i_pred)
    return {
        "n_images": int(len(images)),
        "float_accuracy": float(np.mean(f_pred == labels)),
        "int_accuracy": float(np.mean(i_pred == labels)),
        "top1_agreement": float(np.mean(f_pred == i_pred)),
        "spike_agreement": {name: same[name] / total[name] for name in same},
    }


def convert(src, dst, *, report_path=None, eval_data: EvalData = "auto",
            progress: Optional[Callable[[int, int], None]] = None) -> dict:
    """Convert checkpoint `src` to `dst` (.bsi); returns the report (also in the .bsi).

    eval_data: "auto" (the checkpoint's own data set, if it names one this package ships),
    a data set name ("digits"), a tuple (uint8 images [B, H, W, C], labels), or None.
    Raises ConversionError naming the tensor, layer or bound at fault; writes nothing then.
    """
    src, dst = os.fspath(src), os.fspath(dst)
    model, ckpt = load_model(src)
    q = quantize(model)
    meta = build_metadata(q, ckpt, src)
    engine = Model(BsiFile(meta, q.tensors))      # validates exactly as bsvit_int.load does
    report = {
        "source": src,
        "output": dst,
        "config": q.config.to_dict(),
        "layers": {k: {kk: v[kk] for kk in ("shift", "bound", "weight_rel_error",
                                            "threshold_min", "coarse_channels") if kk in v}
                   for k, v in meta["layers"].items()},
    }
    evaluation = _resolve_eval(eval_data, ckpt)
    if evaluation is not None:
        x, y, desc = evaluation
        report["evaluation_data"] = desc
        if x is not None:
            report.update(evaluate(model, engine, x, y, progress=progress))
    meta["report"] = {k: v for k, v in report.items() if k not in ("source", "output",
                                                                     "config")}
    write_bsi(dst, meta, q.tensors)
    report["bsi_bytes"] = os.path.getsize(dst)
    report["checkpoint_bytes"] = os.path.getsize(src)
    if report_path is not None:
        write_json_atomic(report_path, report)
    return report


def write_json_atomic(path, obj) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def format_report(report: dict) -> str:
    """The human-readable report bsvit-convert prints."""
    lines = [f"{'layer':<22} {'shift':>5} {'bound':>12} {'w err':>7} {'thr min':>8} "
             f"{'spike agr':>9}"]
    agr = report.get("spike_agreement", {})
    for name, info in report["layers"].items():
        werr = info.get("weight_rel_error")
        lines.append(f"{name:<22} {info.get('shift', 0):>5} {info.get('bound', 0):>12} "
                     f"{'' if werr is None else f'{werr:.4f}':>7} "
                     f"{info.get('threshold_min', ''):>8} "
                     f"{'' if name not in agr else f'{agr[name]:.4f}':>9}")
    for name, info in report["layers"].items():
        ch = info.get("coarse_channels")
        if ch:
            shown = ", ".join(str(c) for c in ch[:8]) + (", ..." if len(ch) > 8 else "")
            lines.append(f"{name}: {len(ch)} channel(s) with a coarser weight scale (their "
                         f"bias or threshold needs it to fit int32): {shown}")
    if "float_accuracy" not in report and "evaluation_data" in report:
        lines.append(report["evaluation_data"])
    if "float_accuracy" in report:
        lines.append(f"evaluated on {report['evaluation_data']}:")
        lines.append(f"  float accuracy    {report['float_accuracy'] * 100:6.2f} %")
        lines.append(f"  integer accuracy  {report['int_accuracy'] * 100:6.2f} %")
        lines.append(f"  top-1 agreement   {report['top1_agreement'] * 100:6.2f} %")
    if "bsi_bytes" in report:
        lines.append(f"wrote {report['output']}: {report['bsi_bytes']} bytes "
                     f"({report['bsi_bytes'] / report['checkpoint_bytes']:.2f} × the checkpoint)")
    return "\n".join(lines)
