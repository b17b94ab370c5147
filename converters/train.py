"""Train a BSViT with surrogate gradients; the recipe of the bundled models.

    python -m bsvit_int.converters.train digits --out bsvit_int/models/digits.pt

Checkpoint choice uses the validation split carved from the training images (see
bsvit_int.datasets); the held-out test split is only ever reported.
"""
from __future__ import annotations

import argparse
import json
import copy
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from bsvit_int.config import BSViTConfig

from bsvit_int import datasets
from .model import BSViT

RECIPES = {
    "digits": {
        "config": dict(img_size=8, in_chans=1, patch_size=2, embed_dim=64, depth=2,
                       num_heads=4, mlp_ratio=2.0, adjacency_window=3, burst_max=4,
                       timesteps=4, num_classes=10, leak_shift=None, attn_threshold=4),
        "epochs": 200, "batch": 64, "lr": 2e-3, "weight_decay": 0.02, "shift": 1,
        "label_smoothing": 0.1, "ema": 0.98, "seed": 0,
    },
    "mnist5k": {
        "config": dict(img_size=28, in_chans=1, patch_size=4, embed_dim=64, depth=2,
                       num_heads=4, mlp_ratio=2.0, adjacency_window=3, burst_max=4,
                       timesteps=4, num_classes=10, leak_shift=None, attn_threshold=4),
        "epochs": 100, "batch": 64, "lr": 2e-3, "weight_decay": 0.02, "shift": 2,
        "label_smoothing": 0.1, "ema": 0.99, "seed": 0,
    },
}


def to_torch(images: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, C] → float [B, C, H, W] raw pixel values."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float()


def random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ±max_shift pixels (zero fill)."""
    if max_shift == 0:
        return x
    b, c, h, w = x.shape
    pad = F.pad(x, (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * max_shift + 1, (b,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None, :])                   # [B, H]
    cols = (dx[:, None] + torch.arange(w)[None, :])                   # [B, W]
    idx_b = torch.arange(b)[:, None, None]
    out = pad.permute(0, 2, 3, 1)[idx_b, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2)


@torch.no_grad()
def evaluate(model: BSViT, split, batch: int = 256):
    """(accuracy, mean cross-entropy) of a float model on (images, labels)."""
    model.eval()
    x, y = split
    correct, loss = 0, 0.0
    for i in range(0, len(x), batch):
        logits = model(to_torch(x[i:i + batch]))
        yy = torch.from_numpy(y[i:i + batch])
        correct += int((logits.argmax(1) == yy).sum())
        loss += float(F.cross_entropy(logits, yy, reduction="sum"))
    return correct / len(x), loss / len(x)


def set_input_stats(model: BSViT, images: np.ndarray) -> None:
    """Per-channel mean/std of the training pixels: the normalisation folded into embed."""
    x = images.reshape(-1, images.shape[-1]).astype(np.float64)
    with torch.no_grad():
        model.embed.mean.copy_(torch.from_numpy(x.mean(0)))
        model.embed.std.copy_(torch.from_numpy(x.std(0) + 1e-6))


def train(name: str, epochs=None, log=print, **config_overrides):
    recipe = copy.deepcopy(RECIPES[name])
    recipe["config"].update(config_overrides)
    epochs = epochs or recipe["epochs"]
    torch.manual_seed(recipe["seed"])
    gen = torch.Generator().manual_seed(recipe["seed"])
    splits = datasets.load(name)
    model = BSViT(BSViTConfig(**recipe["config"]))
    set_input_stats(model, splits["train"][0])
    ema = copy.deepcopy(model)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe["lr"],
                            weight_decay=recipe["weight_decay"])
    x_train, y_train = splits["train"]
    steps = epochs * ((len(x_train) + recipe["batch"] - 1) // recipe["batch"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe["lr"], total_steps=steps,
                                                pct_start=0.1)
    best = (-1.0, float("inf"), None, -1)
    t0 = time.time()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x_train), generator=gen).numpy()
        for i in range(0, len(perm), recipe["batch"]):
            idx = perm[i:i + recipe["batch"]]
            xb = random_shift(to_torch(x_train[idx]), recipe["shift"], gen)
            yb = torch.from_numpy(y_train[idx])
            loss = F.cross_entropy(model(xb), yb, label_smoothing=recipe["label_smoothing"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                d = recipe["ema"]
                for pe, pm in zip(ema.parameters(), model.parameters()):
                    pe.mul_(d).add_(pm, alpha=1 - d)
                for be, bm in zip(ema.buffers(), model.buffers()):
                    be.copy_(bm)
        acc, vloss = evaluate(ema, splits["val"])
        if (acc, -vloss) > (best[0], -best[1]):
            best = (acc, vloss, copy.deepcopy(ema.state_dict()), epoch)
        log(f"epoch {epoch + 1:3d}/{epochs}  loss {loss.item():.3f}  val acc {acc:.4f}  "
            f"val loss {vloss:.3f}  ({time.time() - t0:.0f} s)")
    model.load_state_dict(best[2])
    model.eval()
    test_acc, _ = evaluate(model, splits["test"])
    info = {"dataset": name, "recipe": {k: v for k, v in recipe.items() if k != "config"},
            "epochs": epochs, "best_epoch": best[3] + 1, "val_accuracy": best[0],
            "test_accuracy": test_acc, "torch": str(torch.__version__)}
    return model, info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", choices=sorted(RECIPES))
    ap.add_argument("--out", required=True, help="checkpoint to write (.pt)")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (the bundled model was trained with 1; other counts "
                         "change float summation order and so the exact weights)")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=JSON",
                    help="override a config field of the recipe, e.g. --set leak_shift=1")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    model, info = train(args.dataset, args.epochs, **overrides)
    model.save(args.out, training=info, labels=[str(i) for i in range(10)])
    print(f"best epoch {info['best_epoch']}: val {info['val_accuracy']:.4f}, "
          f"test {info['test_accuracy']:.4f}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
