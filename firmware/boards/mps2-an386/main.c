/*
 * main.c - runs the embedded golden vectors on the model and reports over semihosting.
 *
 * For every image it prints "L <index> <logit0> <logit1> ..." and compares the logits with
 * the ones the NumPy oracle computed (test_vectors.h, written by
 * bsvit_int.firmware.emit_test_vectors). Then "mismatches <k> of <n>", the arena and the
 * stack high-water mark. Exit status: 0 every image matched; 1 some logits differed;
 * 2 bsvit_infer returned an error status; 127 a fault (startup.c).
 *
 * bsvit_mark_begin()/bsvit_mark_end() bracket each inference; the instruction-counting QEMU
 * plugin (firmware/tools/insn_count.c) counts the instructions executed between them.
 */
#include <stdint.h>

#include "board.h"
#include "bsvit.h"
#include "test_vectors.h"

static uint32_t arena[(TEST_ARENA_BYTES + 3u) / 4u];
static int32_t logits[TEST_CLASSES];

__attribute__((noinline, noipa)) void bsvit_mark_begin(void)
{
    __asm__ volatile("" ::: "memory");
}

__attribute__((noinline, noipa)) void bsvit_mark_end(void)
{
    __asm__ volatile("" ::: "memory");
}

/* Decimal text of v at the end of buf[12..]: no printf, no C library. */
static char *format_int(char *end, int32_t v)
{
    uint32_t u = v < 0 ? 0u - (uint32_t)v : (uint32_t)v;
    *--end = '\0';
    do {
        *--end = (char)('0' + u % 10u);
        u /= 10u;
    } while (u);
    if (v < 0)
        *--end = '-';
    return end;
}

static void put_int(int32_t v)
{
    char buf[16];
    board_puts(format_int(buf + sizeof buf, v));
}

int main(void)
{
    uint32_t i, c, mismatches = 0;
    for (i = 0; i < TEST_COUNT; i++) {
        bsvit_status st;
        uint32_t differ = 0;
        bsvit_mark_begin();
        st = bsvit_infer(&TEST_MODEL, test_images[i], logits, arena, sizeof arena);
        bsvit_mark_end();
        if (st != BSVIT_OK) {
            board_puts("error: ");
            board_puts(bsvit_status_string(st));
            board_puts("\n");
            return 2;
        }
        board_puts("L ");
        put_int((int32_t)i);
        for (c = 0; c < TEST_CLASSES; c++) {
            board_puts(" ");
            put_int(logits[c]);
            differ |= logits[c] != test_expected[i][c];
        }
        board_puts(differ ? " MISMATCH\n" : "\n");
        mismatches += differ;
    }
    board_puts("mismatches ");
    put_int((int32_t)mismatches);
    board_puts(" of ");
    put_int((int32_t)TEST_COUNT);
    board_puts("\narena_bytes ");
    put_int((int32_t)sizeof arena);
    board_puts("\nstack_used ");
    put_int((int32_t)board_stack_used());
    board_puts(" of ");
    put_int((int32_t)board_stack_size());
    board_puts("\n");
    return mismatches ? 1 : 0;
}
