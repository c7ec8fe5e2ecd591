#include "vmm/dev/dev_uart.h"
#include "vmm/dev/io_bus.h"
#include "vmm/kvm/kvm.h"
#include "vmm/machine.h"
#include "vmm/migration/migratable.h"

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

/* The IIR that state s implies (the pending interrupt of highest priority
 * and the FIFO bits): the UART keeps iir equal to it after every access,
 * and a loaded state must agree with it. */
static uint8_t uart_iir(const struct uart_state *s)
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

static void uart_io(void *opaque, unsigned vcpu, uint64_t offset, uint8_t *data, unsigned len,
		    bool is_write)
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

/* ---- migration: the uart section ------------------------------------ */

/* rx_head indexes the FIFO and rx_count bounds the bytes read from it: a
 * guest reads rbr_fifo[rx_head] (issue 13: 255 read VMM memory). */
static const struct gw_field uart_fields[] = {
	GW_FIELD(BYTES, struct uart_state, rbr_fifo),
	GW_FIELD_RANGE(U8, struct uart_state, rx_head, 0, UART_FIFO_SIZE - 1),
	GW_FIELD_RANGE(U8, struct uart_state, rx_count, 0, UART_FIFO_SIZE),
	GW_FIELD_RANGE(U8, struct uart_state, ier, 0, UART_IER_BITS),
	GW_FIELD(U8, struct uart_state, iir),
	GW_FIELD(U8, struct uart_state, fcr),
	GW_FIELD(U8, struct uart_state, lcr),
	GW_FIELD_RANGE(U8, struct uart_state, mcr, 0, UART_MCR_BITS),
	GW_FIELD(U8, struct uart_state, lsr),
	GW_FIELD(U8, struct uart_state, msr),
	GW_FIELD(U8, struct uart_state, scr),
	GW_FIELD(U8, struct uart_state, dll),
	GW_FIELD(U8, struct uart_state, dlm),
	GW_FIELD_RANGE(U8, struct uart_state, thr_irq_pending, 0, 1),
};

static int uart_validate(const void *state, uint32_t version, struct gw_error *err)
{
	const struct uart_state *s = state;
	uint8_t lsr = UART_LSR_THRE | UART_LSR_TEMT | (s->rx_count ? UART_LSR_DR : 0);
	(void)version;
	if (s->fcr & ~UART_FCR_BITS)
		return vmm_refuse(err, "fcr", "0x%02x sets bits outside 0x%02x", s->fcr,
				  UART_FCR_BITS);
	/* IIR and LSR follow from the rest after every access. */
	if (s->iir != uart_iir(s))
		return vmm_refuse(err, "iir",
				  "0x%02x, but ier, fcr, rx_count and thr_irq_pending make it 0x%02x",
				  s->iir, uart_iir(s));
	if (s->lsr != lsr)
		return vmm_refuse(err, "lsr", "0x%02x, but with %u bytes received it is 0x%02x",
				  s->lsr, s->rx_count, lsr);
	return 0;
}

static const struct gw_vmstate uart_vmstate = GW_VMSTATE(struct uart_state, uart_fields);

/* Source: one instant of the UART, however fast host input arrives. */
static int uart_pre_save(void *opaque, struct gw_error *err)
{
	struct uart *u = container_of(opaque, struct uart, mig);
	(void)err;
	pthread_mutex_lock(&u->lock);
	u->mig = u->st;
	pthread_mutex_unlock(&u->lock);
	return 0;
}

/* Destination: the source's UART goes on here, so its state replaces
 * whatever host input queued meanwhile. */
static int uart_post_load(void *opaque, uint32_t version, struct gw_error *err)
{
	struct uart *u = container_of(opaque, struct uart, mig);
	(void)version, (void)err;
	pthread_mutex_lock(&u->lock);
	u->st = u->mig;
	pthread_mutex_unlock(&u->lock);
	return 0;
}

static int uart_sections_init(struct vmm *vm, struct gw_migration *m, struct gw_error *err)
{
	struct uart *u = &vm->uart;
	const struct gw_section uart = {
		.name = "uart",
		.version = 1,
		.min_version = 1,
		.vmstate = &uart_vmstate,
		.validate = uart_validate,
		.pre_save = uart_pre_save,
		.post_load = uart_post_load,
		.opaque = &u->mig,
	};
	/* A load decodes over the copy: a field an older stream lacks keeps
	 * its reset value. */
	uart_pre_save(&u->mig, err);
	return gw_migration_add_section(m, &uart, err);
}
VMM_SECTIONS(uart_sections_init, VMM_SECTIONS_DEVICE);
