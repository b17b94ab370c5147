"""The Cython engine equals the NumPy oracle bit for bit: logits and every layer's spikes.

Random models come from two generators: the shared small-config strategy
(tests/strategies.py: every window, burst, leak and depth option, tiny widths that run
the kernels' scalar tails) and wide configs here (D and the MLP width above 64 and not
multiples of it, so the vector blocks and their tails both run, with head dims that
straddle 64-bit words). Each example is run with threads 1 and 2 and in one of the
kernels builds this CPU supports (cycled by the example), and must match
`bsvit_int.oracle.run` exactly. The bundled digits model is compared on held-out digits
in every build. API checks: `bsvit_int.load(path, backend="cython", threads=N)`, its
errors, and that the engine never imports torch.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import bsvit_int
from bsvit_int import engine_cython
from bsvit_int.container import write_bsi

K = pytest.importorskip("bsvit_int._kernels")
VARIANTS = K.available_variants()
torch = pytest.importorskip("torch")
from bsvit_int.converters import BSViT, BSViTConfig, ConversionError, quantize  # noqa: E402
from strategies import case_params, images, randomize  # noqa: E402

MODEL_SETTINGS = settings(max_examples=int(os.environ.get("BSVIT_ENGINE_EXAMPLES", "25")),
                          deadline=None,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.function_scoped_fixture])


def write_model(path, q) -> str:
    metadata = {"format": "bsvit-int", "opset": 1, "config": q.config.to_dict(),
                "layers": q.layers, "logit_scale": q.logit_scale}
    write_bsi(path, metadata, q.tensors)
    return str(path)


def expect_same_run(path, imgs, variant, threads_list=(1, 2), margins=(16, -10**9)):
    """Cython (each thread count, given build) == oracle: logits and all spikes.

    margins: the temporal-delta threshold of each run (16: the default choice; -10**9:
    the delta update at every step t >= 1, so that path is always exercised)."""
    ref = bsvit_int.load(path, backend="numpy")
    rec_o = {}
    want = ref.predict(imgs, rec_o)
    fired = 0
    for threads, margin in zip(threads_list, margins):
        runner = engine_cython.CythonRunner(ref.config, ref.tensors, ref._shifts,
                                            threads=threads, variant=variant)
        runner.network.delta_margin = margin
        rec_c = {}
        got = runner.run(np.ascontiguousarray(imgs), rec_c)
        assert got.dtype == np.int32
        assert set(rec_c) == set(rec_o)
        for name in rec_o:                       # spec order: first divergent layer
            bad = np.argwhere(rec_c[name] != rec_o[name])
            assert bad.size == 0, (f"{variant} threads={threads} margin={margin}: layer {name} "
                                   f"differs first "
                                   f"at [B, T, N, C] = {tuple(bad[0])}: "
                                   f"{rec_c[name][tuple(bad[0])]} != {rec_o[name][tuple(bad[0])]}")
        bad = np.argwhere(got != want)
        assert bad.size == 0, f"{variant} threads={threads}: logits differ at {tuple(bad[0])}"
        assert np.array_equal(runner.run(np.ascontiguousarray(imgs)), want)   # no record
        fired = sum(int(np.count_nonzero(s)) for s in rec_o.values())
    return fired


# -- random models ---------------------------------------------------------------------------

@MODEL_SETTINGS
@given(params=case_params(), pick=st.integers(0, 1000))
def test_random_small_models_equal_oracle(tmp_path_factory, params, pick):
    model, imgs = params.build()
    path = write_model(tmp_path_factory.mktemp("m") / "m.bsi", quantize(model))
    fired = expect_same_run(path, imgs, VARIANTS[pick % len(VARIANTS)])
    assert fired > 0            # the guaranteed channel fires: nothing passes by silence


@st.composite
def wide_configs(draw):
    heads = draw(st.integers(1, 3))
    dh = draw(st.sampled_from([16, 22, 32, 33, 40, 64, 70, 128]))
    depth = draw(st.integers(1, 2))
    bmax = draw(st.sampled_from([1, 4, 15]))
    gh, gw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    p = draw(st.integers(1, 2))
    return BSViTConfig(img_size=(gh * p, gw * p), in_chans=draw(st.integers(1, 3)),
                       patch_size=p, embed_dim=heads * dh, depth=depth, num_heads=heads,
                       mlp_ratio=draw(st.sampled_from([0.75, 1.5, 2.0])),
                       adjacency_window=draw(st.sampled_from([1, 3, 5, None])),
                       burst_max=bmax, timesteps=draw(st.integers(1, 4)),
                       num_classes=draw(st.integers(2, 5)),
                       leak_shift=draw(st.sampled_from([None, 0, 2])),
                       attn_threshold=draw(st.integers(1, 40)))


@MODEL_SETTINGS
@given(cfg=wide_configs(), seed=st.integers(0, 2**31 - 1), pick=st.integers(0, 1000),
       kind=st.sampled_from(["uniform", "constant", "extremes"]), gain=st.sampled_from([1.0, 3.0]))
def test_random_wide_models_equal_oracle(tmp_path_factory, cfg, seed, pick, kind, gain):
    model = randomize(BSViT(cfg), seed, gain=gain)
    try:
        q = quantize(model)
    except ConversionError:         # random BatchNorm statistics can break a bound
        assume(False)
    path = write_model(tmp_path_factory.mktemp("w") / "w.bsi", q)
    expect_same_run(path, images(cfg, 2, seed, kind), VARIANTS[pick % len(VARIANTS)])


@st.composite
def qkv_wide_configs(draw):
    """Widths of 256 and 512: the engine's fused Q/K/V pass (AVX-512, 256 columns at a time)
    and the 256-column blocks of every layer; 512 inputs also reach the int16 budget."""
    d = draw(st.sampled_from([256, 512]))
    heads = draw(st.sampled_from([1, 2, 4, 8]))
    p = draw(st.integers(1, 2))
    gh, gw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    return BSViTConfig(img_size=(gh * p, gw * p), in_chans=draw(st.integers(1, 3)),
                       patch_size=p, embed_dim=d, depth=draw(st.integers(1, 2)),
                       num_heads=heads, mlp_ratio=draw(st.sampled_from([0.5, 1.0, 1.5])),
                       adjacency_window=draw(st.sampled_from([1, 3, None])),
                       burst_max=draw(st.sampled_from([1, 4, 15])),
                       timesteps=draw(st.integers(1, 4)),
                       num_classes=draw(st.integers(2, 5)),
                       leak_shift=draw(st.sampled_from([None, 0, 2])),
                       attn_threshold=draw(st.integers(1, 40)))


@MODEL_SETTINGS
@given(cfg=qkv_wide_configs(), seed=st.integers(0, 2**31 - 1), pick=st.integers(0, 1000),
       kind=st.sampled_from(["uniform", "extremes"]), gain=st.sampled_from([1.0, 3.0]))
def test_random_256_wide_models_equal_oracle(tmp_path_factory, cfg, seed, pick, kind, gain):
    model = randomize(BSViT(cfg), seed, gain=gain)
    try:
        q = quantize(model)
    except ConversionError:
        assume(False)
    path = write_model(tmp_path_factory.mktemp("w") / "w.bsi", q)
    imgs = images(cfg, 2, seed, kind)
    # this CPU's own build every time (the one with the widest paths), and one other
    expect_same_run(path, imgs, K.default_variant())
    expect_same_run(path, imgs, VARIANTS[pick % len(VARIANTS)], threads_list=(2,),
                    margins=(16,))


# -- the bundled digits model ------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_bsi(tmp_path_factory):
    from bsvit_int.cli import BUNDLED
    model = BSViT.load(os.path.join(BUNDLED, "digits.pt")).eval()
    return write_model(tmp_path_factory.mktemp("digits") / "digits.bsi", quantize(model))


@pytest.fixture(scope="module")
def digits_test_images():
    from bsvit_int.converters import data
    x, _ = data.digits()["test"]
    return x


@pytest.mark.parametrize("variant", VARIANTS)
def test_digits_model_equals_oracle_in_every_build(digits_bsi, digits_test_images, variant):
    fired = expect_same_run(digits_bsi, digits_test_images[:48], variant)
    assert fired > 0


def test_digits_model_all_test_images_through_load(digits_bsi, digits_test_images):
    want = bsvit_int.load(digits_bsi, backend="numpy").predict(digits_test_images)
    for threads in (1, 2):
        m = bsvit_int.load(digits_bsi, backend="cython", threads=threads)
        assert m.backend == "cython"
        assert np.array_equal(m.predict(digits_test_images), want)


# -- API ---------------------------------------------------------------------------------------

def test_load_cython_api(digits_bsi, digits_test_images):
    m = bsvit_int.load(digits_bsi, backend="cython", threads=0)
    assert m._runner.threads == engine_cython.all_cores()
    one = digits_test_images[0]                         # [H, W, C] is a batch of one
    assert m.predict(one).shape == (1, 10)
    with pytest.raises(TypeError):
        m.predict(one.astype(np.int16))
    with pytest.raises(ValueError):
        m.predict(np.zeros((2, 9, 8, 1), np.uint8))
    for bad in (-1, 1.5, "2", True):
        with pytest.raises(ValueError):
            bsvit_int.load(digits_bsi, backend="cython", threads=bad)
    with pytest.raises(ValueError):
        bsvit_int.load(digits_bsi, backend="fortran")
    assert m.predict(np.zeros((0, 8, 8, 1), np.uint8)).shape == (0, 10)


def test_window_ranges_are_checked_and_equal_csr(digits_bsi, digits_test_images):
    """Network takes windows as CSR or as (start, count) ranges over one index list (how a
    global window is stored once); both give the same logits, and ranges that leave the
    list or name a token outside 0..N-1 are refused."""
    from bsvit_int import spec
    m = bsvit_int.load(digits_bsi, backend="cython")
    r = m._runner
    cfg = r.config
    nb = spec.grid_neighbours(cfg)
    n = cfg.num_tokens
    count = np.array([len(w) for w in nb], np.int32)
    ptr = np.concatenate([[0], np.cumsum(count)]).astype(np.int32)
    idx = np.array([j for w in nb for j in w], np.int32)
    k = engine_cython.require_kernels()
    dims, arrays = r.network.dims, {k2: np.ascontiguousarray(v) for k2, v in m.tensors.items()}
    input_max = {layer.name: layer.input_max for layer in spec.layers(cfg)}
    csr = k.Network(dims, arrays, dict(m._shifts), input_max, ptr, idx)
    ranges = k.Network(dims, arrays, dict(m._shifts), input_max, ptr[:n], idx,
                       nbr_count=count)
    x = digits_test_images[:16]
    assert np.array_equal(csr.run(x), ranges.run(x))
    assert np.array_equal(csr.run(x), m.predict(x))
    bad = [(ptr[:n] + 1, count), (ptr[:n], count[:-1]), (-ptr[:n] - 1, count)]
    for start, cnt in bad:
        with pytest.raises(ValueError, match="neighbours"):
            k.Network(dims, arrays, dict(m._shifts), input_max, start, idx, nbr_count=cnt)
    with pytest.raises(ValueError, match="outside 0..N-1"):
        k.Network(dims, arrays, dict(m._shifts), input_max, ptr[:n], idx + n,
                  nbr_count=count)


def test_q_k_v_input_bounds_must_agree(digits_bsi):
    """Q, K and V read the same residual stream and share its plane lists: a Network given
    different input bounds for them is refused, naming the block."""
    from bsvit_int import spec
    m = bsvit_int.load(digits_bsi, backend="cython")
    r = m._runner
    k = engine_cython.require_kernels()
    arrays = {name: np.ascontiguousarray(v) for name, v in m.tensors.items()}
    input_max = {layer.name: layer.input_max for layer in spec.layers(r.config)}
    nb = spec.grid_neighbours(r.config)
    count = np.array([len(w) for w in nb], np.int32)
    ptr = np.concatenate([[0], np.cumsum(count)]).astype(np.int32)
    idx = np.array([j for w in nb for j in w], np.int32)
    k.Network(r.network.dims, arrays, dict(m._shifts), input_max, ptr, idx)    # as given
    bad = dict(input_max)
    bad["blocks.1.attn.k"] = 2 * input_max["blocks.1.attn.k"] + 1
    with pytest.raises(ValueError, match="blocks.1: q, k and v"):
        k.Network(r.network.dims, arrays, dict(m._shifts), bad, ptr, idx)


def test_one_model_from_many_threads(digits_bsi, digits_test_images):
    m = bsvit_int.load(digits_bsi, backend="cython", threads=2)
    x = digits_test_images[:32]
    want = m.predict(x)
    results = [None] * 4

    def work(k):
        results[k] = m.predict(x)

    ts = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert all(np.array_equal(r, want) for r in results)


def test_missing_kernels_give_a_clear_error(monkeypatch, digits_bsi):
    monkeypatch.setattr(engine_cython, "_kernels", None)
    monkeypatch.setattr(engine_cython, "_IMPORT_ERROR", ImportError("no module _kernels"))
    with pytest.raises(ImportError, match=r"backend='cython' needs the compiled kernels.*"
                                          r"backend='numpy'"):
        bsvit_int.load(digits_bsi, backend="cython")
    assert bsvit_int.load(digits_bsi, backend="numpy").backend == "numpy"


def _python(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


def test_isa_override_and_refusal():
    r = _python("import bsvit_int._kernels as k; print(k.default_variant())",
                BSVIT_ISA="baseline")
    assert r.returncode == 0 and r.stdout.strip() == "baseline", r.stderr
    r = _python("import bsvit_int._kernels as k; k.default_variant()", BSVIT_ISA="x86-64-v9")
    assert r.returncode != 0 and "BSVIT_ISA='x86-64-v9' cannot be used" in r.stderr


def test_cython_engine_does_not_import_torch(digits_bsi):
    code = ("import sys, numpy as np, bsvit_int\n"
            f"m = bsvit_int.load({digits_bsi!r}, backend='cython', threads=2)\n"
            "m.predict(np.zeros((2, 8, 8, 1), np.uint8))\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    r = _python(code)
    assert r.returncode == 0, r.stderr
