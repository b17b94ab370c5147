# The whole-model engine: docs/integer-spec.md op by op, token by token, in nogil C.
#
# One image runs as passes over the tokens: the patch embedding and block 0's Q/K/V; then
# per block l: attention and out-projection; fc1 (hidden spikes to Shared.H); fc2; then
# block l+1's Q/K/V. With one thread each pass touches one layer's weights, or Q's, K's
# and V's (at most 256 KB on the benchmark model), which stay in L2 from one token to the
# next: splitting the block's single pass (576 KB of weights) into three measured 4-5 %
# less time. With several threads a block is one pass (attention to fc2, then block l+1's
# Q/K/V): fewer barriers. Inside a pass every token is independent: attention reads only
# Q/K/V bitsets written by an earlier pass, block l+1's Q/K/V go to the other half of a
# double buffer (block parity), and a token's later layers read only what its earlier ones
# wrote (the residual stream X[t, i], its hidden spikes H[t, i]), so a pass is an OpenMP
# `prange` over tokens with one scratch area per thread, and every thread count and
# schedule computes the same integers. Within a token the time steps run in order, each
# layer keeping its own membrane: by spec op 4 that equals running layer after layer over
# all steps, and it is also why a layer may run for all steps before the next one starts.

from cython.parallel cimport prange, threadid
from libc.string cimport memcpy

cdef struct Linear:
    const int8_t* w         # [cin, cout] int8, input-major: an active input adds a row
    const int32_t* bias     # [cout] ([N, cout] for the embedding)
    const int32_t* theta    # [cout] thresholds >= 1
    const uint8_t* rowmax   # [cin] max_o |w[j, o]|: the int16 budget of a row
    int32_t cin
    int32_t cout
    int32_t shift           # m: I = (acc << m) + bias
    int32_t in_planes       # bits of the largest input count the converter proved

cdef enum:
    LIN_Q = 0
    LIN_K = 1
    LIN_V = 2
    LIN_PROJ = 3
    LIN_FC1 = 4
    LIN_FC2 = 5
    LIN_PER_BLOCK = 6
    REC_PER_BLOCK = 7       # q, k, v, attn, proj, fc1, fc2 (spec.layers order)

cdef struct Net:
    int32_t T, N, D, H, Dm, K, p, grid_w, img_w, chans, classes, depth, bmax, leak
    int32_t dwords          # ceil(D / 64): words of a D-channel bitset, bytes Dp = 64·dwords
    int32_t mwords          # ceil(Dm / 64)
    int32_t kplanes         # bit-planes of a K burst count (bits of Bmax)
    const int32_t* nbr_start  # [N] token i's window is nbr_idx[nbr_start[i] ..
    const int32_t* nbr_count  # [N]                          + nbr_count[i])
    const int32_t* nbr_idx    # (a global window: one shared 0..N-1 list)
    HeadWords* heads        # [H]
    Linear embed
    Linear* lin             # [depth * 6]
    const int32_t** attn_theta   # [depth] thresholds of the neuron on O
    const int8_t* head_w    # [D, classes]
    const int32_t* head_b   # [classes]
    const uint8_t* head_rowmax
    int32_t head_chunked
    int64_t delta_margin    # temporal delta when it saves more row additions than this

cdef struct Scratch:        # one per thread, allocated (zeroed) per run, never in a loop
    int32_t* acc            # [max(D, Dm, classes) rounded to 64]
    int32_t* cur            # [Dp] the embedding's constant current
    int32_t* mem0           # [Dp] membranes: q | attn
    int32_t* mem1           # [Dp]            k | proj
    int32_t* mem2           # [Dp]            v | fc2
    int32_t* mem3           # [Dmp]           fc1
    int32_t* o              # [Dp] attention output O
    int32_t* zeros          # [Dp] zero bias (the attention neuron and the embedding's steps)
    int32_t* accq           # [Dp] accumulators kept from the previous step (temporal delta)
    int32_t* acck           # [Dp]
    int32_t* accv           # [Dp]
    int32_t* acc1           # [Dmp] fc1
    uint8_t* dpos           # [Dp] max(x_t - x_t-1, 0)
    uint8_t* dneg           # [Dp] max(x_t-1 - x_t, 0)
    uint8_t* sbuf           # [Dp] spikes of a D-wide layer (zero padding)
    uint8_t* abuf           # [Dp] attention-neuron spikes
    uint8_t* pix            # [K] one patch of raw pixels
    int32_t* lists          # [2 * DELTA_NEG * stride] plane lists (a delta's negative
                            # half from list DELTA_NEG on)
    Py_ssize_t stride
    Py_ssize_t counts[MAX_PLANES]

cdef struct Shared:         # one image's state, written pass by pass
    const uint8_t* image    # [H, W, C] uint8
    uint8_t* X              # [T, N, Dp] residual stream (spike counts)
    uint64_t* Qb            # [2][T, N, dwords] binary Q bitsets (by block parity)
    uint64_t* Kb            # [2][T, N, kplanes, dwords] K bit-planes
    uint64_t* Vp            # [2][T, N, dwords] V == +1
    uint64_t* Vn            # [2][T, N, dwords] V == -1
    int8_t** rec            # [1 + 7·depth] record arrays [T, N, C] of this image, or NULL
    int32_t* logits         # [classes]
    uint8_t* H              # [T, N, Dmp] MLP hidden spikes of the current block


cdef inline void _record(int8_t* rec, const uint8_t* s, Py_ssize_t t, Py_ssize_t n,
                         Py_ssize_t N, Py_ssize_t c) noexcept nogil:
    if rec != NULL:
        memcpy(rec + (t * N + n) * c, s, c)


cdef inline int8_t* _rec(Shared* sh, Py_ssize_t slot) noexcept nogil:
    return sh.rec[slot] if sh.rec != NULL else NULL


cdef inline void _project(const Linear* L, Scratch* sc, int32_t* membrane, int leak,
                          int kind, int spike_max, uint8_t* out) noexcept nogil:
    """One step of a weighted layer from the plane lists already in sc (spec ops 1-2)."""
    accumulate_planes(sc.acc, L.w, L.cout, L.rowmax, sc.lists, sc.stride, sc.counts,
                      L.in_planes)
    neuron_step(membrane, sc.acc, L.shift, L.bias, L.theta, leak, kind, spike_max, out, L.cout)


# A layer whose input is the residual stream (q, k, v, fc1) sees nearly the same counts at
# step t as at t-1. Its accumulator is kept, and at t >= 1 it is updated by the change
# instead when that costs fewer row additions: acc += W·max(x_t - x_t-1, 0), then
# acc -= W·max(x_t-1 - x_t, 0). Every intermediate value is W·y with 0 <= y <= xmax
# elementwise (first towards max(x_t-1, x_t), then down to x_t), so it stays within the
# bound the converter proved for W·x. Net.delta_margin (row additions, default 16) pays
# for the second list and its flushes. Measured: about 10 % fewer row additions and 8-10 %
# less time on the benchmark model.
cdef inline bint _use_delta(const Net* net, Scratch* sc, const uint8_t* now,
                            const uint8_t* before, Py_ssize_t d,
                            Py_ssize_t nwords) noexcept nogil:
    delta_parts(sc.dpos, sc.dneg, now, before, d)
    return (row_adds_u8(sc.dpos, nwords) + row_adds_u8(sc.dneg, nwords) + net.delta_margin
            < row_adds_u8(now, nwords))


cdef inline void _qkv_planes(const Linear* lq, const Linear* lk, const Linear* lv,
                             Scratch* sc, int store, int negate) noexcept nogil:
    accumulate_planes3(sc.accq, sc.acck, sc.accv, lq.w, lk.w, lv.w, lq.rowmax, lk.rowmax,
                       lv.rowmax, lq.cout, sc.lists, sc.stride, sc.counts, lq.in_planes,
                       store, negate)


cdef void _embed_token(const Net* net, Shared* sh, Scratch* sc, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t gy = n // net.grid_w, gx = n % net.grid_w
    cdef Py_ssize_t p = net.p, C = net.chans, dy, dx, c, t
    cdef Py_ssize_t dp = 64 * net.dwords
    cdef const uint8_t* row
    cdef uint8_t* x
    for dy in range(p):                   # k = (dy·p + dx)·C + c (spec: patches)
        row = sh.image + ((gy * p + dy) * net.img_w + gx * p) * C
        for dx in range(p):
            for c in range(C):
                sc.pix[(dy * p + dx) * C + c] = row[dx * C + c]
    accumulate_macs(sc.cur, net.embed.w, net.D, sc.pix, net.K)
    shift_add_bias(sc.cur, net.embed.shift, net.embed.bias + n * net.D, net.D)
    memset(sc.mem0, 0, net.D * sizeof(int32_t))
    for t in range(net.T):                # the same current at every step
        x = sh.X + (t * net.N + n) * dp
        neuron_step(sc.mem0, sc.cur, 0, sc.zeros, net.embed.theta, net.leak, KIND_BURST,
                    net.bmax, x, net.D)
        _record(_rec(sh, 0), x, t, n, net.N, net.D)


cdef void _qkv_token(const Net* net, Shared* sh, Scratch* sc, Py_ssize_t l,
                     Py_ssize_t n) noexcept nogil:
    cdef const Linear* lq = &net.lin[l * LIN_PER_BLOCK + LIN_Q]
    cdef const Linear* lk = &net.lin[l * LIN_PER_BLOCK + LIN_K]
    cdef const Linear* lv = &net.lin[l * LIN_PER_BLOCK + LIN_V]
    cdef Py_ssize_t nw = net.dwords, dp = 64 * net.dwords, t, b, tok
    cdef Py_ssize_t slot = 1 + REC_PER_BLOCK * l
    cdef Py_ssize_t half = (l & 1) * net.T * net.N * nw       # this block's buffer half
    cdef uint64_t* qb = sh.Qb + half
    cdef uint64_t* kb = sh.Kb + half * net.kplanes
    cdef uint64_t* vp = sh.Vp + half
    cdef uint64_t* vn = sh.Vn + half
    cdef const uint8_t* x
    memset(sc.mem0, 0, net.D * sizeof(int32_t))
    memset(sc.mem1, 0, net.D * sizeof(int32_t))
    memset(sc.mem2, 0, net.D * sizeof(int32_t))
    for t in range(net.T):
        tok = t * net.N + n
        x = sh.X + tok * dp
        if t > 0 and _use_delta(net, sc, x, x - net.N * dp, net.D, nw):
            plane_lists(sc.dpos, nw, lq.in_planes, sc.lists, sc.stride, sc.counts)
            _qkv_planes(lq, lk, lv, sc, 0, 0)
            plane_lists(sc.dneg, nw, lq.in_planes, sc.lists, sc.stride, sc.counts)
            _qkv_planes(lq, lk, lv, sc, 0, 1)
        else:
            plane_lists(x, nw, lq.in_planes, sc.lists, sc.stride, sc.counts)
            _qkv_planes(lq, lk, lv, sc, 1, 0)
        neuron_step(sc.mem0, sc.accq, lq.shift, lq.bias, lq.theta, net.leak, KIND_BURST, 1,
                    sc.sbuf, net.D)
        pack_test_u64(sc.sbuf, nw, 0xff, qb + tok * nw)
        _record(_rec(sh, slot), sc.sbuf, t, n, net.N, net.D)
        neuron_step(sc.mem1, sc.acck, lk.shift, lk.bias, lk.theta, net.leak, KIND_BURST,
                    net.bmax, sc.sbuf, net.D)
        for b in range(net.kplanes):
            pack_test_u64(sc.sbuf, nw, <uint8_t>(1 << b), kb + (tok * net.kplanes + b) * nw)
        _record(_rec(sh, slot + 1), sc.sbuf, t, n, net.N, net.D)
        neuron_step(sc.mem2, sc.accv, lv.shift, lv.bias, lv.theta, net.leak, KIND_SIGNED, 1,
                    sc.sbuf, net.D)
        pack_eq_u64(sc.sbuf, nw, 0x01, vp + tok * nw)
        pack_test_u64(sc.sbuf, nw, 0x80, vn + tok * nw)
        _record(_rec(sh, slot + 2), sc.sbuf, t, n, net.N, net.D)


cdef void _attn_token(const Net* net, Shared* sh, Scratch* sc, Py_ssize_t l,
                      Py_ssize_t i) noexcept nogil:
    """Block l's attention for token i (from the Q/K/V bitsets of every token),
    out-projection and residual."""
    cdef const Linear* lp = &net.lin[l * LIN_PER_BLOCK + LIN_PROJ]
    cdef Py_ssize_t nw = net.dwords, dp = 64 * net.dwords, t, base
    cdef Py_ssize_t slot = 1 + REC_PER_BLOCK * l
    cdef Py_ssize_t first = net.nbr_start[i], count = net.nbr_count[i]
    cdef Py_ssize_t half = (l & 1) * net.T * net.N * nw
    memset(sc.mem0, 0, net.D * sizeof(int32_t))
    memset(sc.mem1, 0, net.D * sizeof(int32_t))
    for t in range(net.T):
        base = t * net.N
        dbssa_token(sc.o, net.D, sh.Qb + half + (base + i) * nw,
                    sh.Kb + (half + base * nw) * net.kplanes,
                    sh.Vp + half + base * nw, sh.Vn + half + base * nw, net.kplanes, nw,
                    net.nbr_idx + first, count, net.heads, net.H)
        neuron_step(sc.mem0, sc.o, 0, sc.zeros, net.attn_theta[l], net.leak, KIND_BURST,
                    net.bmax, sc.abuf, net.D)
        _record(_rec(sh, slot + 3), sc.abuf, t, i, net.N, net.D)
        plane_lists(sc.abuf, nw, lp.in_planes, sc.lists, sc.stride, sc.counts)
        _project(lp, sc, sc.mem1, net.leak, KIND_BURST, net.bmax, sc.sbuf)
        _record(_rec(sh, slot + 4), sc.sbuf, t, i, net.N, net.D)
        add_spikes_u8(sh.X + (base + i) * dp, sc.sbuf, net.D)


cdef void _fc1_token(const Net* net, Shared* sh, Scratch* sc, Py_ssize_t l,
                     Py_ssize_t i) noexcept nogil:
    """Block l's fc1 for token i, from the residual stream after attention, into sh.H."""
    cdef const Linear* l1 = &net.lin[l * LIN_PER_BLOCK + LIN_FC1]
    cdef Py_ssize_t nw = net.dwords, dp = 64 * net.dwords, dmp = 64 * net.mwords, t, base
    cdef Py_ssize_t slot = 1 + REC_PER_BLOCK * l
    cdef uint8_t* x
    cdef uint8_t* h
    memset(sc.mem3, 0, net.Dm * sizeof(int32_t))
    for t in range(net.T):
        base = t * net.N
        x = sh.X + (base + i) * dp
        if t > 0 and _use_delta(net, sc, x, x - net.N * dp, net.D, nw):
            plane_lists(sc.dpos, nw, l1.in_planes, sc.lists, sc.stride, sc.counts)
            plane_lists(sc.dneg, nw, l1.in_planes, sc.lists + DELTA_NEG * sc.stride,
                        sc.stride, sc.counts + DELTA_NEG)
            accumulate_delta(sc.acc1, l1.w, l1.cout, l1.rowmax, sc.lists, sc.stride,
                             sc.counts, l1.in_planes)
        else:
            plane_lists(x, nw, l1.in_planes, sc.lists, sc.stride, sc.counts)
            accumulate_planes(sc.acc1, l1.w, l1.cout, l1.rowmax, sc.lists, sc.stride,
                              sc.counts, l1.in_planes)
        h = sh.H + (base + i) * dmp
        neuron_step(sc.mem3, sc.acc1, l1.shift, l1.bias, l1.theta, net.leak, KIND_BURST,
                    net.bmax, h, l1.cout)
        _record(_rec(sh, slot + 5), h, t, i, net.N, net.Dm)


cdef void _fc2_token(const Net* net, Shared* sh, Scratch* sc, Py_ssize_t l,
                     Py_ssize_t i) noexcept nogil:
    """The rest of block l for token i: fc2 from the hidden spikes in sh.H, residual."""
    cdef const Linear* l2 = &net.lin[l * LIN_PER_BLOCK + LIN_FC2]
    cdef Py_ssize_t dp = 64 * net.dwords, dmp = 64 * net.mwords, t, base
    cdef Py_ssize_t slot = 1 + REC_PER_BLOCK * l
    memset(sc.mem2, 0, net.D * sizeof(int32_t))
    for t in range(net.T):
        base = t * net.N
        plane_lists(sh.H + (base + i) * dmp, net.mwords, l2.in_planes, sc.lists, sc.stride,
                    sc.counts)
        _project(l2, sc, sc.mem2, net.leak, KIND_BURST, net.bmax, sc.sbuf)
        _record(_rec(sh, slot + 6), sc.sbuf, t, i, net.N, net.D)
        add_spikes_u8(sh.X + (base + i) * dp, sc.sbuf, net.D)


cdef void _token_pass(const Net* net, Shared* sh, Scratch* sc, int phase, Py_ssize_t l,
                      Py_ssize_t n, int fuse) noexcept nogil:
    if phase == 0:
        _embed_token(net, sh, sc, n)
        if net.depth > 0:
            _qkv_token(net, sh, sc, 0, n)
    elif phase == 1:
        _attn_token(net, sh, sc, l, n)
        if fuse:
            _fc1_token(net, sh, sc, l, n)
            _fc2_token(net, sh, sc, l, n)
            if l + 1 < net.depth:
                _qkv_token(net, sh, sc, l + 1, n)
    elif phase == 2:
        _fc1_token(net, sh, sc, l, n)
    elif phase == 3:
        _fc2_token(net, sh, sc, l, n)
    else:
        _qkv_token(net, sh, sc, l, n)


cdef inline void _touch_weights(const Linear* L) noexcept nogil:
    bsv_touch(L.w, <Py_ssize_t>L.cin * L.cout)


cdef void _warm_pass(const Net* net, int phase, Py_ssize_t l) noexcept nogil:
    """Reads the weights a one-thread pass is about to use, in address order. The model's
    weights (3.2 MB on the benchmark model) do not fit L2, so every pass starts with its
    layer's rows in L3 or memory, and the row loop would fetch them in list order, one
    miss after another; a sequential read streams them in first. Measured on the benchmark
    model (interleaved A/B, 800 runs on each core): 3.4-4.5 % less engine time image after
    image, 3.1-5.4 % with a PyTorch image run before every engine image (300 runs)."""
    cdef Py_ssize_t base = l * LIN_PER_BLOCK
    if net.depth == 0:
        return
    if phase == 0 or phase == 4:
        _touch_weights(&net.lin[base + LIN_Q])
        _touch_weights(&net.lin[base + LIN_K])
        _touch_weights(&net.lin[base + LIN_V])
    elif phase == 1:
        _touch_weights(&net.lin[base + LIN_PROJ])
    elif phase == 2:
        _touch_weights(&net.lin[base + LIN_FC1])
    elif phase == 3:
        _touch_weights(&net.lin[base + LIN_FC2])


cdef void _for_tokens(const Net* net, Shared* sh, Scratch* scs, int threads, int phase,
                      Py_ssize_t l, int fuse) noexcept nogil:
    cdef Py_ssize_t n
    if threads <= 1:
        _warm_pass(net, phase, l)
        for n in range(net.N):
            _token_pass(net, sh, &scs[0], phase, l, n, fuse)
    else:
        for n in prange(net.N, num_threads=threads, schedule="dynamic"):
            _token_pass(net, sh, &scs[threadid()], phase, l, n, fuse)


cdef void _head(const Net* net, Shared* sh, Scratch* sc) noexcept nogil:
    """Z[d] = Σ_t Σ_n X[t, n, d]; logits = Σ_d Z[d]·W[d, :] + b (spec op 5) by shift-and-
    add over the bits of Z: addition only, each partial sum within the head's bound."""
    cdef Py_ssize_t dp = 64 * net.dwords, r, d, b, n, start, budget
    cdef int32_t* z = sc.cur
    cdef int32_t* rows = sc.lists
    cdef const uint8_t* x
    memset(z, 0, net.D * sizeof(int32_t))
    for r in range(net.T * net.N):
        x = sh.X + r * dp
        for d in range(net.D):
            z[d] += x[d]
    memset(sh.logits, 0, net.classes * sizeof(int32_t))
    for b in range(31):
        n = 0
        for d in range(net.D):
            if (z[d] >> b) & 1:
                rows[n] = <int32_t>d
                n += 1
        if n == 0:
            continue
        start = 0
        budget = 0
        for r in range(n):
            if net.head_chunked and budget + net.head_rowmax[rows[r]] > I16_BUDGET:
                accumulate_rows_i16(sh.logits, net.head_w, net.classes, rows + start,
                                    r - start, <int>b)
                start = r
                budget = 0
            budget += net.head_rowmax[rows[r]]
        accumulate_rows_i16(sh.logits, net.head_w, net.classes, rows + start, n - start,
                            <int>b)
    for d in range(net.classes):
        sh.logits[d] += net.head_b[d]


cdef void run_image(const Net* net, Shared* sh, Scratch* scs, int threads,
                    int fuse) noexcept nogil:
    """One image. fuse: each block as one pass over the tokens, block l+1's Q/K/V folded
    in (fewer barriers; a larger working set per token); else four passes per block (see
    the top of this file). Same result either way."""
    cdef Py_ssize_t l
    _for_tokens(net, sh, scs, threads, 0, 0, fuse)
    for l in range(net.depth):
        _for_tokens(net, sh, scs, threads, 1, l, fuse)
        if not fuse:
            _for_tokens(net, sh, scs, threads, 2, l, fuse)
            _for_tokens(net, sh, scs, threads, 3, l, fuse)
            if l + 1 < net.depth:
                _for_tokens(net, sh, scs, threads, 4, l + 1, fuse)
    _head(net, sh, &scs[0])
