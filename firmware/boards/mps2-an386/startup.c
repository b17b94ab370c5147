/*
 * startup.c - vector table, reset handler and semihosting for mps2-an386 under QEMU.
 *
 * No C library start-up: the reset handler copies .data, zeroes .bss, paints the stack
 * (to measure its high-water mark), calls main() and exits through semihosting
 * SYS_EXIT_EXTENDED, which makes qemu-system-arm exit with main's return value.
 * A fault exits with status 127 and a message on stderr, so a test never hangs.
 */
#include <stdint.h>
#include <string.h>

#include "board.h"

extern uint32_t _data_start[], _data_end[], _data_load[], _bss_start[], _bss_end[];
extern uint32_t _stack_bottom[], _stack_top[];
int main(void);

#define SYS_WRITE0 0x04
#define SYS_EXIT_EXTENDED 0x20
#define ADP_STOPPED_APPLICATION_EXIT 0x20026
#define STACK_PAINT 0x5AC3A55Au

static int semihost(int op, const void *arg)
{
    register int r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

void board_puts(const char *s)
{
    (void)semihost(SYS_WRITE0, s);
}

void board_exit(int code)
{
    uint32_t block[2];
    block[0] = ADP_STOPPED_APPLICATION_EXIT;
    block[1] = (uint32_t)code;
    for (;;)
        (void)semihost(SYS_EXIT_EXTENDED, block);
}

/* The stack bounds are two linker symbols, distinct objects to C: compare and subtract
 * their addresses as integers, which is defined, rather than as pointers, which is not. */
uint32_t board_stack_used(void)
{
    const uintptr_t top = (uintptr_t)_stack_top;
    const uint32_t *p = _stack_bottom;
    while ((uintptr_t)p < top && *p == STACK_PAINT)
        p++;
    return (uint32_t)(top - (uintptr_t)p);
}

uint32_t board_stack_size(void)
{
    return (uint32_t)((uintptr_t)_stack_top - (uintptr_t)_stack_bottom);
}

static void fault_handler(void)
{
    board_puts("fault: hard fault or unhandled exception\n");
    board_exit(127);
}

__attribute__((noreturn)) void reset_handler(void)
{
    uint32_t *p, sp;
    const uint32_t *s;
    for (p = _data_start, s = _data_load; (uintptr_t)p < (uintptr_t)_data_end;)
        *p++ = *s++;
    for (p = _bss_start; (uintptr_t)p < (uintptr_t)_bss_end;)
        *p++ = 0;
    /* Paint the stack below this function's frame, for board_stack_used(). */
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    for (p = _stack_bottom; (uintptr_t)p + 32u < sp;)
        *p++ = STACK_PAINT;
    board_exit(main());
}

typedef void (*vector)(void);

__attribute__((section(".vectors"), used)) static const vector vectors[16] = {
    (vector)(uintptr_t)_stack_top, /* initial SP */
    reset_handler,
    fault_handler, /* NMI */
    fault_handler, /* HardFault */
    fault_handler, /* MemManage */
    fault_handler, /* BusFault */
    fault_handler, /* UsageFault */
    0, 0, 0, 0,
    fault_handler, /* SVCall */
    fault_handler, /* DebugMonitor */
    0,
    fault_handler, /* PendSV */
    fault_handler, /* SysTick */
};
