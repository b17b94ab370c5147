"""Build the benchmark model: a BSViT of the issue's shape with a calibrated firing rate.

    python benchmarks/make_model.py [--out benchmarks/out] [--rate 0.15]

Shape (issue 3): 32×32×3 input, patch 4 (8×8 = 64 tokens), D = 256, depth 4, 8 heads,
MLP ×4, window 3, Bmax 4, T = 4, integrate-and-fire, 10 classes.

No trained model of this shape exists in the repository, so the weights are random
(PyTorch's default initialisation, fixed seed) and the BatchNorm statistics are
calibrated layer by layer, in execution order, on real images (scikit-learn's digits,
upscaled 4× to 32×32 and given three tinted channels): each BatchNorm gets the running mean
and variance of its own input, gain 1, and a bias found by bisection so that its neuron
fires (emits a non-zero spike) in `rate` of its neuron-steps. The signed V neuron is
calibrated by its gain instead (bias 0), and each attention neuron by its integer
threshold. The result is converted with `bsvit_int.converters.convert` to `bench.bsi`.

Writes `<out>/bench.pt` (float checkpoint, the peers' model), `<out>/bench.bsi` and
`<out>/bench-report.json`. `<out>` is git-ignored (benchmarks/.gitignore).
"""
from __future__ import annotations

import argparse
import os

import numpy as np

from bsvit_int import spec
from bsvit_int.config import BSViTConfig

CONFIG = BSViTConfig(img_size=32, in_chans=3, patch_size=4, embed_dim=256, depth=4,
                     num_heads=8, mlp_ratio=4.0, adjacency_window=3, burst_max=4,
                     timesteps=4, num_classes=10, leak_shift=None, attn_threshold=4)
SEED = 0


def bench_images(n: int, offset: int = 0) -> np.ndarray:
    """n real images uint8 [n, 32, 32, 3]: sklearn digits upscaled 4×, three tints."""
    from sklearn.datasets import load_digits
    d = load_digits().images[offset:offset + n]                     # [n, 8, 8] in 0..16
    g = np.kron(d, np.ones((4, 4))) * (255.0 / 16.0)                # [n, 32, 32]
    tint = np.array([1.0, 0.75, 0.5])
    ramp = np.linspace(0.0, 60.0, 32)[None, :, None, None]          # a horizontal gradient
    x = g[..., None] * tint + ramp * np.array([0.0, 0.5, 1.0])
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def _rate(s) -> float:
    return float((s != 0).float().mean())


def _bisect(f, lo: float, hi: float, target: float, increasing: bool, steps: int = 30):
    """x in [lo, hi] with f(x) ~= target for a monotone f."""
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        if (f(mid) < target) == increasing:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def calibrate(model, images: np.ndarray, rate: float):
    """Set every BatchNorm (and attention threshold) so each neuron layer fires at `rate`."""
    import torch
    with torch.no_grad():
        return _calibrate(model, images, rate)


def _calibrate(model, images: np.ndarray, rate: float):
    import torch
    import torch.nn as nn
    cfg = model.config
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    modules = dict(model.named_modules())
    t_steps = cfg.timesteps
    for layer in spec.layers(cfg):
        name = layer.name
        if name == "embed":
            e = model.embed
            bn, e.bn = e.bn, nn.Identity()
            y = (e.current(x) - e.pos).reshape(-1, cfg.embed_dim)       # [B*N, D]
            e.bn = bn
            neuron, shape, extra = e.neuron, (len(images), cfg.num_tokens, -1), e.pos
        else:
            mod = modules[name]
            target_mod = mod.neuron if not layer.cin else mod.bn
            captured = {}

            def hook(_m, inp, _out, captured=captured):
                captured["y"] = inp[0].detach().clone()

            h = target_mod.register_forward_hook(hook)
            model(x)
            h.remove()
            y = captured["y"]
            if not layer.cin:                       # attention output O: integer threshold
                o = y                               # [T, B, N, D]
                neuron = mod.neuron
                best = None
                for th in range(1, 4096):
                    neuron.threshold.fill_(float(th))
                    r = _rate(neuron(o, t_steps))
                    if best is None or abs(r - rate) < abs(best[1] - rate):
                        best = (th, r)
                    if r < rate:
                        break
                neuron.threshold.fill_(float(best[0]))
                continue
            bn = mod.bn
            neuron, shape, extra = mod.neuron, (t_steps, len(images), cfg.num_tokens, -1), 0.0
        bn = modules[name + ".bn"] if name != "embed" else model.embed.bn
        mean, var = y.mean(0), y.var(0) + 1e-6
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        norm = ((y - mean) / torch.sqrt(var + bn.eps)).reshape(shape)

        def fire(gain, bias):
            u = norm * gain + bias + extra
            return _rate(neuron(u, t_steps))

        if layer.kind == "signed":
            gain = _bisect(lambda g: fire(g, 0.0), 0.01, 20.0, rate, increasing=True)
            bn.weight.fill_(gain)
            bn.bias.fill_(0.0)
        else:
            bias = _bisect(lambda b: fire(1.0, b), -10.0, 5.0, rate, increasing=True)
            bn.weight.fill_(1.0)
            bn.bias.fill_(bias)
    return model.eval()


def build(out: str, rate: float = 0.15, calib_images: int = 32) -> str:
    """Write bench.pt and bench.bsi under `out`; returns the .bsi path."""
    import torch
    from bsvit_int.converters import BSViT, convert
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(SEED)
    model = BSViT(CONFIG).eval()
    with torch.no_grad():
        model.embed.mean.fill_(128.0)
        model.embed.std.fill_(64.0)
        model.embed.pos.normal_(0.0, 0.1)
    calibrate(model, bench_images(calib_images), rate)
    pt = os.path.join(out, "bench.pt")
    bsi = os.path.join(out, "bench.bsi")
    model.save(pt, training={"recipe": "random weights, BatchNorm calibrated to a firing "
                                       f"rate of {rate} on upscaled digits (benchmark only)"})
    convert(pt, bsi, report_path=os.path.join(out, "bench-report.json"), eval_data=None)
    return bsi


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out"))
    ap.add_argument("--rate", type=float, default=0.15)
    args = ap.parse_args(argv)
    print(build(args.out, args.rate))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
