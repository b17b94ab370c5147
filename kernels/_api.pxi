# The Python-facing kernels: thin `def` wrappers. Each validates dtype, shape and
# contiguity once (typed memoryviews), checks that the integers it is given cannot leave
# int32 (the kernels themselves never check and never raise), then runs a nogil loop of
# the chosen build's kernels (`variant`, default: the best this CPU runs; see
# default_variant). Each names its NumPy oracle; tests/test_kernels.py compares them
# exactly.

import importlib
import os

import numpy as np
cimport numpy as cnp
from cpython.pycapsule cimport PyCapsule_GetPointer
from cython.parallel cimport parallel

cnp.import_array()

_INT32_MAX = 2**31 - 1

VARIANTS = ("x86-64-v4", "x86-64-v3", "x86-64-v2", "baseline")      # best first
_MODULES = {v: "bsvit_int._core_" + v.replace("-", "_") for v in VARIANTS[:len(VARIANTS) - 1]}
_capsules = {"baseline": core_capsule()}
_default = []


def cpu_supports(level):
    """True if this CPU runs code built for x86-64 micro-architecture `level`
    ("x86-64-v2", "x86-64-v3", "x86-64-v4"); False for anything else."""
    return bool(bsv_cpu_supports(str(level).encode()))


def _load(variant):
    cap = _capsules.get(variant)
    if cap is None:
        if variant not in VARIANTS:
            raise ValueError(f"unknown kernels variant {variant!r}; known: {', '.join(VARIANTS)}")
        if not cpu_supports(variant):
            raise RuntimeError(f"this CPU cannot run the {variant} build of the kernels")
        cap = importlib.import_module(_MODULES[variant]).core_capsule()
        _capsules[variant] = cap
    return cap


def available_variants():
    """The builds installed here that this CPU can run, best first ("baseline" always)."""
    out = []
    for v in VARIANTS:
        try:
            _load(v)
        except (ImportError, RuntimeError):
            continue
        out.append(v)
    return out


def default_variant():
    """The build the kernels use when `variant` is None: $BSVIT_ISA if set (it must be
    available), else the best of available_variants(). Decided once per process."""
    if not _default:
        env = os.environ.get("BSVIT_ISA", "").strip()
        if env:
            try:
                _load(env)
            except (ImportError, RuntimeError, ValueError) as e:
                raise RuntimeError(f"BSVIT_ISA={env!r} cannot be used: {e}") from None
            _default.append(env)
        else:
            _default.append(available_variants()[0])
    return _default[0]


cdef const CoreTable* _core(variant) except NULL:
    cap = _load(default_variant() if variant is None else variant)
    return <const CoreTable*>PyCapsule_GetPointer(cap, b"bsvit_int.CoreTable")


def variant_info(variant=None):
    """dict: variant, SIMD path of the byte masks, popcount kind, of a build."""
    cdef const CoreTable* tb = _core(variant)
    return {"variant": (<bytes>tb.variant).decode(), "simd": (<bytes>tb.simd).decode(),
            "popcount": (<bytes>tb.popcount).decode(), "cols": COLS}


def _threads(threads):
    t = int(threads)
    if t < 1:
        raise ValueError(f"threads must be >= 1, got {threads!r}")
    return t


def _padded_u8(a, name):
    """uint8 [R, D] -> C-contiguous uint8 [R, 64*ceil(D/64)] with zero padding (a copy)."""
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D [rows, channels], got shape {list(a.shape)}")
    rows, d = a.shape
    out = np.zeros((rows, 64 * ((d + 63) // 64)), dtype=np.uint8)
    out[:, :d] = a.view(np.uint8) if a.dtype.itemsize == 1 else a
    return out


def _rowmax(w):
    """max_o |w[j, o]| per input row j, uint8 (the int16 budget of a row)."""
    w = np.asarray(w)
    if w.shape[1] == 0:
        return np.zeros(w.shape[0], dtype=np.uint8)
    return np.abs(w.astype(np.int16)).max(axis=1).astype(np.uint8)


def _check_acc_bound(x, w, name):
    """Σ_j x[r, j]·|w[j, o]| <= int32 max for every row and output (spec op 1's bound)."""
    if x.size and w.size:
        worst = (np.asarray(x, dtype=np.int64) @ np.abs(np.asarray(w, dtype=np.int64))).max()
        if worst > _INT32_MAX:
            raise OverflowError(f"{name}: an accumulator could reach {worst}, beyond int32")


# -- paths of one build, for the tests -------------------------------------------

def _mask64_paths(const uint8_t[::1] block not None, int bits, int value, variant=None):
    """(simd test, scalar test, simd eq, scalar eq) masks of 64 bytes: the tests compare
    the SIMD path of this build with the scalar fallback compiled into every build."""
    cdef const CoreTable* tb = _core(variant)
    if block.shape[0] != 64:
        raise ValueError("block must hold exactly 64 bytes")
    if not 0 <= bits <= 255 or not 0 <= value <= 255:
        raise ValueError("bits and value are bytes (0..255)")
    return (tb.test_mask64(&block[0], <uint8_t>bits),
            tb.test_mask64_scalar(&block[0], <uint8_t>bits),
            tb.eq_mask64(&block[0], <uint8_t>value),
            tb.eq_mask64_scalar(&block[0], <uint8_t>value))


def _popcount_paths(const uint64_t[::1] words not None, variant=None):
    """(popcount as built, portable scalar popcount) of each word, as two uint8 arrays."""
    cdef const CoreTable* tb = _core(variant)
    cdef Py_ssize_t i, n = words.shape[0]
    a = np.zeros(n, dtype=np.uint8)
    b = np.zeros(n, dtype=np.uint8)
    cdef uint8_t[::1] av = a, bv = b
    with nogil:
        for i in range(n):
            av[i] = <uint8_t>tb.popcount64(words[i])
            bv[i] = <uint8_t>tb.popcount64_scalar(words[i])
    return a, b


# -- bitsets ---------------------------------------------------------------------------

def pack_bits_u64(spikes, variant=None):
    """Pack binary spikes [R, D] into bitsets uint64 [R, ceil(D/64)], bit d%64 of word d//64.

    Any non-zero byte is a spike. Oracle: bsvit_int.bitset.pack_bits_u64.
    """
    cdef const CoreTable* tb = _core(variant)
    spikes = np.asarray(spikes)
    if spikes.dtype.itemsize != 1 or spikes.dtype.kind not in "biu":
        raise TypeError(f"spikes must be uint8/int8/bool, got {spikes.dtype}")
    cdef uint8_t[:, ::1] x = _padded_u8(spikes, "spikes")
    cdef Py_ssize_t rows = x.shape[0], words = x.shape[1] // 64, r
    out = np.zeros((rows, words), dtype=np.uint64)
    cdef uint64_t[:, ::1] o = out
    if words:
        with nogil:
            for r in range(rows):
                tb.pack_test_u64(&x[r, 0], words, 0xff, &o[r, 0])
    return out


def unpack_bits_u64(const uint64_t[:, ::1] words not None, Py_ssize_t d):
    """Inverse of pack_bits_u64: bitsets [R, W] -> uint8 [R, d] of 0/1.

    Oracle: bsvit_int.bitset.unpack_bits_u64.
    """
    if d < 0 or (d + 63) // 64 != words.shape[1]:
        raise ValueError(f"d={d} does not match {words.shape[1]} words per row")
    cdef Py_ssize_t rows = words.shape[0], r, j
    out = np.zeros((rows, d), dtype=np.uint8)
    cdef uint8_t[:, ::1] o = out
    with nogil:
        for r in range(rows):
            for j in range(d):
                o[r, j] = <uint8_t>((words[r, j >> 6] >> (j & 63)) & 1)
    return out


def pack_planes_u64(counts, int nplanes, variant=None):
    """Burst counts uint8 [R, D] -> bit-planes uint64 [R, nplanes, ceil(D/64)].

    Plane b holds bit b of every count, so Q·K = Σ_b 2^b popcount(Q & K_b).
    Oracle: bsvit_int.bitset.pack_bits_u64((counts >> b) & 1) for each plane b.
    Counts must be < 2**nplanes.
    """
    cdef const CoreTable* tb = _core(variant)
    counts = np.asarray(counts)
    if counts.dtype != np.uint8:
        raise TypeError(f"counts must be uint8, got {counts.dtype}")
    if not 1 <= nplanes <= 8:
        raise ValueError(f"nplanes must be in 1..8, got {nplanes}")
    if counts.size and int(counts.max()) >= (1 << nplanes):
        raise ValueError(f"a count {int(counts.max())} needs more than {nplanes} planes")
    cdef uint8_t[:, ::1] x = _padded_u8(counts, "counts")
    cdef Py_ssize_t rows = x.shape[0], words = x.shape[1] // 64, r
    cdef int b
    out = np.zeros((rows, nplanes, words), dtype=np.uint64)
    cdef uint64_t[:, :, ::1] o = out
    if words:
        with nogil:
            for r in range(rows):
                for b in range(nplanes):
                    tb.pack_test_u64(&x[r, 0], words, <uint8_t>(1 << b), &o[r, b, 0])
    return out


def pack_signed_u64(spikes, variant=None):
    """Signed spikes int8 [R, D] in {-1, 0, +1} -> (pos, neg) bitsets uint64 [R, W] each.

    Oracle: (bsvit_int.bitset.pack_bits_u64(spikes > 0), pack_bits_u64(spikes < 0)).
    """
    cdef const CoreTable* tb = _core(variant)
    spikes = np.asarray(spikes)
    if spikes.dtype != np.int8:
        raise TypeError(f"signed spikes must be int8, got {spikes.dtype}")
    if spikes.size and (spikes.min() < -1 or spikes.max() > 1):
        raise ValueError("signed spikes must be -1, 0 or +1")
    cdef uint8_t[:, ::1] x = _padded_u8(spikes, "spikes")
    cdef Py_ssize_t rows = x.shape[0], words = x.shape[1] // 64, r
    pos = np.zeros((rows, words), dtype=np.uint64)
    neg = np.zeros((rows, words), dtype=np.uint64)
    cdef uint64_t[:, ::1] p = pos, n = neg
    if words:
        with nogil:
            for r in range(rows):
                tb.pack_eq_u64(&x[r, 0], words, 0x01, &p[r, 0])
                tb.pack_test_u64(&x[r, 0], words, 0x80, &n[r, 0])
    return pos, neg


# -- event-driven accumulation -------------------------------------------------------------

def accumulate_u8(counts, const int8_t[:, ::1] weight not None, threads=1, variant=None):
    """acc[r, o] = Σ_j counts[r, j] · weight[j, o], int32 [R, cout], addition only.

    counts: uint8 [R, cin] spike counts (binary spikes are counts 0/1); weight: int8
    [cin, cout] input-major. Each count adds its row once per set bit, shifted (bit-plane
    lists + accumulate_rows_i16). OpenMP over rows when threads > 1.
    Oracle: the `acc` of bsvit_int.oracle.current, i.e. counts.astype(int64) @ weight.
    """
    cdef const CoreTable* tb = _core(variant)
    counts = np.asarray(counts)
    if counts.dtype != np.uint8 or counts.ndim != 2:
        raise TypeError(f"counts must be uint8 [R, cin], got {counts.dtype}{list(counts.shape)}")
    if counts.shape[1] != weight.shape[0]:
        raise ValueError(f"counts have {counts.shape[1]} inputs, weight has {weight.shape[0]} rows")
    cdef int nthreads = _threads(threads)
    _check_acc_bound(counts, weight, "accumulate_u8")
    cdef uint8_t[:, ::1] x = _padded_u8(counts, "counts")
    cdef const uint8_t[::1] rmax = _rowmax(weight)
    cdef Py_ssize_t rows = x.shape[0], words = x.shape[1] // 64, cout = weight.shape[1]
    cdef Py_ssize_t cin = weight.shape[0], stride = 64 * words + 16, r
    out = np.zeros((rows, cout), dtype=np.int32)
    lists = np.zeros((nthreads, 8 * stride), dtype=np.int32)
    cnts = np.zeros((nthreads, MAX_PLANES), dtype=np.intp)
    cdef int32_t[:, ::1] o = out
    cdef int32_t[:, ::1] lv = lists
    cdef Py_ssize_t[:, ::1] cv = cnts
    cdef const int8_t* wp = &weight[0, 0] if cin and cout else NULL
    cdef const uint8_t* rp = &rmax[0] if cin else NULL
    cdef int tid
    if rows == 0 or cout == 0 or cin == 0:
        return out
    with nogil, parallel(num_threads=nthreads):
        tid = threadid()
        for r in prange(rows, schedule="static"):
            tb.plane_lists(&x[r, 0], words, 8, &lv[tid, 0], stride, &cv[tid, 0])
            tb.accumulate_planes(&o[r, 0], wp, cout, rp, &lv[tid, 0], stride, &cv[tid, 0], 8)
    return out


def accumulate_bits_u64(const uint64_t[:, ::1] bits not None,
                        const int8_t[:, ::1] weight not None, variant=None):
    """acc[r, o] = Σ_{j: bit j of bits[r] set} weight[j, o], int32 [R, cout]: binary spikes
    straight from bitsets (one row addition per set bit).

    Oracle: bsvit_int.bitset.unpack_bits_u64(bits, cin).astype(int64) @ weight.
    """
    cdef const CoreTable* tb = _core(variant)
    cdef Py_ssize_t rows = bits.shape[0], words = bits.shape[1]
    cdef Py_ssize_t cin = weight.shape[0], cout = weight.shape[1], r, w, n
    if words != (cin + 63) // 64:
        raise ValueError(f"{words} words per row do not hold {cin} inputs")
    if cin % 64 and rows and words and np.any(np.asarray(bits)[:, -1] >> np.uint64(cin % 64)):
        raise ValueError("bits beyond the weight's inputs are set")
    dense = np.zeros((rows, 64 * words), dtype=np.uint8)   # only for the bound check
    if rows and words:
        dense = np.unpackbits(np.asarray(bits).view(np.uint8), axis=1, bitorder="little")
    _check_acc_bound(dense[:, :cin], weight, "accumulate_bits_u64")
    cdef const uint8_t[::1] rmax = _rowmax(weight)
    out = np.zeros((rows, cout), dtype=np.int32)
    lists = np.zeros(max(cin, 1), dtype=np.int32)
    cdef int32_t[:, ::1] o = out
    cdef int32_t[::1] lv = lists
    cdef Py_ssize_t cnt[1]
    cdef uint64_t m
    if rows == 0 or cout == 0 or cin == 0:
        return out
    with nogil:
        for r in range(rows):
            n = 0
            for w in range(words):
                m = bits[r, w]
                while m:
                    lv[n] = <int32_t>(64 * w + bsv_ctz64(m))
                    n += 1
                    m &= m - 1
            cnt[0] = n
            tb.accumulate_planes(&o[r, 0], &weight[0, 0], cout, &rmax[0], &lv[0], cin, cnt, 1)
    return out


def current_u8(counts, const int8_t[:, ::1] weight not None, bias, int shift, threads=1,
               variant=None):
    """I = (Σ_j counts[r, j]·weight[j, o]) << shift + bias[o], int32 [R, cout] (spec op 1).

    Oracle: bsvit_int.oracle.current(counts, weight, bias, shift, name).
    """
    cdef const CoreTable* tb = _core(variant)
    if not 0 <= shift <= 16:
        raise ValueError(f"shift must be in 0..16, got {shift}")
    b = np.asarray(bias)
    if b.dtype != np.int32 or b.shape != (weight.shape[1],):
        raise ValueError(f"bias must be int32 [{weight.shape[1]}], got {b.dtype}{list(b.shape)}")
    acc = accumulate_u8(counts, weight, threads, variant)
    big = np.abs(acc.astype(np.int64)) * (1 << shift) + np.abs(b.astype(np.int64))
    if big.size and big.max() > _INT32_MAX:
        raise OverflowError("current_u8: (acc << shift) + bias leaves int32")
    cdef int32_t[:, ::1] a = acc
    cdef const int32_t[::1] bv = np.ascontiguousarray(b)
    cdef Py_ssize_t r
    with nogil:
        for r in range(a.shape[0]):
            tb.shift_add_bias(&a[r, 0] if a.shape[1] else NULL, shift, &bv[0] if a.shape[1] else NULL, a.shape[1])
    return acc


def current_pixels_u8(const uint8_t[:, ::1] patches not None,
                      const int8_t[:, ::1] weight not None, bias, int shift, variant=None):
    """The patch embedding's current on raw pixels, with true multiplications (MACs):
    I[r, o] = (Σ_k patches[r, k]·weight[k, o]) << shift + bias[r, o], int32 [R, D].

    bias: int32 [R, D] (the embedding folds the position bias per token) or [D].
    Oracle: bsvit_int.oracle.current(patches, weight, bias, shift, name).
    """
    cdef const CoreTable* tb = _core(variant)
    cdef Py_ssize_t rows = patches.shape[0], k = patches.shape[1], d = weight.shape[1], r
    if weight.shape[0] != k:
        raise ValueError(f"patches have {k} values, weight has {weight.shape[0]} rows")
    if not 0 <= shift <= 16:
        raise ValueError(f"shift must be in 0..16, got {shift}")
    b = np.asarray(bias)
    if b.dtype != np.int32 or b.shape not in ((rows, d), (d,)):
        raise ValueError(f"bias must be int32 [{rows}, {d}] or [{d}], got {b.dtype}{list(b.shape)}")
    b = np.ascontiguousarray(np.broadcast_to(b, (rows, d)))
    _check_acc_bound(np.asarray(patches), weight, "current_pixels_u8")
    acc = (np.asarray(patches, np.int64) @ np.abs(np.asarray(weight, np.int64))) if rows and d else None
    if acc is not None and acc.size and (acc * (1 << shift) + np.abs(b.astype(np.int64))).max() > _INT32_MAX:
        raise OverflowError("current_pixels_u8: the current leaves int32")
    out = np.zeros((rows, d), dtype=np.int32)
    if rows == 0 or d == 0:
        return out
    cdef int32_t[:, ::1] o = out
    cdef const int32_t[:, ::1] bv = b
    cdef const int8_t* wp = &weight[0, 0] if k else NULL
    with nogil:
        for r in range(rows):
            tb.accumulate_macs(&o[r, 0], wp, d, &patches[r, 0] if k else NULL, k)
            tb.shift_add_bias(&o[r, 0], shift, &bv[r, 0], d)
    return out


# -- neurons --------------------------------------------------------------------------------

def neuron_steps(const int32_t[:, :, ::1] currents not None, const int32_t[::1] theta not None,
                 kind, int spike_max, leak_shift=None, variant=None):
    """Run a neuron layer over T steps: currents int32 [T, R, C] -> spikes int8 [T, R, C].

    kind "burst" (0..spike_max, compare-and-subtract) or "signed" (-1/0/+1); leak_shift
    None (integrate-and-fire) or k in 0..15 (v += floor((I - v) / 2^k)); soft reset.
    Oracle: bsvit_int.oracle.neuron(currents, theta, kind, spike_max, leak_shift, name).
    """
    cdef const CoreTable* tb = _core(variant)
    cdef Py_ssize_t T = currents.shape[0], rows = currents.shape[1], c = currents.shape[2]
    cdef Py_ssize_t t, r
    if theta.shape[0] != c:
        raise ValueError(f"theta has {theta.shape[0]} channels, currents have {c}")
    if kind not in ("burst", "signed"):
        raise ValueError(f"kind must be 'burst' or 'signed', got {kind!r}")
    cdef int k = KIND_SIGNED if kind == "signed" else KIND_BURST
    if k == KIND_SIGNED:
        spike_max = 1
    if not 1 <= spike_max <= 15:
        raise ValueError(f"spike_max must be in 1..15, got {spike_max}")
    cdef int leak = NO_LEAK if leak_shift is None else int(leak_shift)
    if leak_shift is not None and not 0 <= leak <= 30:
        raise ValueError(f"leak_shift must be None or in 0..30, got {leak_shift!r}")
    th = np.asarray(theta)
    if th.size and th.min() < 1:
        raise ValueError("thresholds must be >= 1")
    if currents.size and c:
        j = int(np.abs(np.asarray(currents, np.int64)).max())
        bound = max((T + 1) * j, spike_max * int(th.max()) + T * j)
        if bound > _INT32_MAX:
            raise OverflowError(f"neuron_steps: the membrane could reach {bound}, beyond int32")
    out = np.zeros((T, rows, c), dtype=np.int8)
    if T == 0 or rows == 0 or c == 0:
        return out
    v = np.zeros((rows, c), dtype=np.int32)
    zeros = np.zeros(c, dtype=np.int32)
    cdef int32_t[:, ::1] vv = v
    cdef int32_t[::1] zv = zeros
    cdef int8_t[:, :, ::1] o = out
    with nogil:
        for t in range(T):
            for r in range(rows):
                tb.neuron_step(&vv[r, 0], &currents[t, r, 0], 0, &zv[0], &theta[0], leak, k,
                               spike_max, <uint8_t*>&o[t, r, 0], c)
    return out


# -- DBSSA ----------------------------------------------------------------------------------

def _check_window(nbr_ptr, nbr_idx, n):
    p = np.asarray(nbr_ptr)
    i = np.asarray(nbr_idx)
    if p.shape != (n + 1,) or p[0] != 0 or np.any(np.diff(p) < 0) or p[n] != i.shape[0]:
        raise ValueError("neighbours must be CSR: ptr [N+1] from 0, increasing, to len(idx)")
    if i.size and (i.min() < 0 or i.max() >= n):
        raise ValueError("a neighbour index is outside 0..N-1")
    return int(np.max(np.diff(p))) if n else 0


def _check_heads(d, heads, nwords):
    if heads < 1 or d % heads:
        raise ValueError(f"dim {d} is not divisible by {heads} heads")
    if (d + 63) // 64 != nwords:
        raise ValueError(f"{nwords} words per row do not hold {d} channels")


def dbssa_scores(const uint64_t[:, ::1] q_bits not None,
                 const uint64_t[:, :, ::1] k_planes not None,
                 const int32_t[::1] nbr_ptr not None, const int32_t[::1] nbr_idx not None,
                 int heads, Py_ssize_t dim, variant=None):
    """Windowed scores S[e, h] = Σ_{d in head h} Q[i, d]·K[j, d] for every window pair
    e = (i, j) in CSR order (j = nbr_idx[e], e in nbr_ptr[i]..nbr_ptr[i+1]), int32 [E, H].

    Q binary bitsets [N, W]; K burst counts as bit-planes [N, P, W]:
    S = Σ_b 2^b·popcount(Q & K_b) per head (a head's dims are contiguous bits).
    Oracle: the S of bsvit_int.oracle.attention, (Q[i]*K[j]).reshape(H, dh).sum(1).
    """
    cdef const CoreTable* tb = _core(variant)
    cdef Py_ssize_t n = q_bits.shape[0], nw = q_bits.shape[1], np_ = k_planes.shape[1]
    cdef Py_ssize_t i, e, h, j
    _check_heads(dim, heads, nw)
    if k_planes.shape[0] != n or k_planes.shape[2] != nw:
        raise ValueError("k_planes must be [N, P, W] like q_bits [N, W]")
    if not 1 <= np_ <= 8:
        raise ValueError("k_planes must have 1..8 planes")
    _check_window(nbr_ptr, nbr_idx, n)
    hw = np.zeros(heads * sizeof(HeadWords), dtype=np.uint8)
    cdef uint8_t[::1] hwv = hw
    cdef HeadWords* hwp = <HeadWords*>&hwv[0]
    head_words_init(hwp, heads, dim // heads)
    out = np.zeros((nbr_idx.shape[0], heads), dtype=np.int32)
    cdef int32_t[:, ::1] o = out
    if n == 0 or nw == 0:
        return out
    with nogil:
        for i in range(n):
            for e in range(nbr_ptr[i], nbr_ptr[i + 1]):
                j = nbr_idx[e]
                for h in range(heads):
                    o[e, h] = tb.head_score(&q_bits[i, 0], &k_planes[j, 0, 0], np_, nw, &hwp[h])
    return out


def signed_accumulate_u64(const int32_t[:, ::1] scores not None,
                          const uint64_t[:, ::1] v_pos not None,
                          const uint64_t[:, ::1] v_neg not None,
                          const int32_t[::1] nbr_ptr not None,
                          const int32_t[::1] nbr_idx not None, Py_ssize_t dim, variant=None):
    """O[i, d] = Σ_{e=(i,j)} S[e, h(d)]·V[j, d] with V as two bitsets (pos, neg): adds and
    subtracts only, over the set bits of V. scores int32 [E, H] (dbssa_scores), out [N, D].

    Oracle: the O of bsvit_int.oracle.attention given S.
    """
    cdef const CoreTable* tb = _core(variant)
    cdef Py_ssize_t n = v_pos.shape[0], nw = v_pos.shape[1], heads = scores.shape[1]
    cdef Py_ssize_t i, e, h, j
    _check_heads(dim, heads, nw)
    if v_neg.shape[0] != n or v_neg.shape[1] != nw:
        raise ValueError("v_pos and v_neg must have the same shape")
    if np.any(np.bitwise_and(np.asarray(v_pos), np.asarray(v_neg))):
        raise ValueError("a value cannot be both +1 and -1")
    maxwin = _check_window(nbr_ptr, nbr_idx, n)
    if scores.shape[0] != nbr_idx.shape[0]:
        raise ValueError("scores must have one row per window pair")
    if scores.size and int(np.abs(np.asarray(scores, np.int64)).max()) * maxwin > _INT32_MAX:
        raise OverflowError("signed_accumulate_u64: O could leave int32")
    hw = np.zeros(heads * sizeof(HeadWords), dtype=np.uint8)
    cdef uint8_t[::1] hwv = hw
    cdef HeadWords* hwp = <HeadWords*>&hwv[0]
    head_words_init(hwp, heads, dim // heads)
    out = np.zeros((n, dim), dtype=np.int32)
    cdef int32_t[:, ::1] o = out
    if n == 0 or nw == 0:
        return out
    with nogil:
        for i in range(n):
            for e in range(nbr_ptr[i], nbr_ptr[i + 1]):
                j = nbr_idx[e]
                for h in range(heads):
                    if scores[e, h] != 0:
                        tb.signed_add(&o[i, 0], scores[e, h], &v_pos[j, 0], &v_neg[j, 0], &hwp[h])
    return out


def dbssa_u64(const uint64_t[:, ::1] q_bits not None, const uint64_t[:, :, ::1] k_planes not None,
              const uint64_t[:, ::1] v_pos not None, const uint64_t[:, ::1] v_neg not None,
              const int32_t[::1] nbr_ptr not None, const int32_t[::1] nbr_idx not None,
              int heads, Py_ssize_t dim, threads=1, variant=None):
    """Windowed DBSSA for one step, fused as the engine runs it: O int32 [N, D] from Q
    bitsets [N, W], K bit-planes [N, P, W] and V bitsets (pos, neg) [N, W].

    OpenMP over query tokens when threads > 1. Oracle: bsvit_int.oracle.attention.
    """
    cdef const CoreTable* tb = _core(variant)
    cdef Py_ssize_t n = q_bits.shape[0], nw = q_bits.shape[1], np_ = k_planes.shape[1], i
    cdef int nthreads = _threads(threads)
    _check_heads(dim, heads, nw)
    if k_planes.shape[0] != n or k_planes.shape[2] != nw or not 1 <= np_ <= 8:
        raise ValueError("k_planes must be [N, 1..8, W] like q_bits [N, W]")
    if v_pos.shape[0] != n or v_pos.shape[1] != nw or v_neg.shape[0] != n \
            or v_neg.shape[1] != nw:
        raise ValueError("v_pos and v_neg must be [N, W] like q_bits")
    if np.any(np.bitwise_and(np.asarray(v_pos), np.asarray(v_neg))):
        raise ValueError("a value cannot be both +1 and -1")
    maxwin = _check_window(nbr_ptr, nbr_idx, n)
    if maxwin * (dim // heads) * ((1 << np_) - 1) > _INT32_MAX:
        raise OverflowError("dbssa_u64: O could leave int32")
    hw = np.zeros(heads * sizeof(HeadWords), dtype=np.uint8)
    cdef uint8_t[::1] hwv = hw
    cdef HeadWords* hwp = <HeadWords*>&hwv[0]
    head_words_init(hwp, heads, dim // heads)
    out = np.zeros((n, dim), dtype=np.int32)
    cdef int32_t[:, ::1] o = out
    if n == 0 or nw == 0:
        return out
    with nogil, parallel(num_threads=nthreads):
        for i in prange(n, schedule="static"):
            tb.dbssa_token(&o[i, 0], dim, &q_bits[i, 0], &k_planes[0, 0, 0], &v_pos[0, 0],
                        &v_neg[0, 0], np_, nw, &nbr_idx[nbr_ptr[i]] if nbr_ptr[i] < nbr_ptr[i + 1] else NULL,
                        nbr_ptr[i + 1] - nbr_ptr[i], hwp, heads)
    return out


def _accumulate_rows_paths(const int8_t[:, ::1] weight not None,
                           const int32_t[::1] rows not None, int shift, variant=None):
    """(this build's accumulate_rows_i16, the scalar fallback) of
    acc[o] = (Σ_r weight[rows[r], o]) << shift, as two int32 arrays [cout].
    Oracle: weight[rows].astype(int64).sum(0) << shift. The rows' budget must hold."""
    cdef const CoreTable* tb = _core(variant)
    cdef Py_ssize_t cout = weight.shape[1], n = rows.shape[0]
    r = np.asarray(rows)
    if n and (r.min() < 0 or r.max() >= weight.shape[0]):
        raise ValueError("a row index is outside the weight")
    if not 0 <= shift <= 16:
        raise ValueError("shift must be in 0..16")
    if n and int(_rowmax(weight)[r].astype(np.int64).sum()) > I16_BUDGET:
        raise ValueError("the rows exceed the int16 budget (Σ max|row| > 32767)")
    a = np.zeros(cout, dtype=np.int32)
    b = np.zeros(cout, dtype=np.int32)
    cdef int32_t[::1] av = a, bv = b
    if cout == 0 or n == 0:
        return a, b
    with nogil:
        tb.accumulate_rows_i16(&av[0], &weight[0, 0], cout, &rows[0], n, shift)
        tb.accumulate_rows_i16_scalar(&bv[0], &weight[0, 0], cout, &rows[0], n, shift)
    return a, b


def _accumulate_planes_paths(counts, const int8_t[:, ::1] weight not None, variant=None):
    """(this build's accumulate_planes, the scalar fallback) of Σ_j counts[j]·weight[j, :]
    for uint8 counts [cin], via the bit-plane lists, as two int32 arrays [cout].
    Oracle: counts.astype(int64) @ weight."""
    cdef const CoreTable* tb = _core(variant)
    c = np.asarray(counts)
    if c.dtype != np.uint8 or c.shape != (weight.shape[0],):
        raise ValueError(f"counts must be uint8 [{weight.shape[0]}]")
    _check_acc_bound(c[None], weight, "_accumulate_planes_paths")
    cdef uint8_t[:, ::1] x = _padded_u8(c[None], "counts")
    cdef const uint8_t[::1] rmax = _rowmax(weight)
    cdef Py_ssize_t words = x.shape[1] // 64, cout = weight.shape[1], stride = 64 * words + 16
    lists = np.zeros(8 * stride, dtype=np.int32)
    cnts = np.zeros(MAX_PLANES, dtype=np.intp)
    cdef int32_t[::1] lv = lists
    cdef Py_ssize_t[::1] cv = cnts
    a = np.zeros(cout, dtype=np.int32)
    b = np.zeros(cout, dtype=np.int32)
    cdef int32_t[::1] av = a, bv = b
    if cout == 0 or weight.shape[0] == 0:
        return a, b
    with nogil:
        tb.plane_lists(&x[0, 0], words, 8, &lv[0], stride, &cv[0])
        tb.accumulate_planes(&av[0], &weight[0, 0], cout, &rmax[0], &lv[0], stride, &cv[0], 8)
        tb.accumulate_planes_scalar(&bv[0], &weight[0, 0], cout, &rmax[0], &lv[0], stride,
                                    &cv[0], 8)
    return a, b


def _accumulate_delta_paths(now, before, const int8_t[:, ::1] weight not None, variant=None):
    """Σ_j now[j]·weight[j, :] as the engine's temporal delta computes it: accumulate_planes
    of `before`, then accumulate_delta of the change (delta_parts, both halves' plane
    lists). now, before: uint8 [cin]. Oracle: now.astype(int64) @ weight."""
    cdef const CoreTable* tb = _core(variant)
    a_now, a_before = np.asarray(now), np.asarray(before)
    for a, name in ((a_now, "now"), (a_before, "before")):
        if a.dtype != np.uint8 or a.shape != (weight.shape[0],):
            raise ValueError(f"{name} must be uint8 [{weight.shape[0]}]")
    _check_acc_bound(np.maximum(a_now, a_before)[None], weight, "_accumulate_delta_paths")
    cdef uint8_t[:, ::1] xn = _padded_u8(a_now[None], "now")
    cdef uint8_t[:, ::1] xb = _padded_u8(a_before[None], "before")
    cdef const uint8_t[::1] rmax = _rowmax(weight)
    cdef Py_ssize_t words = xn.shape[1] // 64, cout = weight.shape[1], stride = 64 * words + 16
    lists = np.zeros(2 * DELTA_NEG * stride, dtype=np.int32)
    cnts = np.zeros(MAX_PLANES, dtype=np.intp)
    pos = np.zeros(64 * words, dtype=np.uint8)
    neg = np.zeros(64 * words, dtype=np.uint8)
    cdef int32_t[::1] lv = lists
    cdef Py_ssize_t[::1] cv = cnts
    cdef uint8_t[::1] pv = pos, nv = neg
    a = np.zeros(cout, dtype=np.int32)
    cdef int32_t[::1] av = a
    if cout == 0 or weight.shape[0] == 0:
        return a
    with nogil:
        tb.plane_lists(&xb[0, 0], words, 8, &lv[0], stride, &cv[0])
        tb.accumulate_planes(&av[0], &weight[0, 0], cout, &rmax[0], &lv[0], stride, &cv[0], 8)
        tb.delta_parts(&pv[0], &nv[0], &xn[0, 0], &xb[0, 0], 64 * words)
        tb.plane_lists(&pv[0], words, 8, &lv[0], stride, &cv[0])
        tb.plane_lists(&nv[0], words, 8, &lv[DELTA_NEG * stride], stride, &cv[DELTA_NEG])
        tb.accumulate_delta(&av[0], &weight[0, 0], cout, &rmax[0], &lv[0], stride, &cv[0], 8)
    return a


def _accumulate_planes3_paths(counts, const int8_t[:, ::1] w0 not None,
                              const int8_t[:, ::1] w1 not None, const int8_t[:, ::1] w2 not None,
                              variant=None):
    """accumulate_planes3 (the engine's Q/K/V pass) of uint8 counts [cin] into three
    weights of one shape: three int32 arrays [cout]. Oracle: counts.astype(int64) @ w_k."""
    cdef const CoreTable* tb = _core(variant)
    c = np.asarray(counts)
    if c.dtype != np.uint8 or c.shape != (w0.shape[0],):
        raise ValueError(f"counts must be uint8 [{w0.shape[0]}]")
    ws = [np.asarray(w0), np.asarray(w1), np.asarray(w2)]
    if ws[1].shape != ws[0].shape or ws[2].shape != ws[0].shape:
        raise ValueError("the three weights must have one shape")
    for w in ws:
        _check_acc_bound(c[None], w, "_accumulate_planes3_paths")
    cdef uint8_t[:, ::1] x = _padded_u8(c[None], "counts")
    cdef const uint8_t[::1] r0 = _rowmax(w0)
    cdef const uint8_t[::1] r1 = _rowmax(w1)
    cdef const uint8_t[::1] r2 = _rowmax(w2)
    cdef Py_ssize_t words = x.shape[1] // 64, cout = w0.shape[1], stride = 64 * words + 16
    lists = np.zeros(8 * stride, dtype=np.int32)
    cnts = np.zeros(MAX_PLANES, dtype=np.intp)
    cdef int32_t[::1] lv = lists
    cdef Py_ssize_t[::1] cv = cnts
    out = [np.zeros(cout, dtype=np.int32) for _ in range(3)]
    cdef int32_t[::1] a0 = out[0], a1 = out[1], a2 = out[2]
    if cout == 0 or w0.shape[0] == 0:
        return out
    with nogil:
        tb.plane_lists(&x[0, 0], words, 8, &lv[0], stride, &cv[0])
        tb.accumulate_planes3(&a0[0], &a1[0], &a2[0], &w0[0, 0], &w1[0, 0], &w2[0, 0],
                              &r0[0], &r1[0], &r2[0], cout, &lv[0], stride, &cv[0], 8, 1, 0)
    return out


# -- benchmark helper ------------------------------------------------------------------------

def bench_accumulate_rows(const int8_t[:, ::1] weight not None,
                          const int32_t[:, ::1] lists not None,
                          const int32_t[::1] lengths not None, int repeats, variant=None):
    """(seconds, adds): `repeats` passes of accumulate_rows_i16 (the engine's innermost loop,
    alone: no list building, neurons or clearing) over each row list lists[k, :lengths[k]],
    for the accumulate roofline of benchmarks/compare.py. Each list must keep the int16
    budget (Σ max|row| <= 32767)."""
    import time
    cdef const CoreTable* tb = _core(variant)
    cdef Py_ssize_t nl = lists.shape[0], cout = weight.shape[1], k, rep
    if lengths.shape[0] != nl or repeats < 1 or cout == 0:
        raise ValueError("one length per list, repeats >= 1 and a non-empty weight needed")
    rm = _rowmax(weight).astype(np.int64)
    L = np.asarray(lists)
    for k in range(nl):
        row = L[k, :lengths[k]]
        if lengths[k] < 0 or lengths[k] > L.shape[1] or (row.size and (row.min() < 0 or row.max() >= weight.shape[0])):
            raise ValueError(f"list {k} is malformed")
        if int(rm[row].sum()) > I16_BUDGET:
            raise ValueError(f"list {k} exceeds the int16 budget")
    acc = np.zeros(cout, dtype=np.int32)
    cdef int32_t[::1] av = acc
    t0 = time.perf_counter()
    with nogil:
        for rep in range(repeats):
            for k in range(nl):
                tb.accumulate_rows_i16(&av[0], &weight[0, 0], cout, &lists[k, 0], lengths[k], 0)
    seconds = time.perf_counter() - t0
    return seconds, int(np.sum(lengths, dtype=np.int64)) * cout * repeats
