"""The NumPy integer oracle: docs/integer-spec.md executed as plainly as possible.

Every other implementation (Cython kernels, C firmware, PyTorch integer-faithful mode) is
tested for bit-exact equality against this file, so it favours obviousness over speed:
int64 arithmetic everywhere, explicit loops over time steps and window neighbours, and a
check after every op that the value stayed inside int32, which the converter proved it
would (a failure here means a converter bug or a hand-edited model, never a wrap).

Shapes: images [B, H, W, C] uint8; activations [B, N, C]; spikes recorded as [B, T, N, C].
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional

import numpy as np

from . import spec
from .config import BSViTConfig

_I32_MIN, _I32_MAX = -(2**31), 2**31 - 1


def _in_int32(name: str, a: np.ndarray) -> np.ndarray:
    if a.size and (a.min() < _I32_MIN or a.max() > _I32_MAX):
        raise OverflowError(f"{name}: value outside int32 (a bound the converter proved "
                            "does not hold: corrupted or hand-edited model)")
    return a


def patches(images: np.ndarray, p: int) -> np.ndarray:
    """[B, H, W, C] → [B, N, p*p*C] with n = gy*Gw + gx and k = (dy*p + dx)*C + c."""
    b, h, w, c = images.shape
    x = images.reshape(b, h // p, p, w // p, p, c)            # b gy dy gx dx c
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // p) * (w // p), p * p * c)


def current(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, shift: int,
            name: str) -> np.ndarray:
    """I = ((x @ W) << shift) + bias, exact (spec op 1). x [B, N, in], W [in, out]."""
    acc = _in_int32(name + " acc", x.astype(np.int64) @ weight.astype(np.int64))
    return _in_int32(name + " current", (acc << shift) + bias.astype(np.int64))


def neuron(currents: Iterable[np.ndarray], theta: np.ndarray, kind: str, spike_max: int,
           leak_shift: Optional[int], name: str) -> np.ndarray:
    """Run one neuron layer over the steps of `currents`; returns spikes [T, B, N, C] int64."""
    theta = theta.astype(np.int64)
    v = None
    out = []
    for i in currents:
        if v is None:
            v = np.zeros_like(i, dtype=np.int64)
        if leak_shift is None:
            v = v + i
        else:
            # NumPy's >> on int64 is an arithmetic shift: floor division by 2**k.
            v = v + ((_in_int32(name + " leak", i - v)) >> leak_shift)
        _in_int32(name + " membrane", v)
        if kind == "signed":
            s = (v >= theta).astype(np.int64) - (v <= -theta).astype(np.int64)
        else:
            s = np.where(v >= theta, np.minimum(spike_max, v // theta), 0)
        v = v - s * theta
        out.append(s)
    return np.stack(out)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, neighbours, heads: int,
              name: str) -> np.ndarray:
    """O[b, i, e] = Σ_{j in window(i)} S[b, h(e), i, j] · V[b, j, e] (spec op 3), one step."""
    bsz, n, d = q.shape
    dh = d // heads
    out = np.zeros((bsz, n, d), dtype=np.int64)
    for i in range(n):
        for j in neighbours[i]:
            prod = (q[:, i, :] * k[:, j, :]).reshape(bsz, heads, dh)
            s = prod.sum(axis=2)                                    # [B, heads]
            out[:, i, :] += np.repeat(s, dh, axis=1) * v[:, j, :]
    return _in_int32(name + " O", out)


def run(cfg: BSViTConfig, tensors: Dict[str, np.ndarray], shifts: Dict[str, int],
        images: np.ndarray, record: Optional[dict] = None) -> np.ndarray:
    """int32 logits [B, classes] for uint8 images [B, H, W, C]; fills `record` if given."""
    t_steps = cfg.timesteps
    leak = cfg.leak_shift
    neighbours = spec.grid_neighbours(cfg)
    kinds = {layer.name: layer for layer in spec.layers(cfg)}

    def fire(name, currents):
        layer = kinds[name]
        s = neuron(currents, tensors[name + ".threshold"], layer.kind, layer.spike_max,
                   leak, name)
        if record is not None:
            record[name] = s.transpose(1, 0, 2, 3).astype(np.int8)
        return s                                                    # [T, B, N, C]

    def project(name, x):                                           # x [T, B, N, in]
        return fire(name, (current(x[t], tensors[name + ".weight"], tensors[name + ".bias"],
                                   shifts[name], name) for t in range(t_steps)))

    i0 = current(patches(images, cfg.patch_size), tensors["embed.weight"],
                 tensors["embed.bias"], shifts["embed"], "embed")
    x = fire("embed", (i0 for _ in range(t_steps)))                 # [T, B, N, D]
    for l in range(cfg.depth):
        p = f"blocks.{l}."
        q, k, v = project(p + "attn.q", x), project(p + "attn.k", x), project(p + "attn.v", x)
        o = (attention(q[t], k[t], v[t], neighbours, cfg.num_heads, p + "attn")
             for t in range(t_steps))
        a = fire(p + "attn", o)
        x = x + project(p + "attn.proj", a)
        x = x + project(p + "mlp.fc2", project(p + "mlp.fc1", x))
    z = x.sum(axis=(0, 2))                                          # [B, D]
    logits = z @ tensors["head.weight"].astype(np.int64) + tensors["head.bias"].astype(np.int64)
    return _in_int32("head logits", logits).astype(np.int32)
