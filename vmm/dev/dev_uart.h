/*
 * A 16550A UART, as COM1 (ports 0x3f8-0x3ff, IRQ 4).
 *
 * Output goes straight to the host fd from the vCPU thread that wrote the
 * byte (unbuffered: a guest's last words before a crash must not be lost).
 * Input arrives from the main loop through uart_receive(). The UART
 * registers its own migration section ("uart", vmm/migration/migratable.h).
 */
#ifndef GW_VMM_DEV_UART_H
#define GW_VMM_DEV_UART_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

struct io_bus;
struct kvm;

#define UART_COM1_BASE 0x3f8
#define UART_COM1_IRQ 4
#define UART_FIFO_SIZE 16

/* Everything guest-visible: this struct is what a migration saves. */
struct uart_state {
	uint8_t rbr_fifo[UART_FIFO_SIZE];
	uint8_t rx_head, rx_count; /* rx_head < UART_FIFO_SIZE, rx_count <= it */
	uint8_t ier, iir, fcr, lcr, mcr, lsr, msr, scr, dll, dlm;
	uint8_t thr_irq_pending; /* THR-empty interrupt not yet acknowledged */
};

/*
 * The register bits a state can hold: what a guest can set in IER, FCR
 * and MCR, and what this UART ever reports in LSR (data ready; the
 * transmitter is always empty, since a byte leaves at once). A loaded
 * state with other bits set is not one this UART can be in.
 */
#define UART_IER_BITS 0x0f
#define UART_FCR_BITS 0xc9
#define UART_MCR_BITS 0x1f
#define UART_LSR_DR 0x01
#define UART_LSR_THRE 0x20
#define UART_LSR_TEMT 0x40

struct uart {
	struct uart_state st; /* under lock: vCPUs and host input change it */
	pthread_mutex_t lock;
	struct kvm *kvm;
	int out_fd; /* -1: output discarded */
	int irq_level;
	/* What the uart section saves and loads: a copy of st, taken and put
	 * back under lock by the section's hooks, so a migration thread never
	 * reads or writes st while host input or a vCPU changes it. */
	struct uart_state mig;
};

int uart_init(struct uart *u, struct kvm *kvm, struct io_bus *pio, int out_fd);
void uart_destroy(struct uart *u);
/* Queue bytes typed by the host user; drops what does not fit the FIFO. */
void uart_receive(struct uart *u, const uint8_t *buf, size_t len);

#endif
