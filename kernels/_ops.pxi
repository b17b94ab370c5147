# The nogil kernels: event-driven accumulation, integer neurons, bitsets, DBSSA.
#
# Conventions. Spike buffers are uint8 and padded with zeros to a multiple of 64 bytes, so
# the byte-mask helpers always read whole 64-byte groups; kernels write only the first
# `n` bytes, the padding stays zero. Signed spikes are stored as the bytes 0x01 (+1),
# 0x00 and 0xff (-1, i.e. int8 -1). Bitsets are uint64 words, bit d % 64 of word d // 64
# (bsvit_int.bitset). Nothing here allocates, raises or takes the GIL.

from libc.string cimport memcpy, memset

cdef enum:
    COLS = 64               # column block of the Cython loops (accumulate_macs)
    I16_BUDGET = 32767      # largest |partial sum| an int16 accumulator may reach
    MAX_PLANES = 32         # bits of the largest count a plane list can hold (uint8: 8)
    DELTA_NEG = 8           # list (and count) index of a delta's negative half (counts
                            # are uint8: at most 8 planes each)
    KIND_BURST = 0
    KIND_SIGNED = 1
    NO_LEAK = -1


# -- bitsets ---------------------------------------------------------------------------

cdef inline void pack_test_u64(const uint8_t* s, Py_ssize_t nwords, uint8_t bits,
                               uint64_t* out) noexcept nogil:
    """out[w] bit i = (s[64w + i] & bits) != 0: binary spikes (bits=0xff) or one plane."""
    cdef Py_ssize_t w
    for w in range(nwords):
        out[w] = bsv_test_mask64(s + 64 * w, bits)


cdef inline void pack_eq_u64(const uint8_t* s, Py_ssize_t nwords, uint8_t value,
                             uint64_t* out) noexcept nogil:
    """out[w] bit i = s[64w + i] == value (the excitatory half of signed spikes)."""
    cdef Py_ssize_t w
    for w in range(nwords):
        out[w] = bsv_eq_mask64(s + 64 * w, value)


cdef inline void plane_lists(const uint8_t* x, Py_ssize_t nwords, int nplanes,
                             int32_t* lists, Py_ssize_t stride,
                             Py_ssize_t* counts) noexcept nogil:
    """For each bit b < nplanes of the counts x, the inputs whose count has bit b set.

    lists[b * stride + k] (k < counts[b]) are input indices in increasing order. These are
    the rows an event-driven layer adds (shifted left by b): x[j] * W[j] = Σ_b (bit b of
    x[j]) * (W[j] << b), so a count costs popcount(count) row additions.
    stride must leave 16 entries of slack after 64*nwords (whole-register stores).
    """
    cdef Py_ssize_t c
    cdef int b
    cdef uint64_t m, word, top = 0
    for b in range(nplanes):
        counts[b] = 0
    for c in range(8 * nwords):          # the planes the counts actually use (often fewer
        memcpy(&word, x + 8 * c, 8)      # than the bound allows)
        top |= word
    top |= top >> 32
    top |= top >> 16
    top |= top >> 8
    top &= 0xff
    b = 0
    while b < nplanes and (top >> b) != 0:
        b += 1
    nplanes = b
    for c in range(nwords):
        for b in range(nplanes):
            m = bsv_test_mask64(x + 64 * c, <uint8_t>(1 << b))
            if m == 0:
                continue
            counts[b] += bsv_bits_to_rows(m, <int32_t>(64 * c), lists + b * stride + counts[b])


# -- event-driven accumulation -------------------------------------------------------------

cdef inline void accumulate_rows_i16(int32_t* acc, const int8_t* w, Py_ssize_t cout,
                                     const int32_t* rows, Py_ssize_t nrows,
                                     int shift) noexcept nogil:
    """acc[o] += (Σ_r w[rows[r], o]) << shift, for o < cout.  (w is [cin, cout] int8.)

    The innermost loop of the engine, in C with one path per instruction set
    (bsv_accumulate_rows_i16 in _simd.pxi). The caller guarantees
    Σ_r max_o |w[rows[r], o]| <= 32767 (int16 partial sums).
    """
    bsv_accumulate_rows_i16(acc, w, cout, rows, nrows, shift, 0, 0)


cdef void accumulate_rows_i16_scalar(int32_t* acc, const int8_t* w, Py_ssize_t cout,
                                     const int32_t* rows, Py_ssize_t nrows,
                                     int shift) noexcept nogil:
    """The portable scalar form of accumulate_rows_i16 (tests compare the two)."""
    if nrows > 0:
        bsv_accumulate_rows_i16_scalar(acc, w, cout, rows, nrows, 0, shift, 0, 0)


cdef inline void _accumulate_planes(int32_t* acc, const int8_t* w, Py_ssize_t cout,
                                    const uint8_t* rowmax, const int32_t* lists,
                                    Py_ssize_t stride, const Py_ssize_t* counts, int nplanes,
                                    bint scalar, int store, int negate) noexcept nogil:
    # store: the first list writes acc (no separate clearing); negate: subtract.
    cdef int b
    cdef Py_ssize_t n, r, start, budget, rm
    cdef const int32_t* rows
    if not scalar and _lists_fit(cout, counts, nplanes):
        if negate:
            bsv_accumulate_lists_i16(acc, w, cout, lists, counts, 0, lists, counts, nplanes,
                                     stride, store)
        else:
            bsv_accumulate_lists_i16(acc, w, cout, lists, counts, nplanes, lists, counts, 0,
                                     stride, store)
        return
    for b in range(nplanes):
        n = counts[b]
        if n == 0:
            continue
        rows = lists + b * stride
        start = 0
        if n * 128 > I16_BUDGET:        # could pass the int16 budget: cut into runs
            budget = 0
            for r in range(n):
                rm = rowmax[rows[r]]
                if budget + rm > I16_BUDGET:
                    accumulate_rows_i16_any(acc, w, cout, rows + start, r - start, b, scalar,
                                            store, negate)
                    store = 0
                    start = r
                    budget = 0
                budget += rm
        accumulate_rows_i16_any(acc, w, cout, rows + start, n - start, b, scalar, store, negate)
        store = 0
    if store:
        memset(acc, 0, cout * sizeof(int32_t))


cdef inline bint _blocks_fit(Py_ssize_t cout, const Py_ssize_t* counts,
                             int nplanes) noexcept nogil:
    """Whole 256-column blocks, and every list within the int16 budget unsplit (at most
    255 rows): what the grouped passes (bsv_accumulate_lists_i16, _lists3_i16) take."""
    cdef int b
    if cout % 256 != 0:
        return False
    for b in range(nplanes):
        if counts[b] * 128 > I16_BUDGET:
            return False
    return True


cdef inline bint _lists_fit(Py_ssize_t cout, const Py_ssize_t* counts,
                            int nplanes) noexcept nogil:
    """Whether bsv_accumulate_lists_i16 can take these lists."""
    return BSV_HAVE_LISTS != 0 and _blocks_fit(cout, counts, nplanes)


cdef void accumulate_delta(int32_t* acc, const int8_t* w, Py_ssize_t cout,
                           const uint8_t* rowmax, const int32_t* lists, Py_ssize_t stride,
                           const Py_ssize_t* counts, int nplanes) noexcept nogil:
    """acc[o] += Σ_j (pos[j] - neg[j])·w[j, o]: a temporal delta (see delta_parts), pos's
    plane lists at lists / counts, neg's at lists + DELTA_NEG * stride / counts + DELTA_NEG.
    One pass for both halves where bsv_accumulate_lists_i16 can take them, else pos's
    planes added, then neg's subtracted."""
    if _lists_fit(cout, counts, nplanes) and _lists_fit(cout, counts + DELTA_NEG, nplanes):
        bsv_accumulate_lists_i16(acc, w, cout, lists, counts, nplanes,
                                 lists + DELTA_NEG * stride, counts + DELTA_NEG, nplanes,
                                 stride, 0)
        return
    _accumulate_planes(acc, w, cout, rowmax, lists, stride, counts, nplanes, False, 0, 0)
    _accumulate_planes(acc, w, cout, rowmax, lists + DELTA_NEG * stride, stride,
                       counts + DELTA_NEG, nplanes, False, 0, 1)


cdef inline void accumulate_rows_i16_any(int32_t* acc, const int8_t* w, Py_ssize_t cout,
                                         const int32_t* rows, Py_ssize_t nrows, int shift,
                                         bint scalar, int store, int negate) noexcept nogil:
    if scalar:
        if nrows > 0:
            bsv_accumulate_rows_i16_scalar(acc, w, cout, rows, nrows, 0, shift, store, negate)
        elif store:
            memset(acc, 0, cout * sizeof(int32_t))
    else:
        bsv_accumulate_rows_i16(acc, w, cout, rows, nrows, shift, store, negate)


cdef void accumulate_planes(int32_t* acc, const int8_t* w, Py_ssize_t cout,
                            const uint8_t* rowmax, const int32_t* lists, Py_ssize_t stride,
                            const Py_ssize_t* counts, int nplanes) noexcept nogil:
    """acc[o] = Σ_j x[j] * w[j, o] from the plane lists of x (see plane_lists), o < cout.

    Plane b's rows are added by accumulate_rows_i16 with shift b: int16 partials in
    registers, widened and shifted into acc once per plane (or per run: rowmax[j] =
    max_o |w[j, o]| bounds a run's partial sums by 32767). Every int32 partial sum is
    bounded by Σ_j x[j]·|w[j, o]|, which the converter proved fits int32, in whatever
    order the rows are added. Where this build has bsv_accumulate_lists_i16, cout is whole
    256-column blocks and no plane needs cutting, all planes go in one call instead: the
    int32 sums stay in registers and acc is written once, and consecutive planes share an
    int16 pass where their weighted rows fit (with the temporal delta's two halves in the
    same call, accumulate_delta). Measured on the benchmark model, interleaved A/B: 1-3 %
    less engine time for the call, 1.6-1.7 % more for the shared passes. (Merging every
    plane into one int16 pass regardless, cut wherever the budget runs out, measured 2-3 %
    slower.)
    """
    _accumulate_planes(acc, w, cout, rowmax, lists, stride, counts, nplanes, False, 1, 0)


cdef void accumulate_planes_scalar(int32_t* acc, const int8_t* w, Py_ssize_t cout,
                                   const uint8_t* rowmax, const int32_t* lists,
                                   Py_ssize_t stride, const Py_ssize_t* counts,
                                   int nplanes) noexcept nogil:
    """accumulate_planes with the portable scalar row kernel (tests compare the two)."""
    _accumulate_planes(acc, w, cout, rowmax, lists, stride, counts, nplanes, True, 1, 0)


cdef void accumulate_planes3(int32_t* acc0, int32_t* acc1, int32_t* acc2,
                             const int8_t* w0, const int8_t* w1, const int8_t* w2,
                             const uint8_t* rm0, const uint8_t* rm1, const uint8_t* rm2,
                             Py_ssize_t cout, const int32_t* lists, Py_ssize_t stride,
                             const Py_ssize_t* counts, int nplanes, int store,
                             int negate) noexcept nogil:
    """The same plane lists into three layers of one shape (Q, K, V), as three
    accumulate_planes (store 1) or additions into acc (store 0; negate: subtractions, the
    negative half of a temporal delta): in one pass over the rows for all three where
    this build has bsv_accumulate_lists3_i16 and every plane's rows fit the int16 budget
    unchecked (fewer than 256), else layer by layer."""
    if not (BSV_HAVE_ROWS3 != 0 and _blocks_fit(cout, counts, nplanes)):
        _accumulate_planes(acc0, w0, cout, rm0, lists, stride, counts, nplanes, False, store,
                           negate)
        _accumulate_planes(acc1, w1, cout, rm1, lists, stride, counts, nplanes, False, store,
                           negate)
        _accumulate_planes(acc2, w2, cout, rm2, lists, stride, counts, nplanes, False, store,
                           negate)
        return
    bsv_accumulate_lists3_i16(acc0, acc1, acc2, w0, w1, w2, cout, lists, stride, counts,
                              nplanes, store, negate)


cdef void accumulate_macs(int32_t* acc, const int8_t* w, Py_ssize_t cout,
                          const uint8_t* x, Py_ssize_t cin) noexcept nogil:
    """acc[o] = Σ_k x[k] * w[k, o] with true multiplications (MACs): the patch embedding
    on raw pixels, the one layer of the spec whose inputs are not spike counts."""
    cdef int32_t part[COLS]
    cdef Py_ssize_t c0 = 0, k, o, width
    cdef int32_t px
    cdef const int8_t* wr
    while c0 < cout:
        width = cout - c0
        if width > COLS:
            width = COLS
        for o in range(COLS):
            part[o] = 0
        for k in range(cin):
            px = x[k]
            if px == 0:
                continue
            wr = w + k * cout + c0
            if width == COLS:
                for o in range(COLS):
                    part[o] += px * wr[o]
            else:
                for o in range(width):
                    part[o] += px * wr[o]
        for o in range(width):
            acc[c0 + o] = part[o]
        c0 += width


cdef inline void shift_add_bias(int32_t* acc, int shift, const int32_t* bias,
                                Py_ssize_t n) noexcept nogil:
    """I[o] = (acc[o] << shift) + bias[o] (spec op 1), in place."""
    cdef Py_ssize_t o
    for o in range(n):
        acc[o] = bsv_shl(acc[o], shift) + bias[o]


cdef inline Py_ssize_t row_adds_u8(const uint8_t* x, Py_ssize_t nwords) noexcept nogil:
    """Σ_j popcount(x[j]): the row additions plane lists of x cost (popcount of whole
    words, which sums the bytes' popcounts)."""
    cdef Py_ssize_t c, n = 0
    cdef uint64_t word
    for c in range(8 * nwords):
        memcpy(&word, x + 8 * c, 8)
        n += bsv_popcount64(word)
    return n


cdef inline void delta_parts(uint8_t* pos, uint8_t* neg, const uint8_t* now,
                             const uint8_t* before, Py_ssize_t n) noexcept nogil:
    """now - before as two counts: pos = max(now - before, 0), neg = max(before - now, 0)."""
    cdef Py_ssize_t o
    cdef uint8_t a, b
    for o in range(n):
        a = now[o]
        b = before[o]
        pos[o] = a - b if a > b else 0
        neg[o] = b - a if b > a else 0


# -- integer neurons ----------------------------------------------------------------------

cdef inline void neuron_step(int32_t* v, const int32_t* acc, int shift, const int32_t* bias,
                             const int32_t* theta, int leak, int kind, int spike_max,
                             uint8_t* s, Py_ssize_t n) noexcept nogil:
    """One time step of a neuron layer of n channels (spec ops 1-2): I = (acc << shift) +
    bias, charge, emit, soft reset, in one vectorised pass (bsv_neuron_step in _simd.pxi).
    v is the int32 membrane (updated); s receives the spikes as bytes (burst: 0..spike_max
    <= 15; signed: 0x01, 0x00 or 0xff). bias may not be NULL (pass zeros)."""
    bsv_neuron_step(v, acc, shift, bias, theta, leak, kind == KIND_SIGNED, spike_max, s, n)


cdef inline void add_spikes_u8(uint8_t* x, const uint8_t* s, Py_ssize_t n) noexcept nogil:
    """The spike-count residual: x[o] += s[o] (the converter bounds x by 255)."""
    cdef Py_ssize_t o
    for o in range(n):
        x[o] = <uint8_t>(x[o] + s[o])


# -- DBSSA: windowed scores and signed accumulation ------------------------------------------

cdef struct HeadWords:
    # head h covers bits [h*dh, (h+1)*dh) of a bitset: words first .. first+count-1, the
    # first and last of them masked (a head's dims are contiguous bits)
    int32_t first
    int32_t count
    uint64_t first_mask
    uint64_t last_mask


cdef inline uint64_t _head_mask(const HeadWords* hw, Py_ssize_t k) noexcept nogil:
    cdef uint64_t m = <uint64_t>0xffffffffffffffff
    if k == 0:
        m &= hw.first_mask
    if k == hw.count - 1:
        m &= hw.last_mask
    return m


cdef void head_words_init(HeadWords* out, Py_ssize_t heads, Py_ssize_t dh) noexcept nogil:
    cdef Py_ssize_t h, start, end
    for h in range(heads):
        start = h * dh
        end = start + dh
        out[h].first = <int32_t>(start >> 6)
        out[h].count = <int32_t>(((end - 1) >> 6) - (start >> 6) + 1)
        out[h].first_mask = (<uint64_t>0xffffffffffffffff) << (start & 63)
        if end & 63:
            out[h].last_mask = ((<uint64_t>1) << (end & 63)) - 1
        else:
            out[h].last_mask = <uint64_t>0xffffffffffffffff


cdef inline int32_t head_score(const uint64_t* q, const uint64_t* k, Py_ssize_t nplanes,
                               Py_ssize_t nwords, const HeadWords* hw) noexcept nogil:
    """S = Σ_b 2^b · popcount(Q & K_b) over one head's bits: Q binary, K as bit-planes."""
    cdef int32_t s = 0, c
    cdef Py_ssize_t b, i, w
    for b in range(nplanes):
        c = 0
        for i in range(hw.count):
            w = hw.first + i
            c += bsv_popcount64(q[w] & k[b * nwords + w] & _head_mask(hw, i))
        s += c << b
    return s


cdef inline void signed_add(int32_t* o, int32_t s, const uint64_t* vp, const uint64_t* vn,
                            const HeadWords* hw) noexcept nogil:
    """o[e] += s where V[e] = +1 and o[e] -= s where V[e] = -1, over one head's bits."""
    cdef Py_ssize_t i, w, base
    cdef uint64_t m, hm
    for i in range(hw.count):
        w = hw.first + i
        hm = _head_mask(hw, i)
        base = 64 * w
        m = vp[w] & hm
        while m:
            o[base + bsv_ctz64(m)] += s
            m &= m - 1
        m = vn[w] & hm
        while m:
            o[base + bsv_ctz64(m)] -= s
            m &= m - 1


cdef void dbssa_token(int32_t* o, Py_ssize_t d, const uint64_t* q_i,
                      const uint64_t* k_planes, const uint64_t* v_pos, const uint64_t* v_neg,
                      Py_ssize_t nplanes, Py_ssize_t nwords,
                      const int32_t* neighbours, Py_ssize_t count,
                      const HeadWords* hw, Py_ssize_t heads) noexcept nogil:
    """O[i, :] (spec op 3) for one token i and one step from bitsets.

    q_i: Q bits of token i [nwords]. k_planes / v_pos / v_neg: the step's bitsets of all
    tokens: token j's K planes at k_planes + j*nplanes*nwords (plane b at +b*nwords), its
    V halves at v_pos/v_neg + j*nwords.
    neighbours[0..count): the window of i. Heads with S == 0 cost only the popcounts.
    """
    cdef Py_ssize_t jj, j, h
    cdef int32_t s
    cdef int32_t scores[64]
    if heads <= 64 and bsv_dbssa_token_avx512(o, d, q_i, k_planes, v_pos, v_neg, nplanes,
                                              nwords, neighbours, count, d // heads, heads,
                                              scores):
        return
    memset(o, 0, d * sizeof(int32_t))
    for jj in range(count):
        j = neighbours[jj]
        for h in range(heads):
            s = head_score(q_i, k_planes + j * nplanes * nwords, nplanes, nwords, &hw[h])
            if s != 0:
                signed_add(o, s, v_pos + j * nwords, v_neg + j * nwords, &hw[h])
