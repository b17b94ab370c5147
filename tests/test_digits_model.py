"""The bundled digits model: the statistical bars of the integer contract, measured."""
import os

import numpy as np
import pytest
import torch

import bsvit_int
from bsvit_int.cli import BUNDLED
from bsvit_int.converters import BSViT, convert, data, integer_faithful

CKPT = os.path.join(BUNDLED, "digits.pt")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    report = convert(CKPT, out / "digits.bsi", report_path=out / "report.json")
    return report, out / "digits.bsi"


def test_checkpoint_is_weights_only_and_small_enough_for_an_mcu():
    ckpt = torch.load(CKPT, weights_only=True)
    assert ckpt["training"]["dataset"] == "digits"
    model = BSViT.load(CKPT)
    assert sum(p.numel() for p in model.parameters()) <= 150_000


def test_accuracy_and_agreement_bars(converted):
    report, _ = converted
    assert report["n_images"] == 360
    assert report["float_accuracy"] >= 0.95
    assert report["int_accuracy"] >= report["float_accuracy"] - 0.005
    assert report["top1_agreement"] >= 0.99
    assert set(report["spike_agreement"]) >= {"embed", "blocks.1.mlp.fc2"}


def test_bsi_is_under_a_third_of_the_checkpoint(converted):
    _, bsi = converted
    assert os.path.getsize(bsi) <= 0.3 * os.path.getsize(CKPT)


def test_engine_equals_integer_faithful_torch_on_every_test_image(converted):
    _, bsi = converted
    engine = bsvit_int.load(bsi)
    x, _ = data.digits()["test"]
    want = integer_faithful(BSViT.load(CKPT)).integer_logits(
        torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    got = engine.predict(x)
    assert got.dtype == np.int32
    mismatch = np.argwhere(got != want)
    assert mismatch.size == 0, f"first mismatch at image/class {mismatch[0]}"
