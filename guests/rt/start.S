/*
 * Entry of every vCPU (abi.h): long mode, interrupts off,
 * rdi = vCPU index, rsi = config address, rsp = this vCPU's stack top.
 * The arguments are already where the C calling convention wants them.
 */
	.section .text.start, "ax"
	.globl _start
	.type _start, @function
_start:
	/* The VMM promises a stack top, not the 16-byte alignment the ABI
	 * expects at a call; and C assumes the direction flag is clear. */
	andq $-16, %rsp
	cld
	call gw_rt_main		/* never returns */
	.size _start, . - _start

	.section .note.GNU-stack, "", @progbits
