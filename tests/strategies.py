"""Hypothesis strategies and model builders shared by the BSViT property tests.

`case_params()` draws a complete example: a small BSViTConfig, seeds and options from which
`CaseParams.build()` makes a trained-form (unfolded) BSViT with random weights, random
BatchNorm statistics, random input normalisation and position bias, and a batch of uint8
images [B, H, W, C].

Every model built here has one *guaranteed* embedding channel (channel 0): its BatchNorm
scale is small and its BatchNorm bias is 1.5 * 2**leak_shift, so its float input current is
within (1.5 +- 0.2) * 2**leak_shift thresholds at every token for every image.
After quantization it therefore emits at least one spike at step 0 in every token of every
image (leaky or not). Tests use that as a non-vacuity check that no implementation can
pass by being silent.

When depth >= 1, block 0's attention has the same kind of guaranteed path: channel 0 of its
q, k and v projections is driven by its BatchNorm bias alone (the weights can move the
current by at most 0.2 thresholds), so at step 0 every token emits q = 1, k = burst_max and
v = +1 there. Head 0's score for every pair in the window is then at least burst_max, and
the attention neuron's channel 0 receives at least (smallest window) * burst_max at step 0;
`attention_guaranteed(cfg)` says when that alone crosses its threshold after the leak.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from hypothesis import assume
from hypothesis import strategies as st

from bsvit_int.converters import BSViT, BSViTConfig

GUARANTEED_CHANNEL = 0
# Weight layers whose row GUARANTEED_CHANNEL carries a guaranteed spike (never zeroed).
GUARANTEED_ROWS = ("embed.proj", "blocks.0.attn.q.linear", "blocks.0.attn.k.linear",
                   "blocks.0.attn.v.linear")


@st.composite
def configs(draw) -> BSViTConfig:
    """Small configs: non-square grids, every window/burst/leak option, depth 0..3."""
    gh = draw(st.integers(1, 4))
    gw = draw(st.integers(1, 4))
    p = draw(st.integers(1, 3))
    in_chans = draw(st.integers(1, 3))
    heads = draw(st.integers(1, 4))
    head_dim = draw(st.integers(1, 6))
    depth = draw(st.integers(0, 3))
    burst_max = draw(st.sampled_from([1, 2, 4, 8, 15]))
    assume((2 * depth + 1) * burst_max <= 255)
    return BSViTConfig(
        img_size=(gh * p, gw * p),
        in_chans=in_chans,
        patch_size=p,
        embed_dim=heads * head_dim,
        depth=depth,
        num_heads=heads,
        mlp_ratio=draw(st.sampled_from([0.5, 1.0, 1.5, 2.0])),
        adjacency_window=draw(st.sampled_from([1, 3, 5, None])),
        burst_max=burst_max,
        timesteps=draw(st.integers(1, 6)),
        num_classes=draw(st.integers(2, 6)),
        leak_shift=draw(st.sampled_from([None, 0, 1, 3])),
        attn_threshold=draw(st.integers(1, 8)),
    )


def randomize(model: BSViT, seed: int, *, gain: float = 1.0, edge: str = "none") -> BSViT:
    """Give `model` random weights, BatchNorm statistics, normalisation and position bias.

    BatchNorm: running_mean ~ N(0, 1), running_var ~ U(0.1, 2.1), weight ~ N(1, 0.5),
    bias ~ N(0.3, 0.5): a mix of silent, moderate and saturating channels.
    edge: "zero_row" zeroes one output row of one weight layer (the scale-1 path of the
    quantizer); "zero_head" zeroes the whole head weight (logit scale 1).
    """
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        weighted = []
        for name, mod in model.named_modules():
            if isinstance(mod, (nn.Linear, nn.Conv2d)):
                fan_in = mod.weight[0].numel()
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g)
                                 * (gain / math.sqrt(fan_in)))
                if mod.bias is not None:
                    mod.bias.copy_(torch.randn(mod.bias.shape, generator=g) * 0.5)
                if name != "head":
                    weighted.append((name, mod))
            elif isinstance(mod, nn.BatchNorm1d):
                n = mod.num_features
                mod.running_mean.copy_(torch.randn(n, generator=g))
                mod.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)
                mod.weight.copy_(torch.randn(n, generator=g) * 0.5 + 1)
                mod.bias.copy_(torch.randn(n, generator=g) * 0.5 + 0.3)
        e = model.embed
        e.mean.copy_(torch.rand(cfg.in_chans, generator=g) * 255)
        e.std.copy_(torch.rand(cfg.in_chans, generator=g) * 70 + 10)
        e.pos.copy_(torch.randn(e.pos.shape, generator=g) * 0.5)

        # The guaranteed channel: its folded weights W'[0, k] = a * w[k] / std[c] are scaled
        # so that 255 * K * max|W'| = 0.2 * 2**leak, hence its float current lies within
        # (1.5 +- 0.2) * 2**leak thresholds for any image (conv bias and position bias are
        # zero, running mean 0): the first step's membrane floor(I / 2**leak) is 1.3..1.7
        # thresholds. The weights stay non-trivial (only ~127*255*K*5 below the bias after
        # quantization, far inside the int32 bounds).
        c = GUARANTEED_CHANNEL
        k = cfg.patch_dim
        leak_gain = 2.0 ** (cfg.leak_shift or 0)
        per_k_std = e.std.repeat(cfg.patch_size * cfg.patch_size)          # k = (dy, dx, c)
        w0 = e.proj.weight[c].permute(1, 2, 0).reshape(-1)                  # [K] in k order
        w_max = float((w0.abs() / per_k_std).max())
        if w_max == 0.0:
            e.proj.weight[c] = 1.0 / math.sqrt(k)
            w_max = float((e.proj.weight[c].permute(1, 2, 0).reshape(-1).abs()
                           / per_k_std).max())
        target = 0.2 * leak_gain / (255.0 * k)
        eps = e.bn.eps
        e.proj.bias[c] = 0.0
        e.bn.running_mean[c] = 0.0
        e.bn.running_var[c] = 1.0
        e.bn.weight[c] = target / w_max * math.sqrt(1.0 + eps)
        e.bn.bias[c] = 1.5 * leak_gain
        e.pos[:, c] = 0.0

        if cfg.depth >= 1:
            # Block 0 reads the embedding's spikes only: inputs in [0, burst_max].
            attn = model.blocks[0].attn
            for proj, level in ((attn.q, 1), (attn.k, cfg.burst_max), (attn.v, 1)):
                _drive_by_bias(proj, c, level, cfg.burst_max, leak_gain)

        if edge == "zero_row":
            candidates = [(n, m) for n, m in weighted
                          if not (n in GUARANTEED_ROWS and m.weight.shape[0] == 1)]
            if candidates:
                idx = int(torch.randint(len(candidates), (1,), generator=g))
                name, mod = candidates[idx]
                rows = mod.weight.shape[0]
                lo = 1 if name in GUARANTEED_ROWS else 0      # keep the guaranteed channel
                row = int(torch.randint(lo, rows, (1,), generator=g))
                mod.weight[row] = 0.0
        elif edge == "zero_head":
            model.head.weight.zero_()
    return model.eval()


def _drive_by_bias(proj, c: int, level: int, x_max: int, leak_gain: float) -> None:
    """Make output channel c of a Projection fire `level` at step 0 for any input in
    [0, x_max]: BatchNorm bias (level + 0.5) * 2**leak, weights scaled so that they move
    the current by at most 0.2 * 2**leak (the step-0 membrane is level + 0.3 .. 0.7)."""
    w = proj.linear.weight
    if float(w[c].abs().sum()) == 0.0:
        w[c] = 1.0 / math.sqrt(w.shape[1])
    bn = proj.bn
    bn.running_mean[c] = 0.0
    bn.running_var[c] = 1.0
    bn.weight[c] = (0.2 * leak_gain / (x_max * float(w[c].abs().sum()))
                    * math.sqrt(1.0 + bn.eps))
    bn.bias[c] = (level + 0.5) * leak_gain


def attention_guaranteed(cfg: BSViTConfig) -> bool:
    """True when block 0's attention channel 0 must fire at step 0 in every token.

    Its step-0 current is sum over the window of score * v >= window * burst_max (the
    guaranteed q, k, v channels above); the membrane after the leak is that >> leak_shift.
    """
    if cfg.depth < 1:
        return False
    gh, gw = cfg.grid
    if cfg.adjacency_window is None:
        smallest = gh * gw
    else:
        r = (cfg.adjacency_window - 1) // 2
        smallest = min(r + 1, gh) * min(r + 1, gw)      # a corner token's window
    return (smallest * cfg.burst_max) >> (cfg.leak_shift or 0) >= cfg.attn_threshold


def images(cfg: BSViTConfig, batch: int, seed: int, kind: str) -> np.ndarray:
    """uint8 images [B, H, W, C]: uniform noise, a constant per image, or only 0/255."""
    rng = np.random.default_rng(seed)
    shape = (batch, cfg.height, cfg.width, cfg.in_chans)
    if kind == "constant":
        return np.broadcast_to(rng.integers(0, 256, (batch, 1, 1, 1), dtype=np.uint8),
                               shape).copy()
    if kind == "extremes":
        return (rng.integers(0, 2, shape, dtype=np.uint8) * np.uint8(255)).astype(np.uint8)
    return rng.integers(0, 256, shape, dtype=np.uint8)


@dataclass(frozen=True)
class CaseParams:
    """Everything that determines one example; `build()` makes the model and images.

    Hypothesis prints this for a falsifying example, and it rebuilds the example exactly:
    `CaseParams(...).build()`.
    """
    config: BSViTConfig
    torch_seed: int
    gain: float
    edge: str
    image_seed: int
    batch: int
    image_kind: str

    def build(self):
        """(model, images): the trained-form BSViT and uint8 images [B, H, W, C]."""
        model = randomize(BSViT(self.config), self.torch_seed, gain=self.gain, edge=self.edge)
        return model, images(self.config, self.batch, self.image_seed, self.image_kind)


@st.composite
def case_params(draw) -> CaseParams:
    """Parameters only (cheap to generate); models are built in the test body."""
    return CaseParams(
        config=draw(configs()),
        torch_seed=draw(st.integers(0, 2**31 - 1)),
        gain=draw(st.sampled_from([0.5, 1.0, 2.0])),
        edge=draw(st.sampled_from(["none", "none", "none", "zero_row", "zero_head"])),
        image_seed=draw(st.integers(0, 2**32 - 1)),
        batch=draw(st.integers(1, 3)),
        image_kind=draw(st.sampled_from(["uniform", "uniform", "constant", "extremes"])),
    )
