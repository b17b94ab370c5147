"""The integer contract as data: tensor table, neuron kinds and accumulator bounds.

docs/integer-spec.md in code form, shared by the converter (which proves the bounds before
writing a model) and the engine (which re-proves them before running one, so a hand-edited
`.bsi` cannot make any implementation wrap).
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Sequence, Tuple

import numpy as np

from .config import BSViTConfig

OPSET = 1
FORMAT = "bsvit-int"
INT32_MAX = 2**31 - 1
MAX_SHIFT = 16


class Layer(NamedTuple):
    """One neuron layer: its name, neuron kind, max spike, input max, in/out widths."""
    name: str
    kind: str          # "burst" or "signed"
    spike_max: int     # largest |spike| it emits
    input_max: int     # largest input count (0 for the attention neuron, which has no weights)
    cin: int
    cout: int


def layers(cfg: BSViTConfig) -> List[Layer]:
    """Every neuron layer in execution order (embed, then q, k, v, attn, proj, fc1, fc2)."""
    b, d, dm = cfg.burst_max, cfg.embed_dim, cfg.mlp_hidden
    out = [Layer("embed", "burst", b, 255, cfg.patch_dim, d)]
    for l in range(cfg.depth):
        stream = (2 * l + 1) * b
        p = f"blocks.{l}."
        out += [
            Layer(p + "attn.q", "burst", 1, stream, d, d),
            Layer(p + "attn.k", "burst", b, stream, d, d),
            Layer(p + "attn.v", "signed", 1, stream, d, d),
            Layer(p + "attn", "burst", b, 0, 0, d),
            Layer(p + "attn.proj", "burst", b, b, d, d),
            Layer(p + "mlp.fc1", "burst", b, stream + b, d, dm),
            Layer(p + "mlp.fc2", "burst", b, b, dm, d),
        ]
    return out


def tensor_table(cfg: BSViTConfig) -> Dict[str, Tuple[np.dtype, Tuple[int, ...]]]:
    """name -> (dtype, shape) of every tensor an integer model of this config has."""
    table: Dict[str, Tuple[np.dtype, Tuple[int, ...]]] = {}
    for layer in layers(cfg):
        if layer.cin:
            table[layer.name + ".weight"] = (np.dtype(np.int8), (layer.cin, layer.cout))
            bias_shape = (cfg.num_tokens, layer.cout) if layer.name == "embed" else (layer.cout,)
            table[layer.name + ".bias"] = (np.dtype(np.int32), bias_shape)
        table[layer.name + ".threshold"] = (np.dtype(np.int32), (layer.cout,))
    table["head.weight"] = (np.dtype(np.int8), (cfg.embed_dim, cfg.num_classes))
    table["head.bias"] = (np.dtype(np.int32), (cfg.num_classes,))
    return table


def window_size(cfg: BSViTConfig) -> int:
    """Most tokens any token attends to."""
    if cfg.adjacency_window is None:
        return cfg.num_tokens
    gh, gw = cfg.grid
    w = cfg.adjacency_window
    return min(w, gh) * min(w, gw)


def neuron_bound(current_max: np.ndarray, theta: np.ndarray, spike_max: int,
                 cfg: BSViTConfig) -> float:
    """Largest |value| in a neuron's arithmetic given |I| <= current_max (spec bounds).

    Computed in float64: every value that matters is < 2**53, so the comparison with
    INT32_MAX is exact; anything larger is far beyond it anyway.
    """
    t = cfg.timesteps
    j = np.asarray(current_max, dtype=np.float64)
    charge = (t + 1) * j if cfg.leak_shift is not None else t * j
    return float(max(np.max(charge), np.max(spike_max * np.asarray(theta, np.float64))))


def linear_current_max(weight: np.ndarray, bias: np.ndarray, input_max: int,
                       shift: int) -> np.ndarray:
    """max |I| per output (and per token for the embedding's [N, out] bias)."""
    acc = input_max * np.sum(np.abs(weight.astype(np.float64)), axis=0)     # [out]
    return acc * 2.0**shift + np.abs(bias.astype(np.float64))


def model_bounds(cfg: BSViTConfig, tensors: Dict[str, np.ndarray],
                 shifts: Dict[str, int]) -> Dict[str, int]:
    """Bound of every layer and the head; raises ValueError naming a layer that exceeds int32."""
    bounds: Dict[str, float] = {}
    o_max = window_size(cfg) * cfg.head_dim * cfg.burst_max
    for layer in layers(cfg):
        theta = tensors[layer.name + ".threshold"]
        if layer.cin:
            cur = linear_current_max(tensors[layer.name + ".weight"],
                                     tensors[layer.name + ".bias"], layer.input_max,
                                     shifts[layer.name])
        else:
            cur = np.full(theta.shape, float(o_max))
        bounds[layer.name] = neuron_bound(cur, theta, layer.spike_max, cfg)
    zmax = cfg.timesteps * cfg.num_tokens * cfg.stream_max
    hw, hb = tensors["head.weight"], tensors["head.bias"]
    bounds["head"] = float(np.max(np.sum(np.abs(hw.astype(np.float64)), axis=0) * zmax
                                  + np.abs(hb.astype(np.float64))))
    for name, bound in bounds.items():
        if bound > INT32_MAX:
            raise ValueError(f"layer '{name}': accumulator bound {bound:.6g} exceeds int32 "
                             f"({INT32_MAX})")
    return {k: int(v) for k, v in bounds.items()}


def grid_neighbours(cfg: BSViTConfig) -> Sequence[Sequence[int]]:
    """For each token i (row-major), the tokens j of its window, in row-major order.

    Global attention shares one `range` for every token: O(N) memory, not N² integers.
    """
    gh, gw = cfg.grid
    if cfg.adjacency_window is None:
        return [range(gh * gw)] * (gh * gw)
    r = (cfg.adjacency_window - 1) // 2
    out = []
    for gy in range(gh):
        for gx in range(gw):
            out.append([y * gw + x
                        for y in range(max(0, gy - r), min(gh, gy + r + 1))
                        for x in range(max(0, gx - r), min(gw, gx + r + 1))])
    return out
