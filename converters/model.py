"""The reference BSViT in PyTorch: trainable with surrogate gradients, and exact on the grid.

One forward serves three purposes, chosen by the model's structure and dtype:

* a trained model (``config.folded == False``, float32): Linear → BatchNorm → neuron,
  BatchNorm in train or eval mode, surrogate gradients through every spike;
* a snapped model (``folded == True``, float64, made by ``snap``): BatchNorm folded away,
  every parameter an integer (times a power of two), so float64 arithmetic is exact and
  the spikes equal the integer engine's;
* an integer-faithful model (``folded == True``, int64, made by ``integer_faithful``): the
  same code on int64 tensors, i.e. the integer engine's arithmetic in PyTorch.

Shapes: activations are ``[T, B, N, C]`` (time, batch, tokens, channels) inside the model;
recorded spikes are ``[B, T, N, C]`` like the engine's. See docs/integer-spec.md.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from bsvit_int.config import BSViTConfig

CHECKPOINT_FORMAT = "bsvit-checkpoint"
CHECKPOINT_VERSION = 1


# -- neurons ------------------------------------------------------------------------

class _BurstSpike(torch.autograd.Function):
    """s = clamp(floor(u), 0, bmax) with a rectangular surrogate gradient on (0, bmax + 1)."""

    @staticmethod
    def forward(ctx, u, bmax: int):
        ctx.save_for_backward(u)
        ctx.bmax = bmax
        return torch.clamp(torch.floor(u), 0, bmax)

    @staticmethod
    def backward(ctx, grad):
        (u,) = ctx.saved_tensors
        window = (u > 0) & (u < ctx.bmax + 1)
        return grad * window.to(grad.dtype), None


class _SignedSpike(torch.autograd.Function):
    """s = +1 if u >= 1, -1 if u <= -1, else 0; surrogate gradient on 0 < |u| < 2."""

    @staticmethod
    def forward(ctx, u):
        ctx.save_for_backward(u)
        return (u >= 1).to(u.dtype) - (u <= -1).to(u.dtype)

    @staticmethod
    def backward(ctx, grad):
        (u,) = ctx.saved_tensors
        a = u.abs()
        return grad * ((a > 0) & (a < 2)).to(grad.dtype)


class Neuron(nn.Module):
    """Integrate-and-fire or leaky neuron with soft reset, burst/binary/signed emission.

    threshold: per-channel buffer (1.0 in a trained model, integers in a folded one).
    The folded (grid) form floors the leak term, as the integer spec does; the trained
    form leaks continuously.
    """

    def __init__(self, kind: str, channels: int, bmax: int, leak_shift: Optional[int],
                 grid: bool, threshold: float = 1.0):
        super().__init__()
        if kind not in ("burst", "signed"):
            raise ValueError(f"unknown neuron kind {kind!r}")
        self.kind = kind
        self.bmax = bmax
        self.leak_shift = leak_shift
        self.grid = grid
        self.register_buffer("threshold", torch.full((channels,), float(threshold)))

    def forward(self, current: torch.Tensor, steps: int) -> torch.Tensor:
        """current: [T, B, N, C], or [B, N, C] re-injected at each of `steps` steps."""
        theta = self.threshold
        integer = not torch.is_floating_point(theta)
        v = None
        out = []
        for t in range(steps):
            i_t = current if current.dim() == 3 else current[t]
            if v is None:
                v = torch.zeros_like(i_t)
            if self.leak_shift is None:
                v = v + i_t
            elif integer:
                v = v + ((i_t - v) >> self.leak_shift)
            elif self.grid:
                v = v + torch.floor((i_t - v) / (1 << self.leak_shift))
            else:
                v = v + (i_t - v) / (1 << self.leak_shift)
            s = self._emit(v, theta, integer)
            v = v - s.detach() * theta
            out.append(s)
        return torch.stack(out)

    def _emit(self, v, theta, integer: bool):
        if integer:
            if self.kind == "signed":
                return (v >= theta).to(v.dtype) - (v <= -theta).to(v.dtype)
            q = torch.div(v, theta, rounding_mode="floor")
            return torch.clamp(q, 0, self.bmax)
        u = v / theta
        if self.kind == "signed":
            return _SignedSpike.apply(u)
        return _BurstSpike.apply(u, self.bmax)


# -- layers ---------------------------------------------------------------------------

def _dense(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]):
    """x @ weight.T + bias, for float and int64 alike (F.linear has no int64 kernel)."""
    y = torch.matmul(x, weight.t())
    return y if bias is None else y + bias


class Projection(nn.Module):
    """Linear → BatchNorm (trained) or Linear with bias (folded), then a neuron."""

    def __init__(self, cin: int, cout: int, neuron: Neuron, folded: bool):
        super().__init__()
        self.linear = nn.Linear(cin, cout, bias=folded)
        self.bn = nn.Identity() if folded else nn.BatchNorm1d(cout)
        self.neuron = neuron

    def current(self, x: torch.Tensor) -> torch.Tensor:
        y = _dense(x, self.linear.weight, self.linear.bias)
        if isinstance(self.bn, nn.BatchNorm1d):
            shape = y.shape
            y = self.bn(y.reshape(-1, shape[-1])).reshape(shape)
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.neuron(self.current(x), x.shape[0])


def patchify(images: torch.Tensor, p: int) -> torch.Tensor:
    """[B, C, H, W] → [B, N, p*p*C], token n = gy*Gw + gx, index k = (dy*p + dx)*C + c."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // p, p, w // p, p)          # b c gy dy gx dx
    x = x.permute(0, 2, 4, 3, 5, 1)                          # b gy gx dy dx c
    return x.reshape(b, (h // p) * (w // p), p * p * c)


class PatchEmbed(nn.Module):
    """Normalise → Conv(k=p, s=p) → BatchNorm → + position bias → burst neuron."""

    def __init__(self, cfg: BSViTConfig, neuron: Neuron):
        super().__init__()
        self.patch_size = cfg.patch_size
        self.register_buffer("mean", torch.zeros(cfg.in_chans))
        self.register_buffer("std", torch.ones(cfg.in_chans))
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, cfg.patch_size, cfg.patch_size,
                              bias=not cfg.folded)
        self.bn = nn.Identity() if cfg.folded else nn.BatchNorm1d(cfg.embed_dim)
        self.pos = nn.Parameter(torch.zeros(cfg.num_tokens, cfg.embed_dim))
        self.neuron = neuron

    def current(self, images: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] raw pixels → [B, N, D] input current (the same at every step)."""
        if torch.is_floating_point(self.mean):
            images = (images - self.mean[:, None, None]) / self.std[:, None, None]
        # Folded models have mean 0 and std 1 (normalisation lives in the weights).
        patches = patchify(images, self.patch_size)
        w = self.proj.weight.permute(0, 2, 3, 1).reshape(self.proj.weight.shape[0], -1)
        y = _dense(patches, w, self.proj.bias)
        if isinstance(self.bn, nn.BatchNorm1d):
            shape = y.shape
            y = self.bn(y.reshape(-1, shape[-1])).reshape(shape)
        return y + self.pos


def window_mask(grid, window: Optional[int]) -> torch.Tensor:
    """[N, N] bool: token j is in the w×w neighbourhood of token i (clipped at borders)."""
    gh, gw = grid
    gy = torch.arange(gh).repeat_interleave(gw)
    gx = torch.arange(gw).repeat(gh)
    if window is None:
        return torch.ones(gh * gw, gh * gw, dtype=torch.bool)
    r = (window - 1) // 2
    return ((gy[:, None] - gy[None, :]).abs() <= r) & ((gx[:, None] - gx[None, :]).abs() <= r)


class DBSSA(nn.Module):
    """Dual burst spiking self-attention: binary Q, burst K, signed V, windowed, no softmax."""

    def __init__(self, cfg: BSViTConfig, make_neuron):
        super().__init__()
        d = cfg.embed_dim
        self.num_heads = cfg.num_heads
        self.q = Projection(d, d, make_neuron("burst", d, 1), cfg.folded)
        self.k = Projection(d, d, make_neuron("burst", d, cfg.burst_max), cfg.folded)
        self.v = Projection(d, d, make_neuron("signed", d, 1), cfg.folded)
        self.neuron = make_neuron("burst", d, cfg.burst_max, threshold=cfg.attn_threshold)
        self.proj = Projection(d, d, make_neuron("burst", d, cfg.burst_max), cfg.folded)
        self.register_buffer("mask", window_mask(cfg.grid, cfg.adjacency_window),
                             persistent=False)

    def forward(self, x: torch.Tensor, record, prefix: str) -> torch.Tensor:
        t, b, n, d = x.shape
        h = self.num_heads
        q, k, v = self.q(x), self.k(x), self.v(x)
        _record(record, prefix + ".q", q)
        _record(record, prefix + ".k", k)
        _record(record, prefix + ".v", v)

        def heads(z):
            return z.reshape(t, b, n, h, d // h).transpose(2, 3)   # [T, B, H, N, dh]

        scores = torch.matmul(heads(q), heads(k).transpose(-1, -2))  # [T, B, H, N, N]
        scores = scores * self.mask.to(scores.dtype)
        out = torch.matmul(scores, heads(v)).transpose(2, 3).reshape(t, b, n, d)
        a = self.neuron(out, t)
        _record(record, prefix, a)
        p = self.proj(a)
        _record(record, prefix + ".proj", p)
        return p


class MLP(nn.Module):
    def __init__(self, cfg: BSViTConfig, make_neuron):
        super().__init__()
        d, hdim = cfg.embed_dim, cfg.mlp_hidden
        self.fc1 = Projection(d, hdim, make_neuron("burst", hdim, cfg.burst_max), cfg.folded)
        self.fc2 = Projection(hdim, d, make_neuron("burst", d, cfg.burst_max), cfg.folded)

    def forward(self, x, record, prefix: str):
        hid = self.fc1(x)
        _record(record, prefix + ".fc1", hid)
        out = self.fc2(hid)
        _record(record, prefix + ".fc2", out)
        return out


class Block(nn.Module):
    def __init__(self, cfg: BSViTConfig, make_neuron):
        super().__init__()
        self.attn = DBSSA(cfg, make_neuron)
        self.mlp = MLP(cfg, make_neuron)

    def forward(self, x, record, prefix: str):
        # Spike-count residual: the stream holds how many spikes each channel has
        # received, bounded by (2*depth + 1) * burst_max (docs/integer-spec.md).
        x = x + self.attn(x, record, prefix + ".attn")
        return x + self.mlp(x, record, prefix + ".mlp")


def _record(record: Optional[Dict[str, torch.Tensor]], name: str, spikes: torch.Tensor):
    if record is not None:
        record[name] = spikes.detach().transpose(0, 1)   # [B, T, N, C]


# -- the model ------------------------------------------------------------------------

class BSViT(nn.Module):
    """Burst Spiking Vision Transformer; forward takes raw pixels [B, C, H, W] (0..255)."""

    def __init__(self, config: BSViTConfig):
        super().__init__()
        if not isinstance(config, BSViTConfig):
            raise TypeError("config must be a BSViTConfig")
        self.config = config
        cfg = config

        def make_neuron(kind, channels, bmax, threshold=1.0):
            return Neuron(kind, channels, bmax, cfg.leak_shift, cfg.folded, threshold)

        self.embed = PatchEmbed(cfg, make_neuron("burst", cfg.embed_dim, cfg.burst_max))
        self.blocks = nn.ModuleList(Block(cfg, make_neuron) for _ in range(cfg.depth))
        self.head = nn.Linear(cfg.embed_dim, cfg.num_classes)
        # Folded models compute logits = head(sum of spikes) * head_scale / (T*N), the
        # exact map of docs/integer-spec.md; trained models use head(mean of spikes).
        self.register_buffer("head_scale", torch.ones(()))

    # The part of the forward that both forms share: spikes and the summed stream.
    def features(self, images: torch.Tensor, record=None) -> torch.Tensor:
        cfg = self.config
        if images.dim() != 4 or tuple(images.shape[1:]) != (cfg.in_chans, *cfg.img_size):
            raise ValueError(f"expected images [B, {cfg.in_chans}, {cfg.height}, {cfg.width}], "
                             f"got {list(images.shape)}")
        x = self.embed.neuron(self.embed.current(images), cfg.timesteps)   # [T, B, N, D]
        _record(record, "embed", x)
        for i, block in enumerate(self.blocks):
            x = block(x, record, f"blocks.{i}")
        return x.sum(dim=(0, 2))                                          # [B, D]

    def head_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Head on the summed stream; integer-valued (before scaling) in folded models."""
        return _dense(z, self.head.weight, self.head.bias)

    def forward(self, images: torch.Tensor, record: Optional[dict] = None) -> torch.Tensor:
        """Float logits [B, classes]. `record`, if a dict, receives every layer's spikes."""
        cfg = self.config
        denom = cfg.timesteps * cfg.num_tokens
        if not cfg.folded:
            images = images.to(self.head.weight.dtype)
            return self.head(self.features(images, record) / denom)
        if torch.is_floating_point(self.head.weight):
            images = images.to(self.head.weight.dtype)
        else:
            images = images.to(torch.int64)
        logits = self.head_logits(self.features(images, record))
        return logits.to(torch.float64) * self.head_scale.to(torch.float64) / denom

    def integer_logits(self, images: torch.Tensor, record: Optional[dict] = None):
        """int64 logits of an integer-faithful model (see `integer_faithful`)."""
        if torch.is_floating_point(self.head.weight):
            raise TypeError("integer_logits needs an integer-faithful model; "
                            "call bsvit_int.converters.integer_faithful(model) first")
        return self.head_logits(self.features(images.to(torch.int64), record))

    def integer_faithful(self) -> "BSViT":
        """This model quantized exactly as bsvit-convert does, computing in int64."""
        from .quantizer import integer_faithful
        return integer_faithful(self)

    # -- checkpoints ----------------------------------------------------------------------
    def save(self, path, training: Optional[dict] = None, labels=None) -> None:
        """Write {format, version, config, modules, state_dict, training}.

        Loads with torch.load(weights_only=True). `training` is plain data describing how
        the model was made (data set and split, recipe, validation accuracy); bsvit-convert
        uses its "dataset" to evaluate the conversion on the held-out split by default.
        `labels`: one class name per class, carried into the .bsi for bsvit-run.
        """
        if labels is not None:
            labels = [str(x) for x in labels]
            if len(labels) != self.config.num_classes:
                raise ValueError(f"{len(labels)} labels for {self.config.num_classes} classes")
        ckpt = {
            "labels": labels,
            "training": dict(training or {}),
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "config": self.config.to_dict(),
            "modules": {name: type(m).__name__ for name, m in self.named_modules() if name},
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
        }
        from .checkpoint import atomic_torch_save
        atomic_torch_save(ckpt, path)

    @classmethod
    def load(cls, path) -> "BSViT":
        """Load a checkpoint written by `save` (weights_only=True: no code runs)."""
        from .checkpoint import load_checkpoint
        ckpt = load_checkpoint(path)
        model = cls(BSViTConfig.from_dict(ckpt["config"]))
        model.load_state_dict(ckpt["state_dict"])
        return model
