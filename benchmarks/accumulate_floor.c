/* What bounds the engine's innermost loop (benchmarks/accumulate_floor.py builds and runs
 * this; it is not a test).
 *
 * bsv_simd.h is the C block of kernels/_simd.pxi, so "engine" below is exactly the
 * engine's bsv_accumulate_rows_i16. Two variants bound it from either side, on the same
 * row lists and columns (AVX-512 only: the build uses -march=x86-64-v4):
 *   no_loads  the same unpack / pair-add / add instructions on registers: no weight loads,
 *             no row addresses. What the loop costs if memory were free.
 *   int16     weights stored widened to int16: one load-and-add per 32 columns per row,
 *             a third of the engine's vector instructions but twice the bytes loaded.
 * Reported: ps per row-element addition, best of several repetitions, for list lengths
 * the benchmark model produces (40 rows: a 15 % plane; 150 rows: the dense residual stream).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bsv_simd.h"

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void flush32(int32_t *acc, __m512i a) {   /* the engine's widening, shift 0 */
    __m512i lo = _mm512_cvtepi16_epi32(_mm512_castsi512_si256(a));
    __m512i hi = _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(a, 1));
    _mm512_storeu_si512(acc, _mm512_add_epi32(_mm512_loadu_si512(acc), lo));
    _mm512_storeu_si512(acc + 16, _mm512_add_epi32(_mm512_loadu_si512(acc + 16), hi));
}

__attribute__((noinline)) static void no_loads(int32_t *acc, const int8_t *w, ptrdiff_t cout,
                                               const int32_t *rows, ptrdiff_t n) {
    const __m512i ones = _mm512_set1_epi8(1), z = _mm512_setzero_si512();
    __m512i x = _mm512_loadu_si512(w), y = _mm512_loadu_si512(w + 64);
    __m512i x2 = _mm512_loadu_si512(w + 128), y2 = _mm512_loadu_si512(w + 192);
    (void)rows;
    for (ptrdiff_t c0 = 0; c0 + 128 <= cout; c0 += 128) {
        __m512i a0 = z, a1 = z, a2 = z, a3 = z;
        for (ptrdiff_t r = 0; r + 1 < n; r += 2) {
            __asm__ volatile("" : "+v"(x), "+v"(y), "+v"(x2), "+v"(y2));  /* not hoisted */
            a0 = _mm512_add_epi16(a0, _mm512_maddubs_epi16(ones, _mm512_unpacklo_epi8(x, y)));
            a1 = _mm512_add_epi16(a1, _mm512_maddubs_epi16(ones, _mm512_unpackhi_epi8(x, y)));
            a2 = _mm512_add_epi16(a2, _mm512_maddubs_epi16(ones, _mm512_unpacklo_epi8(x2, y2)));
            a3 = _mm512_add_epi16(a3, _mm512_maddubs_epi16(ones, _mm512_unpackhi_epi8(x2, y2)));
        }
        flush32(acc + c0, a0); flush32(acc + c0 + 32, a1);
        flush32(acc + c0 + 64, a2); flush32(acc + c0 + 96, a3);
    }
}

__attribute__((noinline)) static void int16_rows(int32_t *acc, const int16_t *w, ptrdiff_t cout,
                                                 const int32_t *rows, ptrdiff_t n) {
    const __m512i z = _mm512_setzero_si512();
    for (ptrdiff_t c0 = 0; c0 + 128 <= cout; c0 += 128) {
        __m512i a0 = z, a1 = z, a2 = z, a3 = z;
        for (ptrdiff_t r = 0; r < n; r++) {
            const int16_t *p = w + (ptrdiff_t)rows[r] * cout + c0;
            a0 = _mm512_add_epi16(a0, _mm512_loadu_si512(p));
            a1 = _mm512_add_epi16(a1, _mm512_loadu_si512(p + 32));
            a2 = _mm512_add_epi16(a2, _mm512_loadu_si512(p + 64));
            a3 = _mm512_add_epi16(a3, _mm512_loadu_si512(p + 96));
        }
        flush32(acc + c0, a0); flush32(acc + c0 + 32, a1);
        flush32(acc + c0 + 64, a2); flush32(acc + c0 + 96, a3);
    }
}

int main(int argc, char **argv) {
    const int cin = 256, lists = 256;
    const int cout = argc > 1 ? atoi(argv[1]) : 256;
    const int nrows = argc > 2 ? atoi(argv[2]) : 40;
    int8_t *w8 = aligned_alloc(64, (size_t)cin * cout);
    int16_t *w16 = aligned_alloc(64, 2 * (size_t)cin * cout);
    int32_t *rows = malloc(sizeof(int32_t) * (size_t)lists * nrows);
    int32_t *acc = aligned_alloc(64, 4 * (size_t)cout);
    srand(1);
    for (size_t i = 0; i < (size_t)cin * cout; i++) w16[i] = w8[i] = (int8_t)(rand() % 81 - 40);
    for (int k = 0; k < lists * nrows; k++) rows[k] = rand() % cin;   /* |w| <= 40: int16-safe */
    memset(acc, 0, 4 * (size_t)cout);
    const char *names[3] = {"engine", "no_loads", "int16"};
    double best[3] = {1e30, 1e30, 1e30};
    const long reps = (long)(2e8 / ((double)lists * nrows * cout)) + 1;
    for (int round = 0; round < 15; round++)
        for (int v = 0; v < 3; v++) {
            double t0 = now();
            for (long rep = 0; rep < reps; rep++)
                for (int k = 0; k < lists; k++) {
                    const int32_t *r = rows + (ptrdiff_t)k * nrows;
                    if (v == 0) bsv_accumulate_rows_i16(acc, w8, cout, r, nrows, 0, 0, 0);
                    else if (v == 1) no_loads(acc, w8, cout, r, nrows);
                    else int16_rows(acc, w16, cout, r, nrows);
                }
            double ps = (now() - t0) * 1e12 / ((double)reps * lists * nrows * cout);
            if (ps < best[v]) best[v] = ps;
        }
    printf("cout %d, %d rows per list:", cout, nrows);
    for (int v = 0; v < 3; v++) printf("  %s %.2f", names[v], best[v]);
    printf("  ps/add  (checksum %d)\n", acc[0] + acc[cout - 1]);
    return 0;
}
