/*
 * insn_count.c - a QEMU TCG plugin that counts executed guest instructions between two
 * marker functions (deterministic: the same program gives the same counts on every run).
 *
 *   qemu-system-arm ... -plugin ./libinsn_count.so,begin=0xADDR,end=0xADDR,out=FILE
 *
 * begin/end are the entry addresses of bsvit_mark_begin and bsvit_mark_end
 * (firmware/boards/mps2-an386/main.c; the Thumb bit is ignored). Counting is armed when
 * the block at `begin` executes and disarmed at `end`; every window's count is written to
 * FILE as one line "window <k> <instructions>", then "total <instructions>" for the whole
 * run. With profile=FILE2 it also writes "<address> <instructions>" for every block that
 * ran inside a window (for a per-function breakdown). Counting is per translation block
 * (a block runs to completion: the target code takes no interrupts), so each count is
 * exact.
 *
 * qemu-plugin.h is QEMU's (GPL-2.0-or-later) and is not part of this repository:
 * firmware/tools/footprint.py fetches it from Debian's qemu source package at build time.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <qemu-plugin.h>

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

typedef struct {
    uint64_t vaddr;
    uint64_t insns;
} block_info;

static uint64_t begin_addr = UINT64_MAX, end_addr = UINT64_MAX;
static uint64_t total, window, windows;
static int armed;
static FILE *out, *profile;

/* Per-block counts inside windows, for profile=: an open-addressing table keyed by address. */
#define PROFILE_SLOTS (1u << 16)
static uint64_t profile_addr[PROFILE_SLOTS], profile_count[PROFILE_SLOTS];

static void profile_add(uint64_t addr, uint64_t n)
{
    uint64_t h = (addr * 0x9E3779B97F4A7C15ull) >> 48;
    unsigned i;
    for (i = 0; i < PROFILE_SLOTS; i++) {
        uint64_t slot = (h + i) & (PROFILE_SLOTS - 1u);
        if (profile_count[slot] == 0 || profile_addr[slot] == addr) {
            profile_addr[slot] = addr;
            profile_count[slot] += n;
            return;
        }
    }
}

static void on_exec(unsigned int vcpu, void *udata)
{
    const block_info *b = udata;
    (void)vcpu;
    total += b->insns;
    if (b->vaddr == begin_addr) {
        armed = 1;
        window = 0;
    } else if (b->vaddr == end_addr) {
        if (armed)
            fprintf(out, "window %" PRIu64 " %" PRIu64 "\n", windows++, window);
        armed = 0;
    } else if (armed) {
        window += b->insns;
        if (profile)
            profile_add(b->vaddr, b->insns);
    }
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    block_info *b = malloc(sizeof *b);   /* one per translated block, kept for the run */
    (void)id;
    if (!b)
        abort();
    b->vaddr = qemu_plugin_tb_vaddr(tb) & ~(uint64_t)1;
    b->insns = qemu_plugin_tb_n_insns(tb);
    qemu_plugin_register_vcpu_tb_exec_cb(tb, on_exec, QEMU_PLUGIN_CB_NO_REGS, b);
}

static void on_plugin_exit(qemu_plugin_id_t id, void *p)
{
    (void)id;
    (void)p;
    unsigned i;
    fprintf(out, "total %" PRIu64 "\n", total);
    if (profile) {
        for (i = 0; i < PROFILE_SLOTS; i++)
            if (profile_count[i])
                fprintf(profile, "0x%" PRIx64 " %" PRIu64 "\n", profile_addr[i],
                        profile_count[i]);
        fclose(profile);
    }
    fflush(out);
    if (out != stderr)
        fclose(out);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                           int argc, char **argv)
{
    int i;
    (void)info;
    out = stderr;
    for (i = 0; i < argc; i++) {
        if (!strncmp(argv[i], "begin=", 6))
            begin_addr = strtoull(argv[i] + 6, NULL, 0) & ~(uint64_t)1;
        else if (!strncmp(argv[i], "end=", 4))
            end_addr = strtoull(argv[i] + 4, NULL, 0) & ~(uint64_t)1;
        else if (!strncmp(argv[i], "out=", 4)) {
            out = fopen(argv[i] + 4, "w");
            if (!out)
                return -1;
        } else if (!strncmp(argv[i], "profile=", 8)) {
            profile = fopen(argv[i] + 8, "w");
            if (!profile)
                return -1;
        } else {
            fprintf(stderr, "insn_count: unknown argument %s\n", argv[i]);
            return -1;
        }
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, on_plugin_exit, NULL);
    return 0;
}
