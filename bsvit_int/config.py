"""BSViTConfig: the shape of a BSViT, shared by the PyTorch model, the converter and the engine.

Pure Python (no NumPy, no torch) so that every side reads the same validation rules.
Field names follow the vocabulary of vision-transformer code (timm, Spikformer).
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Optional, Tuple, Union

MAX_BURST = 15
_INT_FIELDS = ("in_chans", "patch_size", "embed_dim", "depth", "num_heads", "burst_max",
               "timesteps", "num_classes", "attn_threshold")
_OPTIONAL_INT_FIELDS = ("adjacency_window", "leak_shift")
MAX_TIMESTEPS = 64
MAX_LEAK_SHIFT = 15
MAX_ATTENTION_PAIRS = 2**22


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


@dataclass(frozen=True)
class BSViTConfig:
    """Configuration of a Burst Spiking Vision Transformer.

    img_size: int or (H, W); non-square images are allowed.
    in_chans: image channels (input is uint8 [H, W, C] in the engine).
    patch_size: p; H and W must be multiples of it. Tokens N = (H/p)·(W/p).
    embed_dim, depth, num_heads, mlp_ratio: as in ViT; embed_dim % num_heads == 0.
    adjacency_window: odd w >= 1 (token i attends to the w×w patch neighbourhood,
        clipped at the border), or None for global attention.
    burst_max: Bmax, 1..15, the most spikes a burst neuron emits in one step.
    timesteps: T, 1..64.
    num_classes: classes of the head.
    leak_shift: None for integrate-and-fire; k for a leaky neuron v += (I - v) / 2**k
        (time constant 2**k, rounded toward -inf in integer arithmetic).
    attn_threshold: integer threshold of the neuron on the attention output O; the
        attention "scale" of a float model is this threshold (no other scale exists).
    folded: True for a model whose BatchNorm is folded into its linear layers
        (what `snap` produces); trained models have folded=False.
    """

    img_size: Union[int, Tuple[int, int]] = 32
    in_chans: int = 3
    patch_size: int = 4
    embed_dim: int = 64
    depth: int = 2
    num_heads: int = 4
    mlp_ratio: float = 2.0
    adjacency_window: Optional[int] = 3
    burst_max: int = 4
    timesteps: int = 4
    num_classes: int = 10
    leak_shift: Optional[int] = None
    attn_threshold: int = 4
    folded: bool = False

    def __post_init__(self) -> None:
        # Types are checked, never coerced: a model file saying timesteps 2.0 or window "3"
        # is malformed, not rounded. Integers may be any Integral (NumPy's included).
        size = self.img_size
        if isinstance(size, (list, tuple)):
            if len(size) != 2 or not all(_is_int(v) for v in size):
                raise ValueError(f"img_size must be an int or (H, W) of ints, got {size!r}")
            size = (int(size[0]), int(size[1]))
        elif _is_int(size):
            size = (int(size), int(size))
        else:
            raise ValueError(f"img_size must be an int or (H, W) of ints, got {size!r}")
        object.__setattr__(self, "img_size", size)
        for name in _INT_FIELDS + _OPTIONAL_INT_FIELDS:
            v = getattr(self, name)
            if v is None and name in _OPTIONAL_INT_FIELDS:
                continue
            if not _is_int(v):
                raise ValueError(f"{name} must be an integer"
                                 f"{' or None' if name in _OPTIONAL_INT_FIELDS else ''}, "
                                 f"got {v!r}")
            object.__setattr__(self, name, int(v))
        r = self.mlp_ratio
        if isinstance(r, bool) or not isinstance(r, numbers.Real) or not math.isfinite(r):
            raise ValueError(f"mlp_ratio must be a finite number, got {r!r}")
        object.__setattr__(self, "mlp_ratio", float(r))
        if not isinstance(self.folded, bool):
            raise ValueError(f"folded must be true or false, got {self.folded!r}")
        self.validate()

    # -- derived sizes -------------------------------------------------------------
    @property
    def height(self) -> int:
        return self.img_size[0]

    @property
    def width(self) -> int:
        return self.img_size[1]

    @property
    def grid(self) -> Tuple[int, int]:
        return (self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size)

    @property
    def num_tokens(self) -> int:
        gh, gw = self.grid
        return gh * gw

    @property
    def patch_dim(self) -> int:
        return self.patch_size * self.patch_size * self.in_chans

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        # Half away from zero, the project's one rounding rule (Python's round() is
        # half-to-even and C's lround is half-away: say which, so both agree).
        return max(1, int(math.floor(self.embed_dim * self.mlp_ratio + 0.5)))

    @property
    def stream_max(self) -> int:
        """Largest spike count the residual stream can hold after the last block."""
        return (2 * self.depth + 1) * self.burst_max

    # -- validation ----------------------------------------------------------------
    def validate(self) -> None:
        """Raise ValueError naming the first field that is out of range."""
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(msg)

        for name in ("in_chans", "patch_size", "embed_dim", "num_heads", "num_classes"):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                 f"{name} must be a positive integer, got {v!r}")
        need(isinstance(self.depth, int) and 0 <= self.depth <= 64,
             f"depth must be an integer in 0..64, got {self.depth!r}")
        h, w = self.img_size
        need(h >= 1 and w >= 1, f"img_size must be positive, got {self.img_size}")
        need(h % self.patch_size == 0 and w % self.patch_size == 0,
             f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        need(self.embed_dim % self.num_heads == 0,
             f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        need(0 < self.mlp_ratio <= 64, f"mlp_ratio must be in (0, 64], got {self.mlp_ratio}")
        need(h <= 4096 and w <= 4096, f"img_size {self.img_size} exceeds 4096 a side")
        need(self.embed_dim <= 8192 and self.mlp_hidden <= 65536 and self.num_classes <= 65536,
             "embed_dim (<= 8192), MLP width (<= 65536) or num_classes (<= 65536) too large")
        need(self.in_chans <= 64, f"in_chans must be <= 64, got {self.in_chans}")
        aw = self.adjacency_window
        need(aw is None or (aw >= 1 and aw % 2 == 1),
             f"adjacency_window must be an odd integer >= 1 or None (global), got {aw!r}")
        # Attention visits tokens × window pairs per step: cap them so a small file cannot
        # ask for quadratic work (2048 tokens with global attention is the largest allowed).
        gh, gw = self.grid
        win = gh * gw if aw is None else min(aw, gh) * min(aw, gw)
        need(gh * gw * win <= MAX_ATTENTION_PAIRS,
             f"{gh * gw} tokens × {win} window tokens = {gh * gw * win} attention pairs, more "
             f"than the {MAX_ATTENTION_PAIRS} supported; use a smaller adjacency_window")
        need(1 <= self.burst_max <= MAX_BURST,
             f"burst_max must be in 1..{MAX_BURST}, got {self.burst_max!r}")
        need(1 <= self.timesteps <= MAX_TIMESTEPS,
             f"timesteps must be in 1..{MAX_TIMESTEPS}, got {self.timesteps!r}")
        ls = self.leak_shift
        need(ls is None or 0 <= ls <= MAX_LEAK_SHIFT,
             f"leak_shift must be None or in 0..{MAX_LEAK_SHIFT}, got {ls!r}")
        need(isinstance(self.attn_threshold, int) and self.attn_threshold >= 1,
             f"attn_threshold must be a positive integer, got {self.attn_threshold!r}")
        need(self.stream_max <= 255,
             f"the residual stream can reach (2*depth+1)*burst_max = {self.stream_max} "
             "spikes, more than the 255 a uint8 count holds; lower depth or burst_max")

    # -- (de)serialisation -----------------------------------------------------------
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["img_size"] = list(self.img_size)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "BSViTConfig":
        """Build from a dict; unknown keys are an error that names them."""
        if not isinstance(d, dict):
            raise ValueError(f"config must be a dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config field(s): {', '.join(map(str, unknown))}")
        return cls(**d)

    def replace(self, **changes) -> "BSViTConfig":
        return dataclasses.replace(self, **changes)
