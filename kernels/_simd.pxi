# The few operations plain C cannot say portably: byte masks, popcount, count of trailing
# zeros, a floor shift and a wrap-free left shift. Written once, in C, with one SIMD path
# per instruction set the compiler targets (chosen by the -march of the variant being
# built: see the module docstring) and a scalar fallback that is always compiled, so the
# tests can compare the two bit for bit on every machine.

from libc.stdint cimport int8_t, uint8_t, int16_t, int32_t, uint32_t, int64_t, uint64_t

cdef extern from *:
    """
    #include <stdint.h>
    #include <stddef.h>
    #include <string.h>
    #if defined(__x86_64__) || defined(__i386__)
    #include <immintrin.h>
    #endif
    #if defined(__aarch64__) && defined(__ARM_NEON)
    #include <arm_neon.h>
    #endif

    #if defined(__AVX512BW__)
    #define BSV_SIMD_NAME "avx512bw"
    #elif defined(__AVX2__)
    #define BSV_SIMD_NAME "avx2"
    #elif defined(__SSE2__)
    #define BSV_SIMD_NAME "sse2"
    #elif defined(__aarch64__) && defined(__ARM_NEON)
    #define BSV_SIMD_NAME "neon"
    #else
    #define BSV_SIMD_NAME "scalar"
    #endif

    #if defined(__POPCNT__) || defined(__aarch64__)
    #define BSV_POPCOUNT_NAME "hardware"
    #else
    #define BSV_POPCOUNT_NAME "libgcc"
    #endif

    /* Bit i of the result is set iff (p[i] & bits) != 0, for the 64 bytes p[0..63]. */
    static inline uint64_t bsv_test_mask64_scalar(const uint8_t *p, uint8_t bits) {
        uint64_t m = 0;
        for (int i = 0; i < 64; i++) m |= (uint64_t)((p[i] & bits) != 0) << i;
        return m;
    }

    /* Bit i of the result is set iff p[i] == value, for the 64 bytes p[0..63]. */
    static inline uint64_t bsv_eq_mask64_scalar(const uint8_t *p, uint8_t value) {
        uint64_t m = 0;
        for (int i = 0; i < 64; i++) m |= (uint64_t)(p[i] == value) << i;
        return m;
    }

    #if defined(__aarch64__) && defined(__ARM_NEON)
    static inline uint64_t bsv_neon_movemask16(uint8x16_t t) {   /* t lanes are 0 or 0xff */
        static const uint8_t weights[16] = {1, 2, 4, 8, 16, 32, 64, 128,
                                            1, 2, 4, 8, 16, 32, 64, 128};
        uint8x16_t m = vandq_u8(t, vld1q_u8(weights));
        return (uint64_t)vaddv_u8(vget_low_u8(m)) | ((uint64_t)vaddv_u8(vget_high_u8(m)) << 8);
    }
    #endif

    static inline uint64_t bsv_test_mask64(const uint8_t *p, uint8_t bits) {
    #if defined(__AVX512BW__)
        return (uint64_t)_mm512_test_epi8_mask(_mm512_loadu_si512((const void *)p),
                                               _mm512_set1_epi8((char)bits));
    #elif defined(__AVX2__)
        const __m256i b = _mm256_set1_epi8((char)bits), z = _mm256_setzero_si256();
        uint32_t lo = (uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(
            _mm256_and_si256(_mm256_loadu_si256((const __m256i *)p), b), z));
        uint32_t hi = (uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(
            _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(p + 32)), b), z));
        return ~((uint64_t)lo | ((uint64_t)hi << 32));
    #elif defined(__SSE2__)
        const __m128i b = _mm_set1_epi8((char)bits), z = _mm_setzero_si128();
        uint64_t m = 0;
        for (int k = 0; k < 4; k++) {
            __m128i v = _mm_and_si128(_mm_loadu_si128((const __m128i *)(p + 16 * k)), b);
            m |= (uint64_t)(uint16_t)_mm_movemask_epi8(_mm_cmpeq_epi8(v, z)) << (16 * k);
        }
        return ~m;
    #elif defined(__aarch64__) && defined(__ARM_NEON)
        const uint8x16_t b = vdupq_n_u8(bits);
        uint64_t m = 0;
        for (int k = 0; k < 4; k++)
            m |= bsv_neon_movemask16(vtstq_u8(vld1q_u8(p + 16 * k), b)) << (16 * k);
        return m;
    #else
        return bsv_test_mask64_scalar(p, bits);
    #endif
    }

    static inline uint64_t bsv_eq_mask64(const uint8_t *p, uint8_t value) {
    #if defined(__AVX512BW__)
        return (uint64_t)_mm512_cmpeq_epi8_mask(_mm512_loadu_si512((const void *)p),
                                                _mm512_set1_epi8((char)value));
    #elif defined(__AVX2__)
        const __m256i v = _mm256_set1_epi8((char)value);
        uint32_t lo = (uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(
            _mm256_loadu_si256((const __m256i *)p), v));
        uint32_t hi = (uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(
            _mm256_loadu_si256((const __m256i *)(p + 32)), v));
        return (uint64_t)lo | ((uint64_t)hi << 32);
    #elif defined(__SSE2__)
        const __m128i v = _mm_set1_epi8((char)value);
        uint64_t m = 0;
        for (int k = 0; k < 4; k++)
            m |= (uint64_t)(uint16_t)_mm_movemask_epi8(_mm_cmpeq_epi8(
                _mm_loadu_si128((const __m128i *)(p + 16 * k)), v)) << (16 * k);
        return m;
    #elif defined(__aarch64__) && defined(__ARM_NEON)
        const uint8x16_t v = vdupq_n_u8(value);
        uint64_t m = 0;
        for (int k = 0; k < 4; k++)
            m |= bsv_neon_movemask16(vceqq_u8(vld1q_u8(p + 16 * k), v)) << (16 * k);
        return m;
    #else
        return bsv_eq_mask64_scalar(p, value);
    #endif
    }

    /* popcount: the popcnt instruction where the variant's -march has it (x86-64-v2 and
       up; aarch64 uses NEON cnt), otherwise libgcc's bit-exact software routine. */
    static inline int bsv_popcount64(uint64_t x) { return __builtin_popcountll(x); }
    static inline int bsv_popcount64_scalar(uint64_t x) {
        int n = 0;
        while (x) { x &= x - 1; n++; }
        return n;
    }
    static inline int bsv_ctz64(uint64_t x) { return __builtin_ctzll(x); }   /* x != 0 */

    /* floor(x / 2**k) without relying on >> of a negative value (docs/integer-spec.md). */
    static inline int32_t bsv_floor_shift(int32_t x, int k) {
        return x >= 0 ? (x >> k) : ~((~x) >> k);
    }
    /* x * 2**k for a product the converter proved fits int32; shifting the unsigned
       representation avoids C's undefined left shift of a negative value. */
    static inline int32_t bsv_shl(int32_t x, int k) {
        return (int32_t)((uint32_t)x << k);
    }

    /* The innermost loop of the engine (event-driven accumulation):
         acc[o] += (sum over r of w[rows[r] * cout + o]) << shift,   o in [0, cout).
       The caller guarantees sum_r max_o |w[rows[r], o]| <= 32767, so each column's partial
       sum fits int16: 64 columns at a time are kept in int16 vector registers while every
       listed row is added (one sign-extending load and one add per vector), then widened,
       shifted and added into the int32 accumulators. Written with intrinsics because the
       auto-vectoriser keeps this block in registers only on some targets (measured:
       AVX2 and SSE2 code spilled it to the stack at 2-3x the cost), and cannot find the
       two-rows-per-instruction form below. The scalar version is
       always compiled and is the reference the SIMD paths are tested against. */
    static void bsv_accumulate_rows_i16_scalar(int32_t *acc, const int8_t *w, ptrdiff_t cout,
                                               const int32_t *rows, ptrdiff_t nrows,
                                               ptrdiff_t c0, int shift, int store,
                                               int negate) {
        int16_t part[64];
        for (; c0 < cout; c0 += 64) {
            ptrdiff_t width = cout - c0 < 64 ? cout - c0 : 64;
            for (ptrdiff_t o = 0; o < width; o++) part[o] = 0;
            for (ptrdiff_t r = 0; r < nrows; r++) {
                const int8_t *wr = w + (ptrdiff_t)rows[r] * cout + c0;
                for (ptrdiff_t o = 0; o < width; o++) part[o] = (int16_t)(part[o] + wr[o]);
            }
            for (ptrdiff_t o = 0; o < width; o++)
                acc[c0 + o] = (int32_t)((store ? 0u : (uint32_t)acc[c0 + o])
                                        + ((uint32_t)(negate ? -(int32_t)part[o] : (int32_t)part[o])
                                           << shift));
        }
    }

    #if defined(__AVX512BW__)
    /* 64 columns from the two accumulators of bsv_pair64 (lane k of lo holds columns
       16k..16k+7, of hi 16k+8..16k+15): put back in order, widened to int32, shifted, and
       added to (or, neg, subtracted from) the int32 columns s0..s3. */
    static inline __attribute__((always_inline)) void bsv_widen64(
            __m512i lo, __m512i hi, __m128i sh, int neg, __m512i *s0, __m512i *s1,
            __m512i *s2, __m512i *s3) {
        const __m512i i0 = _mm512_set_epi64(11, 10, 3, 2, 9, 8, 1, 0);
        const __m512i i1 = _mm512_set_epi64(15, 14, 7, 6, 13, 12, 5, 4);
        const __m512i p0 = _mm512_permutex2var_epi64(lo, i0, hi);
        const __m512i p1 = _mm512_permutex2var_epi64(lo, i1, hi);
        const __m512i w0 = _mm512_sll_epi32(_mm512_cvtepi16_epi32(_mm512_castsi512_si256(p0)), sh);
        const __m512i w1 = _mm512_sll_epi32(_mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(p0, 1)), sh);
        const __m512i w2 = _mm512_sll_epi32(_mm512_cvtepi16_epi32(_mm512_castsi512_si256(p1)), sh);
        const __m512i w3 = _mm512_sll_epi32(_mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(p1, 1)), sh);
        if (neg) {
            *s0 = _mm512_sub_epi32(*s0, w0); *s1 = _mm512_sub_epi32(*s1, w1);
            *s2 = _mm512_sub_epi32(*s2, w2); *s3 = _mm512_sub_epi32(*s3, w3);
        } else {
            *s0 = _mm512_add_epi32(*s0, w0); *s1 = _mm512_add_epi32(*s1, w1);
            *s2 = _mm512_add_epi32(*s2, w2); *s3 = _mm512_add_epi32(*s3, w3);
        }
    }
    /* acc[0..64) = s0..s3 (store), or += s0..s3. */
    static inline __attribute__((always_inline)) void bsv_put64(
            int32_t *acc, __m512i s0, __m512i s1, __m512i s2, __m512i s3, int store) {
        if (!store) {
            s0 = _mm512_add_epi32(s0, _mm512_loadu_si512((const void *)acc));
            s1 = _mm512_add_epi32(s1, _mm512_loadu_si512((const void *)(acc + 16)));
            s2 = _mm512_add_epi32(s2, _mm512_loadu_si512((const void *)(acc + 32)));
            s3 = _mm512_add_epi32(s3, _mm512_loadu_si512((const void *)(acc + 48)));
        }
        _mm512_storeu_si512((void *)acc, s0);
        _mm512_storeu_si512((void *)(acc + 16), s1);
        _mm512_storeu_si512((void *)(acc + 32), s2);
        _mm512_storeu_si512((void *)(acc + 48), s3);
    }
    static inline void bsv_flush64_avx512(int32_t *acc, __m512i lo, __m512i hi, __m128i sh,
                                          int store, int negate) {
        const __m512i z = _mm512_setzero_si512();
        __m512i s0 = z, s1 = z, s2 = z, s3 = z;
        bsv_widen64(lo, hi, sh, negate, &s0, &s1, &s2, &s3);
        bsv_put64(acc, s0, s1, s2, s3, store);
    }
    #elif defined(__AVX2__)
    static inline void bsv_flush16_avx2(int32_t *acc, __m256i a, __m128i sh, int store,
                                        int negate) {
        if (negate) a = _mm256_sub_epi16(_mm256_setzero_si256(), a);
        __m256i lo = _mm256_sll_epi32(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(a)), sh);
        __m256i hi = _mm256_sll_epi32(_mm256_cvtepi16_epi32(_mm256_extracti128_si256(a, 1)), sh);
        if (!store) {
            lo = _mm256_add_epi32(_mm256_loadu_si256((const __m256i *)acc), lo);
            hi = _mm256_add_epi32(_mm256_loadu_si256((const __m256i *)(acc + 8)), hi);
        }
        _mm256_storeu_si256((__m256i *)acc, lo);
        _mm256_storeu_si256((__m256i *)(acc + 8), hi);
    }
    #elif defined(__SSE2__)
    static inline void bsv_flush8_sse2(int32_t *acc, __m128i a, __m128i sh, int store,
                                       int negate) {
        if (negate) a = _mm_sub_epi16(_mm_setzero_si128(), a);
        /* sign-extend 8 int16 to two 4 x int32: unpack with itself, arithmetic shift by 16 */
        __m128i lo = _mm_sll_epi32(_mm_srai_epi32(_mm_unpacklo_epi16(a, a), 16), sh);
        __m128i hi = _mm_sll_epi32(_mm_srai_epi32(_mm_unpackhi_epi16(a, a), 16), sh);
        if (!store) {
            lo = _mm_add_epi32(_mm_loadu_si128((const __m128i *)acc), lo);
            hi = _mm_add_epi32(_mm_loadu_si128((const __m128i *)(acc + 4)), hi);
        }
        _mm_storeu_si128((__m128i *)acc, lo);
        _mm_storeu_si128((__m128i *)(acc + 4), hi);
    }
    #endif

    #if defined(__AVX512BW__)
    /* 64 columns of two rows p and q: lo += pairs of columns 16k..16k+7 of each 128-bit
       lane, hi += 16k+8..16k+15 (unpack, then maddubs(1, .) adds each interleaved pair).
       In assembly because gcc, given the same intrinsics, loads q twice (folded into both
       unpacks) and copies the accumulators between registers every iteration: measured
       7-10 % slower on a replay of the benchmark model's row lists (every call of one
       image, interleaved A/B), and the engine 2-3 % slower in all. */
    static const int8_t bsv_zero_row[64] __attribute__((aligned(64))) = {0};
    static inline __attribute__((always_inline)) void bsv_pair64(
            const int8_t *p, const int8_t *q, const int off, __m512i ones, __m512i *lo,
            __m512i *hi) {
        __m512i x, y, t;
        __asm__("vmovdqu64 %c[off](%[p]), %[x]; "
                "vmovdqu64 %c[off](%[q]), %[y]; "
                "vpunpcklbw %[y], %[x], %[t]; "
                "vpunpckhbw %[y], %[x], %[x]; "
                "vpmaddubsw %[t], %[ones], %[t]; "
                "vpmaddubsw %[x], %[ones], %[x]; "
                "vpaddw %[t], %[lo], %[lo]; "
                "vpaddw %[x], %[hi], %[hi]"
                : [lo] "+v"(*lo), [hi] "+v"(*hi), [x] "=&v"(x), [y] "=&v"(y), [t] "=&v"(t)
                : [p] "r"(p), [q] "r"(q), [off] "i"(off), [ones] "v"(ones),
                  "m"(*(const int8_t (*)[64])(p + off)), "m"(*(const int8_t (*)[64])(q + off)));
    }
    /* 256 columns of rows p and q (an odd last row: q = bsv_zero_row, read at offset 0)
       into the accumulators A0..A7. */
    #define BSV_PAIR256M(P, Q, A, M) do { \
            bsv_pair64((P), (Q), 0, (M), &A##0, &A##1); \
            bsv_pair64((P), (Q), 64, (M), &A##2, &A##3); \
            bsv_pair64((P), (Q), 128, (M), &A##4, &A##5); \
            bsv_pair64((P), (Q), 192, (M), &A##6, &A##7); } while (0)
    #define BSV_ODD256M(P, A, M) do { \
            bsv_pair64((P), bsv_zero_row, 0, (M), &A##0, &A##1); \
            bsv_pair64((P) + 64, bsv_zero_row, 0, (M), &A##2, &A##3); \
            bsv_pair64((P) + 128, bsv_zero_row, 0, (M), &A##4, &A##5); \
            bsv_pair64((P) + 192, bsv_zero_row, 0, (M), &A##6, &A##7); } while (0)
    #define BSV_PAIR256(P, Q, A) BSV_PAIR256M(P, Q, A, ones)
    #define BSV_ODD256(P, A) BSV_ODD256M(P, A, ones)
    #define BSV_FLUSH256(ACC, A) do { \
            bsv_flush64_avx512((ACC), A##0, A##1, sh, store, negate); \
            bsv_flush64_avx512((ACC) + 64, A##2, A##3, sh, store, negate); \
            bsv_flush64_avx512((ACC) + 128, A##4, A##5, sh, store, negate); \
            bsv_flush64_avx512((ACC) + 192, A##6, A##7, sh, store, negate); } while (0)
    #endif

    static void bsv_accumulate_rows_i16(int32_t *acc, const int8_t *w, ptrdiff_t cout,
                                        const int32_t *rows, ptrdiff_t nrows, int shift,
                                        int store, int negate) {
        /* store: write acc instead of adding to it (the first list of a layer step: no
           separate clearing of acc); negate: subtract the rows instead (the negative half
           of a temporal delta). */
        ptrdiff_t c0 = 0;
        if (nrows <= 0) {
            if (store) memset(acc, 0, (size_t)cout * sizeof(int32_t));
            return;
        }
    #if defined(__AVX512BW__)
        /* Two rows per step: interleave their bytes (unpack) and let maddubs(1, .) add each
           pair into int16 (|w0 + w1| <= 254, never saturates): one instruction widens and
           adds two rows (bsv_pair64). Measured 10-35 % faster than one sign-extend + add
           per row. An odd last row is paired with a row of zeros. Columns go in blocks of
           256 (eight accumulators), then 128 and 64, each block one pass over the rows:
           wider blocks pay the per-row address work, the loop exit and the flush less often
           (256 over 128: 2-4 % less engine time on the benchmark model, interleaved A/B;
           512 measured no better). */
        const __m128i sh = _mm_cvtsi32_si128(shift);
        const __m512i ones = _mm512_set1_epi8(1), z = _mm512_setzero_si512();
        for (; c0 + 256 <= cout; c0 += 256) {
            __m512i a0 = z, a1 = z, a2 = z, a3 = z, a4 = z, a5 = z, a6 = z, a7 = z;
            ptrdiff_t r = 0;
            const int8_t *wc = w + c0;
            for (; r + 1 < nrows; r += 2)
                BSV_PAIR256(wc + (ptrdiff_t)rows[r] * cout, wc + (ptrdiff_t)rows[r + 1] * cout, a);
            if (r < nrows)
                BSV_ODD256(wc + (ptrdiff_t)rows[r] * cout, a);
            BSV_FLUSH256(acc + c0, a);
        }
        for (; c0 + 128 <= cout; c0 += 128) {
            __m512i a0 = z, a1 = z, a2 = z, a3 = z;
            ptrdiff_t r = 0;
            const int8_t *wc = w + c0;
            for (; r + 1 < nrows; r += 2) {
                const int8_t *p = wc + (ptrdiff_t)rows[r] * cout;
                const int8_t *q = wc + (ptrdiff_t)rows[r + 1] * cout;
                bsv_pair64(p, q, 0, ones, &a0, &a1);
                bsv_pair64(p, q, 64, ones, &a2, &a3);
            }
            if (r < nrows) {
                const int8_t *p = wc + (ptrdiff_t)rows[r] * cout;
                bsv_pair64(p, bsv_zero_row, 0, ones, &a0, &a1);
                bsv_pair64(p + 64, bsv_zero_row, 0, ones, &a2, &a3);
            }
            bsv_flush64_avx512(acc + c0, a0, a1, sh, store, negate);
            bsv_flush64_avx512(acc + c0 + 64, a2, a3, sh, store, negate);
        }
        for (; c0 + 64 <= cout; c0 += 64) {
            __m512i a0 = z, a1 = z;
            ptrdiff_t r = 0;
            const int8_t *wc = w + c0;
            for (; r + 1 < nrows; r += 2)
                bsv_pair64(wc + (ptrdiff_t)rows[r] * cout, wc + (ptrdiff_t)rows[r + 1] * cout,
                           0, ones, &a0, &a1);
            if (r < nrows)
                bsv_pair64(wc + (ptrdiff_t)rows[r] * cout, bsv_zero_row, 0, ones, &a0, &a1);
            bsv_flush64_avx512(acc + c0, a0, a1, sh, store, negate);
        }
    #elif defined(__AVX2__)
        /* as for AVX-512: two rows per maddubs; lanes put back in order by permute2x128 */
        const __m128i sh = _mm_cvtsi32_si128(shift);
        const __m256i ones = _mm256_set1_epi8(1), z = _mm256_setzero_si256();
        for (; c0 + 64 <= cout; c0 += 64) {
            __m256i a0 = z, a1 = z, a2 = z, a3 = z;
            ptrdiff_t r = 0;
            for (; r < nrows; r += 2) {
                const int8_t *p = w + (ptrdiff_t)rows[r] * cout + c0;
                __m256i x0 = _mm256_loadu_si256((const __m256i *)p);
                __m256i x1 = _mm256_loadu_si256((const __m256i *)(p + 32));
                __m256i y0 = z, y1 = z;
                if (r + 1 < nrows) {
                    const int8_t *q = w + (ptrdiff_t)rows[r + 1] * cout + c0;
                    y0 = _mm256_loadu_si256((const __m256i *)q);
                    y1 = _mm256_loadu_si256((const __m256i *)(q + 32));
                }
                a0 = _mm256_add_epi16(a0, _mm256_maddubs_epi16(ones, _mm256_unpacklo_epi8(x0, y0)));
                a1 = _mm256_add_epi16(a1, _mm256_maddubs_epi16(ones, _mm256_unpackhi_epi8(x0, y0)));
                a2 = _mm256_add_epi16(a2, _mm256_maddubs_epi16(ones, _mm256_unpacklo_epi8(x1, y1)));
                a3 = _mm256_add_epi16(a3, _mm256_maddubs_epi16(ones, _mm256_unpackhi_epi8(x1, y1)));
            }
            bsv_flush16_avx2(acc + c0, _mm256_permute2x128_si256(a0, a1, 0x20), sh, store, negate);
            bsv_flush16_avx2(acc + c0 + 16, _mm256_permute2x128_si256(a0, a1, 0x31), sh, store, negate);
            bsv_flush16_avx2(acc + c0 + 32, _mm256_permute2x128_si256(a2, a3, 0x20), sh, store, negate);
            bsv_flush16_avx2(acc + c0 + 48, _mm256_permute2x128_si256(a2, a3, 0x31), sh, store, negate);
        }
    #elif defined(__SSE2__)
        /* eight named accumulators: an array here stays in memory (measured 2x slower) */
    #define BSV_SX8(x, lo, hi) do { lo = _mm_srai_epi16(_mm_unpacklo_epi8(x, x), 8); hi = _mm_srai_epi16(_mm_unpackhi_epi8(x, x), 8); } while (0)
        const __m128i sh = _mm_cvtsi32_si128(shift);
    #if defined(__SSSE3__)
        /* two rows per maddubs, as for AVX2 (one 128-bit lane: no reordering needed) */
        const __m128i ones = _mm_set1_epi8(1), z = _mm_setzero_si128();
        for (; c0 + 64 <= cout; c0 += 64) {
            __m128i a0 = z, a1 = z, a2 = z, a3 = z, a4 = z, a5 = z, a6 = z, a7 = z;
            for (ptrdiff_t r = 0; r < nrows; r += 2) {
                const int8_t *p = w + (ptrdiff_t)rows[r] * cout + c0;
                const int8_t *q = r + 1 < nrows ? w + (ptrdiff_t)rows[r + 1] * cout + c0 : NULL;
                __m128i x, y;
                x = _mm_loadu_si128((const __m128i *)p);
                y = q ? _mm_loadu_si128((const __m128i *)q) : z;
                a0 = _mm_add_epi16(a0, _mm_maddubs_epi16(ones, _mm_unpacklo_epi8(x, y)));
                a1 = _mm_add_epi16(a1, _mm_maddubs_epi16(ones, _mm_unpackhi_epi8(x, y)));
                x = _mm_loadu_si128((const __m128i *)(p + 16));
                y = q ? _mm_loadu_si128((const __m128i *)(q + 16)) : z;
                a2 = _mm_add_epi16(a2, _mm_maddubs_epi16(ones, _mm_unpacklo_epi8(x, y)));
                a3 = _mm_add_epi16(a3, _mm_maddubs_epi16(ones, _mm_unpackhi_epi8(x, y)));
                x = _mm_loadu_si128((const __m128i *)(p + 32));
                y = q ? _mm_loadu_si128((const __m128i *)(q + 32)) : z;
                a4 = _mm_add_epi16(a4, _mm_maddubs_epi16(ones, _mm_unpacklo_epi8(x, y)));
                a5 = _mm_add_epi16(a5, _mm_maddubs_epi16(ones, _mm_unpackhi_epi8(x, y)));
                x = _mm_loadu_si128((const __m128i *)(p + 48));
                y = q ? _mm_loadu_si128((const __m128i *)(q + 48)) : z;
                a6 = _mm_add_epi16(a6, _mm_maddubs_epi16(ones, _mm_unpacklo_epi8(x, y)));
                a7 = _mm_add_epi16(a7, _mm_maddubs_epi16(ones, _mm_unpackhi_epi8(x, y)));
            }
    #else
        for (; c0 + 64 <= cout; c0 += 64) {
            __m128i a0 = _mm_setzero_si128(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
            for (ptrdiff_t r = 0; r < nrows; r++) {
                const int8_t *wr = w + (ptrdiff_t)rows[r] * cout + c0;
                __m128i x, lo, hi;
                x = _mm_loadu_si128((const __m128i *)wr); BSV_SX8(x, lo, hi);
                a0 = _mm_add_epi16(a0, lo); a1 = _mm_add_epi16(a1, hi);
                x = _mm_loadu_si128((const __m128i *)(wr + 16)); BSV_SX8(x, lo, hi);
                a2 = _mm_add_epi16(a2, lo); a3 = _mm_add_epi16(a3, hi);
                x = _mm_loadu_si128((const __m128i *)(wr + 32)); BSV_SX8(x, lo, hi);
                a4 = _mm_add_epi16(a4, lo); a5 = _mm_add_epi16(a5, hi);
                x = _mm_loadu_si128((const __m128i *)(wr + 48)); BSV_SX8(x, lo, hi);
                a6 = _mm_add_epi16(a6, lo); a7 = _mm_add_epi16(a7, hi);
            }
    #endif
            bsv_flush8_sse2(acc + c0, a0, sh, store, negate);
            bsv_flush8_sse2(acc + c0 + 8, a1, sh, store, negate);
            bsv_flush8_sse2(acc + c0 + 16, a2, sh, store, negate);
            bsv_flush8_sse2(acc + c0 + 24, a3, sh, store, negate);
            bsv_flush8_sse2(acc + c0 + 32, a4, sh, store, negate);
            bsv_flush8_sse2(acc + c0 + 40, a5, sh, store, negate);
            bsv_flush8_sse2(acc + c0 + 48, a6, sh, store, negate);
            bsv_flush8_sse2(acc + c0 + 56, a7, sh, store, negate);
        }
    #undef BSV_SX8
    #elif defined(__aarch64__) && defined(__ARM_NEON)
        const int32x4_t sh = vdupq_n_s32(shift);
        for (; c0 + 64 <= cout; c0 += 64) {
            int16x8_t a0 = vdupq_n_s16(0), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
            for (ptrdiff_t r = 0; r < nrows; r++) {
                const int8_t *wr = w + (ptrdiff_t)rows[r] * cout + c0;
                int8x16_t x0 = vld1q_s8(wr), x1 = vld1q_s8(wr + 16);
                int8x16_t x2 = vld1q_s8(wr + 32), x3 = vld1q_s8(wr + 48);
                a0 = vaddw_s8(a0, vget_low_s8(x0)); a1 = vaddw_high_s8(a1, x0);
                a2 = vaddw_s8(a2, vget_low_s8(x1)); a3 = vaddw_high_s8(a3, x1);
                a4 = vaddw_s8(a4, vget_low_s8(x2)); a5 = vaddw_high_s8(a5, x2);
                a6 = vaddw_s8(a6, vget_low_s8(x3)); a7 = vaddw_high_s8(a7, x3);
            }
            int16x8_t parts[8] = {a0, a1, a2, a3, a4, a5, a6, a7};
            if (negate)
                for (int k = 0; k < 8; k++) parts[k] = vnegq_s16(parts[k]);
            for (int k = 0; k < 8; k++) {
                int32_t *ak = acc + c0 + 8 * k;
                const int32x4_t lo = vshlq_s32(vmovl_s16(vget_low_s16(parts[k])), sh);
                const int32x4_t hi = vshlq_s32(vmovl_high_s16(parts[k]), sh);
                vst1q_s32(ak, store ? lo : vaddq_s32(vld1q_s32(ak), lo));
                vst1q_s32(ak + 4, store ? hi : vaddq_s32(vld1q_s32(ak + 4), hi));
            }
        }
    #endif
        bsv_accumulate_rows_i16_scalar(acc, w, cout, rows, nrows, c0, shift, store, negate);
    }

    /* Planes in groups. Consecutive plane lists (of one sign) share one int16 pass when
       their rows, weighted by 2^(b - b0) for plane b of a group starting at plane b0, are
       at most 255: a pair of plane-b rows is added as maddubs(2^(b - b0), .), |sum| <=
       255 * 128 <= 32767, and the group is widened once, shifted by b0. The caller
       guarantees every list alone has at most 255 rows. Measured with the passes below:
       1.6-1.7 % less engine time for fc1, fc2 and the out-projection, and 1.3-3.2 % with
       the Q/K/V pass too (interleaved A/B).

       Three layers of the same shape that read the same rows (Q, K and V from the
       residual stream): acc_k[o] (+)= Σ_j x[j]·w_k[j, o] for k = 0, 1, 2 from the plane
       lists of x, in one pass over the rows per 256 columns (24 accumulators), so each
       row's index and address are loaded once for the three and the loop is left a third
       as often (measured 1.5-2 % less engine time on the benchmark model). cout % 256 == 0;
       the caller checks BSV_HAVE_ROWS3 and that every list has at most 255 rows. */
    #if defined(__AVX512BW__)
    #define BSV_HAVE_ROWS3 1
    static void bsv_accumulate_lists3_i16(int32_t *acc0, int32_t *acc1, int32_t *acc2,
                                          const int8_t *w0, const int8_t *w1,
                                          const int8_t *w2, ptrdiff_t cout,
                                          const int32_t *lists, ptrdiff_t stride,
                                          const ptrdiff_t *counts, int nplanes, int store,
                                          int negate) {
        const __m512i z = _mm512_setzero_si512();
        for (ptrdiff_t c0 = 0; c0 + 256 <= cout; c0 += 256) {
            const int8_t *u0 = w0 + c0, *u1 = w1 + c0, *u2 = w2 + c0;
            int st = store, b = 0;
            while (b < nplanes) {
                while (b < nplanes && counts[b] == 0) b++;
                if (b == nplanes) break;
                const int b0 = b;
                ptrdiff_t used = 0;
                __m512i a0 = z, a1 = z, a2 = z, a3 = z, a4 = z, a5 = z, a6 = z, a7 = z;
                __m512i e0 = z, e1 = z, e2 = z, e3 = z, e4 = z, e5 = z, e6 = z, e7 = z;
                __m512i d0 = z, d1 = z, d2 = z, d3 = z, d4 = z, d5 = z, d6 = z, d7 = z;
                for (; b < nplanes; b++) {
                    const ptrdiff_t n = counts[b];
                    if (n == 0) continue;
                    if (b - b0 > 7 || used + (n << (b - b0)) > 255) break;
                    used += n << (b - b0);
                    const int32_t *rows = lists + (ptrdiff_t)b * stride;
                    const __m512i mult = _mm512_set1_epi8((char)(1 << (b - b0)));
                    ptrdiff_t r = 0;
                    for (; r + 1 < n; r += 2) {
                        const ptrdiff_t op = (ptrdiff_t)rows[r] * cout, oq = (ptrdiff_t)rows[r + 1] * cout;
                        BSV_PAIR256M(u0 + op, u0 + oq, a, mult);
                        BSV_PAIR256M(u1 + op, u1 + oq, e, mult);
                        BSV_PAIR256M(u2 + op, u2 + oq, d, mult);
                    }
                    if (r < n) {
                        const ptrdiff_t op = (ptrdiff_t)rows[r] * cout;
                        BSV_ODD256M(u0 + op, a, mult);
                        BSV_ODD256M(u1 + op, e, mult);
                        BSV_ODD256M(u2 + op, d, mult);
                    }
                }
                const __m128i sh = _mm_cvtsi32_si128(b0);
                const int store = st;
                BSV_FLUSH256(acc0 + c0, a);
                BSV_FLUSH256(acc1 + c0, e);
                BSV_FLUSH256(acc2 + c0, d);
                st = 0;
            }
            if (st) {
                memset(acc0 + c0, 0, 256 * sizeof(int32_t));
                memset(acc1 + c0, 0, 256 * sizeof(int32_t));
                memset(acc2 + c0, 0, 256 * sizeof(int32_t));
            }
        }
    }
    /* Every plane list of a layer step (and of both halves of a temporal delta) in one
       pass per 256 columns: int32 sums stay in sixteen registers from group to group and
       acc is read and written once per step, not once per list. The lists go in groups
       (above) through the same int16 pair step as bsv_accumulate_rows_i16 (the caller
       checks that every list has at most 255 rows), each group widened, shifted by its
       first plane's bit and added (pos lists) or subtracted (neg lists). int32 lanes wrap
       like the scalar form, and the result is W.x for an x the converter bounded, so it
       is exact. cout % 256 == 0. */
    #define BSV_HAVE_LISTS 1
    static void bsv_accumulate_lists_i16(int32_t *acc, const int8_t *w, ptrdiff_t cout,
                                         const int32_t *pos, const ptrdiff_t *npos_rows,
                                         int npos, const int32_t *neg,
                                         const ptrdiff_t *nneg_rows, int nneg,
                                         ptrdiff_t stride, int store) {
        const __m512i z = _mm512_setzero_si512();
        for (ptrdiff_t c0 = 0; c0 + 256 <= cout; c0 += 256) {
            __m512i s0 = z, s1 = z, s2 = z, s3 = z, s4 = z, s5 = z, s6 = z, s7 = z;
            __m512i s8 = z, s9 = z, s10 = z, s11 = z, s12 = z, s13 = z, s14 = z, s15 = z;
            const int8_t *wc = w + c0;
            int k = 0;
            const int nl = npos + nneg;
            while (k < nl) {
                while (k < nl && (k >= npos ? nneg_rows[k - npos] : npos_rows[k]) == 0) k++;
                if (k == nl) break;
                /* a group: consecutive lists of one sign whose rows, weighted by
                   2^(b - b0), fit one int16 pass (weighted rows <= 255) */
                const int gneg = k >= npos, b0 = gneg ? k - npos : k;
                ptrdiff_t used = 0;
                __m512i a0 = z, a1 = z, a2 = z, a3 = z, a4 = z, a5 = z, a6 = z, a7 = z;
                for (; k < nl && (k >= npos) == gneg; k++) {
                    const int b = gneg ? k - npos : k;
                    const ptrdiff_t n = gneg ? nneg_rows[b] : npos_rows[b];
                    if (n == 0) continue;
                    if (b - b0 > 7 || used + (n << (b - b0)) > 255) break;
                    used += n << (b - b0);
                    const int32_t *rows = (gneg ? neg : pos) + (ptrdiff_t)b * stride;
                    const __m512i mult = _mm512_set1_epi8((char)(1 << (b - b0)));
                    ptrdiff_t r = 0;
                    for (; r + 1 < n; r += 2) {
                        const int8_t *p = wc + (ptrdiff_t)rows[r] * cout;
                        const int8_t *q = wc + (ptrdiff_t)rows[r + 1] * cout;
                        bsv_pair64(p, q, 0, mult, &a0, &a1);
                        bsv_pair64(p, q, 64, mult, &a2, &a3);
                        bsv_pair64(p, q, 128, mult, &a4, &a5);
                        bsv_pair64(p, q, 192, mult, &a6, &a7);
                    }
                    if (r < n) {
                        const int8_t *p = wc + (ptrdiff_t)rows[r] * cout;
                        bsv_pair64(p, bsv_zero_row, 0, mult, &a0, &a1);
                        bsv_pair64(p + 64, bsv_zero_row, 0, mult, &a2, &a3);
                        bsv_pair64(p + 128, bsv_zero_row, 0, mult, &a4, &a5);
                        bsv_pair64(p + 192, bsv_zero_row, 0, mult, &a6, &a7);
                    }
                }
                {
                    const __m128i sh = _mm_cvtsi32_si128(b0);
                    bsv_widen64(a0, a1, sh, gneg, &s0, &s1, &s2, &s3);
                    bsv_widen64(a2, a3, sh, gneg, &s4, &s5, &s6, &s7);
                    bsv_widen64(a4, a5, sh, gneg, &s8, &s9, &s10, &s11);
                    bsv_widen64(a6, a7, sh, gneg, &s12, &s13, &s14, &s15);
                }
            }
            bsv_put64(acc + c0, s0, s1, s2, s3, store);
            bsv_put64(acc + c0 + 64, s4, s5, s6, s7, store);
            bsv_put64(acc + c0 + 128, s8, s9, s10, s11, store);
            bsv_put64(acc + c0 + 192, s12, s13, s14, s15, store);
        }
    }
    #else
    #define BSV_HAVE_ROWS3 0
    static void bsv_accumulate_lists3_i16(int32_t *acc0, int32_t *acc1, int32_t *acc2,
                                          const int8_t *w0, const int8_t *w1,
                                          const int8_t *w2, ptrdiff_t cout,
                                          const int32_t *lists, ptrdiff_t stride,
                                          const ptrdiff_t *counts, int nplanes, int store,
                                          int negate) {
        (void)acc0; (void)acc1; (void)acc2; (void)w0; (void)w1; (void)w2; (void)cout;
        (void)lists; (void)stride; (void)counts; (void)nplanes; (void)store;
        (void)negate;                                               /* never called */
    }
    #define BSV_HAVE_LISTS 0
    static void bsv_accumulate_lists_i16(int32_t *acc, const int8_t *w, ptrdiff_t cout,
                                         const int32_t *pos, const ptrdiff_t *npos_rows,
                                         int npos, const int32_t *neg,
                                         const ptrdiff_t *nneg_rows, int nneg,
                                         ptrdiff_t stride, int store) {
        (void)acc; (void)w; (void)cout; (void)pos; (void)npos_rows; (void)npos; (void)neg;
        (void)nneg_rows; (void)nneg; (void)stride; (void)store;    /* never called */
    }
    #endif

    #if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
    /* Scores of one neighbour for 16 consecutive 16-channel groups (words 4c .. 4c+3 of
       the bitsets), as 16 int32 lanes: lane g holds the score of the head that group g
       belongs to. Counted in vector registers: bytes of Q & K_b counted with a nibble
       table, the planes weighted by 2^b (a byte's weighted count is at most 8 * 15 = 120:
       Bmax <= 15, so no carry between bytes), pairs of bytes summed into 16-bit groups,
       then the groups of a head (dh / 16 = 1, 2, 4, 8 or 16 lanes) summed by a butterfly
       of lane permutes. Measured on the benchmark model: replaces a scalar popcount per
       word, plane and head (and a division) that cost more than the masked adds. */
    static inline __m512i bsv_group_scores16(const uint64_t *q, const uint64_t *kj,
                                             ptrdiff_t nplanes, ptrdiff_t nwords,
                                             ptrdiff_t c, ptrdiff_t dh) {
        const ptrdiff_t left = nwords - 4 * c;
        const __mmask8 lm = (__mmask8)(left >= 4 ? 0x0f : (1u << left) - 1u);
        const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                             0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
        const __m256i low4 = _mm256_set1_epi8(0x0f);
        const __m256i qv = _mm256_maskz_loadu_epi64(lm, q + 4 * c);
        __m256i tot = _mm256_setzero_si256();
        for (ptrdiff_t b = 0; b < nplanes; b++) {
            const __m256i x = _mm256_and_si256(qv, _mm256_maskz_loadu_epi64(lm, kj + b * nwords + 4 * c));
            const __m256i cnt = _mm256_add_epi8(
                _mm256_shuffle_epi8(lut, _mm256_and_si256(x, low4)),
                _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(x, 4), low4)));
            tot = _mm256_add_epi8(tot, _mm256_sll_epi16(cnt, _mm_cvtsi32_si128((int)b)));
        }
        __m512i p = _mm512_cvtepi16_epi32(_mm256_maddubs_epi16(tot, _mm256_set1_epi8(1)));
        const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        for (ptrdiff_t s = 1; s < dh / 16; s <<= 1)
            p = _mm512_add_epi32(p, _mm512_permutexvar_epi32(
                _mm512_xor_si512(iota, _mm512_set1_epi32((int)s)), p));
        return p;
    }

    /* o[16G .. 16G+15] += s where V = +1 and -= s where V = -1 (V's bits of that group). */
    static inline void bsv_signed_group_add(int32_t *o, ptrdiff_t G, __m512i s,
                                            const uint64_t *vp, const uint64_t *vn) {
        const __mmask16 kp = (__mmask16)(vp[G >> 2] >> (16 * (G & 3)));
        const __mmask16 kn = (__mmask16)(vn[G >> 2] >> (16 * (G & 3)));
        __m512i acc = _mm512_loadu_si512((const void *)(o + 16 * G));
        acc = _mm512_mask_add_epi32(acc, kp, acc, s);
        acc = _mm512_mask_sub_epi32(acc, kn, acc, s);
        _mm512_storeu_si512((void *)(o + 16 * G), acc);
    }
    #endif

    /* DBSSA for one query token i and one step, when every head is a whole number of
       16-channel groups inside 64-bit words or of whole words (dh % 16 == 0 and dh
       divides 64 or is a multiple of 64), with AVX-512: the V bitsets are used directly
       as lane masks of masked adds and subtracts, 16 channels at a time, with no branch
       per head or per spike. S (scratch, [heads]) receives each neighbour's scores.
       Returns 0 (and does nothing) where this path does not apply; the caller then runs
       the portable sparse loop, which the tests hold to the same oracle. */

    static int bsv_dbssa_token_avx512(int32_t *o, ptrdiff_t d, const uint64_t *q,
                                      const uint64_t *k_planes, const uint64_t *v_pos,
                                      const uint64_t *v_neg, ptrdiff_t nplanes,
                                      ptrdiff_t nwords, const int32_t *nbr, ptrdiff_t count,
                                      ptrdiff_t dh, ptrdiff_t heads, int32_t *S) {
    #if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
        if (dh % 16 != 0 || !(64 % dh == 0 || dh % 64 == 0) || d != dh * heads) return 0;
        const ptrdiff_t groups = d / 16;
        /* head scores in vector registers where a head lies within 16 groups */
        const int vector_scores = nplanes <= 4 && (dh == 16 || dh == 32 || dh == 64 ||
                                                   dh == 128 || dh == 256);
        if (groups <= 16 && vector_scores) {
            /* D <= 256: O stays in sixteen registers across the whole window */
            __m512i acc[16];
    #pragma GCC unroll 16
            for (int g = 0; g < 16; g++) acc[g] = _mm512_setzero_si512();
            for (ptrdiff_t jj = 0; jj < count; jj++) {
                const ptrdiff_t j = nbr[jj];
                const uint64_t *vp = v_pos + j * nwords, *vn = v_neg + j * nwords;
                const __m512i p = bsv_group_scores16(q, k_planes + j * nplanes * nwords,
                                                     nplanes, nwords, 0, dh);
    #pragma GCC unroll 16
                for (int g = 0; g < 16; g++) {
                    if (g < groups) {
                        const __m512i s = _mm512_permutexvar_epi32(_mm512_set1_epi32(g), p);
                        const __mmask16 kp = (__mmask16)(vp[g >> 2] >> (16 * (g & 3)));
                        const __mmask16 kn = (__mmask16)(vn[g >> 2] >> (16 * (g & 3)));
                        acc[g] = _mm512_mask_sub_epi32(_mm512_mask_add_epi32(acc[g], kp, acc[g], s),
                                                       kn, acc[g], s);
                    }
                }
            }
    #pragma GCC unroll 16
            for (int g = 0; g < 16; g++)
                if (g < groups) _mm512_storeu_si512((void *)(o + 16 * g), acc[g]);
            return 1;
        }
        for (ptrdiff_t g = 0; g < groups; g++)
            _mm512_storeu_si512((void *)(o + 16 * g), _mm512_setzero_si512());
        const ptrdiff_t per_word = dh < 64 ? 64 / dh : 1;     /* heads per word (dh < 64) */
        const uint64_t head_bits = dh < 64 ? (((uint64_t)1) << dh) - 1 : 0;
        for (ptrdiff_t jj = 0; jj < count; jj++) {
            const ptrdiff_t j = nbr[jj];
            const uint64_t *kj = k_planes + j * nplanes * nwords;
            const uint64_t *vp = v_pos + j * nwords, *vn = v_neg + j * nwords;
            if (vector_scores) {
                for (ptrdiff_t c = 0; 16 * c < groups; c++) {
                    const __m512i p = bsv_group_scores16(q, kj, nplanes, nwords, c, dh);
                    const ptrdiff_t gn = groups - 16 * c < 16 ? groups - 16 * c : 16;
                    for (ptrdiff_t g = 0; g < gn; g++)
                        bsv_signed_group_add(o, 16 * c + g, _mm512_permutexvar_epi32(
                                                 _mm512_set1_epi32((int)g), p), vp, vn);
                }
                continue;
            }
            for (ptrdiff_t h = 0; h < heads; h++) S[h] = 0;
            for (ptrdiff_t w = 0; w < nwords; w++) {
                const uint64_t qw = q[w];
                for (ptrdiff_t b = 0; b < nplanes; b++) {
                    const uint64_t x = qw & kj[b * nwords + w];
                    if (dh >= 64) {
                        S[(64 * w) / dh] += __builtin_popcountll(x) << b;
                    } else {
                        for (ptrdiff_t g = 0; g < per_word; g++)
                            S[w * per_word + g] +=
                                __builtin_popcountll((x >> (g * dh)) & head_bits) << b;
                    }
                }
            }
            for (ptrdiff_t g = 0; g < groups; g++)
                bsv_signed_group_add(o, g, _mm512_set1_epi32(S[(16 * g) / dh]), vp, vn);
        }
        return 1;
    #else
        (void)o; (void)d; (void)q; (void)k_planes; (void)v_pos; (void)v_neg; (void)nplanes;
        (void)nwords; (void)nbr; (void)count; (void)dh; (void)heads; (void)S;
        return 0;
    #endif
    }

    /* The rows of one bit-plane list, appended to out[] (room for 16 entries of slack):
       bit i of m set -> base + i. AVX-512: compress 16 indices at a time into a register
       and store them whole (a compress straight to memory is microcoded and slow on some
       CPUs); otherwise one count-trailing-zeros per set bit. */
    static inline ptrdiff_t bsv_bits_to_rows(uint64_t m, int32_t base, int32_t *out) {
        ptrdiff_t n = 0;
    #if defined(__AVX512F__)
        /* no branch per group: a mispredicted skip costs more than a compress */
        const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        __m512i idx = _mm512_add_epi32(iota, _mm512_set1_epi32(base));
        const __m512i step = _mm512_set1_epi32(16);
        for (int g = 0; g < 4; g++, m >>= 16) {
            const __mmask16 k = (__mmask16)m;
            _mm512_storeu_si512((void *)(out + n), _mm512_maskz_compress_epi32(k, idx));
            n += __builtin_popcount((unsigned)k);
            idx = _mm512_add_epi32(idx, step);
        }
    #else
        while (m) {
            out[n++] = base + __builtin_ctzll(m);
            m &= m - 1;
        }
    #endif
        return n;
    }

    /* One time step of a neuron layer of n channels (spec ops 1-2), in one pass:
         I = (acc << shift) + bias;  charge (IF: v += I; leaky: v += floor((I - v) / 2^leak));
         emit (burst: min(bmax, floor(v / θ)) if v >= θ, else 0; signed: +1 / -1 / 0);
         soft reset (v -= s·θ).
       Plain C that the compiler vectorises on every target (restrict: no aliasing to check).
       Burst emission without a division: the count is built from its binary digits,
       largest first; digit 2^b is taken if the count stays <= bmax and v >= θ << b, and
       then θ << b is subtracted -- bits(bmax) compare-and-subtract steps instead of bmax,
       same count and membrane as the spec's bmax single steps. θ << b <= bmax·θ stays
       within the proven bound for every enabled digit; digits above bits(bmax) are masked
       off (their θ << b is computed in uint32 and may wrap, harmlessly). Every value that
       is kept is within the converter's bounds; the unused branch of the charge (I - v for
       an IF neuron) is computed in uint32 so that it cannot overflow. Spikes are written as
       bytes: burst counts, or 0x01 / 0x00 / 0xff for signed. */
    /* The loop body, specialised by the caller for constant LEAKY / SIGNED / NSTEPS
       (always inlined), so each of the ten forms does only its own work. */
    static inline __attribute__((always_inline)) void bsv_neuron_impl(
            int32_t *restrict v, const int32_t *restrict acc, int shift,
            const int32_t *restrict bias, const int32_t *restrict theta, int leak, int bmax,
            uint8_t *restrict s, ptrdiff_t n, const int LEAKY, const int SIGNED,
            const int NSTEPS) {
        for (ptrdiff_t o = 0; o < n; o++) {
            const int32_t cur = (int32_t)(((uint32_t)acc[o] << shift) + (uint32_t)bias[o]);
            int32_t vv = v[o];
            if (LEAKY) {
                const int32_t d = cur - vv;
                vv += d >= 0 ? (d >> leak) : ~((~d) >> leak);
            } else {
                vv += cur;
            }
            const int32_t th = theta[o];
            if (SIGNED) {
                const int32_t pos = -(int32_t)(vv >= th), neg = -(int32_t)(vv <= -th);
                vv = vv - (th & pos) + (th & neg);
                s[o] = (uint8_t)((pos & 1) | (neg & 0xff));
            } else {
                int32_t c = 0, m, t;
                if (NSTEPS > 3) {
                    t = th << 3;
                    m = -(int32_t)(vv >= t);
                    c = m & 8;
                    vv -= m & t;
                }
                if (NSTEPS > 2) {
                    t = th << 2;
                    m = -(int32_t)((vv >= t) & (c + 4 <= bmax));
                    c += m & 4;
                    vv -= m & t;
                }
                if (NSTEPS > 1) {
                    t = th << 1;
                    m = -(int32_t)((vv >= t) & (c + 2 <= bmax));
                    c += m & 2;
                    vv -= m & t;
                }
                m = -(int32_t)((vv >= th) & (c + 1 <= bmax));
                c += m & 1;
                vv -= m & th;
                s[o] = (uint8_t)c;
            }
            v[o] = vv;
        }
    }

    /* AVX-512: the same step 16 channels at a time, written with intrinsics (the
       vectorised C above compiles to about half again as many instructions: it zero-masks
       every digit's compare). A burst count of at most 4 is taken as the largest k <= bmax
       with v >= k·θ, by compares against θ, 2θ, 3θ, 4θ (k·θ <= bmax·θ: within the proven
       bound), and v loses the matching multiple. Measured 4 % less engine time on the
       benchmark model. Returns how many channels it did (a multiple of 16); the caller
       finishes the rest with the C loop. */
    #if defined(__AVX512F__) && defined(__AVX512BW__)
    static inline __attribute__((always_inline)) __m512i bsv_charge16(
            const int32_t *acc, const int32_t *bias, __m512i vv, __m128i sh, __m128i lk,
            const int LEAKY) {
        const __m512i cur = _mm512_add_epi32(_mm512_sll_epi32(_mm512_loadu_si512(acc), sh),
                                             _mm512_loadu_si512(bias));
        if (LEAKY) return _mm512_add_epi32(vv, _mm512_sra_epi32(_mm512_sub_epi32(cur, vv), lk));
        return _mm512_add_epi32(vv, cur);
    }
    static inline __attribute__((always_inline)) ptrdiff_t bsv_neuron_avx512_impl(
            int32_t *restrict v, const int32_t *restrict acc, int shift,
            const int32_t *restrict bias, const int32_t *restrict theta, int leak, int bmax,
            uint8_t *restrict s, ptrdiff_t n, const int LEAKY, const int SIGNED) {
        const __m128i sh = _mm_cvtsi32_si128(shift), lk = _mm_cvtsi32_si128(LEAKY ? leak : 0);
        const __m512i one = _mm512_set1_epi32(1), two = _mm512_set1_epi32(2);
        const __m512i three = _mm512_set1_epi32(3), four = _mm512_set1_epi32(4);
        ptrdiff_t o = 0;
        for (; o + 16 <= n; o += 16) {
            __m512i vv = bsv_charge16(acc + o, bias + o, _mm512_loadu_si512(v + o), sh, lk, LEAKY);
            const __m512i th = _mm512_loadu_si512(theta + o);
            __m512i c;
            if (SIGNED) {
                const __mmask16 mp = _mm512_cmpge_epi32_mask(vv, th);
                const __mmask16 mn = _mm512_cmple_epi32_mask(vv, _mm512_sub_epi32(_mm512_setzero_si512(), th));
                vv = _mm512_mask_sub_epi32(vv, mp, vv, th);
                vv = _mm512_mask_add_epi32(vv, mn, vv, th);
                c = _mm512_mask_mov_epi32(_mm512_maskz_mov_epi32(mp, one), mn, _mm512_set1_epi32(-1));
            } else {
                /* count = the largest k <= bmax with v >= k·θ (k·θ <= bmax·θ: in bound) */
                const __mmask16 m1 = _mm512_cmpge_epi32_mask(vv, th);
                __m512i sub = _mm512_maskz_mov_epi32(m1, th);
                c = _mm512_maskz_mov_epi32(m1, one);
                if (bmax >= 2) {
                    const __m512i t2 = _mm512_add_epi32(th, th);
                    const __mmask16 m2 = _mm512_cmpge_epi32_mask(vv, t2);
                    sub = _mm512_mask_mov_epi32(sub, m2, t2);
                    c = _mm512_mask_mov_epi32(c, m2, two);
                    if (bmax >= 3) {
                        const __m512i t3 = _mm512_add_epi32(t2, th);
                        const __mmask16 m3 = _mm512_cmpge_epi32_mask(vv, t3);
                        sub = _mm512_mask_mov_epi32(sub, m3, t3);
                        c = _mm512_mask_mov_epi32(c, m3, three);
                        if (bmax >= 4) {
                            const __m512i t4 = _mm512_add_epi32(t2, t2);
                            const __mmask16 m4 = _mm512_cmpge_epi32_mask(vv, t4);
                            sub = _mm512_mask_mov_epi32(sub, m4, t4);
                            c = _mm512_mask_mov_epi32(c, m4, four);
                        }
                    }
                }
                vv = _mm512_sub_epi32(vv, sub);
            }
            _mm512_storeu_si512(v + o, vv);
            _mm_storeu_si128((__m128i *)(s + o), _mm512_cvtepi32_epi8(c));
        }
        return o;
    }
    static ptrdiff_t bsv_neuron_avx512(int32_t *restrict v, const int32_t *restrict acc,
                                       int shift, const int32_t *restrict bias,
                                       const int32_t *restrict theta, int leak,
                                       int kind_signed, int bmax, uint8_t *restrict s,
                                       ptrdiff_t n) {
        if (leak >= 0)
            return kind_signed ? bsv_neuron_avx512_impl(v, acc, shift, bias, theta, leak, bmax, s, n, 1, 1)
                               : bsv_neuron_avx512_impl(v, acc, shift, bias, theta, leak, bmax, s, n, 1, 0);
        return kind_signed ? bsv_neuron_avx512_impl(v, acc, shift, bias, theta, leak, bmax, s, n, 0, 1)
                           : bsv_neuron_avx512_impl(v, acc, shift, bias, theta, leak, bmax, s, n, 0, 0);
    }
    #endif

    /* One time step of a neuron layer: see bsv_neuron_impl. */
    static void bsv_neuron_step(int32_t *restrict v, const int32_t *restrict acc, int shift,
                                const int32_t *restrict bias, const int32_t *restrict theta,
                                int leak, int kind_signed, int bmax, uint8_t *restrict s,
                                ptrdiff_t n) {
        int nsteps = 0;
        while ((bmax >> nsteps) != 0) nsteps++;
        const int leaky = leak >= 0;
    #if defined(__AVX512F__) && defined(__AVX512BW__)
        if (kind_signed || bmax <= 4) {
            const ptrdiff_t done = bsv_neuron_avx512(v, acc, shift, bias, theta, leak,
                                                     kind_signed, bmax, s, n);
            v += done; acc += done; bias += done; theta += done; s += done; n -= done;
        }
    #endif
    #define BSV_NEURON(L, S, N) bsv_neuron_impl(v, acc, shift, bias, theta, leak, bmax, s, n, L, S, N)
        if (kind_signed) {
            if (leaky) BSV_NEURON(1, 1, 1); else BSV_NEURON(0, 1, 1);
        } else if (leaky) {
            switch (nsteps) {
                case 1: BSV_NEURON(1, 0, 1); break;
                case 2: BSV_NEURON(1, 0, 2); break;
                case 3: BSV_NEURON(1, 0, 3); break;
                default: BSV_NEURON(1, 0, 4); break;
            }
        } else {
            switch (nsteps) {
                case 1: BSV_NEURON(0, 0, 1); break;
                case 2: BSV_NEURON(0, 0, 2); break;
                case 3: BSV_NEURON(0, 0, 3); break;
                default: BSV_NEURON(0, 0, 4); break;
            }
        }
    #undef BSV_NEURON
    }

    /* Reads one byte of every 64-byte line of [p, p + bytes), in address order, so that a
       pass's weights stream into the cache (hardware prefetchers follow a sequential read)
       before the row loop reaches its rows in list order, one miss at a time. */
    static void bsv_touch(const void *p, ptrdiff_t bytes) {
        const unsigned char *c = (const unsigned char *)p;
        unsigned a = 0, b = 0;
        ptrdiff_t o = 0;
        for (; o + 128 <= bytes; o += 128) { a |= c[o]; b |= c[o + 64]; }
        for (; o < bytes; o += 64) a |= c[o];
        volatile unsigned sink = a | b;
        (void)sink;
    }

    static const char *bsv_simd_name = BSV_SIMD_NAME;
    static const char *bsv_popcount_name = BSV_POPCOUNT_NAME;

    /* 1 if the CPU running this process supports the x86-64 micro-architecture level
       ("x86-64-v2", "x86-64-v3", "x86-64-v4"); 0 otherwise and on other architectures. */
    static int bsv_cpu_supports(const char *level) {
    #if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
        __builtin_cpu_init();
        if (!strcmp(level, "x86-64-v2")) return __builtin_cpu_supports("x86-64-v2") != 0;
        if (!strcmp(level, "x86-64-v3")) return __builtin_cpu_supports("x86-64-v3") != 0;
        if (!strcmp(level, "x86-64-v4")) return __builtin_cpu_supports("x86-64-v4") != 0;
        return 0;
    #elif defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
        __builtin_cpu_init();
        if (!strcmp(level, "x86-64-v2"))
            return __builtin_cpu_supports("popcnt") && __builtin_cpu_supports("sse4.2")
                   && __builtin_cpu_supports("ssse3");
        if (!strcmp(level, "x86-64-v3"))
            return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("bmi2")
                   && __builtin_cpu_supports("fma") && __builtin_cpu_supports("popcnt");
        if (!strcmp(level, "x86-64-v4"))
            return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
                   && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")
                   && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt");
        return 0;
    #else
        (void)level;
        return 0;
    #endif
    }
    """
    uint64_t bsv_test_mask64(const uint8_t* p, uint8_t bits) noexcept nogil
    uint64_t bsv_test_mask64_scalar(const uint8_t* p, uint8_t bits) noexcept nogil
    uint64_t bsv_eq_mask64(const uint8_t* p, uint8_t value) noexcept nogil
    uint64_t bsv_eq_mask64_scalar(const uint8_t* p, uint8_t value) noexcept nogil
    int bsv_popcount64(uint64_t x) noexcept nogil
    int bsv_popcount64_scalar(uint64_t x) noexcept nogil
    int bsv_ctz64(uint64_t x) noexcept nogil
    int32_t bsv_floor_shift(int32_t x, int k) noexcept nogil
    int32_t bsv_shl(int32_t x, int k) noexcept nogil
    const char* bsv_simd_name
    const char* bsv_popcount_name
    int bsv_cpu_supports(const char* level) noexcept nogil
    void bsv_touch(const void* p, Py_ssize_t bytes) noexcept nogil
    int bsv_dbssa_token_avx512(int32_t* o, Py_ssize_t d, const uint64_t* q,
                               const uint64_t* k_planes, const uint64_t* v_pos,
                               const uint64_t* v_neg, Py_ssize_t nplanes, Py_ssize_t nwords,
                               const int32_t* nbr, Py_ssize_t count, Py_ssize_t dh,
                               Py_ssize_t heads, int32_t* S) noexcept nogil
    Py_ssize_t bsv_bits_to_rows(uint64_t m, int32_t base, int32_t* out) noexcept nogil
    void bsv_neuron_step(int32_t* v, const int32_t* acc, int shift, const int32_t* bias,
                         const int32_t* theta, int leak, int kind_signed, int bmax,
                         uint8_t* s, Py_ssize_t n) noexcept nogil
    void bsv_accumulate_rows_i16(int32_t* acc, const int8_t* w, Py_ssize_t cout,
                                 const int32_t* rows, Py_ssize_t nrows, int shift,
                                 int store, int negate) noexcept nogil
    void bsv_accumulate_rows_i16_scalar(int32_t* acc, const int8_t* w, Py_ssize_t cout,
                                        const int32_t* rows, Py_ssize_t nrows, Py_ssize_t c0,
                                        int shift, int store, int negate) noexcept nogil
    const int BSV_HAVE_ROWS3
    const int BSV_HAVE_LISTS
    void bsv_accumulate_lists_i16(int32_t* acc, const int8_t* w, Py_ssize_t cout,
                                  const int32_t* pos, const Py_ssize_t* npos_rows, int npos,
                                  const int32_t* neg, const Py_ssize_t* nneg_rows, int nneg,
                                  Py_ssize_t stride, int store) noexcept nogil
    void bsv_accumulate_lists3_i16(int32_t* acc0, int32_t* acc1, int32_t* acc2,
                                   const int8_t* w0, const int8_t* w1, const int8_t* w2,
                                   Py_ssize_t cout, const int32_t* lists, Py_ssize_t stride,
                                   const Py_ssize_t* counts, int nplanes, int store,
                                   int negate) noexcept nogil
