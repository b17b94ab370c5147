/*
 * bsvit.c - the integer BSViT runtime (docs/integer-spec.md, op-set 1), C99.
 *
 * Schedule. Each layer runs token by token, and for one token over all T steps, so only one
 * token's membranes are live per layer (a neuron's membrane depends on nothing but its own
 * channel and token): the spec's "layer by layer over all steps" order, refined. The only
 * [T][N][...] buffers are the residual stream and the attention's Q, K and V (a token
 * attends to its neighbours at the same step, so those must be complete before attention).
 * The attention neuron and the out-projection are fused per token, and so are fc1 and fc2:
 * proj/fc2 of token n at step t only add into stream[t][n], which nothing of that phase
 * reads again.
 *
 * Synaptic work is additions only: a linear layer walks the bit-planes of its input counts
 * from the top (Horner: acc = 2*acc + plane), adding the weight row of every input whose
 * bit is set. Rows are added two 16-bit lanes per 32-bit addition (add_rows; UXTAB16 on a
 * Cortex-M4/M7). The head is the one place with multiplications: Z[d] * W[d][c],
 * dim * classes of them per image.
 *
 * Signed arithmetic never overflows: every value is bounded by the accumulator bounds the
 * converter proved (docs/integer-spec.md). The synaptic sums run in uint32, whose
 * wrap-around is defined, and are exact because their true values lie within those bounds.
 */
#include "bsvit.h"

#include <limits.h>
#include <string.h>

#ifdef BSVIT_TRACE
#define TRACE(layer, block, t, n, row, count) \
    bsvit_trace_spikes((layer), (block), (t), (n), (const int8_t *)(row), (count))
#else
#define TRACE(layer, block, t, n, row, count) ((void)(block)) /* block: used only here */
#endif

/* A 16-bit lane holds at most this many biased bytes (<= 255 each): 257 * 255 = 65535. */
#define LANE_ROWS_MAX 257u
#define LANE_MASK 0x00FF00FFu
#define BSVIT_REGIONS 12u   /* regions of bsvit_arena_plan */

static const char *const status_text[] = {
#define BSVIT_X_TEXT(name, text) text,
    BSVIT_STATUS_LIST(BSVIT_X_TEXT)
#undef BSVIT_X_TEXT
};

static const char *const layer_text[] = {
#define BSVIT_X_TEXT(name, text) text,
    BSVIT_LAYER_LIST(BSVIT_X_TEXT)
#undef BSVIT_X_TEXT
};

const char *bsvit_status_string(bsvit_status status)
{
    unsigned s = (unsigned)status;
    return s < (unsigned)BSVIT_STATUS_COUNT ? status_text[s] : "unknown status";
}

const char *bsvit_layer_name(unsigned layer)
{
    return layer < (unsigned)BSVIT_LAYER_COUNT ? layer_text[layer] : "unknown layer";
}

size_t bsvit_arena_bytes(const bsvit_model *model)
{
    return model ? (size_t)model->arena_bytes : 0u;
}

/* ------------------------------------------------------------------------- integer helpers */

/* floor(x / 2^k): an arithmetic right shift without relying on >> of a negative value,
 * which C99 leaves implementation-defined (spec op 2). */
static int32_t floor_shift(int32_t x, unsigned k)
{
    return x >= 0 ? x >> k : ~(~x >> k);
}

/* Index of the lowest set bit of a non-zero word. */
static unsigned lowest_bit(uint32_t w)
{
#if (defined(__GNUC__) || defined(__clang__)) && UINT_MAX >= 0xFFFFFFFFu && \
    (!defined(__arm__) || defined(__ARM_FEATURE_CLZ))
    return (unsigned)__builtin_ctz(w);   /* ARMv7-M: RBIT + CLZ; ARMv6-M has no CLZ */
#else
    unsigned n = 0;
    while (!(w & 1u)) {
        w >>= 1;
        n++;
    }
    return n;
#endif
}

static uint32_t words_of(uint32_t bits)
{
    return (bits + 31u) / 32u;
}

static uint32_t padded(uint32_t n)
{
    return 4u * ((n + 3u) / 4u);
}

/* ------------------------------------------------------------------------- synaptic current */

/* Two 16-bit lanes per 32-bit word: even lanes take bytes 0 and 2 of a packed weight word
 * (channels 4k and 4k+2), odd lanes bytes 1 and 3. A lane sums at most LANE_ROWS_MAX
 * biased bytes, so it never carries into its neighbour, and the Cortex-M4's UXTAB16
 * (add two zero-extended bytes to two halfwords, optionally of the word rotated right by
 * 8) computes exactly the portable form. */
#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP && defined(__GNUC__)
#define ADD_EVEN(lanes, w) __asm__("uxtab16 %0, %0, %1" : "+r"(lanes) : "r"(w))
#define ADD_ODD(lanes, w) __asm__("uxtab16 %0, %0, %1, ror #8" : "+r"(lanes) : "r"(w))
#else
#define ADD_EVEN(lanes, w) ((lanes) += (w) & LANE_MASK)
#define ADD_ODD(lanes, w) ((lanes) += ((w) >> 8) & LANE_MASK)
#endif

/* acc = acc * 2^k + lane, on four channels. */
static void unpack_lanes(uint32_t *acc, uint32_t even, uint32_t odd, unsigned k)
{
    acc[0] = (acc[0] << k) + (even & 0xFFFFu);
    acc[1] = (acc[1] << k) + (odd & 0xFFFFu);
    acc[2] = (acc[2] << k) + (even >> 16);
    acc[3] = (acc[3] << k) + (odd >> 16);
}

/* One step of a row schedule (built by linear_current): first, if `spill`, move the lanes
 * into the int32 accumulators (acc = acc * 2^m + lanes, m the doublings since the last
 * spill) and clear them; then, if `doubling`, double the lanes (Horner: the next
 * bit-plane); then add the rows rows_at[start .. start + count). A schedule keeps every
 * lane below 2^16 (a lane never carries into its neighbour), so doubling a packed word
 * doubles both of its lanes. */
typedef struct {
    uint32_t start;
    uint16_t count;
    uint8_t spill;
    uint8_t doubling;
} row_step;

#define STEPS_MAX 16u

/* acc[o] = acc[o] * 2^D + (the schedule's Horner sum of Wt[row][o] + 128) for every
 * padded output o, D the schedule's doublings. Sixteen outputs at a time stay in eight
 * lane registers through the whole schedule; they reach memory only at spills. */
static void add_rows(uint32_t *acc, const uint32_t *weight, uint32_t row_words,
                     const uint32_t *rows_at, const row_step *steps, unsigned n_steps)
{
    uint32_t c = 0, i;
    unsigned s;
    for (; c + 4u <= row_words; c += 4u) {
        uint32_t e0 = 0, e1 = 0, e2 = 0, e3 = 0, o0 = 0, o1 = 0, o2 = 0, o3 = 0;
        const uint32_t *base = weight + c;
        unsigned m = 0;
        for (s = 0; s < n_steps; s++) {
            const uint32_t *row = rows_at + steps[s].start, *end = row + steps[s].count;
            if (steps[s].spill) {
                unpack_lanes(acc + 4u * c, e0, o0, m);
                unpack_lanes(acc + 4u * c + 4u, e1, o1, m);
                unpack_lanes(acc + 4u * c + 8u, e2, o2, m);
                unpack_lanes(acc + 4u * c + 12u, e3, o3, m);
                e0 = e1 = e2 = e3 = o0 = o1 = o2 = o3 = 0;
                m = 0;
            }
            if (steps[s].doubling) {
                e0 += e0;
                e1 += e1;
                e2 += e2;
                e3 += e3;
                o0 += o0;
                o1 += o1;
                o2 += o2;
                o3 += o3;
                m++;
            }
            for (; row < end; row++) {
                const uint32_t *r = base + *row;
                const uint32_t w0 = r[0], w1 = r[1], w2 = r[2], w3 = r[3];
                ADD_EVEN(e0, w0);
                ADD_ODD(o0, w0);
                ADD_EVEN(e1, w1);
                ADD_ODD(o1, w1);
                ADD_EVEN(e2, w2);
                ADD_ODD(o2, w2);
                ADD_EVEN(e3, w3);
                ADD_ODD(o3, w3);
            }
        }
        unpack_lanes(acc + 4u * c, e0, o0, m);
        unpack_lanes(acc + 4u * c + 4u, e1, o1, m);
        unpack_lanes(acc + 4u * c + 8u, e2, o2, m);
        unpack_lanes(acc + 4u * c + 12u, e3, o3, m);
    }
    for (; c < row_words; c++) {
        uint32_t e = 0, o = 0;
        unsigned m = 0;
        for (s = 0; s < n_steps; s++) {
            if (steps[s].spill) {
                unpack_lanes(acc + 4u * c, e, o, m);
                e = o = 0;
                m = 0;
            }
            if (steps[s].doubling) {
                e += e;
                o += o;
                m++;
            }
            for (i = 0; i < steps[s].count; i++) {
                const uint32_t w = weight[c + rows_at[steps[s].start + i]];
                ADD_EVEN(e, w);
                ADD_ODD(o, w);
            }
        }
        unpack_lanes(acc + 4u * c, e, o, m);
    }
}

/* The int32 whose two's complement bits are u (a plain cast is implementation-defined for
 * u > INT32_MAX in C99; compilers turn this into nothing). */
static int32_t as_int32(uint32_t u)
{
    return u <= 0x7FFFFFFFu ? (int32_t)u : (int32_t)(u - 0x80000000u) - 0x7FFFFFFF - 1;
}

/* A neuron layer's input current for one token and step, kept in the form the synaptic
 * sum leaves it: I[o] = as_int32((acc[o] << k) - offset) + bias[o] (no bias if NULL). */
typedef struct {
    const uint32_t *acc;
    const int32_t *bias;
    uint32_t offset;
    unsigned k;
} current;

/* Builds a row schedule step by step, keeping lanes below 2^16 (`bound`, in units of the
 * largest biased byte 255, is what a lane may hold after the rows added so far). */
typedef struct {
    row_step steps[STEPS_MAX];
    unsigned n_steps;
    uint32_t bound;
} schedule;

/* Run the schedule built so far; it ends with a spill, so the next one starts afresh. */
static void schedule_run(schedule *sc, uint32_t *acc, const bsvit_linear *layer,
                         const uint32_t *rows)
{
    if (sc->n_steps)
        add_rows(acc, layer->weight, layer->row_words, rows, sc->steps, sc->n_steps);
    sc->n_steps = 0;
    sc->bound = 0;
}

static void schedule_add(schedule *sc, uint32_t *acc, const bsvit_linear *layer,
                         const uint32_t *rows, uint32_t start, uint32_t count, int doubling)
{
    row_step *st;
    uint32_t bound;
    if (sc->n_steps == STEPS_MAX)
        schedule_run(sc, acc, layer, rows);
    st = &sc->steps[sc->n_steps++];
    bound = (doubling ? 2u * sc->bound : sc->bound) + count;
    st->spill = 0;
    if (bound > LANE_ROWS_MAX) {              /* count <= LANE_ROWS_MAX: spill first */
        st->spill = 1;
        bound = count;
    }
    st->start = start;
    st->count = (uint16_t)count;
    st->doubling = (uint8_t)(doubling != 0);
    sc->bound = bound;
}

/* The synaptic sum of a linear layer for one token and step (spec op 1): returns the
 * current ((sum_j x[j] * Wt[j][o]) << shift) + bias[o], the sums left in `acc`.
 *
 * Additions only: one pass sorts the active inputs into the bit-planes of their counts
 * (plane b of rows: the inputs whose count has bit b set), then the planes are walked
 * from the top (Horner: double, then add the rows of the plane), all in lane registers.
 * A count c costs popcount(c) row additions plus a share of one doubling per plane.
 * The rows carry a +128 offset, so the sum is sum_j x[j] * (Wt[j][o] + 128), and
 * 128 * sum_j x[j] comes off at the end. That runs in uint32 arithmetic, which wraps by
 * definition; the result is exact because the true value (acc << shift) lies within the
 * converter's proven int32 bound.
 * `planes`: bits of the layer's largest input count (spec: 255 for pixels, (2l+1)*Bmax for
 * the stream entering block l, ...): every x[j] < 2^planes, by construction of the
 * network. acc holds 4 * row_words entries, rows planes * cin. */
static current linear_current(uint32_t *acc, const bsvit_linear *layer, const int32_t *bias,
                              const uint8_t *x, unsigned planes, uint32_t *rows)
{
    const uint32_t cin = layer->cin, row_words = layer->row_words;
    uint32_t count[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    uint32_t spikes = 0, j, at = 0;
    unsigned any = 0, plane;
    schedule sc;
    current c;

    for (j = 0; j < cin; j++, at += row_words) {
        unsigned v = x[j];
        if (v) {
            spikes += v;
            any |= v;
            do {                                /* plane b gets this input's row */
                const unsigned b = lowest_bit(v);
                rows[b * cin + count[b]++] = at;
                v &= v - 1u;
            } while (v);
        }
    }
    memset(acc, 0, 4u * row_words * sizeof *acc);
    sc.n_steps = 0;
    sc.bound = 0;
    for (plane = planes; any && plane-- > 0u;) {
        uint32_t start = 0;
        if (any >> plane == 0u)                  /* above the largest count: all zero */
            continue;
        do {                                     /* pieces of at most LANE_ROWS_MAX rows */
            const uint32_t rest = count[plane] - start;
            const uint32_t n = rest < LANE_ROWS_MAX ? rest : LANE_ROWS_MAX;
            schedule_add(&sc, acc, layer, rows, plane * cin + start, n, start == 0);
            start += n;
        } while (start < count[plane]);
    }
    schedule_run(&sc, acc, layer, rows);
    c.acc = acc;
    c.bias = bias;
    c.k = layer->shift;
    c.offset = (128u * spikes) << layer->shift;
    return c;
}

/* ------------------------------------------------------------------------- neurons (op 2) */

#if defined(__GNUC__) || defined(__clang__)
#define ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define ALWAYS_INLINE inline
#endif

/* One neuron step over n channels (spec op 2), specialised by the dispatchers below for
 * the constant flags, so the loop tests neither the leak nor the bias per channel:
 *   charge:  v += I (leaky == 0) or v += floor((I - v) / 2^leak);
 *   emit:    burst: s = min(bmax, v / theta) if v >= theta else 0, as at most bmax
 *            compare-and-subtract steps; signed: +1 if v >= theta, -1 if v <= -theta;
 *   reset:   v -= s * theta (done by the subtraction). */
static ALWAYS_INLINE void neuron_step(int32_t *v, const current *c, const int32_t *theta,
                                      uint32_t n, unsigned bmax, unsigned leak, void *spikes,
                                      const int leaky, const int biased, const int is_signed)
{
    const uint32_t *acc = c->acc;
    const int32_t *bias = c->bias;
    const uint32_t offset = c->offset;
    const unsigned k = c->k;
    uint32_t o;
    for (o = 0; o < n; o++) {
        int32_t i = as_int32((acc[o] << k) - offset), m = v[o];
        const int32_t th = theta[o];
        if (biased)
            i += bias[o];
        m = leaky ? m + floor_shift(i - m, leak) : m + i;
        if (is_signed) {
            int8_t s = 0;
            if (m >= th) {
                m -= th;
                s = 1;
            } else if (m <= -th) {
                m += th;
                s = -1;
            }
            ((int8_t *)spikes)[o] = s;
        } else {
            unsigned s = 0;
            if (m >= th) {                /* the rare case first; bmax >= 1 (checked) */
                do {
                    m -= th;
                    s++;
                } while (s < bmax && m >= th);
            }
            ((uint8_t *)spikes)[o] = (uint8_t)s;
        }
        v[o] = m;
    }
}

/* Burst neuron (bmax 1: binary) on n channels; spikes uint8 counts. */
static void neuron_burst(int32_t *v, const current *c, const int32_t *theta, uint32_t n,
                         unsigned bmax, unsigned leak, uint8_t *spikes)
{
    if (leak == BSVIT_LEAK_NONE) {
        if (c->bias)
            neuron_step(v, c, theta, n, bmax, 0u, spikes, 0, 1, 0);
        else
            neuron_step(v, c, theta, n, bmax, 0u, spikes, 0, 0, 0);
    } else {
        if (c->bias)
            neuron_step(v, c, theta, n, bmax, leak, spikes, 1, 1, 0);
        else
            neuron_step(v, c, theta, n, bmax, leak, spikes, 1, 0, 0);
    }
}

/* Signed neuron on n channels; spikes -1/0/+1. (Only linear layers feed one: biased.) */
static void neuron_signed(int32_t *v, const current *c, const int32_t *theta, uint32_t n,
                          unsigned leak, int8_t *spikes)
{
    if (leak == BSVIT_LEAK_NONE)
        neuron_step(v, c, theta, n, 1u, 0u, spikes, 0, 1, 1);
    else
        neuron_step(v, c, theta, n, 1u, leak, spikes, 1, 1, 1);
}

static void pack_bits(uint32_t *words, const uint8_t *spikes, uint32_t n)
{
    uint32_t e;
    memset(words, 0, words_of(n) * sizeof *words);
    for (e = 0; e < n; e++)
        if (spikes[e])
            words[e >> 5] |= 1u << (e & 31u);
}

static void pack_signed(uint32_t *pos, uint32_t *neg, const int8_t *spikes, uint32_t n)
{
    uint32_t e;
    memset(pos, 0, words_of(n) * sizeof *pos);
    memset(neg, 0, words_of(n) * sizeof *neg);
    for (e = 0; e < n; e++) {
        if (spikes[e] > 0)
            pos[e >> 5] |= 1u << (e & 31u);
        else if (spikes[e] < 0)
            neg[e >> 5] |= 1u << (e & 31u);
    }
}

static void add_counts(uint8_t *stream, const uint8_t *spikes, uint32_t n)
{
    uint32_t e;
    for (e = 0; e < n; e++)       /* <= (2L+1)*Bmax <= 255: checked by bsvit_check_model */
        stream[e] = (uint8_t)(stream[e] + spikes[e]);
}

/* ------------------------------------------------------------------------- the arena */

typedef struct {
    uint8_t *stream;      /* [T][N][dim] */
    uint8_t *keys;        /* [T][N][dim] */
    uint32_t *queries;    /* [T][N][words] */
    uint32_t *values_pos; /* [T][N][words] */
    uint32_t *values_neg; /* [T][N][words] */
    uint32_t *current;
    int32_t *membrane_a;
    int32_t *membrane_b;
    uint8_t *spikes;
    uint32_t *rows;       /* [planes * cin] one sum's rows, sorted into bit-planes */
    uint8_t *patch;
    int32_t *sums;
} buffers;

static unsigned bit_length(uint32_t v)
{
    unsigned n = 0;
    while (v) {
        n++;
        v >>= 1;
    }
    return n;
}

/* a * b, or UINT32_MAX when it might not fit in 32 bits (then it is >= 2^31 anyway, which
 * bsvit-firmware never emits). No division, no 64-bit multiply: nothing from libgcc even
 * on an ARMv6-M core. */
static uint32_t mul_sat(uint32_t a, uint32_t b)
{
    return bit_length(a) + bit_length(b) <= 32u ? a * b : UINT32_MAX;
}

/* Bytes each region must have for this model (the Python planner computes the same);
 * a size that does not fit in 32 bits saturates, and no arena plan can then satisfy it. */
/* Bit-planes of the largest count entering a linear layer (the spec's input bounds):
 * pixels 255; the stream entering block l (2l+1)*Bmax, after its attention (2l+2)*Bmax;
 * a burst neuron's output Bmax. */
static unsigned stream_planes(const bsvit_model *m, unsigned spike_sets)
{
    return bit_length((uint32_t)spike_sets * m->burst_max);
}

#define PIXEL_PLANES 8u

/* Entries the bit-plane row lists need: the most planes * inputs of any linear layer. */
static uint32_t rows_needed(const bsvit_model *m)
{
    uint32_t need = PIXEL_PLANES * m->patch_dim;
    if (m->depth > 0) {
        const unsigned burst = stream_planes(m, 1u), last = 2u * m->depth - 1u;
        uint32_t n = m->dim * stream_planes(m, last);     /* q, k, v of the last block */
        need = n > need ? n : need;
        n = m->dim * stream_planes(m, last + 1u);     /* fc1 of the last block */
        need = n > need ? n : need;
        n = (m->dim > m->mlp_dim ? m->dim : m->mlp_dim) * burst;   /* proj, fc2 */
        need = n > need ? n : need;
    }
    return need;
}

static void region_needs(const bsvit_model *m, uint32_t need[BSVIT_REGIONS])
{
    const uint32_t d = m->dim, dp = padded(m->dim), hp = padded(m->mlp_dim);
    const uint32_t cells = mul_sat(mul_sat(m->timesteps, m->tokens), d);
    const uint32_t bits = mul_sat(4u, mul_sat(mul_sat(m->timesteps, m->tokens),
                                              words_of(m->dim)));
    const int blocks = m->depth > 0;
    uint32_t widest = dp;
    if (blocks)
        widest = hp > dp ? hp : dp;
    need[0] = cells;                                   /* stream */
    need[1] = blocks ? cells : 0u;                     /* keys */
    need[2] = blocks ? bits : 0u;                      /* queries */
    need[3] = need[2];                                 /* values_pos */
    need[4] = need[2];                                 /* values_neg */
    need[5] = 4u * widest;                             /* current */
    need[6] = 4u * widest;                             /* membrane_a */
    need[7] = blocks ? 4u * dp : 0u;                   /* membrane_b */
    need[8] = blocks ? widest : 0u;                    /* spikes */
    need[9] = 4u * rows_needed(m);                     /* active: bit-plane rows */
    need[10] = m->patch_dim;                           /* patch */
    need[11] = 4u * d;                                 /* sums */
}

static const bsvit_region *plan_region(const bsvit_arena_plan *p, unsigned i)
{
    const bsvit_region *r[BSVIT_REGIONS];
    r[0] = &p->stream;
    r[1] = &p->keys;
    r[2] = &p->queries;
    r[3] = &p->values_pos;
    r[4] = &p->values_neg;
    r[5] = &p->current;
    r[6] = &p->membrane_a;
    r[7] = &p->membrane_b;
    r[8] = &p->spikes;
    r[9] = &p->active;
    r[10] = &p->patch;
    r[11] = &p->sums;
    return r[i];
}

static void carve(const bsvit_model *m, uint8_t *base, buffers *b)
{
    const bsvit_arena_plan *p = &m->plan;
    /* Regions are BSVIT_ARENA_ALIGN-aligned offsets into an aligned arena (checked), so the
     * casts below produce correctly aligned pointers. */
    b->stream = base + p->stream.offset;
    b->keys = base + p->keys.offset;
    b->queries = (uint32_t *)(void *)(base + p->queries.offset);
    b->values_pos = (uint32_t *)(void *)(base + p->values_pos.offset);
    b->values_neg = (uint32_t *)(void *)(base + p->values_neg.offset);
    b->current = (uint32_t *)(void *)(base + p->current.offset);
    b->membrane_a = (int32_t *)(void *)(base + p->membrane_a.offset);
    b->membrane_b = (int32_t *)(void *)(base + p->membrane_b.offset);
    b->spikes = base + p->spikes.offset;
    b->rows = (uint32_t *)(void *)(base + p->active.offset);
    b->patch = base + p->patch.offset;
    b->sums = (int32_t *)(void *)(base + p->sums.offset);
}

/* ------------------------------------------------------------------------- validation */

static int thresholds_ok(const int32_t *theta, uint32_t n)
{
    uint32_t o;
    if (!theta)
        return 0;
    for (o = 0; o < n; o++)
        if (theta[o] < 1)
            return 0;
    return 1;
}

static int linear_ok(const bsvit_linear *l, uint32_t cin, uint32_t cout)
{
    return l->weight && l->bias && l->cin == cin && l->cout == cout &&
           l->row_words == (cout + 3u) / 4u && l->shift <= 16u && cin >= 1u && cout >= 1u &&
           thresholds_ok(l->threshold, cout);
}

bsvit_status bsvit_check_model(const bsvit_model *m)
{
    uint32_t need[BSVIT_REGIONS];
    unsigned i;
    if (!m)
        return BSVIT_E_NULL_ARGUMENT;
    if (m->magic != BSVIT_MODEL_MAGIC || m->abi_version != BSVIT_ABI_VERSION ||
        m->opset != BSVIT_OPSET)
        return BSVIT_E_BAD_MODEL;
    if (!m->height || !m->width || !m->in_chans || !m->patch_size || !m->dim || !m->heads ||
        !m->classes || !m->timesteps || m->timesteps > 64u || !m->burst_max ||
        m->burst_max > 15u || m->depth > 64u || (m->depth && !m->mlp_dim))
        return BSVIT_E_BAD_MODEL;
    if ((uint32_t)m->grid_h * m->patch_size != m->height ||
        (uint32_t)m->grid_w * m->patch_size != m->width ||
        (uint32_t)m->grid_h * m->grid_w != m->tokens ||
        (uint32_t)m->patch_size * m->patch_size * m->in_chans != m->patch_dim ||
        (uint32_t)m->heads * m->head_dim != m->dim)
        return BSVIT_E_BAD_MODEL;
    if ((m->window != 0u && m->window % 2u == 0u) ||
        (m->leak_shift > 15u && m->leak_shift != BSVIT_LEAK_NONE) ||
        (2u * m->depth + 1u) * m->burst_max > 255u)
        return BSVIT_E_BAD_MODEL;
    if (!linear_ok(&m->embed, m->patch_dim, m->dim) || !m->head_weight || !m->head_bias ||
        (m->depth && !m->blocks))
        return BSVIT_E_BAD_MODEL;
    for (i = 0; i < m->depth; i++) {
        const bsvit_block *b = &m->blocks[i];
        if (!linear_ok(&b->q, m->dim, m->dim) || !linear_ok(&b->k, m->dim, m->dim) ||
            !linear_ok(&b->v, m->dim, m->dim) || !linear_ok(&b->proj, m->dim, m->dim) ||
            !linear_ok(&b->fc1, m->dim, m->mlp_dim) || !linear_ok(&b->fc2, m->mlp_dim, m->dim) ||
            !thresholds_ok(b->attn_threshold, m->dim))
            return BSVIT_E_BAD_MODEL;
    }
    if (m->arena_bytes % BSVIT_ARENA_ALIGN)
        return BSVIT_E_BAD_MODEL;
    region_needs(m, need);
    for (i = 0; i < BSVIT_REGIONS; i++) {
        const bsvit_region *r = plan_region(&m->plan, i);
        if (r->offset % BSVIT_ARENA_ALIGN || r->bytes < need[i] ||
            r->offset > m->arena_bytes || r->bytes > m->arena_bytes - r->offset)
            return BSVIT_E_BAD_MODEL;
    }
    return BSVIT_OK;
}

/* ------------------------------------------------------------------------- layers */

/* Patch embedding (computed once per token, re-injected at every step) and its neuron. */
static void run_embed(const bsvit_model *m, const uint8_t *image, const buffers *b)
{
    const uint32_t p = m->patch_size, c = m->in_chans, dim = m->dim, tokens = m->tokens;
    uint32_t gy, gx, t;
    for (gy = 0; gy < m->grid_h; gy++) {
        for (gx = 0; gx < m->grid_w; gx++) {
            const uint32_t n = gy * m->grid_w + gx;
            uint32_t dy, k = 0;
            for (dy = 0; dy < p; dy++) {       /* k = (dy * p + dx) * C + c */
                const uint8_t *row = image + ((gy * p + dy) * m->width + gx * p) * c;
                memcpy(b->patch + k, row, p * c);
                k += p * c;
            }
            const current i = linear_current(b->current, &m->embed, m->embed.bias + n * dim,
                                             b->patch, PIXEL_PLANES, b->rows);
            memset(b->membrane_a, 0, dim * sizeof *b->membrane_a);
            for (t = 0; t < m->timesteps; t++) {
                uint8_t *out = b->stream + (t * tokens + n) * dim;
                neuron_burst(b->membrane_a, &i, m->embed.threshold, dim, m->burst_max,
                             m->leak_shift, out);
                TRACE(BSVIT_LAYER_EMBED, 0u, t, n, out, dim);
            }
        }
    }
}

/* Q, K and V of every token over all steps, from the stream. */
static void run_qkv(const bsvit_model *m, const bsvit_block *blk, unsigned l, const buffers *b)
{
    const uint32_t dim = m->dim, tokens = m->tokens, words = words_of(dim);
    const unsigned planes = stream_planes(m, 2u * l + 1u);
    uint32_t n, t;
    for (n = 0; n < tokens; n++) {
        memset(b->membrane_a, 0, dim * sizeof *b->membrane_a);
        for (t = 0; t < m->timesteps; t++) {
            const uint32_t at = t * tokens + n;
            const current i = linear_current(b->current, &blk->q, blk->q.bias,
                                             b->stream + at * dim, planes, b->rows);
            neuron_burst(b->membrane_a, &i, blk->q.threshold, dim, 1u, m->leak_shift,
                         b->spikes);
            TRACE(BSVIT_LAYER_Q, l, t, n, b->spikes, dim);
            pack_bits(b->queries + at * words, b->spikes, dim);
        }
        memset(b->membrane_a, 0, dim * sizeof *b->membrane_a);
        for (t = 0; t < m->timesteps; t++) {
            const uint32_t at = t * tokens + n;
            const current i = linear_current(b->current, &blk->k, blk->k.bias,
                                             b->stream + at * dim, planes, b->rows);
            neuron_burst(b->membrane_a, &i, blk->k.threshold, dim, m->burst_max,
                         m->leak_shift, b->keys + at * dim);
            TRACE(BSVIT_LAYER_K, l, t, n, b->keys + at * dim, dim);
        }
        memset(b->membrane_a, 0, dim * sizeof *b->membrane_a);
        for (t = 0; t < m->timesteps; t++) {
            const uint32_t at = t * tokens + n;
            int8_t *signed_spikes = (int8_t *)(void *)b->spikes;
            const current i = linear_current(b->current, &blk->v, blk->v.bias,
                                             b->stream + at * dim, planes, b->rows);
            neuron_signed(b->membrane_a, &i, blk->v.threshold, dim, m->leak_shift,
                          signed_spikes);
            TRACE(BSVIT_LAYER_V, l, t, n, signed_spikes, dim);
            pack_signed(b->values_pos + at * words, b->values_neg + at * words, signed_spikes,
                        dim);
        }
    }
}

/* The bits [lo, hi) of word w that belong to channels [e0, e1). */
static uint32_t head_mask(uint32_t w, uint32_t e0, uint32_t e1)
{
    const uint32_t lo = e0 > 32u * w ? e0 - 32u * w : 0u;
    const uint32_t hi = e1 < 32u * w + 32u ? e1 - 32u * w : 32u;
    const uint32_t below_hi = hi == 32u ? 0xFFFFFFFFu : (1u << hi) - 1u;
    return below_hi & ~((1u << lo) - 1u);
}

/* O[e] for token (gy, gx) at step t (spec op 3): for each neighbour j and head h,
 * S = sum of K[j][e] over the set bits e of Q[i] in h; then O[e] += S where V[j][e] = +1
 * and O[e] -= S where V[j][e] = -1. Addition and subtraction only. */
static void attention_current(const bsvit_model *m, const buffers *b, uint32_t t,
                              uint32_t gy, uint32_t gx)
{
    const uint32_t dim = m->dim, tokens = m->tokens, words = words_of(dim), hd = m->head_dim;
    const uint32_t r = m->window ? (m->window - 1u) / 2u : (uint32_t)UINT16_MAX;
    const uint32_t y0 = gy > r ? gy - r : 0u, x0 = gx > r ? gx - r : 0u;
    const uint32_t y1 = gy + r < m->grid_h ? gy + r + 1u : m->grid_h;
    const uint32_t x1 = gx + r < m->grid_w ? gx + r + 1u : m->grid_w;
    const uint32_t *q = b->queries + (t * tokens + gy * m->grid_w + gx) * words;
    int32_t *out = (int32_t *)(void *)b->current;
    uint32_t y, x, w, e0;

    memset(out, 0, dim * sizeof *out);
    for (y = y0; y < y1; y++) {
        for (x = x0; x < x1; x++) {
            const uint32_t at = t * tokens + y * m->grid_w + x;
            const uint8_t *key = b->keys + at * dim;
            const uint32_t *vp = b->values_pos + at * words, *vn = b->values_neg + at * words;
            for (e0 = 0; e0 < dim; e0 += hd) {             /* one head: [e0, e0 + hd) */
                const uint32_t e1 = e0 + hd, w_end = (e1 + 31u) / 32u;
                int32_t score = 0;
                for (w = e0 / 32u; w < w_end; w++) {
                    uint32_t bits = q[w] & head_mask(w, e0, e1);
                    while (bits) {
                        score += key[32u * w + lowest_bit(bits)];
                        bits &= bits - 1u;
                    }
                }
                if (!score)
                    continue;
                for (w = e0 / 32u; w < w_end; w++) {
                    const uint32_t mask = head_mask(w, e0, e1);
                    uint32_t pos = vp[w] & mask, neg = vn[w] & mask;
                    while (pos) {
                        out[32u * w + lowest_bit(pos)] += score;
                        pos &= pos - 1u;
                    }
                    while (neg) {
                        out[32u * w + lowest_bit(neg)] -= score;
                        neg &= neg - 1u;
                    }
                }
            }
        }
    }
}

/* Attention neuron and out-projection, per token over all steps; stream += proj spikes. */
static void run_attention(const bsvit_model *m, const bsvit_block *blk, unsigned l,
                          const buffers *b)
{
    const uint32_t dim = m->dim, tokens = m->tokens;
    uint32_t gy, gx, t;
    for (gy = 0; gy < m->grid_h; gy++) {
        for (gx = 0; gx < m->grid_w; gx++) {
            const uint32_t n = gy * m->grid_w + gx;
            memset(b->membrane_a, 0, dim * sizeof *b->membrane_a);
            memset(b->membrane_b, 0, dim * sizeof *b->membrane_b);
            for (t = 0; t < m->timesteps; t++) {
                uint8_t *stream = b->stream + (t * tokens + n) * dim;
                current i;
                attention_current(m, b, t, gy, gx);
                i.acc = b->current;            /* O as two's complement bits, no bias */
                i.bias = NULL;
                i.offset = 0;
                i.k = 0;
                neuron_burst(b->membrane_a, &i, blk->attn_threshold, dim, m->burst_max,
                             m->leak_shift, b->spikes);
                TRACE(BSVIT_LAYER_ATTN, l, t, n, b->spikes, dim);
                i = linear_current(b->current, &blk->proj, blk->proj.bias, b->spikes,
                                   stream_planes(m, 1u), b->rows);
                neuron_burst(b->membrane_b, &i, blk->proj.threshold, dim, m->burst_max,
                             m->leak_shift, b->spikes);
                TRACE(BSVIT_LAYER_PROJ, l, t, n, b->spikes, dim);
                add_counts(stream, b->spikes, dim);
            }
        }
    }
}

/* fc1 and fc2 per token over all steps; stream += fc2 spikes. */
static void run_mlp(const bsvit_model *m, const bsvit_block *blk, unsigned l, const buffers *b)
{
    const uint32_t dim = m->dim, hidden = m->mlp_dim, tokens = m->tokens;
    uint32_t n, t;
    for (n = 0; n < tokens; n++) {
        memset(b->membrane_a, 0, hidden * sizeof *b->membrane_a);
        memset(b->membrane_b, 0, dim * sizeof *b->membrane_b);
        for (t = 0; t < m->timesteps; t++) {
            uint8_t *stream = b->stream + (t * tokens + n) * dim;
            current i = linear_current(b->current, &blk->fc1, blk->fc1.bias, stream,
                                       stream_planes(m, 2u * l + 2u), b->rows);
            neuron_burst(b->membrane_a, &i, blk->fc1.threshold, hidden, m->burst_max,
                         m->leak_shift, b->spikes);
            TRACE(BSVIT_LAYER_FC1, l, t, n, b->spikes, hidden);
            i = linear_current(b->current, &blk->fc2, blk->fc2.bias, b->spikes,
                               stream_planes(m, 1u), b->rows);
            neuron_burst(b->membrane_b, &i, blk->fc2.threshold, dim, m->burst_max,
                         m->leak_shift, b->spikes);
            TRACE(BSVIT_LAYER_FC2, l, t, n, b->spikes, dim);
            add_counts(stream, b->spikes, dim);
        }
    }
}

/* Z[d] = sum over t, n of the stream; logits[c] = sum_d Z[d] * Wh[d][c] + bh[c] (spec op 5). */
static void run_head(const bsvit_model *m, const buffers *b, int32_t *logits)
{
    const uint32_t dim = m->dim, classes = m->classes;
    const uint32_t rows = (uint32_t)m->timesteps * m->tokens;
    uint32_t i, d, c;
    memset(b->sums, 0, dim * sizeof *b->sums);
    for (i = 0; i < rows; i++) {
        const uint8_t *row = b->stream + i * dim;
        for (d = 0; d < dim; d++)
            b->sums[d] += row[d];
    }
    for (c = 0; c < classes; c++) {
        int32_t acc = m->head_bias[c];
        for (d = 0; d < dim; d++)
            acc += b->sums[d] * (int32_t)m->head_weight[d * classes + c];
        logits[c] = acc;
    }
}

bsvit_status bsvit_infer(const bsvit_model *model, const uint8_t *image, int32_t *logits,
                         void *arena, size_t arena_bytes)
{
    buffers b;
    bsvit_status status;
    unsigned l;
    if (!model || !image || !logits || !arena)
        return BSVIT_E_NULL_ARGUMENT;
    status = bsvit_check_model(model);
    if (status != BSVIT_OK)
        return status;
    if (arena_bytes < model->arena_bytes)
        return BSVIT_E_ARENA_TOO_SMALL;
    if ((uintptr_t)arena % BSVIT_ARENA_ALIGN)
        return BSVIT_E_ARENA_MISALIGNED;
    carve(model, (uint8_t *)arena, &b);
    run_embed(model, image, &b);
    for (l = 0; l < model->depth; l++) {
        const bsvit_block *blk = &model->blocks[l];
        run_qkv(model, blk, l, &b);
        run_attention(model, blk, l, &b);
        run_mlp(model, blk, l, &b);
    }
    run_head(model, &b, logits);
    return BSVIT_OK;
}
