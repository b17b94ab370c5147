/* Self-test of the C helpers in kernels/_simd.pxi against plain reference code.
 *
 * tests/test_kernels.py extracts the C block of kernels/_simd.pxi into bsv_simd.h, compiles this
 * file for a target (the host with each -march, or aarch64 run under qemu-aarch64, where
 * the NEON paths are the ones under test) and runs it: exit status 0 and "ok" when every
 * SIMD path equals its reference on every case, else the first mismatch is printed.
 * The references here are deliberately naive: the spec's formulas, a division included.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bsv_simd.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t next(void) {                   /* xorshift64*: the same on every target */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}

static int rand_int(int lo, int hi) { return lo + (int)(next() % (uint64_t)(hi - lo + 1)); }

#define FAIL(...) do { printf(__VA_ARGS__); printf("\n"); return 1; } while (0)

static int test_masks(void) {
    uint8_t block[64];
    for (int it = 0; it < 20000; it++) {
        int density = rand_int(0, 4);
        for (int i = 0; i < 64; i++)
            block[i] = density == 0 ? 0 : (rand_int(0, 3) < density ? (uint8_t)rand_int(0, 255) : 0);
        uint8_t bits = (uint8_t)rand_int(0, 255), value = block[rand_int(0, 63)];
        uint64_t t = 0, e = 0;
        for (int i = 0; i < 64; i++) {
            t |= (uint64_t)((block[i] & bits) != 0) << i;
            e |= (uint64_t)(block[i] == value) << i;
        }
        if (bsv_test_mask64(block, bits) != t) FAIL("test_mask64 differs (iteration %d)", it);
        if (bsv_eq_mask64(block, value) != e) FAIL("eq_mask64 differs (iteration %d)", it);
        if (bsv_popcount64(t) != bsv_popcount64_scalar(t)) FAIL("popcount differs");
        int32_t rows[64 + 16];
        ptrdiff_t n = bsv_bits_to_rows(t, 128, rows), k = 0;
        for (int i = 0; i < 64; i++)
            if ((t >> i) & 1) {
                if (k >= n || rows[k] != 128 + i) FAIL("bits_to_rows differs (iteration %d)", it);
                k++;
            }
        if (k != n) FAIL("bits_to_rows count differs (iteration %d)", it);
    }
    return 0;
}

static int test_accumulate(void) {
    static const int couts[] = {1, 7, 63, 64, 65, 100, 127, 128, 129, 200, 256, 300, 1024, 1031};
    for (size_t ci = 0; ci < sizeof couts / sizeof couts[0]; ci++) {
        const int cout = couts[ci], cin = 300;
        int8_t *w = malloc((size_t)cin * cout);
        int32_t *acc = malloc(sizeof(int32_t) * cout), *ref = malloc(sizeof(int32_t) * cout);
        int32_t rows[300];
        for (int it = 0; it < 40; it++) {
            const int extreme = it % 4 == 0;
            for (int i = 0; i < cin * cout; i++)
                w[i] = (int8_t)(extreme ? (rand_int(0, 1) ? 127 : -127) : rand_int(-127, 127));
            const int nrows = rand_int(0, 250), shift = rand_int(0, 7), store = rand_int(0, 1);
            const int negate = rand_int(0, 1);
            for (int r = 0; r < nrows; r++) rows[r] = rand_int(0, cin - 1);
            for (int o = 0; o < cout; o++) acc[o] = ref[o] = rand_int(-100000, 100000);
            for (int o = 0; o < cout; o++) {
                int32_t sum = 0;
                for (int r = 0; r < nrows; r++) sum += w[(size_t)rows[r] * cout + o];
                /* at most 250 rows of |w| <= 127: within the int16 budget, as the engine
                   guarantees */
                ref[o] = (store ? 0 : ref[o]) + (int32_t)((uint32_t)(negate ? -sum : sum) << shift);
            }
            bsv_accumulate_rows_i16(acc, w, cout, rows, nrows, shift, store, negate);
            for (int o = 0; o < cout; o++)
                if (acc[o] != ref[o])
                    FAIL("accumulate_rows_i16 cout=%d nrows=%d shift=%d store=%d negate=%d: "
                         "column %d: %d != %d", cout, nrows, shift, store, negate, o, acc[o],
                         ref[o]);
        }
        free(w); free(acc); free(ref);
    }
    return 0;
}

static int test_neuron(void) {
    enum { N = 203 };
    int32_t v[N], vr[N], acc[N], bias[N], theta[N];
    uint8_t s[N];
    for (int it = 0; it < 4000; it++) {
        const int kind_signed = rand_int(0, 3) == 0, bmax = kind_signed ? 1 : rand_int(1, 15);
        const int leak = rand_int(0, 2) ? -1 : rand_int(0, 15), shift = rand_int(0, 4);
        const int thmax = rand_int(0, 1) ? 9 : 5000;
        for (int o = 0; o < N; o++) {
            theta[o] = rand_int(1, thmax);
            acc[o] = rand_int(-20 * thmax, 20 * thmax) >> shift;
            bias[o] = rand_int(-thmax, thmax);
            v[o] = vr[o] = rand_int(-40 * thmax, 40 * thmax);
        }
        bsv_neuron_step(v, acc, shift, bias, theta, leak, kind_signed, bmax, s, N);
        for (int o = 0; o < N; o++) {
            const int64_t cur = (int64_t)acc[o] * (1 << shift) + bias[o];
            int64_t vv = vr[o];
            if (leak < 0) vv += cur;
            else {
                int64_t d = cur - vv;            /* floor division by 2^leak */
                int64_t q = d >= 0 ? d / (1 << leak) : -((-d + (1 << leak) - 1) / (1 << leak));
                vv += q;
            }
            int64_t sp;
            if (kind_signed) sp = vv >= theta[o] ? 1 : (vv <= -theta[o] ? -1 : 0);
            else sp = vv >= theta[o] ? (vv / theta[o] < bmax ? vv / theta[o] : bmax) : 0;
            vv -= sp * theta[o];
            const uint8_t want = (uint8_t)(int8_t)sp;
            if (s[o] != want || v[o] != (int32_t)vv)
                FAIL("neuron_step signed=%d bmax=%d leak=%d channel %d: spike %d/%d, v %d/%lld",
                     kind_signed, bmax, leak, o, s[o], want, v[o], (long long)vv);
        }
    }
    return 0;
}

int main(void) {
    if (test_masks() || test_accumulate() || test_neuron()) return 1;
    printf("ok %s %s\n", bsv_simd_name, bsv_popcount_name);
    return 0;
}
