# Network: the compiled whole-model engine behind bsvit_int.load(path, backend="cython").

from libc.stdint cimport uintptr_t

_LINEAR_NAMES = ("attn.q", "attn.k", "attn.v", "attn.proj", "mlp.fc1", "mlp.fc2")


def _bits(n):
    return max(1, int(n).bit_length())


cdef _set_linear(Linear* L, const int8_t[:, ::1] w, const int32_t[::1] b,
                 const int32_t[::1] th, list keep, name, int shift, int planes):
    """Point L at one weighted layer's arrays (kept alive by `keep`)."""
    if not 0 <= shift <= 16:
        raise ValueError(f"layer '{name}': shift {shift} outside 0..16")
    if planes > 8:
        raise ValueError(f"layer '{name}': inputs above 255")
    rm = _rowmax(np.asarray(w))
    keep.append(rm)
    cdef const uint8_t[::1] rmv = rm
    L.w = &w[0, 0]
    L.bias = &b[0]
    L.theta = &th[0]
    L.rowmax = &rmv[0]
    L.cin = <int32_t>w.shape[0]
    L.cout = <int32_t>w.shape[1]
    L.shift = shift
    L.in_planes = planes


cdef class Network:
    """A validated integer BSViT whose `run` is bit-exact with bsvit_int.oracle.run.

    Network(config, tensors, shifts, input_max, nbr_ptr, nbr_idx, nbr_count=None):
      config: dict of ints T, N, D, H, Dm, K, p, grid_w, img_h, img_w, chans, classes,
        depth, bmax, leak (-1 for integrate-and-fire);
      tensors: name -> array with the names, dtypes and shapes of spec.tensor_table
        (C-contiguous; read-only memory-mapped arrays are used in place, never copied);
      shifts / input_max: name -> int per weighted layer (spec.layers);
      nbr_ptr, nbr_idx: int32 CSR window lists (spec.grid_neighbours); or, with
        nbr_count, token i's window is nbr_idx[nbr_ptr[i] : nbr_ptr[i] + nbr_count[i]]
        (lists may overlap: a global window is one shared list of 0..N-1, O(N) memory);
      variant: the kernels build to run (None: default_variant()).
    The caller (bsvit_int.engine_cython) has already validated the model's values and
    bounds (bsvit_int.engine.validate_model); this class checks structure only.
    """
    cdef Net net
    cdef const CoreTable* core  # the build whose run_image this network calls
    cdef object _keep           # every array a pointer in `net` points into
    cdef dict _pool             # threads -> free workspaces (see run)
    cdef readonly dict dims
    cdef readonly str variant

    def __init__(self, dict config, dict tensors, dict shifts, dict input_max,
                 nbr_ptr, nbr_idx, variant=None, nbr_count=None):
        self.core = _core(variant)
        self.variant = (<bytes>self.core.variant).decode()
        self._pool = {}
        keep = []
        c = {k: int(v) for k, v in config.items()}
        self.dims = c
        T, N, D, H, Dm, K = c["T"], c["N"], c["D"], c["H"], c["Dm"], c["K"]
        L, classes, bmax = c["depth"], c["classes"], c["bmax"]
        if min(T, N, D, H, Dm, K, classes, bmax, c["p"], c["chans"]) < 1 or L < 0 \
                or D % H or c["img_w"] != c["grid_w"] * c["p"] or N % c["grid_w"]:
            raise ValueError(f"inconsistent network dimensions {c}")
        if bmax > 15 or (2 * L + 1) * bmax > 255:
            raise ValueError("burst_max and depth exceed the uint8 residual stream")
        if not (c["leak"] == NO_LEAK or 0 <= c["leak"] <= 15):
            raise ValueError(f"leak must be -1 or 0..15, got {c['leak']}")

        def arr(name, dtype, shape):
            a = tensors[name]
            if not isinstance(a, np.ndarray) or a.dtype != dtype or a.shape != shape:
                raise ValueError(f"tensor '{name}' must be {np.dtype(dtype)}{list(shape)}")
            if not a.flags.c_contiguous:
                raise ValueError(f"tensor '{name}' must be C-contiguous")
            keep.append(a)
            return a

        def linear(size_t dest, name, cin, cout, bias_shape, planes):
            _set_linear(<Linear*>dest, arr(name + ".weight", np.int8, (cin, cout)),
                        arr(name + ".bias", np.int32, bias_shape).reshape(-1),
                        arr(name + ".threshold", np.int32, (cout,)), keep, name,
                        int(shifts[name]), planes)

        self.net.T, self.net.N, self.net.D, self.net.H, self.net.Dm, self.net.K = T, N, D, H, Dm, K
        self.net.p, self.net.grid_w, self.net.img_w = c["p"], c["grid_w"], c["img_w"]
        self.net.chans, self.net.classes, self.net.depth = c["chans"], classes, L
        self.net.bmax, self.net.leak = bmax, c["leak"]
        self.net.dwords = (D + 63) // 64
        self.net.mwords = (Dm + 63) // 64
        self.net.kplanes = _bits(bmax)
        if K != c["p"] * c["p"] * c["chans"]:
            raise ValueError("K must be p*p*chans")

        idx = np.ascontiguousarray(nbr_idx, dtype=np.int32)
        if nbr_count is None:
            ptr = np.ascontiguousarray(nbr_ptr, dtype=np.int32)
            _check_window(ptr, idx, N)
            start = np.ascontiguousarray(ptr[:N])
            count = np.ascontiguousarray(np.diff(ptr).astype(np.int32))
        else:
            start = np.ascontiguousarray(nbr_ptr, dtype=np.int32)
            count = np.ascontiguousarray(nbr_count, dtype=np.int32)
            if start.shape != (N,) or count.shape != (N,) or (N and (
                    start.min() < 0 or count.min() < 0
                    or int((start.astype(np.int64) + count).max()) > idx.shape[0])):
                raise ValueError("neighbours: start and count [N] must select ranges of idx")
            if idx.size and (idx.min() < 0 or idx.max() >= N):
                raise ValueError("a neighbour index is outside 0..N-1")
        if idx.size == 0:
            idx = np.zeros(1, dtype=np.int32)
        if N == 0:
            start = count = np.zeros(1, dtype=np.int32)
        keep += [start, count, idx]
        cdef const int32_t[::1] sv = start, cv = count, iv = idx
        self.net.nbr_start = &sv[0]
        self.net.nbr_count = &cv[0]
        self.net.nbr_idx = &iv[0]

        hw = np.zeros(H * sizeof(HeadWords), dtype=np.uint8)
        keep.append(hw)
        cdef uint8_t[::1] hwv = hw
        self.net.heads = <HeadWords*>&hwv[0]
        head_words_init(self.net.heads, H, D // H)

        linear(<size_t>&self.net.embed, "embed", K, D, (N, D), 8)
        lin = np.zeros(max(L, 1) * LIN_PER_BLOCK * sizeof(Linear), dtype=np.uint8)
        thp = np.zeros(max(L, 1), dtype=np.uintp)
        keep += [lin, thp]
        cdef uint8_t[::1] linv = lin
        cdef uintptr_t[::1] thv = thp
        cdef const int32_t[::1] ath
        self.net.lin = <Linear*>&linv[0]
        self.net.attn_theta = <const int32_t**>&thv[0]
        for l in range(L):
            for k, short in enumerate(_LINEAR_NAMES):
                name = f"blocks.{l}.{short}"
                cin = Dm if short == "mlp.fc2" else D
                cout = Dm if short == "mlp.fc1" else D
                linear(<size_t>&self.net.lin[l * LIN_PER_BLOCK + k], name, cin, cout, (cout,),
                       _bits(input_max[name]))
            if not (self.net.lin[l * LIN_PER_BLOCK + LIN_Q].in_planes
                    == self.net.lin[l * LIN_PER_BLOCK + LIN_K].in_planes
                    == self.net.lin[l * LIN_PER_BLOCK + LIN_V].in_planes):
                raise ValueError(f"blocks.{l}: q, k and v read the same input, so their "
                                 "input_max must be equal")
            ath = arr(f"blocks.{l}.attn.threshold", np.int32, (D,))
            thv[l] = <uintptr_t>&ath[0]

        cdef const int8_t[:, ::1] hwt = arr("head.weight", np.int8, (D, classes))
        cdef const int32_t[::1] hb = arr("head.bias", np.int32, (classes,))
        hrm = _rowmax(np.asarray(hwt))
        keep.append(hrm)
        cdef const uint8_t[::1] hrmv = hrm
        self.net.head_w = &hwt[0, 0]
        self.net.head_b = &hb[0]
        self.net.head_rowmax = &hrmv[0]
        self.net.head_chunked = int(np.sum(hrm, dtype=np.int64)) > I16_BUDGET
        self.net.delta_margin = 16
        self._keep = keep

    property delta_margin:
        """Row additions a temporal-delta update of a stream layer must save to be used
        (default 16; a large value turns it off, a negative one forces it at every step
        t >= 1). The results do not depend on it: tests run both ways."""
        def __get__(self):
            return self.net.delta_margin

        def __set__(self, value):
            self.net.delta_margin = int(value)

    def record_channels(self):
        """[(slot name, channels)] of the record arrays, in spec.layers order."""
        out = [("embed", self.net.D)]
        for l in range(self.net.depth):
            for short, ch in (("attn.q", self.net.D), ("attn.k", self.net.D),
                              ("attn.v", self.net.D), ("attn", self.net.D),
                              ("attn.proj", self.net.D), ("mlp.fc1", self.net.Dm),
                              ("mlp.fc2", self.net.D)):
                out.append((f"blocks.{l}.{short}", ch))
        return out

    def run(self, const uint8_t[:, :, :, ::1] images not None, threads=1, record=None):
        """int32 logits [B, classes] for uint8 images [B, H, W, C].

        threads: OpenMP threads over tokens (the result does not depend on it).
        record: None, or a list of int8 arrays [B, T, N, C], one per record_channels()
        entry, filled with every layer's spikes.
        """
        cdef int nthreads = _threads(threads)
        cdef Net* net = &self.net
        cdef Py_ssize_t B = images.shape[0], T = net.T, N = net.N, b, k
        c = self.dims
        if images.shape[1] != c["img_h"] or images.shape[2] != c["img_w"] \
                or images.shape[3] != c["chans"]:
            raise ValueError(f"images must be [B, {c['img_h']}, {c['img_w']}, {c['chans']}]")
        nthreads = min(nthreads, max(1, N))
        logits = np.zeros((B, net.classes), dtype=np.int32)
        if B == 0:
            return logits
        cdef int32_t[:, ::1] lg = logits
        chans = self.record_channels()
        nrec = len(chans)
        recbase = np.zeros(nrec, dtype=np.uintp)
        recstride = np.zeros(nrec, dtype=np.intp)
        cdef uintptr_t[::1] rbv = recbase
        cdef Py_ssize_t[::1] rsv = recstride
        cdef int8_t[:, :, :, ::1] rv
        if record is not None:
            if len(record) != nrec:
                raise ValueError(f"record must hold {nrec} arrays")
            for k, ((name, ch), a) in enumerate(zip(chans, record)):
                if not isinstance(a, np.ndarray) or a.dtype != np.int8 \
                        or a.shape != (B, T, N, ch) or not a.flags.c_contiguous \
                        or not a.flags.writeable:
                    raise ValueError(f"record array of '{name}' must be writable "
                                     f"int8[{B}, {T}, {N}, {ch}]")
                rv = a
                rbv[k] = <uintptr_t>&rv[0, 0, 0, 0]
                rsv[k] = T * N * ch
        recptr = np.zeros(nrec, dtype=np.uintp)
        cdef uintptr_t[::1] rpv = recptr

        # Buffers come from a pool (one set per concurrent call; reused without clearing:
        # kernels write only the first n bytes of a padded buffer, so the zero padding the
        # 64-byte masks rely on stays zero).
        pool = self._pool.setdefault(nthreads, [])
        ws = pool.pop() if pool else self._workspace(nthreads)
        cdef uint8_t[::1] xv = ws[0]
        cdef uint64_t[::1] qv = ws[1], kv = ws[2], vpv = ws[3], vnv = ws[4]
        cdef uint8_t[::1] scv = ws[6]
        cdef uint8_t[::1] hv = ws[7]
        cdef Scratch* scs = <Scratch*>&scv[0]
        cdef Shared sh
        sh.X = &xv[0]
        sh.Qb = &qv[0]
        sh.Kb = &kv[0]
        sh.Vp = &vpv[0]
        sh.Vn = &vnv[0]
        sh.H = &hv[0]
        sh.rec = <int8_t**>&rpv[0] if record is not None else NULL

        # One thread: a pass per layer or two keeps each pass's weights in cache (see
        # _network.pxi); several threads: one pass per block, block l+1's Q/K/V folded in,
        # fewer barriers (measured 15-20 % faster with 2 threads on shared cores).
        cdef int fuse = 1 if nthreads > 1 else 0
        try:
            with nogil:
                for b in range(B):
                    sh.image = &images[b, 0, 0, 0]
                    sh.logits = &lg[b, 0]
                    if sh.rec != NULL:
                        for k in range(nrec):
                            rpv[k] = rbv[k] + <uintptr_t>(b * rsv[k])
                    self.core.run_image(net, &sh, scs, nthreads, fuse)
        finally:
            pool.append(ws)
        return logits

    def _workspace(self, int nthreads):
        """(X, Qb, Kb, Vp, Vn, scratch, scratch structs, H) for one call with nthreads."""
        cdef Net* net = &self.net
        cdef Py_ssize_t T = net.T, N = net.N
        dp = 64 * net.dwords
        dmp = 64 * net.mwords
        X = np.zeros(T * N * dp, dtype=np.uint8)
        Qb = np.zeros(2 * T * N * net.dwords, dtype=np.uint64)         # two halves:
        Kb = np.zeros(2 * T * N * net.kplanes * net.dwords, dtype=np.uint64)   # block parity
        Vp = np.zeros(2 * T * N * net.dwords, dtype=np.uint64)
        Vn = np.zeros(2 * T * N * net.dwords, dtype=np.uint64)
        # Per-thread scratch, carved from one zeroed buffer in 64-byte aligned pieces
        # (zero padding after every spike buffer is relied upon by the 64-byte masks).
        acc_n = 64 * ((max(net.D, net.Dm, net.classes) + 63) // 64)
        stride = max(dp, dmp, net.D) + 16      # plane lists: 16 entries of store slack
        fields = [("acc", 4 * acc_n), ("cur", 4 * dp), ("mem0", 4 * dp), ("mem1", 4 * dp),
                  ("mem2", 4 * dp), ("mem3", 4 * dmp), ("o", 4 * dp), ("sbuf", dp),
                  ("abuf", dp), ("pix", 64 * ((net.K + 63) // 64)),
                  ("lists", 4 * 2 * DELTA_NEG * stride), ("zeros", 4 * dp), ("accq", 4 * dp),
                  ("acck", 4 * dp), ("accv", 4 * dp), ("acc1", 4 * dmp), ("dpos", dp),
                  ("dneg", dp)]
        per = sum(size for _, size in fields) + 64 * (len(fields) + 1)
        scratch = np.zeros(nthreads * per, dtype=np.uint8)
        scs_buf = np.zeros(nthreads * sizeof(Scratch), dtype=np.uint8)
        cdef uint8_t[::1] sv = scratch
        cdef uint8_t[::1] scv = scs_buf
        cdef Scratch* scs = <Scratch*>&scv[0]
        cdef uintptr_t base, off
        cdef int t
        for t in range(nthreads):
            base = <uintptr_t>&sv[t * per]
            off = (64 - base % 64) % 64
            at = {}
            for name, size in fields:
                at[name] = base + off
                off += size
                off += (64 - (base + off) % 64) % 64
            scs[t].acc = <int32_t*><uintptr_t>at["acc"]
            scs[t].cur = <int32_t*><uintptr_t>at["cur"]
            scs[t].mem0 = <int32_t*><uintptr_t>at["mem0"]
            scs[t].mem1 = <int32_t*><uintptr_t>at["mem1"]
            scs[t].mem2 = <int32_t*><uintptr_t>at["mem2"]
            scs[t].mem3 = <int32_t*><uintptr_t>at["mem3"]
            scs[t].o = <int32_t*><uintptr_t>at["o"]
            scs[t].sbuf = <uint8_t*><uintptr_t>at["sbuf"]
            scs[t].abuf = <uint8_t*><uintptr_t>at["abuf"]
            scs[t].pix = <uint8_t*><uintptr_t>at["pix"]
            scs[t].lists = <int32_t*><uintptr_t>at["lists"]
            scs[t].zeros = <int32_t*><uintptr_t>at["zeros"]
            scs[t].accq = <int32_t*><uintptr_t>at["accq"]
            scs[t].acck = <int32_t*><uintptr_t>at["acck"]
            scs[t].accv = <int32_t*><uintptr_t>at["accv"]
            scs[t].acc1 = <int32_t*><uintptr_t>at["acc1"]
            scs[t].dpos = <uint8_t*><uintptr_t>at["dpos"]
            scs[t].dneg = <uint8_t*><uintptr_t>at["dneg"]
            scs[t].stride = stride
        H = np.zeros(T * N * dmp, dtype=np.uint8)     # MLP hidden spikes, one block
        return (X, Qb, Kb, Vp, Vn, scratch, scs_buf, H)
