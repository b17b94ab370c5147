/*
 * bsvit.h - portable C99 integer runtime for Burst Spiking Vision Transformers (op-set 1).
 *
 * The arithmetic is docs/integer-spec.md, bit for bit as the NumPy oracle
 * (bsvit_int/oracle.py). The runtime never allocates, never uses float and calls nothing
 * from the C library but memset. The caller passes an arena of at least
 * `bsvit_arena_bytes(model)` bytes (a constant planned offline, `<NAME>_ARENA_BYTES` in the
 * generated header); weights stay where they are (flash), never copied.
 *
 * A model is a `const bsvit_model` written by `bsvit-firmware model.bsi OUTDIR`.
 *
 *     static uint32_t arena[(DIGITS_ARENA_BYTES + 3) / 4];
 *     int32_t logits[DIGITS_NUM_CLASSES];
 *     bsvit_status st = bsvit_infer(&digits_model, image, logits, arena, sizeof arena);
 *     if (st != BSVIT_OK) puts(bsvit_status_string(st));
 */
#ifndef BSVIT_H
#define BSVIT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BSVIT_ABI_VERSION 1u          /* layout of the structs below */
#define BSVIT_OPSET 1u                /* docs/integer-spec.md op-set */
#define BSVIT_MODEL_MAGIC 0x54495642u /* "BVIT" read as a little-endian word */
#define BSVIT_ARENA_ALIGN 4u          /* the arena holds int32 and uint32 buffers */
#define BSVIT_LEAK_NONE 255u          /* leak_shift of an integrate-and-fire model */

#if defined(__GNUC__) || defined(__clang__)
#define BSVIT_ALIGNED(n) __attribute__((aligned(n)))
#else
#define BSVIT_ALIGNED(n)
#endif

/* The one list of status codes: the enum and bsvit_status_string() are generated from it. */
#define BSVIT_STATUS_LIST(X)                                                                  \
    X(BSVIT_OK, "ok")                                                                         \
    X(BSVIT_E_NULL_ARGUMENT, "a required pointer argument is NULL")                           \
    X(BSVIT_E_BAD_MODEL, "the model failed validation (magic, ABI version, op-set, shapes, "  \
                         "thresholds or arena plan)")                                         \
    X(BSVIT_E_ARENA_TOO_SMALL, "the arena is smaller than the model's planned arena_bytes")   \
    X(BSVIT_E_ARENA_MISALIGNED, "the arena is not aligned to BSVIT_ARENA_ALIGN (4) bytes")

typedef enum {
#define BSVIT_X_ENUM(name, text) name,
    BSVIT_STATUS_LIST(BSVIT_X_ENUM)
#undef BSVIT_X_ENUM
    BSVIT_STATUS_COUNT
} bsvit_status;

/* Neuron layers, in execution order inside a block; names as in the spec's tensor table. */
#define BSVIT_LAYER_LIST(X)          \
    X(BSVIT_LAYER_EMBED, "embed")    \
    X(BSVIT_LAYER_Q, "attn.q")       \
    X(BSVIT_LAYER_K, "attn.k")       \
    X(BSVIT_LAYER_V, "attn.v")       \
    X(BSVIT_LAYER_ATTN, "attn")      \
    X(BSVIT_LAYER_PROJ, "attn.proj") \
    X(BSVIT_LAYER_FC1, "mlp.fc1")    \
    X(BSVIT_LAYER_FC2, "mlp.fc2")

typedef enum {
#define BSVIT_X_ENUM(name, text) name,
    BSVIT_LAYER_LIST(BSVIT_X_ENUM)
#undef BSVIT_X_ENUM
    BSVIT_LAYER_COUNT
} bsvit_layer_id;

/*
 * One linear layer feeding a neuron layer: I[o] = ((sum_j x[j] * Wt[j][o]) << shift) + bias[o].
 * Weights are input-major (the row of input j is contiguous) and packed four to a word with
 * a +128 offset, so one active input adds a row with 32-bit additions on two 16-bit lanes
 * (see add_rows in bsvit.c): byte i (bits 8i..8i+7) of word k of row j is Wt[j][4k+i] + 128;
 * padding channels hold 128 (weight 0). The packing is defined by the word's value, not by
 * its bytes in memory, so it is the same on any endianness.
 */
typedef struct {
    const uint32_t *weight;    /* [cin][row_words] packed int8 weights */
    const int32_t *bias;       /* [cout]; [tokens][cout] for the embedding */
    const int32_t *threshold;  /* [cout], each >= 1 */
    uint16_t cin;              /* inputs */
    uint16_t cout;             /* outputs */
    uint16_t row_words;        /* (cout + 3) / 4 */
    uint8_t shift;             /* m, 0..16 */
} bsvit_linear;

typedef struct {
    bsvit_linear q, k, v;          /* binary, burst and signed neurons on the stream */
    const int32_t *attn_threshold; /* [dim] burst neuron on the attention output O */
    bsvit_linear proj;             /* [dim] -> [dim], added to the stream */
    bsvit_linear fc1;              /* [dim] -> [mlp_dim] */
    bsvit_linear fc2;              /* [mlp_dim] -> [dim], added to the stream */
} bsvit_block;

/* A slice of the caller's arena: [offset, offset + bytes). */
typedef struct {
    uint32_t offset;
    uint32_t bytes;
} bsvit_region;

/* The offline memory plan (bsvit_int/firmware.py); bsvit_check_model() verifies that each
 * region lies inside arena_bytes, is aligned and is at least as large as the runtime needs. */
typedef struct {
    bsvit_region stream;     /* uint8  [T][N][dim]     residual stream spike counts */
    bsvit_region keys;       /* uint8  [T][N][dim]     burst K */
    bsvit_region queries;    /* uint32 [T][N][words]   binary Q bitsets (words = (dim+31)/32) */
    bsvit_region values_pos; /* uint32 [T][N][words]   V == +1 bitsets */
    bsvit_region values_neg; /* uint32 [T][N][words]   V == -1 bitsets */
    bsvit_region current;    /* uint32 [max padded out] one token's synaptic sums (or O) */
    bsvit_region membrane_a; /* int32  [max padded out] one token's membranes */
    bsvit_region membrane_b; /* int32  [padded dim]     a second layer's membranes */
    bsvit_region spikes;     /* uint8  [max padded out] one token's spike row */
    bsvit_region active;     /* uint32 [max planes*cin]  rows to add, by bit-plane */
    bsvit_region patch;      /* uint8  [patch_dim]      one patch's pixels */
    bsvit_region sums;       /* int32  [dim]            Z = sum over t, n of the stream */
} bsvit_arena_plan;

typedef struct {
    uint32_t magic;        /* BSVIT_MODEL_MAGIC */
    uint32_t abi_version;  /* BSVIT_ABI_VERSION */
    uint32_t opset;        /* BSVIT_OPSET */
    uint16_t height, width, in_chans, patch_size;
    uint16_t grid_h, grid_w, tokens, patch_dim;
    uint16_t dim, heads, head_dim, mlp_dim, classes;
    uint16_t window;       /* odd w: w x w neighbourhood; 0: global attention */
    uint8_t depth;         /* blocks, 0..64 */
    uint8_t timesteps;     /* T, 1..64 */
    uint8_t burst_max;     /* Bmax, 1..15 */
    uint8_t leak_shift;    /* k, 0..15, or BSVIT_LEAK_NONE */
    bsvit_linear embed;    /* [patch_dim] pixels -> [dim]; bias [tokens][dim] */
    const bsvit_block *blocks;  /* [depth] */
    const int8_t *head_weight;  /* [dim][classes] */
    const int32_t *head_bias;   /* [classes] */
    uint32_t arena_bytes;       /* planned arena size */
    bsvit_arena_plan plan;
} bsvit_model;

/* Human-readable text of a status (never NULL). */
const char *bsvit_status_string(bsvit_status status);

/* Name of a layer id in the spec's vocabulary ("embed", "attn.q", ...; never NULL). */
const char *bsvit_layer_name(unsigned layer);

/* Bytes of arena `bsvit_infer` needs for this model (0 for a NULL model). */
size_t bsvit_arena_bytes(const bsvit_model *model);

/* Cheap structural validation: BSVIT_OK or BSVIT_E_BAD_MODEL / BSVIT_E_NULL_ARGUMENT. */
bsvit_status bsvit_check_model(const bsvit_model *model);

/*
 * Run the model on one image.
 * image:  uint8 [height][width][in_chans] raw pixels.
 * logits: int32 [classes], written only on BSVIT_OK.
 * arena:  at least bsvit_arena_bytes(model) bytes, BSVIT_ARENA_ALIGN-aligned; the runtime
 *         writes inside [arena, arena + bsvit_arena_bytes(model)) and nowhere else, and
 *         writes nothing at all unless it returns BSVIT_OK.
 */
bsvit_status bsvit_infer(const bsvit_model *model, const uint8_t *image, int32_t *logits,
                         void *arena, size_t arena_bytes);

#ifdef BSVIT_TRACE
/* Provided by the application when the runtime is built with -DBSVIT_TRACE: receives every
 * neuron layer's spikes for one (block, step, token); signed spikes are -1/0/+1. */
void bsvit_trace_spikes(unsigned layer, unsigned block, unsigned step, unsigned token,
                        const int8_t *spikes, unsigned count);
#endif

#ifdef __cplusplus
}
#endif

#endif /* BSVIT_H */
