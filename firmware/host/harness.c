/*
 * harness.c - runs a generated model on the host, for tests (tests/test_firmware*.py).
 *
 * Build (the model's .c defines `const bsvit_model NAME_model`):
 *     cc -std=c99 -DBSVIT_MODEL=NAME_model harness.c bsvit.c NAME_model.c -o harness
 * Run:
 *     harness IMAGES.bin [--arena-bytes N] [--offset K] [--guard]
 * IMAGES.bin holds raw uint8 images [count][height][width][in_chans] back to back.
 * For each image it prints one line "L <index> <v0> <v1> ..." (the int32 logits).
 * With -DBSVIT_TRACE it also prints "S <layer> <block> <step> <token> <s0> <s1> ..." for
 * every neuron layer's spikes.
 *
 * --arena-bytes N   give bsvit_infer an N-byte arena instead of bsvit_arena_bytes(model)
 * --offset K        start the arena K bytes into its allocation (K = 1..3: misaligned)
 * --guard           put the arena between 64-byte guard zones filled with 0xA5 and check,
 *                   after every call, that neither guard (nor, on an error, the arena) was
 *                   written.
 * Exit status: 0 ok; 10 + status if bsvit_infer returned an error (message on stderr);
 * 2 usage or I/O error; 3 a guard (or the arena of a failed call) was written.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bsvit.h"

#ifndef BSVIT_MODEL
#error "define BSVIT_MODEL as the generated model's name (e.g. -DBSVIT_MODEL=digits_model)"
#endif
extern const bsvit_model BSVIT_MODEL;

#define GUARD 64u
#define FILL 0xA5u

#ifdef BSVIT_TRACE
void bsvit_trace_spikes(unsigned layer, unsigned block, unsigned step, unsigned token,
                        const int8_t *spikes, unsigned count)
{
    unsigned i;
    printf("S %s %u %u %u", bsvit_layer_name(layer), block, step, token);
    for (i = 0; i < count; i++)
        printf(" %d", (int)spikes[i]);
    putchar('\n');
}
#endif

static int untouched(const unsigned char *p, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        if (p[i] != FILL)
            return 0;
    return 1;
}

int main(int argc, char **argv)
{
    const bsvit_model *m = &BSVIT_MODEL;
    const char *path = NULL;
    size_t arena_bytes = bsvit_arena_bytes(m), offset = 0, input_bytes, count, i, c;
    int guard = 0, status = 0, a;
    unsigned char *images, *block, *arena;
    int32_t *logits;
    long size;
    FILE *f;

    for (a = 1; a < argc; a++) {
        if (!strcmp(argv[a], "--arena-bytes") && a + 1 < argc)
            arena_bytes = (size_t)strtoul(argv[++a], NULL, 10);
        else if (!strcmp(argv[a], "--offset") && a + 1 < argc)
            offset = (size_t)strtoul(argv[++a], NULL, 10) % 16u;
        else if (!strcmp(argv[a], "--guard"))
            guard = 1;
        else if (!path && argv[a][0] != '-')
            path = argv[a];
        else {
            fprintf(stderr, "usage: %s IMAGES.bin [--arena-bytes N] [--offset K] [--guard]\n",
                    argv[0]);
            return 2;
        }
    }
    if (!path) {
        fprintf(stderr, "usage: %s IMAGES.bin [--arena-bytes N] [--offset K] [--guard]\n",
                argv[0]);
        return 2;
    }
    input_bytes = (size_t)m->height * m->width * m->in_chans;
    f = fopen(path, "rb");
    if (!f || fseek(f, 0, SEEK_END) || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET)) {
        fprintf(stderr, "%s: cannot read\n", path);
        return 2;
    }
    if ((size_t)size % input_bytes) {
        fprintf(stderr, "%s: %ld bytes is not a whole number of %zu-byte images\n", path, size,
                input_bytes);
        return 2;
    }
    count = (size_t)size / input_bytes;
    images = malloc((size_t)size + 1u);
    logits = malloc(m->classes * sizeof *logits);
    /* The arena is allocated with its exact size, so AddressSanitizer reports any access
     * past it; with --guard, 64 bytes of known filler sit on either side as well. */
    c = offset + arena_bytes + (guard ? 2u * GUARD : 0u);
    block = malloc(c ? c : 1u);
    if (!images || !logits || !block || fread(images, 1, (size_t)size, f) != (size_t)size) {
        fprintf(stderr, "%s: cannot read\n", path);
        return 2;
    }
    fclose(f);
    arena = block + offset + (guard ? GUARD : 0u);
    for (i = 0; i < count && !status; i++) {
        bsvit_status st;
        if (guard)
            memset(block, FILL, offset + arena_bytes + 2u * GUARD);
        st = bsvit_infer(m, images + i * input_bytes, logits, arena, arena_bytes);
        if (guard && (!untouched(block, offset + GUARD) ||
                      !untouched(arena + arena_bytes, GUARD) ||
                      (st != BSVIT_OK && !untouched(arena, arena_bytes)))) {
            fprintf(stderr, "image %zu: memory outside the arena (or the arena of a failed "
                            "call) was written\n", i);
            status = 3;
        } else if (st != BSVIT_OK) {
            fprintf(stderr, "image %zu: status %d: %s\n", i, (int)st, bsvit_status_string(st));
            status = 10 + (int)st;
        } else {
            printf("L %zu", i);
            for (c = 0; c < m->classes; c++)
                printf(" %ld", (long)logits[c]);
            putchar('\n');
        }
    }
    free(images);
    free(logits);
    free(block);
    return status;
}
