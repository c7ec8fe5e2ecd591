/*
 * What godwit-vmm migrates, field by field, and what it accepts back.
 *
 * Loaded state is hostile until checked: a stream with valid checksums can
 * still carry any value (a writer bug, a different VMM, or someone who
 * recomputed the CRCs). So every field that indexes, counts or names an
 * enum declares its range in the table, and each section's validator
 * refuses what a range cannot express: reserved bits that must be clear
 * or set, values that must agree with each other, register bits a guest
 * cannot set. libgodwit runs both on a scratch copy before it replaces a
 * device's state, so a refused section never reaches a device or KVM.
 *
 * The rule for a check: refuse what the device or the hardware could
 * never hold, and nothing a real source can produce. Where KVM validates
 * a value itself on KVM_SET_*, checking it here too costs nothing and
 * names the field instead of an ioctl.
 */
#include "sections.h"

#include <asm/processor-flags.h>
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* "field 'sregs': cr0 = 0x80000001 ..." with -EBADMSG, as the library words
 * its own range failures; the loader adds section and instance. */
__attribute__((format(printf, 3, 4)))
static int refuse(struct gw_error *err, const char *field, const char *fmt, ...)
{
	char what[GW_ERROR_MSG_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	return gw_error_set(err, -EBADMSG, "field '%s': %s", field, what);
}

/* A u8 that KVM or a device only ever sets to 0 or 1. */
struct flag {
	size_t offset;
	const char *name;
};

static int check_flags(const void *base, const struct flag *flags, size_t n,
		       const char *field, struct gw_error *err)
{
	for (size_t i = 0; i < n; i++) {
		uint8_t v = ((const uint8_t *)base)[flags[i].offset];
		if (v > 1)
			return refuse(err, field, "%s = %u is outside 0..1", flags[i].name, v);
	}
	return 0;
}

/* ---- cpu ------------------------------------------------------------ */

#define CPU_REG(r) GW_FIELD(U64, struct cpu_state, regs.r)
#define CPU_BLOB(f) GW_FIELD(BYTES, struct cpu_state, f)

/*
 * cr0..efer are also inside the sregs blob, which is loaded after them
 * and wins; they are listed for analyzers, which cannot read the blob.
 * So their checks are in the validator, on the values that are loaded.
 */
static const struct gw_field cpu_fields[] = {
	CPU_REG(rax), CPU_REG(rbx), CPU_REG(rcx), CPU_REG(rdx),
	CPU_REG(rsi), CPU_REG(rdi), CPU_REG(rsp), CPU_REG(rbp),
	CPU_REG(r8), CPU_REG(r9), CPU_REG(r10), CPU_REG(r11),
	CPU_REG(r12), CPU_REG(r13), CPU_REG(r14), CPU_REG(r15),
	CPU_REG(rip), CPU_REG(rflags),
	GW_FIELD(U64, struct cpu_state, sregs.cr0),
	GW_FIELD(U64, struct cpu_state, sregs.cr3),
	GW_FIELD(U64, struct cpu_state, sregs.cr4),
	GW_FIELD(U64, struct cpu_state, sregs.efer),
	CPU_BLOB(sregs),
	CPU_BLOB(xcrs),
	CPU_BLOB(lapic),
	CPU_BLOB(events),
	/* x86 uses 0..4 and AP_RESET_HOLD; the validator refuses the s390
	 * states in between. */
	GW_FIELD_RANGE(U32, struct cpu_state, mp.mp_state, KVM_MP_STATE_RUNNABLE,
		       KVM_MP_STATE_AP_RESET_HOLD),
	CPU_BLOB(debugregs),
	GW_FIELD_RANGE(U32, struct cpu_state, nr_msrs, 0, CPU_STATE_MAX_MSRS),
	CPU_BLOB(msrs),
	CPU_BLOB(xsave),
};

/* RFLAGS bits 3, 5, 15 and 63:22 are reserved and always 0, bit 1 always
 * 1: VM entry fails on anything else. */
#define RFLAGS_RESERVED (~0x3fffffull | 1ull << 15 | 1ull << 5 | 1ull << 3)
/* EFER bits no x86 CPU defines (1-7, 9, 63:22). */
#define EFER_RESERVED (0xfeull | 1ull << 9 | ~0x3fffffull)
#define EFER_LME (1ull << 8)
#define EFER_LMA (1ull << 10)

static int check_rflags(uint64_t rflags, struct gw_error *err)
{
	if (!(rflags & X86_EFLAGS_FIXED))
		return refuse(err, "regs.rflags", "0x%llx has bit 1 clear; it is always set",
			      (unsigned long long)rflags);
	if (rflags & RFLAGS_RESERVED)
		return refuse(err, "regs.rflags", "0x%llx sets reserved bits 0x%llx",
			      (unsigned long long)rflags,
			      (unsigned long long)(rflags & RFLAGS_RESERVED));
	return 0;
}

/* What KVM_SET_SREGS and VM entry demand of the control registers, on
 * every CPU: no reserved bits, and a paging mode that exists. */
static int check_sregs(const struct kvm_sregs *s, struct gw_error *err)
{
	bool long_mode = (s->efer & EFER_LME) && (s->cr0 & X86_CR0_PG);

	if (s->cr0 >> 32)
		return refuse(err, "sregs", "cr0 = 0x%llx sets reserved bits 63:32",
			      (unsigned long long)s->cr0);
	if ((s->cr0 & X86_CR0_PG) && !(s->cr0 & X86_CR0_PE))
		return refuse(err, "sregs", "cr0 = 0x%llx enables paging without protection",
			      (unsigned long long)s->cr0);
	if ((s->cr0 & X86_CR0_NW) && !(s->cr0 & X86_CR0_CD))
		return refuse(err, "sregs", "cr0 = 0x%llx sets NW without CD",
			      (unsigned long long)s->cr0);
	if (s->cr4 >> 32)
		return refuse(err, "sregs", "cr4 = 0x%llx sets reserved bits 63:32",
			      (unsigned long long)s->cr4);
	if (s->efer & EFER_RESERVED)
		return refuse(err, "sregs", "efer = 0x%llx sets reserved bits 0x%llx",
			      (unsigned long long)s->efer,
			      (unsigned long long)(s->efer & EFER_RESERVED));
	if (!!(s->efer & EFER_LMA) != long_mode)
		return refuse(err, "sregs",
			      "efer = 0x%llx with cr0 = 0x%llx: LMA must be set exactly when LME and paging are",
			      (unsigned long long)s->efer, (unsigned long long)s->cr0);
	if (long_mode && !(s->cr4 & X86_CR4_PAE))
		return refuse(err, "sregs", "long mode with cr4 = 0x%llx, which lacks PAE",
			      (unsigned long long)s->cr4);
	if (s->cs.l && !long_mode)
		return refuse(err, "sregs", "cs.l = %u (64-bit code) outside long mode", s->cs.l);
	return 0;
}

static int check_xcrs(const struct kvm_xcrs *x, struct gw_error *err)
{
	if (x->nr_xcrs > KVM_MAX_XCRS)
		return refuse(err, "xcrs", "nr_xcrs = %u is outside 0..%d", x->nr_xcrs, KVM_MAX_XCRS);
	if (x->flags)
		return refuse(err, "xcrs", "flags = 0x%x; KVM defines none", x->flags);
	for (uint32_t i = 0; i < x->nr_xcrs; i++)
		if (x->xcrs[i].xcr == 0 && !(x->xcrs[i].value & 1))
			return refuse(err, "xcrs", "XCR0 = 0x%llx lacks x87 state (bit 0), which is always on",
				      (unsigned long long)x->xcrs[i].value);
	return 0;
}

#define EVENT_FLAG(m) {offsetof(struct kvm_vcpu_events, m), #m}

static const struct flag event_flags[] = {
	EVENT_FLAG(exception.injected), EVENT_FLAG(exception.has_error_code),
	EVENT_FLAG(exception.pending), EVENT_FLAG(interrupt.injected),
	EVENT_FLAG(interrupt.soft), EVENT_FLAG(nmi.injected),
	EVENT_FLAG(nmi.masked), EVENT_FLAG(smi.smm), EVENT_FLAG(smi.pending),
	EVENT_FLAG(smi.smm_inside_nmi), EVENT_FLAG(smi.latched_init),
	EVENT_FLAG(triple_fault.pending), EVENT_FLAG(exception_has_payload),
};

static int check_events(const struct kvm_vcpu_events *e, struct gw_error *err)
{
	int ret = check_flags(e, event_flags, ARRAY_SIZE(event_flags), "events", err);
	if (ret)
		return ret;
	/* Exceptions are vectors 0..31. */
	if ((e->exception.injected || e->exception.pending) && e->exception.nr > 31)
		return refuse(err, "events", "exception.nr = %u is outside 0..31", e->exception.nr);
	/* A count: one NMI being handled and one latched behind it. */
	if (e->nmi.pending > 2)
		return refuse(err, "events", "nmi.pending = %u is outside 0..2", e->nmi.pending);
	if (e->interrupt.shadow & ~(KVM_X86_SHADOW_INT_MOV_SS | KVM_X86_SHADOW_INT_STI))
		return refuse(err, "events", "interrupt.shadow = 0x%x has bits outside 0x3",
			      e->interrupt.shadow);
	return 0;
}

static int check_debugregs(const struct kvm_debugregs *d, struct gw_error *err)
{
	if (d->flags)
		return refuse(err, "debugregs", "flags = 0x%llx; KVM defines none",
			      (unsigned long long)d->flags);
	if (d->dr6 >> 32 || d->dr7 >> 32)
		return refuse(err, "debugregs", "dr6 = 0x%llx, dr7 = 0x%llx: bits 63:32 are reserved",
			      (unsigned long long)d->dr6, (unsigned long long)d->dr7);
	return 0;
}

static int cpu_validate(const void *state, uint32_t version, struct gw_error *err)
{
	const struct cpu_state *s = state;
	(void)version;
	if (s->mp.mp_state > KVM_MP_STATE_SIPI_RECEIVED &&
	    s->mp.mp_state != KVM_MP_STATE_AP_RESET_HOLD)
		return refuse(err, "mp.mp_state", "%u is not an x86 MP state (0..%d or %d)",
			      s->mp.mp_state, KVM_MP_STATE_SIPI_RECEIVED, KVM_MP_STATE_AP_RESET_HOLD);
	int ret = check_rflags(s->regs.rflags, err);
	if (!ret)
		ret = check_sregs(&s->sregs, err);
	if (!ret)
		ret = check_xcrs(&s->xcrs, err);
	if (!ret)
		ret = check_events(&s->events, err);
	if (!ret)
		ret = check_debugregs(&s->debugregs, err);
	return ret;
}

static const struct gw_vmstate cpu_vmstate = GW_VMSTATE(struct cpu_state, cpu_fields);

/* ---- kvm-vm: kvmclock and the in-kernel PIC and IOAPIC --------------- */

static const struct gw_field kvm_vm_fields[] = {
	GW_FIELD(U64, struct vm_state, clock.clock),
	GW_FIELD(BYTES, struct vm_state, pic_master),
	GW_FIELD(BYTES, struct vm_state, pic_slave),
	GW_FIELD(BYTES, struct vm_state, ioapic),
};

#define IOAPIC_BASE 0xfec00000ull /* KVM's IOAPIC does not move */

#define PIC_FLAG(m) {offsetof(struct kvm_pic_state, m), #m}

/* What KVM's i8259 keeps as 0/1 (arch/x86/kvm/i8259.c). */
static const struct flag pic_flags[] = {
	PIC_FLAG(read_reg_select), PIC_FLAG(poll), PIC_FLAG(special_mask),
	PIC_FLAG(auto_eoi), PIC_FLAG(rotate_on_auto_eoi),
	PIC_FLAG(special_fully_nested_mode), PIC_FLAG(init4),
};

static int check_chip_id(const struct kvm_irqchip *c, uint32_t id, const char *field,
			 struct gw_error *err)
{
	/* KVM_SET_IRQCHIP writes the chip the blob names, whichever field
	 * it came in. */
	if (c->chip_id != id)
		return refuse(err, field, "chip_id = %u, but this field holds chip %u",
			      c->chip_id, id);
	return 0;
}

static int check_pic(const struct kvm_irqchip *c, uint32_t id, const char *field,
		     struct gw_error *err)
{
	const struct kvm_pic_state *p = &c->chip.pic;
	int ret = check_chip_id(c, id, field, err);
	if (!ret)
		ret = check_flags(p, pic_flags, ARRAY_SIZE(pic_flags), field, err);
	if (ret)
		return ret;
	/* The ICW sequence has four states; priorities and vector bases
	 * are what a guest's ICW2/OCW2 can make of them. */
	if (p->init_state > 3)
		return refuse(err, field, "init_state = %u is outside 0..3", p->init_state);
	if (p->priority_add > 7)
		return refuse(err, field, "priority_add = %u is outside 0..7", p->priority_add);
	if (p->irq_base & 7)
		return refuse(err, field, "irq_base = 0x%x is not a multiple of 8", p->irq_base);
	if (p->elcr & ~p->elcr_mask)
		return refuse(err, field, "elcr = 0x%02x sets bits outside elcr_mask 0x%02x", p->elcr,
			      p->elcr_mask);
	return 0;
}

static int check_ioapic(const struct kvm_irqchip *c, struct gw_error *err)
{
	const struct kvm_ioapic_state *a = &c->chip.ioapic;
	int ret = check_chip_id(c, KVM_IRQCHIP_IOAPIC, "ioapic", err);
	if (ret)
		return ret;
	if (a->base_address != IOAPIC_BASE)
		return refuse(err, "ioapic", "base_address = 0x%llx, but KVM's IOAPIC is at 0x%llx",
			      (unsigned long long)a->base_address, IOAPIC_BASE);
	/* IOREGSEL is an 8-bit register, the ID a 4-bit one, and there is one
	 * IRR bit per pin. */
	if (a->ioregsel > 0xff)
		return refuse(err, "ioapic", "ioregsel = 0x%x is outside 0..0xff", a->ioregsel);
	if (a->id > 15)
		return refuse(err, "ioapic", "id = %u is outside 0..15", a->id);
	if (a->irr >> KVM_IOAPIC_NUM_PINS)
		return refuse(err, "ioapic", "irr = 0x%x has bits beyond the %d pins", a->irr,
			      KVM_IOAPIC_NUM_PINS);
	return 0;
}

static int kvm_vm_validate(const void *state, uint32_t version, struct gw_error *err)
{
	const struct vm_state *s = state;
	(void)version;
	int ret = check_pic(&s->pic_master, KVM_IRQCHIP_PIC_MASTER, "pic_master", err);
	if (!ret)
		ret = check_pic(&s->pic_slave, KVM_IRQCHIP_PIC_SLAVE, "pic_slave", err);
	if (!ret)
		ret = check_ioapic(&s->ioapic, err);
	return ret;
}

static const struct gw_vmstate kvm_vm_vmstate = GW_VMSTATE(struct vm_state, kvm_vm_fields);

/* ---- uart ----------------------------------------------------------- */

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
		return refuse(err, "fcr", "0x%02x sets bits outside 0x%02x", s->fcr, UART_FCR_BITS);
	/* IIR and LSR follow from the rest after every access. */
	if (s->iir != uart_iir(s))
		return refuse(err, "iir", "0x%02x, but ier, fcr, rx_count and thr_irq_pending make it 0x%02x",
			      s->iir, uart_iir(s));
	if (s->lsr != lsr)
		return refuse(err, "lsr", "0x%02x, but with %u bytes received it is 0x%02x", s->lsr,
			      s->rx_count, lsr);
	return 0;
}

static const struct gw_vmstate uart_vmstate = GW_VMSTATE(struct uart_state, uart_fields);

/* ---- testdev and run-state ------------------------------------------ */

/* Arguments of test-device commands are 24 bits wide (guests/abi.h). */
static const struct gw_field testdev_fields[] = {
	GW_FIELD_RANGE(U8, struct testdev_state, ready, 0, 1),
	GW_FIELD_RANGE(U8, struct testdev_state, check_failed, 0, 1),
	GW_FIELD_RANGE(U8, struct testdev_state, exit_requested, 0, 1),
	GW_FIELD(U8, struct testdev_state, exit_status),
	GW_FIELD_RANGE(U32, struct testdev_state, first_bad_page, 0, GW_TESTDEV_ARG_MASK),
	GW_FIELD(U64, struct testdev_state, check_ok),
	GW_FIELD(U64, struct testdev_state, passes),
	GW_FIELD_RANGE(U64, struct testdev_state, pages_per_pass, 0, GW_TESTDEV_ARG_MASK),
};
static const struct gw_vmstate testdev_vmstate = GW_VMSTATE(struct testdev_state, testdev_fields);

static const struct gw_field run_state_fields[] = {
	GW_FIELD_RANGE(U8, struct run_state, running, 0, 1),
};
static const struct gw_vmstate run_state_vmstate = GW_VMSTATE(struct run_state, run_state_fields);

/* ---- registration --------------------------------------------------- */

int sections_register(struct gw_migration *m, const struct sections_state *st,
		      struct gw_error *err)
{
	for (unsigned i = 0; i < st->nr_cpus; i++) {
		const struct gw_section cpu = {
			.name = "cpu", .instance = i, .version = 1, .min_version = 1,
			.vmstate = &cpu_vmstate, .validate = cpu_validate, .opaque = &st->cpus[i],
		};
		int ret = gw_migration_add_section(m, &cpu, err);
		if (ret)
			return ret;
	}
	const struct gw_section sections[] = {
		{.name = "kvm-vm", .version = 1, .min_version = 1, .vmstate = &kvm_vm_vmstate,
		 .validate = kvm_vm_validate, .opaque = st->kvm_vm},
		{.name = "uart", .version = 1, .min_version = 1, .vmstate = &uart_vmstate,
		 .validate = uart_validate, .opaque = st->uart},
		{.name = "testdev", .version = 1, .min_version = 1, .vmstate = &testdev_vmstate,
		 .opaque = st->testdev},
		{.name = "run-state", .version = 1, .min_version = 1, .vmstate = &run_state_vmstate,
		 .opaque = st->run},
	};
	for (size_t i = 0; i < ARRAY_SIZE(sections); i++) {
		int ret = gw_migration_add_section(m, &sections[i], err);
		if (ret)
			return ret;
	}
	return 0;
}
