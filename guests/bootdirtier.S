/*
 * bootdirtier: a PC boot sector that dirties memory forever, so the same
 * image can be migrated by godwit-vmm and by QEMU and the two compared.
 *
 * It relies on nothing a BIOS provides beyond being loaded at 0x7c00 in
 * real mode: it switches to flat 32-bit protected mode (no paging) and
 * then, pass after pass, increments the first byte of every page from
 * GW_BOOTSECTOR_START up to END, writing GW_BOOTSECTOR_PASS_CHAR to COM1
 * after each pass. END is read once, from GW_BOOTSECTOR_END_OFFSET in
 * this sector (abi.h), where tests patch it.
 */
#include "abi.h"

#define CODE_SEL 0x08
#define DATA_SEL 0x10
#define COM1 0x3f8
#define UART_LSR (COM1 + 5)
#define UART_LSR_THRE 0x20

	.code16
	.text
	.globl _start
_start:
	cli
	/* A BIOS may enter at 07c0:0000 or 0000:7c00; everything below uses
	 * absolute addresses through DS, or relative jumps, so only DS needs
	 * to be known. */
	xorw %ax, %ax
	movw %ax, %ds

	/* Fast A20 (port 0x92 bit 1), or every odd MiB aliases the even one
	 * below it. Bit 0 would reset the machine, so keep it clear. */
	inb $0x92, %al
	orb $0x02, %al
	andb $0xfe, %al
	outb %al, $0x92

	lgdtl gdt_desc
	movl %cr0, %eax
	orl $1, %eax			/* CR0.PE */
	movl %eax, %cr0
	ljmpl $CODE_SEL, $protected

	.code32
protected:
	movw $DATA_SEL, %ax
	movw %ax, %ds
	movw %ax, %es
	movw %ax, %ss
	movl end_field, %ebx

next_pass:
	movl $GW_BOOTSECTOR_START, %eax
	jmp 2f
1:	incb (%eax)
	addl $0x1000, %eax
2:	cmpl %ebx, %eax
	jb 1b

	/* With no UART, unclaimed ports read 0xff: THRE looks set, no hang. */
	movw $UART_LSR, %dx
3:	inb %dx, %al
	testb $UART_LSR_THRE, %al
	jz 3b
	movw $COM1, %dx
	movb $GW_BOOTSECTOR_PASS_CHAR, %al
	outb %al, %dx
	jmp next_pass

	.p2align 3
gdt:
	.quad 0
	.quad 0x00cf9a000000ffff	/* CODE_SEL: base 0, 4 GiB, 32-bit, r-x */
	.quad 0x00cf92000000ffff	/* DATA_SEL: base 0, 4 GiB, rw- */
gdt_desc:
	.word gdt_desc - gdt - 1
	.long gdt

	/* .org fails the build if the code ever grows into the fields. */
	.org GW_BOOTSECTOR_END_OFFSET
end_field:
	.long GW_BOOTSECTOR_DEFAULT_END
	.org GW_BOOTSECTOR_SIZE - 2
	.byte 0x55, 0xaa

	.section .note.GNU-stack, "", @progbits
