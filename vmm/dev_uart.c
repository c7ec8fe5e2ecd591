#include "dev_uart.h"
#include "io_bus.h"
#include "kvm.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

enum {
	REG_RBR_THR = 0, /* DLL when DLAB */
	REG_IER = 1,     /* DLM when DLAB */
	REG_IIR_FCR = 2,
	REG_LCR = 3,
	REG_MCR = 4,
	REG_LSR = 5,
	REG_MSR = 6,
	REG_SCR = 7,
};

#define LCR_DLAB 0x80
#define IER_RDI 0x01  /* received data available */
#define IER_THRI 0x02 /* transmitter holding register empty */
#define IIR_NONE 0x01
#define IIR_THRI 0x02
#define IIR_RDI 0x04
#define IIR_FIFO_ON 0xc0
#define MCR_LOOP 0x10
#define FCR_ENABLE 0x01
#define FCR_CLEAR_RX 0x02

uint8_t uart_iir(const struct uart_state *s)
{
	uint8_t iir = IIR_NONE;
	if ((s->ier & IER_RDI) && s->rx_count)
		iir = IIR_RDI;
	else if ((s->ier & IER_THRI) && s->thr_irq_pending)
		iir = IIR_THRI;
	return iir | ((s->fcr & FCR_ENABLE) ? IIR_FIFO_ON : 0);
}

/* Recompute IIR and drive the IRQ line; called with the lock held. */
static void update_irq(struct uart *u)
{
	struct uart_state *s = &u->st;
	s->iir = uart_iir(s);
	int level = !(s->iir & IIR_NONE);
	if (level != u->irq_level) {
		u->irq_level = level;
		kvm_irq_line(u->kvm, UART_COM1_IRQ, level);
	}
}

static void emit(struct uart *u, uint8_t c)
{
	if (u->st.mcr & MCR_LOOP) {
		if (u->st.rx_count < UART_FIFO_SIZE) {
			u->st.rbr_fifo[(u->st.rx_head + u->st.rx_count++) % UART_FIFO_SIZE] = c;
			u->st.lsr |= UART_LSR_DR;
		}
		return;
	}
	if (u->out_fd >= 0) {
		ssize_t r;
		do
			r = write(u->out_fd, &c, 1);
		while (r < 0 && errno == EINTR);
	}
}

static uint8_t pop_rx(struct uart_state *s)
{
	if (!s->rx_count)
		return 0;
	uint8_t c = s->rbr_fifo[s->rx_head];
	s->rx_head = (s->rx_head + 1) % UART_FIFO_SIZE;
	if (!--s->rx_count)
		s->lsr &= ~UART_LSR_DR;
	return c;
}

static void uart_write(struct uart *u, unsigned reg, uint8_t v)
{
	struct uart_state *s = &u->st;
	bool dlab = s->lcr & LCR_DLAB;
	switch (reg) {
	case REG_RBR_THR:
		if (dlab) {
			s->dll = v;
			break;
		}
		emit(u, v);
		/* The byte leaves at once, so THR is empty again right away. */
		s->lsr |= UART_LSR_THRE | UART_LSR_TEMT;
		s->thr_irq_pending = 1;
		break;
	case REG_IER:
		if (dlab) {
			s->dlm = v;
			break;
		}
		if (!(s->ier & IER_THRI) && (v & IER_THRI))
			s->thr_irq_pending = 1; /* enabling THRI on an empty THR raises it */
		s->ier = v & UART_IER_BITS;
		break;
	case REG_IIR_FCR:
		if (v & FCR_CLEAR_RX)
			s->rx_count = s->rx_head = 0, s->lsr &= ~UART_LSR_DR;
		s->fcr = v & UART_FCR_BITS;
		break;
	case REG_LCR:
		s->lcr = v;
		break;
	case REG_MCR:
		s->mcr = v & UART_MCR_BITS;
		break;
	case REG_SCR:
		s->scr = v;
		break;
	default: /* LSR and MSR are read-only */
		break;
	}
}

static uint8_t uart_read(struct uart *u, unsigned reg)
{
	struct uart_state *s = &u->st;
	bool dlab = s->lcr & LCR_DLAB;
	switch (reg) {
	case REG_RBR_THR:
		return dlab ? s->dll : pop_rx(s);
	case REG_IER:
		return dlab ? s->dlm : s->ier;
	case REG_IIR_FCR: {
		uint8_t iir = s->iir;
		if ((iir & 0x0f) == IIR_THRI)
			s->thr_irq_pending = 0; /* reading IIR acknowledges THRE */
		return iir;
	}
	case REG_LCR:
		return s->lcr;
	case REG_MCR:
		return s->mcr;
	case REG_LSR:
		return s->lsr;
	case REG_MSR:
		/* Loopback wires MCR outputs back to the modem inputs. */
		if (s->mcr & MCR_LOOP)
			return (uint8_t)(((s->mcr & 0x0c) << 4) | ((s->mcr & 0x01) << 5) |
					 ((s->mcr & 0x02) << 3));
		return s->msr;
	default:
		return s->scr;
	}
}

static void uart_io(void *opaque, unsigned vcpu, uint64_t offset, uint8_t *data, unsigned len, bool is_write)
{
	struct uart *u = opaque;
	(void)vcpu;
	pthread_mutex_lock(&u->lock);
	/* Wider accesses touch consecutive registers, as on the ISA bus. */
	for (unsigned i = 0; i < len; i++) {
		unsigned reg = (unsigned)(offset + i) & 7;
		if (is_write)
			uart_write(u, reg, data[i]);
		else
			data[i] = uart_read(u, reg);
	}
	update_irq(u);
	pthread_mutex_unlock(&u->lock);
}

int uart_init(struct uart *u, struct kvm *kvm, struct io_bus *pio, int out_fd)
{
	memset(u, 0, sizeof(*u));
	pthread_mutex_init(&u->lock, NULL);
	u->kvm = kvm;
	u->out_fd = out_fd;
	u->st.iir = IIR_NONE;
	u->st.lsr = UART_LSR_THRE | UART_LSR_TEMT;
	u->st.msr = 0xb0; /* DCD, DSR, CTS: a connected terminal */
	return io_bus_register(pio, UART_COM1_BASE, 8, uart_io, u);
}

void uart_destroy(struct uart *u)
{
	pthread_mutex_destroy(&u->lock);
}

void uart_receive(struct uart *u, const uint8_t *buf, size_t len)
{
	pthread_mutex_lock(&u->lock);
	for (size_t i = 0; i < len && u->st.rx_count < UART_FIFO_SIZE; i++) {
		u->st.rbr_fifo[(u->st.rx_head + u->st.rx_count++) % UART_FIFO_SIZE] = buf[i];
		u->st.lsr |= UART_LSR_DR;
	}
	update_irq(u);
	pthread_mutex_unlock(&u->lock);
}
