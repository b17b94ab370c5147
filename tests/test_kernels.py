"""Every compiled kernel equals its NumPy oracle exactly, in every build this CPU runs.

Each property draws one example and checks it against the oracle named in the kernel's
docstring for every variant in `_kernels.available_variants()` (baseline, x86-64-v2/v3/v4
here), so the SIMD paths, the scalar fallbacks compiled into each build and libgcc's
software popcount are all held to the same integers. Sizes are chosen to hit the edges:
odd widths, D not a multiple of 64 (the tail paths) and above 64 (the vector blocks),
a single row or token, windows larger than the grid, all-zero and all-max inputs,
Bmax 1 and 15, and weights whose rows overflow one int16 budget (chunked lists).
"""
from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bsvit_int import bitset, oracle

K = pytest.importorskip("bsvit_int._kernels")
VARIANTS = K.available_variants()
# BSVIT_KERNEL_EXAMPLES raises the example count for a deeper run (default keeps this
# file at a few seconds).
SETTINGS = settings(max_examples=int(os.environ.get("BSVIT_KERNEL_EXAMPLES", "60")),
                    deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

widths = st.sampled_from([1, 2, 7, 31, 63, 64, 65, 100, 127, 128, 129, 200, 256])
fills = st.sampled_from(["random", "zero", "max"])


def rng_of(seed):
    return np.random.default_rng(seed)


def spikes_u8(rng, shape, hi, fill, rate=0.3):
    """uint8 counts in 0..hi: sparse random, all zero, or all hi."""
    if fill == "zero":
        return np.zeros(shape, np.uint8)
    if fill == "max":
        return np.full(shape, hi, np.uint8)
    x = rng.integers(1, hi + 1, shape, dtype=np.int64) * (rng.random(shape) < rate)
    return x.astype(np.uint8)


def weights_i8(rng, shape, kind="random"):
    if kind == "max":
        return np.where(rng.random(shape) < 0.5, 127, -127).astype(np.int8)
    if kind == "column_sign":       # ±127 with one sign per column: the int16 worst case
        signs = np.where(rng.random(shape[-1]) < 0.5, 127, -127).astype(np.int8)
        return np.ascontiguousarray(np.broadcast_to(signs, shape))
    return rng.integers(-127, 128, shape, dtype=np.int64).astype(np.int8)


def window_csr(gh, gw, window):
    """CSR neighbour lists in the spec's order (spec.grid_neighbours)."""
    if window is None:
        nb = [list(range(gh * gw)) for _ in range(gh * gw)]
    else:
        r = (window - 1) // 2
        nb = [[y * gw + x for y in range(max(0, gy - r), min(gh, gy + r + 1))
               for x in range(max(0, gx - r), min(gw, gx + r + 1))]
              for gy in range(gh) for gx in range(gw)]
    ptr = np.zeros(gh * gw + 1, np.int32)
    ptr[1:] = np.cumsum([len(n) for n in nb])
    return nb, ptr, np.array([j for n in nb for j in n], np.int32)


def expect_equal(got, want, what):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    bad = np.argwhere(got != want)
    assert bad.size == 0, (f"{what}: {len(bad)} mismatches, first at {tuple(bad[0])}: "
                           f"{got[tuple(bad[0])]} != {want[tuple(bad[0])]}")


def test_every_variant_is_reported_and_baseline_always_runs():
    assert VARIANTS[-1] == "baseline"
    assert K.default_variant() in VARIANTS
    for v in VARIANTS:
        info = K.variant_info(v)
        assert info["variant"] == v and info["popcount"] in ("hardware", "libgcc")


# -- SIMD paths against the scalar fallback compiled into every build -----------------------

@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), bits=st.integers(0, 255), value=st.integers(0, 255),
       fill=st.sampled_from(["random", "sparse", "zero", "max", "value"]))
def test_byte_masks_simd_equal_scalar(seed, bits, value, fill):
    rng = rng_of(seed)
    block = {"random": rng.integers(0, 256, 64), "sparse": spikes_u8(rng, 64, 255, "random"),
             "zero": np.zeros(64), "max": np.full(64, 255),
             "value": np.where(rng.random(64) < 0.5, value, 0)}[fill].astype(np.uint8)
    want_test = int(np.packbits((block & bits) != 0, bitorder="little").view("<u8")[0])
    want_eq = int(np.packbits(block == value, bitorder="little").view("<u8")[0])
    for v in VARIANTS:
        assert K._mask64_paths(block, bits, value, variant=v) == (want_test, want_test,
                                                                  want_eq, want_eq), v


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 50))
def test_popcount_hardware_equals_software(seed, n):
    rng = rng_of(seed)
    words = np.concatenate([rng.integers(0, 2**63, n, dtype=np.uint64) * np.uint64(2)
                            + rng.integers(0, 2, n, dtype=np.uint64),
                            np.array([0, 2**64 - 1, 1, 2**63], dtype=np.uint64)])
    want = np.unpackbits(words.view(np.uint8)).reshape(-1, 64).sum(1)
    for v in VARIANTS:
        hw, sw = K._popcount_paths(words, variant=v)
        expect_equal(hw, want, f"{v} popcount")
        expect_equal(sw, want, f"{v} scalar popcount")


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), cin=st.integers(1, 300), cout=widths,
       shift=st.integers(0, 16), wkind=st.sampled_from(["random", "max"]))
def test_accumulate_rows_simd_equal_scalar_equal_oracle(seed, cin, cout, shift, wkind):
    rng = rng_of(seed)
    w = weights_i8(rng, (cin, cout), wkind)
    rmax = np.abs(w.astype(np.int64)).max(1)
    budget = np.cumsum(rmax[rng.permutation(cin)])
    n = int(np.searchsorted(budget, 32767, side="right"))
    rows = rng.permutation(cin)[:n].astype(np.int32)
    rows = rows[np.cumsum(rmax[rows]) <= 32767]
    want = (w[rows].astype(np.int64).sum(0) << shift).astype(np.int32)
    for v in VARIANTS:
        simd, scalar = K._accumulate_rows_paths(w, rows, shift, variant=v)
        expect_equal(simd, want, f"{v} accumulate_rows_i16")
        expect_equal(scalar, want, f"{v} accumulate_rows_i16 scalar")


# -- bitsets ------------------------------------------------------------------------------

@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), rows=st.integers(0, 5), d=widths, fill=fills,
       nplanes=st.integers(1, 8))
def test_bitsets_equal_numpy_packing(seed, rows, d, fill, nplanes):
    rng = rng_of(seed)
    hi = (1 << nplanes) - 1
    counts = spikes_u8(rng, (rows, d), hi, fill)
    signed = (spikes_u8(rng, (rows, d), 1, fill).astype(np.int8)
              * np.where(rng.random((rows, d)) < 0.5, 1, -1).astype(np.int8))
    want_planes = np.stack([bitset.pack_bits_u64((counts >> b) & 1) for b in range(nplanes)],
                           axis=1)
    for v in VARIANTS:
        bits = K.pack_bits_u64(counts, variant=v)
        expect_equal(bits, bitset.pack_bits_u64(counts), f"{v} pack_bits_u64")
        expect_equal(K.unpack_bits_u64(bits, d), bitset.unpack_bits_u64(bits, d),
                     f"{v} unpack_bits_u64")
        expect_equal(K.pack_planes_u64(counts, nplanes, variant=v), want_planes,
                     f"{v} pack_planes_u64")
        pos, neg = K.pack_signed_u64(signed, variant=v)
        expect_equal(pos, bitset.pack_bits_u64(signed > 0), f"{v} pack_signed_u64 pos")
        expect_equal(neg, bitset.pack_bits_u64(signed < 0), f"{v} pack_signed_u64 neg")


# -- event-driven accumulation ---------------------------------------------------------------

@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), rows=st.integers(1, 4), cin=widths, cout=widths,
       hi=st.sampled_from([1, 4, 15, 36, 255]), fill=fills,
       wkind=st.sampled_from(["random", "max"]), threads=st.sampled_from([1, 2]))
def test_accumulate_and_current_equal_oracle(seed, rows, cin, cout, hi, fill, wkind, threads):
    rng = rng_of(seed)
    x = spikes_u8(rng, (rows, cin), hi, fill)
    w = weights_i8(rng, (cin, cout), wkind)
    want = x.astype(np.int64) @ w.astype(np.int64)
    shift = int(rng.integers(0, 17))
    bias = rng.integers(-2**20, 2**20, cout, dtype=np.int64).astype(np.int32)
    fits = np.abs(want).max(initial=0) * 2**shift + 2**20 < 2**31
    bits = bitset.pack_bits_u64(x)
    for v in VARIANTS:
        expect_equal(K.accumulate_u8(x, w, threads=threads, variant=v), want,
                     f"{v} accumulate_u8")
        expect_equal(K.accumulate_bits_u64(bits, w, variant=v),
                     (x != 0).astype(np.int64) @ w.astype(np.int64), f"{v} accumulate_bits_u64")
        if fits:
            expect_equal(K.current_u8(x, w, bias, shift, threads=threads, variant=v),
                         oracle.current(x, w, bias, shift, "t"), f"{v} current_u8")


def test_accumulate_refuses_what_could_overflow():
    x = np.full((1, 70000), 255, np.uint8)        # 255 * 127 * 70000 > 2**31
    w = np.full((70000, 3), 127, np.int8)
    with pytest.raises(OverflowError):
        K.accumulate_u8(x, w)
    with pytest.raises(TypeError):
        K.accumulate_u8(x.astype(np.int8), w)
    with pytest.raises(ValueError):
        K.accumulate_u8(x[:, :5], w)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), rows=st.integers(1, 5), k=st.integers(1, 80),
       d=widths, fill=fills, per_row_bias=st.booleans())
def test_current_pixels_equals_oracle(seed, rows, k, d, fill, per_row_bias):
    rng = rng_of(seed)
    px = (rng.integers(0, 256, (rows, k)) if fill == "random"
          else np.full((rows, k), 0 if fill == "zero" else 255)).astype(np.uint8)
    w = weights_i8(rng, (k, d))
    bias = rng.integers(-2**24, 2**24, (rows, d) if per_row_bias else (d,),
                        dtype=np.int64).astype(np.int32)
    for v in VARIANTS:
        expect_equal(K.current_pixels_u8(px, w, bias, 3, variant=v),
                     oracle.current(px, w, bias, 3, "embed"), f"{v} current_pixels_u8")


# -- neurons -------------------------------------------------------------------------------

@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), t=st.integers(1, 6), rows=st.integers(1, 3), c=widths,
       kind=st.sampled_from(["burst", "signed"]),
       bmax=st.sampled_from([1, 2, 3, 4, 5, 7, 8, 15]),
       leak=st.sampled_from([None, 0, 1, 3, 15]), theta_hi=st.sampled_from([2, 9, 5000]),
       fill=st.sampled_from(["random", "zero", "max", "boundary"]))
def test_neuron_steps_equal_oracle(seed, t, rows, c, kind, bmax, leak, theta_hi, fill):
    rng = rng_of(seed)
    theta = rng.integers(1, theta_hi + 1, c, dtype=np.int64).astype(np.int32)
    span = 20 * theta_hi
    cur = {"random": rng.integers(-span, span + 1, (t, rows, c)),
           "zero": np.zeros((t, rows, c)),
           "max": np.full((t, rows, c), span),
           # exactly k·θ and -k·θ: every v == ±θ and clamp edge
           "boundary": theta * rng.integers(-bmax - 1, bmax + 2, (t, rows, c))}[fill]
    cur = cur.astype(np.int32)
    want = oracle.neuron(iter(cur.astype(np.int64)), theta, kind, bmax, leak, "t")
    for v in VARIANTS:
        expect_equal(K.neuron_steps(cur, theta, kind, bmax, leak, variant=v), want,
                     f"{v} neuron_steps {kind} B={bmax} leak={leak}")


def test_neuron_validates():
    cur = np.zeros((2, 1, 3), np.int32)
    with pytest.raises(ValueError):
        K.neuron_steps(cur, np.array([1, 0, 1], np.int32), "burst", 4)
    with pytest.raises(ValueError):
        K.neuron_steps(cur, np.ones(3, np.int32), "leaky", 4)
    with pytest.raises(OverflowError):
        K.neuron_steps(np.full((3, 1, 3), 2**30, np.int32), np.ones(3, np.int32), "burst", 4)


# -- DBSSA -------------------------------------------------------------------------------

@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), gh=st.integers(1, 5), gw=st.integers(1, 5),
       window=st.sampled_from([1, 3, 5, 7, 11, None]), heads=st.integers(1, 4),
       dh=st.sampled_from([1, 3, 16, 31, 32, 33, 48, 64, 70, 128, 192, 256]),
       bmax=st.sampled_from([1, 4, 15]),
       fill=fills, threads=st.sampled_from([1, 2]))
def test_dbssa_equals_oracle_attention(seed, gh, gw, window, heads, dh, bmax, fill, threads):
    rng = rng_of(seed)
    n, d = gh * gw, heads * dh
    nplanes = int(bmax).bit_length()
    q = spikes_u8(rng, (n, d), 1, fill)
    k = spikes_u8(rng, (n, d), bmax, fill)
    vmag = spikes_u8(rng, (n, d), 1, fill).astype(np.int8)
    vs = vmag * np.where(rng.random((n, d)) < 0.5, 1, -1).astype(np.int8)
    nb, ptr, idx = window_csr(gh, gw, window)
    want_o = oracle.attention(q[None].astype(np.int64), k[None].astype(np.int64),
                              vs[None].astype(np.int64), nb, heads, "t")[0]
    want_s = np.array([(q[i].astype(np.int64) * k[j]).reshape(heads, dh).sum(1)
                       for i in range(n) for j in nb[i]]).reshape(-1, heads)
    qb = bitset.pack_bits_u64(q)
    kp = np.stack([bitset.pack_bits_u64((k >> b) & 1) for b in range(nplanes)], axis=1)
    vp, vn = bitset.pack_bits_u64(vs > 0), bitset.pack_bits_u64(vs < 0)
    for v in VARIANTS:
        s = K.dbssa_scores(qb, kp, ptr, idx, heads, d, variant=v)
        expect_equal(s, want_s, f"{v} dbssa_scores")
        expect_equal(K.signed_accumulate_u64(s, vp, vn, ptr, idx, d, variant=v), want_o,
                     f"{v} signed_accumulate_u64")
        expect_equal(K.dbssa_u64(qb, kp, vp, vn, ptr, idx, heads, d, threads=threads,
                                 variant=v), want_o, f"{v} dbssa_u64")


def test_dbssa_validates():
    nb, ptr, idx = window_csr(2, 2, 3)
    qb = np.zeros((4, 1), np.uint64)
    kp = np.zeros((4, 3, 1), np.uint64)
    with pytest.raises(ValueError):
        K.dbssa_u64(qb, kp, qb, qb, ptr, idx, 3, 8)            # 8 dims, 3 heads
    bad = idx.copy()
    bad[0] = 9
    with pytest.raises(ValueError):
        K.dbssa_u64(qb, kp, qb, qb, ptr, bad, 2, 8)
    both = np.ones((4, 1), np.uint64)
    with pytest.raises(ValueError):
        K.dbssa_u64(qb, kp, both, both, ptr, idx, 2, 8)        # +1 and -1 at once


def test_unknown_or_unsupported_variant_is_refused():
    with pytest.raises(ValueError):
        K.variant_info("x86-64-v9")


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), cin=widths, cout=widths,
       hi=st.sampled_from([1, 2, 4, 15, 36, 255]), fill=fills,
       wkind=st.sampled_from(["random", "max"]))
def test_accumulate_planes_simd_equal_scalar_equal_oracle(seed, cin, cout, hi, fill, wkind):
    rng = rng_of(seed)
    x = spikes_u8(rng, cin, hi, fill, rate=float(rng.choice([0.05, 0.3, 1.0])))
    w = weights_i8(rng, (cin, cout), wkind)
    want = x.astype(np.int64) @ w.astype(np.int64)
    if np.abs(want).max(initial=0) >= 2**31:
        return
    for v in VARIANTS:
        simd, scalar = K._accumulate_planes_paths(x, w, variant=v)
        expect_equal(simd, want, f"{v} accumulate_planes")
        expect_equal(scalar, want, f"{v} accumulate_planes scalar")


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), cin=st.sampled_from([1, 63, 64, 200, 256, 300]),
       cout=st.sampled_from([256, 320, 512, 1024]), hi=st.sampled_from([1, 4, 15, 36, 255]),
       fill=fills, wkind=st.sampled_from(["random", "max", "column_sign"]),
       change=st.sampled_from([0.0, 0.1, 0.5, 1.0]))
def test_accumulate_planes_and_delta_in_256_column_blocks_equal_oracle(
        seed, cin, cout, hi, fill, wkind, change):
    """Widths of whole 256-column blocks take bsv_accumulate_lists_i16 where the build has
    it (all planes, and both halves of a temporal delta, in one pass); 300 inputs at count
    255 pass the int16 budget of one list (the cut-into-runs fallback)."""
    rng = rng_of(seed)
    before = spikes_u8(rng, cin, hi, fill, rate=float(rng.choice([0.05, 0.3, 1.0])))
    redraw = rng.random(cin) < change
    now = np.where(redraw, rng.integers(0, hi + 1, cin), before).astype(np.uint8)
    w = weights_i8(rng, (cin, cout), wkind)
    want = now.astype(np.int64) @ w.astype(np.int64)
    for v in VARIANTS:
        simd, scalar = K._accumulate_planes_paths(now, w, variant=v)
        expect_equal(simd, want, f"{v} accumulate_planes")
        expect_equal(scalar, want, f"{v} accumulate_planes scalar")
        expect_equal(K._accumulate_delta_paths(now, before, w, variant=v), want,
                     f"{v} accumulate_delta")


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), cin=st.sampled_from([1, 63, 200, 256, 300]),
       cout=st.sampled_from([64, 256, 512]), hi=st.sampled_from([1, 3, 7, 15, 36, 255]),
       fill=fills, wkind=st.sampled_from(["random", "max", "column_sign"]))
def test_accumulate_planes3_equal_oracle(seed, cin, cout, hi, fill, wkind):
    """The Q/K/V pass: three weights from one set of plane lists (on whole 256-column
    blocks, consecutive planes share an int16 pass while their weighted rows fit)."""
    rng = rng_of(seed)
    x = spikes_u8(rng, cin, hi, fill, rate=float(rng.choice([0.05, 0.3, 0.7, 1.0])))
    ws = [weights_i8(rng, (cin, cout), wkind) for _ in range(3)]
    for v in VARIANTS:
        got = K._accumulate_planes3_paths(x, *ws, variant=v)
        for k in range(3):
            expect_equal(got[k], x.astype(np.int64) @ ws[k].astype(np.int64),
                         f"{v} accumulate_planes3[{k}]")


# -- the C helpers, compiled alone for each target (NEON under qemu-aarch64) ---------------

KERNELS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "kernels")


def _c_helpers(tmp_path):
    """kernels/_simd.pxi's C block as a header, next to the self-test's source."""
    text = open(os.path.join(KERNELS_DIR, "_simd.pxi")).read()
    start = text.index('cdef extern from *:\n    """\n') + len('cdef extern from *:\n    """\n')
    body = text[start:text.index('    """', start)]
    (tmp_path / "bsv_simd.h").write_text(
        "\n".join(line[4:] if line.startswith("    ") else line for line in body.split("\n")))
    return os.path.join(KERNELS_DIR, "selftest", "simd_selftest.c")


def _build_and_run(cmd, run, tmp_path):
    import subprocess
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run(run, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stdout + r.stderr
    return r.stdout.split()


@pytest.mark.parametrize("march", ["x86-64", "x86-64-v2", "x86-64-v3", "x86-64-v4"])
def test_c_helpers_selftest_on_host(tmp_path, march):
    import platform
    import shutil
    if platform.machine() not in ("x86_64", "AMD64") or not shutil.which("gcc"):
        pytest.skip("x86-64 host with gcc needed")
    if march != "x86-64" and not K.cpu_supports(march):
        pytest.skip(f"this CPU does not run {march}")
    src = _c_helpers(tmp_path)
    out = _build_and_run(["gcc", "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror",
                          "-Wno-unused-function", f"-march={march}", "-I.", src, "-o", "st"],
                         ["./st"], tmp_path)
    assert out[1] == {"x86-64": "sse2", "x86-64-v2": "sse2", "x86-64-v3": "avx2",
                      "x86-64-v4": "avx512bw"}[march]


@pytest.mark.aarch64
def test_c_helpers_selftest_on_aarch64_neon(tmp_path):
    import shutil
    if not (shutil.which("aarch64-linux-gnu-gcc") and shutil.which("qemu-aarch64")):
        msg = ("needs aarch64-linux-gnu-gcc and qemu-aarch64 (Debian: gcc-aarch64-linux-gnu "
               "libc6-dev-arm64-cross qemu-user)")
        if os.environ.get("CI"):      # .ci/run installs them: missing there is a failure
            pytest.fail(msg)
        pytest.skip(msg)
    src = _c_helpers(tmp_path)
    out = _build_and_run(["aarch64-linux-gnu-gcc", "-std=c99", "-O2", "-Wall", "-Wextra",
                          "-Werror", "-Wno-unused-function", "-static", "-I.", src, "-o", "st"],
                         ["qemu-aarch64", "-cpu", "cortex-a72", "./st"], tmp_path)
    assert out[1:] == ["neon", "hardware"]
