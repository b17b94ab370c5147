/*
 * marked_infer.c - brackets every bsvit_infer call of firmware/host/harness.c with two
 * marker functions, so the QEMU instruction-counting plugin (firmware/tools/insn_count.c)
 * can count the instructions of each inference, exactly as on the Cortex-M4 board
 * (firmware/boards/mps2-an386/main.c has the same markers).
 *
 * The harness is compiled unchanged with -Dbsvit_infer=bsvit_infer_marked, so its call
 * lands here; this file is compiled without that macro and calls the real bsvit_infer.
 * A window therefore holds bsvit_infer plus the few instructions of this wrapper.
 */
#include "bsvit.h"

__attribute__((noinline, noipa)) void bsvit_mark_begin(void)
{
    __asm__ volatile("" ::: "memory");
}

__attribute__((noinline, noipa)) void bsvit_mark_end(void)
{
    __asm__ volatile("" ::: "memory");
}

bsvit_status bsvit_infer_marked(const bsvit_model *model, const uint8_t *image,
                                int32_t *logits, void *arena, size_t arena_bytes);

bsvit_status bsvit_infer_marked(const bsvit_model *model, const uint8_t *image,
                                int32_t *logits, void *arena, size_t arena_bytes)
{
    bsvit_status st;
    bsvit_mark_begin();
    st = bsvit_infer(model, image, logits, arena, arena_bytes);
    bsvit_mark_end();
    return st;
}
