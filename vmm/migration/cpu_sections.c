/*
 * What a migration moves of each vCPU and of the VM-wide KVM state, and
 * what a destination accepts back.
 *
 * Loaded state is hostile until checked: a stream with valid checksums can
 * still carry any value (a writer bug, a different VMM, or someone who
 * recomputed the CRCs). So every field that indexes, counts or names an
 * enum declares its range in the table, and each section's validator
 * refuses what a range cannot express: reserved bits that must be clear
 * or set, values that must agree with each other, register bits a guest
 * cannot set. libgodwit runs both on a scratch copy before it replaces a
 * section's State, so a refused section never reaches KVM.
 *
 * The rule for a check: refuse what the hardware could never hold, and
 * nothing a real source can produce. Where KVM validates a value itself
 * on KVM_SET_*, checking it here too costs nothing and names the field
 * instead of an ioctl.
 */
#include "vmm/migration/cpu_sections.h"
#include "vmm/vmm.h"
#include "vmm/machine.h"
#include "vmm/migration/migratable.h"

#include <asm/processor-flags.h>
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>

/* A u8 that KVM or a device only ever sets to 0 or 1. */
struct flag {
	size_t offset;
	const char *name;
};

static int check_flags(const void *base, const struct flag *flags, size_t n, const char *field,
		       struct gw_error *err)
{
	for (size_t i = 0; i < n; i++) {
		uint8_t v = ((const uint8_t *)base)[flags[i].offset];
		if (v > 1)
			return vmm_refuse(err, field, "%s = %u is outside 0..1", flags[i].name, v);
	}
	return 0;
}

/* ---- cpu ------------------------------------------------------------ */

/* clang-format off */
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
/* clang-format on */

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
		return vmm_refuse(err, "regs.rflags", "0x%llx has bit 1 clear; it is always set",
				  (unsigned long long)rflags);
	if (rflags & RFLAGS_RESERVED)
		return vmm_refuse(err, "regs.rflags", "0x%llx sets reserved bits 0x%llx",
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
		return vmm_refuse(err, "sregs", "cr0 = 0x%llx sets reserved bits 63:32",
				  (unsigned long long)s->cr0);
	if ((s->cr0 & X86_CR0_PG) && !(s->cr0 & X86_CR0_PE))
		return vmm_refuse(err, "sregs", "cr0 = 0x%llx enables paging without protection",
				  (unsigned long long)s->cr0);
	if ((s->cr0 & X86_CR0_NW) && !(s->cr0 & X86_CR0_CD))
		return vmm_refuse(err, "sregs", "cr0 = 0x%llx sets NW without CD",
				  (unsigned long long)s->cr0);
	if (s->cr4 >> 32)
		return vmm_refuse(err, "sregs", "cr4 = 0x%llx sets reserved bits 63:32",
				  (unsigned long long)s->cr4);
	if (s->efer & EFER_RESERVED)
		return vmm_refuse(err, "sregs", "efer = 0x%llx sets reserved bits 0x%llx",
				  (unsigned long long)s->efer,
				  (unsigned long long)(s->efer & EFER_RESERVED));
	if (!!(s->efer & EFER_LMA) != long_mode)
		return vmm_refuse(err, "sregs",
				  "efer = 0x%llx with cr0 = 0x%llx: LMA must be set exactly when LME and paging are",
				  (unsigned long long)s->efer, (unsigned long long)s->cr0);
	if (long_mode && !(s->cr4 & X86_CR4_PAE))
		return vmm_refuse(err, "sregs", "long mode with cr4 = 0x%llx, which lacks PAE",
				  (unsigned long long)s->cr4);
	if (s->cs.l && !long_mode)
		return vmm_refuse(err, "sregs", "cs.l = %u (64-bit code) outside long mode",
				  s->cs.l);
	return 0;
}

static int check_xcrs(const struct kvm_xcrs *x, struct gw_error *err)
{
	if (x->nr_xcrs > KVM_MAX_XCRS)
		return vmm_refuse(err, "xcrs", "nr_xcrs = %u is outside 0..%d", x->nr_xcrs,
				  KVM_MAX_XCRS);
	if (x->flags)
		return vmm_refuse(err, "xcrs", "flags = 0x%x; KVM defines none", x->flags);
	for (uint32_t i = 0; i < x->nr_xcrs; i++)
		if (x->xcrs[i].xcr == 0 && !(x->xcrs[i].value & 1))
			return vmm_refuse(err, "xcrs",
					  "XCR0 = 0x%llx lacks x87 state (bit 0), which is always on",
					  (unsigned long long)x->xcrs[i].value);
	return 0;
}

/* clang-format off */
#define EVENT_FLAG(m) {offsetof(struct kvm_vcpu_events, m), #m}

static const struct flag event_flags[] = {
	EVENT_FLAG(exception.injected), EVENT_FLAG(exception.has_error_code),
	EVENT_FLAG(exception.pending), EVENT_FLAG(interrupt.injected),
	EVENT_FLAG(interrupt.soft), EVENT_FLAG(nmi.injected),
	EVENT_FLAG(nmi.masked), EVENT_FLAG(smi.smm), EVENT_FLAG(smi.pending),
	EVENT_FLAG(smi.smm_inside_nmi), EVENT_FLAG(smi.latched_init),
	EVENT_FLAG(triple_fault.pending), EVENT_FLAG(exception_has_payload),
};
/* clang-format on */

static int check_events(const struct kvm_vcpu_events *e, struct gw_error *err)
{
	int ret = check_flags(e, event_flags, ARRAY_SIZE(event_flags), "events", err);
	if (ret)
		return ret;
	/* Exceptions are vectors 0..31. */
	if ((e->exception.injected || e->exception.pending) && e->exception.nr > 31)
		return vmm_refuse(err, "events", "exception.nr = %u is outside 0..31",
				  e->exception.nr);
	/* A count: one NMI being handled and one latched behind it. */
	if (e->nmi.pending > 2)
		return vmm_refuse(err, "events", "nmi.pending = %u is outside 0..2",
				  e->nmi.pending);
	if (e->interrupt.shadow & ~(KVM_X86_SHADOW_INT_MOV_SS | KVM_X86_SHADOW_INT_STI))
		return vmm_refuse(err, "events", "interrupt.shadow = 0x%x has bits outside 0x3",
				  e->interrupt.shadow);
	return 0;
}

static int check_debugregs(const struct kvm_debugregs *d, struct gw_error *err)
{
	if (d->flags)
		return vmm_refuse(err, "debugregs", "flags = 0x%llx; KVM defines none",
				  (unsigned long long)d->flags);
	if (d->dr6 >> 32 || d->dr7 >> 32)
		return vmm_refuse(err, "debugregs",
				  "dr6 = 0x%llx, dr7 = 0x%llx: bits 63:32 are reserved",
				  (unsigned long long)d->dr6, (unsigned long long)d->dr7);
	return 0;
}

static int cpu_validate(const void *state, uint32_t version, struct gw_error *err)
{
	const struct cpu_state *s = state;
	(void)version;
	if (s->mp.mp_state > KVM_MP_STATE_SIPI_RECEIVED &&
	    s->mp.mp_state != KVM_MP_STATE_AP_RESET_HOLD)
		return vmm_refuse(err, "mp.mp_state", "%u is not an x86 MP state (0..%d or %d)",
				  s->mp.mp_state, KVM_MP_STATE_SIPI_RECEIVED,
				  KVM_MP_STATE_AP_RESET_HOLD);
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

/* clang-format off */
#define PIC_FLAG(m) {offsetof(struct kvm_pic_state, m), #m}

/* What KVM's i8259 keeps as 0/1 (arch/x86/kvm/i8259.c). */
static const struct flag pic_flags[] = {
	PIC_FLAG(read_reg_select), PIC_FLAG(poll), PIC_FLAG(special_mask),
	PIC_FLAG(auto_eoi), PIC_FLAG(rotate_on_auto_eoi),
	PIC_FLAG(special_fully_nested_mode), PIC_FLAG(init4),
};
/* clang-format on */

static int check_chip_id(const struct kvm_irqchip *c, uint32_t id, const char *field,
			 struct gw_error *err)
{
	/* KVM_SET_IRQCHIP writes the chip the blob names, whichever field
	 * it came in. */
	if (c->chip_id != id)
		return vmm_refuse(err, field, "chip_id = %u, but this field holds chip %u",
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
		return vmm_refuse(err, field, "init_state = %u is outside 0..3", p->init_state);
	if (p->priority_add > 7)
		return vmm_refuse(err, field, "priority_add = %u is outside 0..7", p->priority_add);
	if (p->irq_base & 7)
		return vmm_refuse(err, field, "irq_base = 0x%x is not a multiple of 8",
				  p->irq_base);
	if (p->elcr & ~p->elcr_mask)
		return vmm_refuse(err, field, "elcr = 0x%02x sets bits outside elcr_mask 0x%02x",
				  p->elcr, p->elcr_mask);
	return 0;
}

static int check_ioapic(const struct kvm_irqchip *c, struct gw_error *err)
{
	const struct kvm_ioapic_state *a = &c->chip.ioapic;
	int ret = check_chip_id(c, KVM_IRQCHIP_IOAPIC, "ioapic", err);
	if (ret)
		return ret;
	if (a->base_address != IOAPIC_BASE)
		return vmm_refuse(err, "ioapic",
				  "base_address = 0x%llx, but KVM's IOAPIC is at 0x%llx",
				  (unsigned long long)a->base_address, IOAPIC_BASE);
	/* IOREGSEL is an 8-bit register, the ID a 4-bit one, and there is one
	 * IRR bit per pin. */
	if (a->ioregsel > 0xff)
		return vmm_refuse(err, "ioapic", "ioregsel = 0x%x is outside 0..0xff", a->ioregsel);
	if (a->id > 15)
		return vmm_refuse(err, "ioapic", "id = %u is outside 0..15", a->id);
	if (a->irr >> KVM_IOAPIC_NUM_PINS)
		return vmm_refuse(err, "ioapic", "irr = 0x%x has bits beyond the %d pins", a->irr,
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

/* ---- capture, registration, apply ------------------------------------ */

/* Source, guest paused: this vCPU's registers as KVM holds them now. */
static int cpu_pre_save(void *opaque, struct gw_error *err)
{
	struct cpu_section *c = container_of(opaque, struct cpu_section, st);
	char msg[256];
	int ret = cpu_state_save(c->kvm, c->fd, c->msrs, &c->st, msg, sizeof(msg));
	return ret ? gw_error_set(err, ret, "%s", msg) : 0;
}

static int kvm_vm_pre_save(void *opaque, struct gw_error *err)
{
	struct vm_section *v = container_of(opaque, struct vm_section, st);
	char msg[256];
	int ret = vm_state_save(v->kvm, &v->st, msg, sizeof(msg));
	return ret ? gw_error_set(err, ret, "%s", msg) : 0;
}

/* Both sides probe: the source saves the MSRs this host round-trips, and
 * a host whose XSAVE area the format cannot carry fails at start-up, not
 * in the middle of a migration. */
static int cpu_sections_init(struct vmm *vm, struct gw_migration *m, struct gw_error *err)
{
	struct cpu_sections *cs = &vm->cpu_state;
	char msg[256];
	int ret = cpu_state_check_host(&vm->kvm, msg, sizeof(msg));
	if (!ret)
		ret = msr_list_probe(&vm->kvm, vm->vcpus.vcpus[0].fd, &cs->msrs, msg, sizeof(msg));
	if (ret)
		return gw_error_set(err, ret, "%s", msg);

	cs->nr = vm->vcpus.nr;
	for (unsigned i = 0; i < cs->nr; i++) {
		struct cpu_section *c = &cs->cpu[i];
		c->kvm = &vm->kvm;
		c->fd = vm->vcpus.vcpus[i].fd;
		c->msrs = &cs->msrs;
		const struct gw_section cpu = {
			.name = "cpu",
			.instance = i,
			.version = 1,
			.min_version = 1,
			.vmstate = &cpu_vmstate,
			.validate = cpu_validate,
			.pre_save = cpu_pre_save,
			.opaque = &c->st,
		};
		ret = gw_migration_add_section(m, &cpu, err);
		if (ret)
			return ret;
	}
	cs->vm.kvm = &vm->kvm;
	const struct gw_section kvm_vm = {
		.name = "kvm-vm",
		.version = 1,
		.min_version = 1,
		.vmstate = &kvm_vm_vmstate,
		.validate = kvm_vm_validate,
		.pre_save = kvm_vm_pre_save,
		.opaque = &cs->vm.st,
	};
	return gw_migration_add_section(m, &kvm_vm, err);
}
VMM_SECTIONS(cpu_sections_init, VMM_SECTIONS_CPU);

/* The VM-wide state first, then the vCPUs: the order this VMM has always
 * restored them in, so that the vCPUs' kvmclock MSRs and LAPICs are set
 * against the clock and interrupt controllers they will run with. */
int cpu_sections_apply(struct cpu_sections *cs, struct gw_error *err)
{
	char msg[256];
	if (vm_state_load(cs->vm.kvm, &cs->vm.st, msg, sizeof(msg)))
		return gw_error_set(err, -EIO, "restoring VM state: %s", msg);
	for (unsigned i = 0; i < cs->nr; i++) {
		const struct cpu_section *c = &cs->cpu[i];
		if (cpu_state_load(c->kvm, c->fd, &c->st, msg, sizeof(msg)))
			return gw_error_set(err, -EIO, "restoring vCPU %u: %s", i, msg);
	}
	return 0;
}
