"""Engine parity on aarch64: run by the staged aarch64 Python under qemu-aarch64 -cpu
cortex-a72 (tools/aarch64/check.py parity), never by the host's test run.

The host prepares a corpus (BSVIT_A64_CORPUS: manifest.json, .bsi models, images, and the
x86 NumPy oracle's logits and spikes): the bundled digits model with held-out digits and
random BSViTs made by the real converter (torch runs on the host only). Here, on aarch64:

* the Cython engine (bsvit_int._kernels, cross-built) equals the x86 oracle exactly: logits
  of every corpus image with 1 and 2 OpenMP threads, every layer's spikes on the first
  images;
* the aarch64 NumPy oracle equals the x86 oracle (the same integers on both machines);
* Hypothesis draws integer models directly (tests/test_firmware_support.py's
  random_integer_model: small weights and thresholds, so v == theta, Bmax clamping and
  negative leak floors are common) and the Cython engine equals the aarch64 oracle,
  logits and spikes (BSVIT_A64_EXAMPLES examples);
* the build is the portable one: only the "baseline" variant, NEON byte masks, the
  hardware popcount (`cnt`), nothing from x86.

BSVIT_A64_REQUIRE_KERNELS=1 turns a missing bsvit_int._kernels into a failure.
"""
from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import bsvit_int
from bsvit_int.config import BSViTConfig

CORPUS = os.environ.get("BSVIT_A64_CORPUS")
EXAMPLES = int(os.environ.get("BSVIT_A64_EXAMPLES", "10"))
REQUIRE_KERNELS = os.environ.get("BSVIT_A64_REQUIRE_KERNELS") == "1"

pytestmark = pytest.mark.skipif(
    not CORPUS or platform.machine() != "aarch64",
    reason="run under qemu-aarch64 by tools/aarch64/check.py parity")

MANIFEST = json.loads((Path(CORPUS) / "manifest.json").read_text()) if CORPUS else \
    {"models": []}


def kernels():
    try:
        from bsvit_int import _kernels
    except ImportError as e:
        if REQUIRE_KERNELS:
            pytest.fail(f"bsvit_int._kernels (aarch64) does not import: {e}")
        pytest.skip(f"no aarch64 kernels: {e}")
    return _kernels


def first_difference(want, got):
    bad = np.argwhere(want != got)
    return None if bad.size == 0 else (tuple(int(i) for i in bad[0]),
                                       want[tuple(bad[0])], got[tuple(bad[0])])


def assert_spikes_equal(want: dict, got: dict, what: str):
    assert set(want) == set(got), (sorted(want), sorted(got))
    for name in want:                                   # dicts keep the spec's order
        d = first_difference(np.asarray(want[name]), got[name])
        assert d is None, (f"{what}: layer {name} differs first at [B, T, N, C] = {d[0]}: "
                           f"oracle {d[1]}, aarch64 {d[2]}")


# --------------------------------------------------------------------------- the build

def test_aarch64_and_no_torch():
    assert platform.machine() == "aarch64"
    assert "torch" not in sys.modules
    assert ".cpython-311-aarch64-linux-gnu" not in bsvit_int.__file__
    assert Path(bsvit_int.__file__).parent.name == "bsvit_int"


def test_the_portable_build_is_the_one_that_runs():
    K = kernels()
    assert K.__file__.endswith("_kernels.cpython-311-aarch64-linux-gnu.so"), K.__file__
    assert K.available_variants() == ["baseline"]
    assert K.default_variant() == "baseline"
    info = K.variant_info() if hasattr(K, "variant_info") else K.build_info()
    assert info["simd"] == "neon", info
    assert info["popcount"] == "hardware", info


# --------------------------------------------------------------------------- the corpus

def _corpus(entry):
    d = Path(CORPUS)
    images = np.load(d / entry["images"])
    want = np.load(d / entry["logits"])
    with np.load(d / entry["spikes"]) as z:
        spikes = {k: z[k] for k in z.files}
    return Path(entry["bsi"]), images, want, spikes


@pytest.mark.parametrize("entry", MANIFEST["models"], ids=lambda e: e["name"])
def test_cython_engine_equals_the_x86_oracle(entry):
    kernels()
    bsi, images, want, spikes = _corpus(entry)
    for threads in (1, 2):
        model = bsvit_int.load(bsi, backend="cython", threads=threads)
        got = model.predict(images)
        assert got.dtype == np.int32
        d = first_difference(want, got.astype(np.int64))
        assert d is None, f"threads={threads}: logits differ first at {d}"
    s = entry["spike_images"]
    record: dict = {}
    got = bsvit_int.load(bsi, backend="cython", threads=1).predict(images[:s], record)
    assert np.array_equal(got, want[:s])
    assert_spikes_equal(spikes, record, entry["name"])
    assert sum(int(np.count_nonzero(v)) for v in record.values()) > 0


@pytest.mark.parametrize("entry", MANIFEST["models"], ids=lambda e: e["name"])
def test_numpy_oracle_on_aarch64_equals_the_x86_oracle(entry):
    bsi, images, want, spikes = _corpus(entry)
    s = entry["spike_images"]
    record: dict = {}
    got = bsvit_int.load(bsi, backend="numpy").predict(images[:s], record)
    assert np.array_equal(got, want[:s])
    assert_spikes_equal(spikes, record, entry["name"] + " (NumPy)")


# --------------------------------------------------------------------------- Hypothesis

@st.composite
def configs(draw):
    """Small to wide configs without torch: odd widths, D above 64 and not a multiple of
    it, head dims that straddle 64-bit words, every window/burst/leak option."""
    gh, gw, p = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 3))
    heads = draw(st.integers(1, 4))
    head_dim = draw(st.sampled_from([1, 2, 3, 5, 8, 17, 33, 65]))
    depth = draw(st.integers(0, 2))
    burst_max = draw(st.sampled_from([1, 2, 4, 8, 15]))
    assume((2 * depth + 1) * burst_max <= 255)
    return BSViTConfig(
        img_size=(gh * p, gw * p), in_chans=draw(st.integers(1, 3)), patch_size=p,
        embed_dim=heads * head_dim, depth=depth, num_heads=heads,
        mlp_ratio=draw(st.sampled_from([0.5, 1.0, 1.5, 2.0])),
        adjacency_window=draw(st.sampled_from([1, 3, 5, None])), burst_max=burst_max,
        timesteps=draw(st.integers(1, 5)), num_classes=draw(st.integers(2, 6)),
        leak_shift=draw(st.sampled_from([None, 0, 1, 3])),
        attn_threshold=draw(st.integers(1, 8)))


@st.composite
def integer_cases(draw):
    return (draw(configs()), draw(st.sampled_from([2, 20, 127])),
            draw(st.sampled_from([0.02, 0.3, 1.0])), draw(st.integers(0, 2**32 - 1)),
            draw(st.sampled_from(["uniform", "extremes", "constant"])),
            draw(st.integers(1, 3)))


@given(case=integer_cases())
@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
def test_random_integer_models_cython_equals_oracle(tmp_path_factory, case):
    from test_firmware_support import (integer_model_images, random_integer_model,
                                       write_integer_model)
    kernels()
    cfg, weight_max, theta_scale, seed, kind, batch = case
    try:
        tensors, shifts = random_integer_model(cfg, seed, weight_max, theta_scale)
    except ValueError:                       # a bound failed: not a valid model
        assume(False)
    bsi = write_integer_model(tmp_path_factory.mktemp("m") / "m.bsi", cfg, tensors, shifts)
    images = np.ascontiguousarray(integer_model_images(cfg, batch, seed, kind))
    want_rec: dict = {}
    want = bsvit_int.load(bsi, backend="numpy").predict(images, want_rec)
    for threads in (1, 2):
        got_rec: dict = {}
        got = bsvit_int.load(bsi, backend="cython", threads=threads).predict(images, got_rec)
        assert_spikes_equal(want_rec, got_rec, f"threads={threads}")
        d = first_difference(want, got)
        assert d is None, f"threads={threads}: logits differ first at {d}"
