"""Fold and quantize a BSViT into the integer model of docs/integer-spec.md.

`quantize(model)` is the single definition of the converter's arithmetic: the `.bsi` writer,
`snap` (float64 model on the integer grid) and `integer_faithful` (int64 model) all start
from its output, so they cannot drift apart.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np
import torch
import torch.nn as nn

from bsvit_int import spec
from bsvit_int.config import BSViTConfig
from bsvit_int.errors import ConversionError

from .model import BSViT, Projection

# Smallest threshold the shift search aims for: 12 bits of threshold and bias resolution
# (measured on an 80-epoch digits model: 8 bits gave 98.1 % top-1 agreement, 12 bits 99.2 %).
MIN_THRESHOLD = 4096


def round_half_away(x) -> np.ndarray:
    """The converter's one rounding rule: half away from zero, in float64."""
    x = np.asarray(x, dtype=np.float64)
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


@dataclass
class QuantizedModel:
    """Everything a `.bsi` holds besides provenance and the report."""
    config: BSViTConfig
    tensors: Dict[str, np.ndarray]          # canonical names, spec dtypes and shapes
    layers: Dict[str, dict]                 # per neuron layer: shift, bound, scales, ...
    logit_scale: float                      # s_h; float logit = int logit * s_h / (T*N)


# -- folding ---------------------------------------------------------------------------

def _np(t: Optional[torch.Tensor]) -> Optional[np.ndarray]:
    return None if t is None else t.detach().cpu().to(torch.float64).numpy()


def _bn_affine(bn: nn.Module, channels: int):
    """(a, beta') with BN(y) = a*y + beta' in eval mode; identity for folded models."""
    if isinstance(bn, nn.Identity):
        return np.ones(channels), np.zeros(channels)
    var = _np(bn.running_var)
    mean = _np(bn.running_mean)
    gamma = _np(bn.weight) if bn.weight is not None else np.ones(channels)
    beta = _np(bn.bias) if bn.bias is not None else np.zeros(channels)
    a = gamma / np.sqrt(var + bn.eps)
    return a, beta - a * mean


def fold_projection(p: Projection):
    """W'[out, in], bias'[out] of Linear (+ BatchNorm) in float64."""
    w = _np(p.linear.weight)
    cout = w.shape[0]
    bias = _np(p.linear.bias) if p.linear.bias is not None else np.zeros(cout)
    a, beta = _bn_affine(p.bn, cout)
    return a[:, None] * w, a * bias + beta


def fold_embed(model: BSViT):
    """W'[D, K] on raw pixels (k = (dy*p + dx)*C + c) and bias'[N, D]."""
    e = model.embed
    w = _np(e.proj.weight)                                   # [D, C, p, p]
    d = w.shape[0]
    w = w.transpose(0, 2, 3, 1).reshape(d, -1)               # [D, K], k = (dy, dx, c)
    cfg = model.config
    mean = np.tile(_np(e.mean), cfg.patch_size * cfg.patch_size)   # per k
    std = np.tile(_np(e.std), cfg.patch_size * cfg.patch_size)
    conv_bias = _np(e.proj.bias) if e.proj.bias is not None else np.zeros(d)
    a, beta = _bn_affine(e.bn, d)
    w_norm = w / std[None, :]
    bias = conv_bias - w_norm @ mean
    return a[:, None] * w_norm, (a * bias + beta)[None, :] + _np(e.pos)


# -- quantization of one layer ------------------------------------------------------

def quantize_layer(name: str, w: np.ndarray, bias: np.ndarray, theta_f: np.ndarray,
                   xmax: int, spike_max: int, cfg: BSViTConfig) -> dict:
    """Quantize W'[out, in], bias'[..., out] and float thresholds[out] of one layer.

    Returns weight (int8 [in, out]), bias (int32, bias' shape), threshold (int32 [out])
    and the layer's metadata (shift, bound, scales). Chooses the smallest shift that gives
    every threshold >= MIN_THRESHOLD while the bounds hold; refuses if shift 0 fails.
    """
    scale = np.max(np.abs(w), axis=1) / 127.0
    scale[scale == 0] = 1.0
    scale, coarse = _coarsen(scale, w, bias, theta_f, xmax, spike_max, cfg)
    wq_t = round_half_away(w / scale[:, None]).T               # [in, out]
    best = None
    for m in range(spec.MAX_SHIFT + 1):
        theta = np.maximum(1.0, round_half_away(theta_f * 2.0**m / scale))
        b = round_half_away(bias * 2.0**m / scale)
        cur = spec.linear_current_max(wq_t, b, xmax, m)
        bound = spec.neuron_bound(cur, theta, spike_max, cfg)
        if not bound <= spec.INT32_MAX:
            if best is None:
                raise ConversionError(
                    f"layer '{name}': accumulator bound {bound:.4g} exceeds int32 "
                    f"({spec.INT32_MAX}) even without a shift (input max {xmax}, T "
                    f"{cfg.timesteps}, largest |bias| {np.max(np.abs(b)):.4g}); the model "
                    "cannot be represented without wrapping")
            break
        best = (m, theta, b, bound)
        if np.min(theta) >= MIN_THRESHOLD:
            break
    m, theta, b, bound = best
    err = np.sqrt(np.sum((wq_t.T * scale[:, None] - w) ** 2) / max(np.sum(w**2), 1e-300))
    return {
        "weight": wq_t.astype(np.int8),
        "bias": b.astype(np.int32),
        "threshold": theta.astype(np.int32),
        "meta": {
            "shift": m,
            "bound": int(bound),
            "input_max": int(xmax),
            "weight_scale": [float(x) for x in scale],
            "weight_rel_error": float(err),
            "threshold_min": int(theta.min()),
            "threshold_max": int(theta.max()),
            **({"coarse_channels": coarse} if coarse else {}),
        },
    }


def _coarsen(scale: np.ndarray, w: np.ndarray, bias: np.ndarray, theta_f: np.ndarray,
             xmax: int, spike_max: int, cfg: BSViTConfig):
    """Per-channel scales no finer than int32 allows: (scale, indices of coarsened channels).

    A channel whose weights are tiny next to its bias (a dead row under a BatchNorm bias)
    or its threshold gets, from max|W|/127, a scale so fine that bias / scale or the
    threshold leaves int32 even at shift 0, though its weights alone fit. Such a channel
    (only such a channel: the others keep max|W|/127) gets the finest scale at which its
    shift-0 bound stays within 2**30, half of int32, so that rounding cannot push it
    over: its integer weights then use fewer than 127 levels (weight_rel_error reports
    what that costs), and its bias and threshold keep their ratio, which is what decides
    such a channel's spikes.
    Bound of channel o at shift 0 with scale s (|round(x)| <= |x| + 1/2; spec bounds):
      T'·(xmax·Σ|w_o| + max|bias_o|) / s + T'·(xmax·cin + 1) / 2  and  spike_max·(θ_o/s + 1/2)
    with T' = T (+1 for a leaky neuron).
    """
    t_eff = cfg.timesteps + (1 if cfg.leak_shift is not None else 0)
    cin = w.shape[1]
    wq0 = round_half_away(w / scale[:, None])
    b0 = round_half_away(np.abs(bias) / scale)
    cur0 = xmax * np.sum(np.abs(wq0), axis=1) + np.max(b0.reshape(-1, w.shape[0]), axis=0)
    th0 = np.maximum(1.0, round_half_away(theta_f / scale))
    limit = float(2**30)
    # Only where the bias or the threshold is the cause: a channel whose weights alone
    # (127 levels) pass the limit is left as it is and refused below, naming the bound,
    # rather than silently losing weight precision.
    weights_fit = t_eff * xmax * np.sum(np.abs(wq0), axis=1) <= limit
    over = weights_fit & ((t_eff * cur0 > spec.INT32_MAX) | (spike_max * th0 > spec.INT32_MAX))
    if not np.any(over):
        return scale, []
    slack = t_eff * 0.5 * (xmax * cin + 1)
    if slack >= limit:                     # rounding alone could pass it: refused below
        return scale, []
    need_b = t_eff * (xmax * np.sum(np.abs(w), axis=1)
                      + np.max(np.abs(bias).reshape(-1, w.shape[0]), axis=0)) / (limit - slack)
    need_t = spike_max * np.abs(theta_f) / (limit - 0.5 * spike_max)
    coarse = np.maximum(scale, np.maximum(need_b, need_t))
    out = np.where(over, coarse, scale)
    return out, [int(i) for i in np.flatnonzero(over)]


# -- the whole model ------------------------------------------------------------------------

def quantize(model: BSViT) -> QuantizedModel:
    """Fold BatchNorm, normalisation and position bias; quantize; prove the bounds."""
    cfg = model.config
    tensors: Dict[str, np.ndarray] = {}
    layers: Dict[str, dict] = {}
    modules = dict(model.named_modules())
    o_max = spec.window_size(cfg) * cfg.head_dim * cfg.burst_max
    for layer in spec.layers(cfg):
        name = layer.name
        if name == "embed":
            w, b = fold_embed(model)
            neuron = model.embed.neuron
        elif not layer.cin:     # the neuron on the attention output: a threshold only
            thr = _np(modules[name].neuron.threshold)
            theta = np.maximum(1.0, round_half_away(thr))
            bound = spec.neuron_bound(np.full(theta.shape, float(o_max)), theta,
                                      layer.spike_max, cfg)
            if bound > spec.INT32_MAX:
                raise ConversionError(f"layer '{name}': attention bound {bound:.4g} "
                                      "exceeds int32")
            tensors[name + ".threshold"] = theta.astype(np.int32)
            layers[name] = {"shift": 0, "bound": int(bound), "input_max": int(o_max),
                            "threshold_min": int(theta.min()),
                            "threshold_max": int(theta.max()),
                            "threshold_rounded": bool(np.any(theta != thr))}
            continue
        else:
            w, b = fold_projection(modules[name])
            neuron = modules[name].neuron
        q = quantize_layer(name, w, b, _np(neuron.threshold), layer.input_max,
                           layer.spike_max, cfg)
        tensors[name + ".weight"] = q["weight"]
        tensors[name + ".bias"] = q["bias"]
        tensors[name + ".threshold"] = q["threshold"]
        layers[name] = q["meta"]
    layers["embed"]["macs"] = True          # raw pixels: true multiplications

    hw = _np(model.head.weight)                              # [classes, D]
    hb = _np(model.head.bias) if model.head.bias is not None else np.zeros(hw.shape[0])
    s_w = float(np.max(np.abs(hw)) / 127.0) or 1.0
    denom = cfg.timesteps * cfg.num_tokens
    whq = round_half_away(hw / s_w)
    if cfg.folded:
        # A folded model computes head(sum) * head_scale / (T*N): its bias is already in
        # units of the summed stream, and head_scale multiplies the logit scale.
        hbq = round_half_away(hb / s_w)
        s_h = s_w * float(model.head_scale)
    else:
        hbq = round_half_away(hb * denom / s_w)
        s_h = s_w
    tensors["head.weight"] = whq.T.astype(np.int8)
    if np.max(np.abs(hbq)) > spec.INT32_MAX:
        raise ConversionError(f"layer 'head': bias {np.max(np.abs(hbq)):.4g} exceeds int32")
    tensors["head.bias"] = hbq.astype(np.int32)
    layers["head"] = {"shift": 0, "input_max": denom * cfg.stream_max,
                      "weight_scale": [s_w],
                      "weight_rel_error": float(np.sqrt(np.sum((whq * s_w - hw) ** 2)
                                                        / max(np.sum(hw**2), 1e-300)))}
    try:
        bounds = spec.model_bounds(cfg, tensors, {k: v["shift"] for k, v in layers.items()})
    except ValueError as e:
        raise ConversionError(str(e)) from None
    layers["head"]["bound"] = bounds["head"]
    return QuantizedModel(cfg, tensors, layers, s_h)


# -- folded models: the integer model as a PyTorch module ------------------------------

def folded_state_dict(q: QuantizedModel, dtype: torch.dtype) -> Dict[str, torch.Tensor]:
    """State dict of a folded BSViT computing exactly the integer model, in `dtype`."""
    cfg = q.config
    t = q.tensors

    def tens(a) -> torch.Tensor:
        return torch.from_numpy(np.asarray(a, dtype=np.int64)).to(dtype)

    def shifted(name):
        return tens(t[name + ".weight"].T.astype(np.int64) << q.layers[name]["shift"])

    p, c, d = cfg.patch_size, cfg.in_chans, cfg.embed_dim
    sd = {
        "embed.mean": tens(np.zeros(c)),
        "embed.std": tens(np.ones(c)),
        "embed.proj.weight": shifted("embed").reshape(d, p, p, c).permute(0, 3, 1, 2)
                                             .contiguous(),
        "embed.pos": tens(t["embed.bias"]),
        "embed.neuron.threshold": tens(t["embed.threshold"]),
        "head.weight": tens(t["head.weight"].T),
        "head.bias": tens(t["head.bias"]),
        "head_scale": torch.tensor(q.logit_scale, dtype=torch.float64),
    }
    for layer in spec.layers(cfg)[1:]:
        name = layer.name
        if not layer.cin:
            sd[name + ".neuron.threshold"] = tens(t[name + ".threshold"])
            continue
        sd[name + ".linear.weight"] = shifted(name)
        sd[name + ".linear.bias"] = tens(t[name + ".bias"])
        sd[name + ".neuron.threshold"] = tens(t[name + ".threshold"])
    return sd


def folded_model(q: QuantizedModel, dtype: torch.dtype) -> BSViT:
    model = BSViT(q.config.replace(folded=True))
    for prm in model.parameters():
        prm.requires_grad_(False)
    model.load_state_dict(folded_state_dict(q, dtype), assign=True)
    return model.eval()


def snap(model: BSViT) -> BSViT:
    """A float64 BSViT whose parameters lie on the integer grid of `model`'s conversion.

    Its ordinary float forward gives exactly the integer engine's spikes, and logits equal
    to the engine's int32 logits mapped through the documented scale.
    """
    return folded_model(quantize(model), torch.float64)


def integer_faithful(model: BSViT) -> BSViT:
    """The same folded model in int64: the integer engine's arithmetic in PyTorch.

    Use `.integer_logits(images)` for int64 logits, or call it for the mapped float logits.
    """
    return folded_model(quantize(model), torch.int64)
