/* board.h - the few services the mps2-an386 start-up code gives main.c. */
#ifndef BOARD_H
#define BOARD_H
#include <stdint.h>

void board_puts(const char *s);                   /* semihosting SYS_WRITE0 (QEMU: stderr) */
__attribute__((noreturn)) void board_exit(int code); /* qemu-system-arm exits with `code` */
uint32_t board_stack_used(void);                  /* stack high-water mark in bytes */
uint32_t board_stack_size(void);                  /* bytes reserved for the stack */

#endif
