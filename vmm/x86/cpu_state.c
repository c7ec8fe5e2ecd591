#include "vmm/x86/cpu_state.h"
#include "vmm/kvm/kvm.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

/* An ioctl failed: name it and errno in words. */
static int fail(char *errmsg, size_t errlen, const char *what)
{
	int err = -errno;
	snprintf(errmsg, errlen, "%s: %s", what, strerror(errno));
	return err;
}

/* A KVM_GET/SET_MSRS call that returns how many entries it handled. */
static int msrs_short(char *errmsg, size_t errlen, const char *what, int n, uint32_t want,
		      const struct kvm_msr_entry *entries)
{
	if (n < 0)
		return fail(errmsg, errlen, what);
	/* KVM stops at the first MSR it refuses, so entry n is the culprit. */
	snprintf(errmsg, errlen, "%s handled %d of %u MSRs (MSR 0x%x refused)", what, n, want,
		 (uint32_t)n < want ? entries[n].index : 0);
	return -EINVAL;
}

static struct kvm_msrs *msrs_alloc(uint32_t n, char *errmsg, size_t errlen)
{
	struct kvm_msrs *m = calloc(1, sizeof(*m) + n * sizeof(struct kvm_msr_entry));
	if (!m)
		snprintf(errmsg, errlen, "out of memory for %u MSRs", n);
	return m;
}

int cpu_state_check_host(struct kvm *kvm, char *errmsg, size_t errlen)
{
	int n = ioctl(kvm->vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_XSAVE2);
	if (n > (int)sizeof(struct kvm_xsave)) {
		snprintf(errmsg, errlen, "host XSAVE area is %d bytes; migration supports %zu", n,
			 sizeof(struct kvm_xsave));
		return -ENOTSUP;
	}
	return 0;
}

/*
 * KVM_GET_MSR_INDEX_LIST names every MSR KVM knows, but some of them
 * cannot be read on a given host or CPUID; KVM_GET_MSRS stops at the
 * first such one. Probe each once so the saved list is exactly the MSRs
 * that round-trip.
 */
int msr_list_probe(struct kvm *kvm, int vcpu_fd, struct msr_list *out, char *errmsg, size_t errlen)
{
	struct {
		struct kvm_msr_list hdr;
		uint32_t index[1024];
	} all = {.hdr.nmsrs = 1024};
	if (ioctl(kvm->sys_fd, KVM_GET_MSR_INDEX_LIST, &all) < 0)
		return fail(errmsg, errlen, "KVM_GET_MSR_INDEX_LIST");
	out->nr = 0;
	for (uint32_t i = 0; i < all.hdr.nmsrs && out->nr < CPU_STATE_MAX_MSRS; i++) {
		struct {
			struct kvm_msrs hdr;
			struct kvm_msr_entry e;
		} one = {.hdr.nmsrs = 1, .e.index = all.index[i]};
		if (ioctl(vcpu_fd, KVM_GET_MSRS, &one) == 1)
			out->index[out->nr++] = all.index[i];
	}
	return 0;
}

int cpu_state_save(struct kvm *kvm, int fd, const struct msr_list *msrs, struct cpu_state *s,
		   char *errmsg, size_t errlen)
{
	(void)kvm;
	if (ioctl(fd, KVM_GET_REGS, &s->regs) < 0)
		return fail(errmsg, errlen, "KVM_GET_REGS");
	if (ioctl(fd, KVM_GET_SREGS, &s->sregs) < 0)
		return fail(errmsg, errlen, "KVM_GET_SREGS");
	if (ioctl(fd, KVM_GET_XCRS, &s->xcrs) < 0)
		return fail(errmsg, errlen, "KVM_GET_XCRS");
	if (ioctl(fd, KVM_GET_LAPIC, &s->lapic) < 0)
		return fail(errmsg, errlen, "KVM_GET_LAPIC");
	if (ioctl(fd, KVM_GET_VCPU_EVENTS, &s->events) < 0)
		return fail(errmsg, errlen, "KVM_GET_VCPU_EVENTS");
	if (ioctl(fd, KVM_GET_MP_STATE, &s->mp) < 0)
		return fail(errmsg, errlen, "KVM_GET_MP_STATE");
	if (ioctl(fd, KVM_GET_DEBUGREGS, &s->debugregs) < 0)
		return fail(errmsg, errlen, "KVM_GET_DEBUGREGS");

	if (ioctl(fd, KVM_GET_XSAVE, &s->xsave) < 0)
		return fail(errmsg, errlen, "KVM_GET_XSAVE");

	struct kvm_msrs *m = msrs_alloc(msrs->nr, errmsg, errlen);
	if (!m)
		return -ENOMEM;
	m->nmsrs = msrs->nr;
	for (uint32_t i = 0; i < msrs->nr; i++)
		m->entries[i].index = msrs->index[i];
	int n = ioctl(fd, KVM_GET_MSRS, m);
	if (n != (int)msrs->nr) {
		int ret = msrs_short(errmsg, errlen, "KVM_GET_MSRS", n, msrs->nr, m->entries);
		free(m);
		return ret;
	}
	s->nr_msrs = msrs->nr;
	memcpy(s->msrs, m->entries, msrs->nr * sizeof(struct kvm_msr_entry));
	free(m);
	return 0;
}

/* The order follows the dependencies inside KVM: segment state and CR4
 * before the XSAVE area it enables, MSRs after sregs (EFER, APIC base),
 * the LAPIC before events that may reference pending interrupts. */
int cpu_state_load(struct kvm *kvm, int fd, const struct cpu_state *s, char *errmsg, size_t errlen)
{
	(void)kvm;
	/* The loader's range check already refused this; a count past the
	 * array must never reach the copy below, whoever filled s. Checked
	 * before the first ioctl, so a refused state changes nothing. */
	if (s->nr_msrs > CPU_STATE_MAX_MSRS) {
		snprintf(errmsg, errlen, "nr_msrs %u exceeds the %d MSRs the state holds",
			 s->nr_msrs, CPU_STATE_MAX_MSRS);
		return -EINVAL;
	}
	if (ioctl(fd, KVM_SET_SREGS, &s->sregs) < 0)
		return fail(errmsg, errlen, "KVM_SET_SREGS");
	if (ioctl(fd, KVM_SET_REGS, &s->regs) < 0)
		return fail(errmsg, errlen, "KVM_SET_REGS");
	if (ioctl(fd, KVM_SET_XCRS, &s->xcrs) < 0)
		return fail(errmsg, errlen, "KVM_SET_XCRS");
	if (ioctl(fd, KVM_SET_XSAVE, &s->xsave) < 0)
		return fail(errmsg, errlen, "KVM_SET_XSAVE");

	struct kvm_msrs *m = msrs_alloc(s->nr_msrs, errmsg, errlen);
	if (!m)
		return -ENOMEM;
	m->nmsrs = s->nr_msrs;
	memcpy(m->entries, s->msrs, s->nr_msrs * sizeof(struct kvm_msr_entry));
	int n = ioctl(fd, KVM_SET_MSRS, m);
	int ret = n == (int)s->nr_msrs ?
			  0 :
			  msrs_short(errmsg, errlen, "KVM_SET_MSRS", n, s->nr_msrs, m->entries);
	free(m);
	if (ret)
		return ret;
	if (ioctl(fd, KVM_SET_MP_STATE, &s->mp) < 0)
		return fail(errmsg, errlen, "KVM_SET_MP_STATE");
	if (ioctl(fd, KVM_SET_LAPIC, &s->lapic) < 0)
		return fail(errmsg, errlen, "KVM_SET_LAPIC");
	if (ioctl(fd, KVM_SET_VCPU_EVENTS, &s->events) < 0)
		return fail(errmsg, errlen, "KVM_SET_VCPU_EVENTS");
	if (ioctl(fd, KVM_SET_DEBUGREGS, &s->debugregs) < 0)
		return fail(errmsg, errlen, "KVM_SET_DEBUGREGS");
	return 0;
}

int vm_state_save(struct kvm *kvm, struct vm_state *s, char *errmsg, size_t errlen)
{
	memset(s, 0, sizeof(*s));
	if (ioctl(kvm->vm_fd, KVM_GET_CLOCK, &s->clock) < 0)
		return fail(errmsg, errlen, "KVM_GET_CLOCK");
	s->pic_master.chip_id = KVM_IRQCHIP_PIC_MASTER;
	s->pic_slave.chip_id = KVM_IRQCHIP_PIC_SLAVE;
	s->ioapic.chip_id = KVM_IRQCHIP_IOAPIC;
	if (ioctl(kvm->vm_fd, KVM_GET_IRQCHIP, &s->pic_master) < 0)
		return fail(errmsg, errlen, "KVM_GET_IRQCHIP (PIC master)");
	if (ioctl(kvm->vm_fd, KVM_GET_IRQCHIP, &s->pic_slave) < 0)
		return fail(errmsg, errlen, "KVM_GET_IRQCHIP (PIC slave)");
	if (ioctl(kvm->vm_fd, KVM_GET_IRQCHIP, &s->ioapic) < 0)
		return fail(errmsg, errlen, "KVM_GET_IRQCHIP (IOAPIC)");
	return 0;
}

int vm_state_load(struct kvm *kvm, const struct vm_state *s, char *errmsg, size_t errlen)
{
	/* Only the clock value travels: the flags describe the source host's
	 * clock source and are not settable. */
	struct kvm_clock_data clock = {.clock = s->clock.clock};
	if (ioctl(kvm->vm_fd, KVM_SET_CLOCK, &clock) < 0)
		return fail(errmsg, errlen, "KVM_SET_CLOCK");
	if (ioctl(kvm->vm_fd, KVM_SET_IRQCHIP, &s->pic_master) < 0)
		return fail(errmsg, errlen, "KVM_SET_IRQCHIP (PIC master)");
	if (ioctl(kvm->vm_fd, KVM_SET_IRQCHIP, &s->pic_slave) < 0)
		return fail(errmsg, errlen, "KVM_SET_IRQCHIP (PIC slave)");
	if (ioctl(kvm->vm_fd, KVM_SET_IRQCHIP, &s->ioapic) < 0)
		return fail(errmsg, errlen, "KVM_SET_IRQCHIP (IOAPIC)");
	return 0;
}
