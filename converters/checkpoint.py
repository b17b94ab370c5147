"""Reading and writing BSViT checkpoints safely.

Checkpoints are plain dicts of tensors, strings and numbers, loaded with
``torch.load(..., weights_only=True)``: a pickle that would construct objects or run code is
refused by torch before anything in it executes. Everything else a hostile or broken file can
do (wrong types, missing or misshaped tensors, NaN, zero variance, layers we cannot map to
integers) is checked here and reported as a ConversionError naming the tensor or layer.
"""
from __future__ import annotations

import math
import os
import zipfile
from typing import Dict

import torch

from bsvit_int import spec
from bsvit_int.atomic import atomic_write
from bsvit_int.config import BSViTConfig
from bsvit_int.errors import ConversionError

# Module types the integer contract can express, by the name `BSViT.save` records.
SUPPORTED_MODULES = {
    "PatchEmbed", "Conv2d", "BatchNorm1d", "Identity", "Neuron", "ModuleList", "Block",
    "DBSSA", "Projection", "Linear", "MLP",
}

# Why the usual ViT layers have no integer-only form here.
UNSUPPORTED_WHY = {
    "LayerNorm": "it normalises every token by its own run-time statistics, which needs "
                 "division and square roots at inference; use BatchNorm, which folds into "
                 "the weights",
    "GroupNorm": "it needs run-time statistics; use BatchNorm",
    "GELU": "a smooth activation has no addition-only form; spikes come from the neurons",
    "ReLU": "activations between layers must be spiking neurons",
    "SiLU": "activations between layers must be spiking neurons",
    "Softmax": "softmax needs exponentials and division; DBSSA attention uses none",
    "MultiheadAttention": "dense float attention; use DBSSA (binary Q, burst K, signed V)",
    "Dropout": "not an inference op; remove it (or save in eval form)",
}


def atomic_torch_save(obj, path) -> None:
    """torch.save, all or nothing (see bsvit_int.atomic)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def check_archive(path: str) -> None:
    """Refuse a zip checkpoint whose members would inflate beyond the file's own size.

    torch.save stores every member uncompressed, but torch.load also inflates deflated
    members, so a crafted 200 KB .pt could otherwise allocate 200 MB (or 200 GB).
    """
    if not os.path.isfile(path) or not zipfile.is_zipfile(path):
        return      # torch.load reports what it is (legacy format, not a checkpoint, ...)
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise ConversionError(f"{path}: not a loadable weights-only checkpoint (a damaged "
                              f"zip archive: {e})") from None
    total = 0
    for info in members:
        if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size:
            raise ConversionError(
                f"{path}: not a loadable weights-only checkpoint: member '{info.filename}' "
                f"is compressed ({info.compress_size} bytes inflating to {info.file_size}); "
                "torch.save never compresses, so this file was crafted or rewritten")
        total += info.file_size
    if total > os.path.getsize(path):
        raise ConversionError(f"{path}: not a loadable weights-only checkpoint: its members "
                              f"claim {total} bytes, more than the file's size")


def load_checkpoint(path) -> dict:
    """Load and check the outer structure of a checkpoint written by BSViT.save."""
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path) and not os.path.isfile(path):
        # A FIFO would block torch.load's open() forever, a device be read forever.
        raise ConversionError(f"{path}: not a regular file (a device, FIFO or socket)")
    check_archive(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except IsADirectoryError:
        raise ConversionError(f"{path}: is a directory, not a checkpoint") from None
    except Exception as e:   # torch raises UnpicklingError, RuntimeError, EOFError, ...
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        # torch's weights-only refusal names the offending global on one of its lines.
        useful = [ln for ln in lines if "Unsupported global" in ln or "WeightsUnpickler" in ln]
        first = (useful or lines or [type(e).__name__])[0]
        raise ConversionError(
            f"{path}: not a loadable weights-only checkpoint ({type(e).__name__}: {first[:200]}). "
            "Checkpoints must be plain dicts of tensors saved by BSViT.save; pickled "
            "objects are refused and never executed") from None
    if not isinstance(obj, dict):
        raise ConversionError(f"{path}: checkpoint is a {type(obj).__name__}, expected the dict "
                              "written by BSViT.save")
    if "state_dict" not in obj or "config" not in obj:
        missing = [k for k in ("config", "state_dict") if k not in obj]
        raise ConversionError(f"{path}: checkpoint has no {' or '.join(missing)} "
                              f"(keys: {sorted(map(str, obj))[:10]})")
    if obj.get("format", CHECKPOINT_FORMAT_DEFAULT) != CHECKPOINT_FORMAT_DEFAULT:
        raise ConversionError(f"{path}: checkpoint format {obj.get('format')!r} is not "
                              f"{CHECKPOINT_FORMAT_DEFAULT!r}")
    if not isinstance(obj["state_dict"], dict):
        raise ConversionError(f"{path}: state_dict is a {type(obj['state_dict']).__name__}")
    for key in obj["state_dict"]:
        if not isinstance(key, str):
            raise ConversionError(f"{path}: state_dict key {key!r} is a {type(key).__name__}, "
                                  "not a tensor name")
    return obj


CHECKPOINT_FORMAT_DEFAULT = "bsvit-checkpoint"


def check_config(ckpt: dict) -> BSViTConfig:
    try:
        cfg = BSViTConfig.from_dict(ckpt["config"])
        implied = sum(math.prod(shape) for _, shape in spec.tensor_table(cfg).values())
    except (TypeError, ValueError, OverflowError) as e:
        raise ConversionError(f"config: {e}") from None
    # The float model is built before its tensors are compared with the checkpoint's, so a
    # config claiming huge sizes must be refused first: the integer model's tensor count is
    # at most the float model's, which a genuine checkpoint holds in full.
    state = ckpt.get("state_dict") or {}
    present = sum(t.numel() for t in state.values() if isinstance(t, torch.Tensor))
    if implied > 2 * present + 65536:
        raise ConversionError(f"config: it implies a model of {implied} parameters, but the "
                              f"state_dict holds only {present} values; config and tensors "
                              "do not belong together")
    return cfg


def check_modules(ckpt: dict) -> None:
    """Refuse layers the integer contract cannot express, naming each one and why."""
    modules = ckpt.get("modules")
    if modules is None:
        return
    if not isinstance(modules, dict):
        raise ConversionError("modules: expected a dict of layer name -> type name")
    for name, kind in modules.items():
        if not isinstance(kind, str):
            raise ConversionError(f"modules: layer {name!r} has type {kind!r}, not a type name")
        if kind in SUPPORTED_MODULES:
            continue
        why = UNSUPPORTED_WHY.get(kind, "bsvit-int has no integer-only form for it")
        raise ConversionError(f"layer '{name}' ({kind}) is not supported: {why}")


def check_state_dict(state: Dict[str, torch.Tensor], expected: Dict[str, torch.Tensor]) -> None:
    """Compare a checkpoint's tensors with what the config implies; name every problem."""
    for key in state:
        if key not in expected:
            if "cls_token" in key:
                raise ConversionError(
                    f"tensor '{key}': a class token is not supported: BSViT classifies from "
                    "the mean of all tokens' spikes, so there is no token to attend from")
            raise ConversionError(f"tensor '{key}' does not belong to a BSViT with this config "
                                  "(an unknown layer, or a config that does not match)")
    for key, ref in expected.items():
        if key not in state:
            if key.endswith((".running_mean", ".running_var")):
                layer = key.rsplit(".", 1)[0]
                raise ConversionError(
                    f"layer '{layer}': BatchNorm running statistics '{key}' are missing (a "
                    "LayerNorm in its place? only BatchNorm folds into integer weights)")
            raise ConversionError(f"tensor '{key}' is missing from the checkpoint")
        t = state[key]
        if not isinstance(t, torch.Tensor):
            raise ConversionError(f"tensor '{key}' is a {type(t).__name__}, not a tensor")
        if t.layout != torch.strided or t.is_quantized:
            raise ConversionError(f"tensor '{key}' is a {t.layout} tensor"
                                  f"{' (quantized)' if t.is_quantized else ''}; only dense "
                                  "tensors are read")
        if t.is_complex() or t.dtype == torch.bool:
            # load_state_dict would silently drop the imaginary part or read True as 1.
            raise ConversionError(f"tensor '{key}' has dtype {t.dtype}; expected a real "
                                  "(floating-point or integer) tensor")
        if tuple(t.shape) != tuple(ref.shape):
            raise ConversionError(f"tensor '{key}' has shape {list(t.shape)}, expected "
                                  f"{list(ref.shape)} for this config")
        if torch.is_floating_point(t) and not torch.isfinite(t).all():
            bad = int((~torch.isfinite(t)).sum())
            raise ConversionError(f"tensor '{key}' has {bad} NaN or infinite value(s)")
        if key.endswith(".running_var") and (t <= 0).any():
            raise ConversionError(f"tensor '{key}' has a variance <= 0 (a channel that never "
                                  "varied in training); the BatchNorm cannot be folded")
        if key.endswith("embed.std") and (t <= 0).any():
            raise ConversionError(f"tensor '{key}': input std must be > 0")
        if key.endswith("neuron.threshold") and (t <= 0).any():
            raise ConversionError(f"tensor '{key}': thresholds must be > 0")
