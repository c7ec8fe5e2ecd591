/*
 * The complete architectural state of a vCPU and of the VM-wide KVM
 * devices (kvmclock, PIC, IOAPIC), captured into plain structs while the
 * vCPUs are paused and put back on the destination before they run.
 *
 * Everything KVM keeps for a vCPU that a guest can observe is here:
 * general and segment registers, FPU/SSE/AVX (XSAVE area), XCRs, MSRs,
 * the local APIC, pending exceptions/interrupts/NMIs (vcpu events), the
 * MP state (running, halted, waiting for SIPI) and debug registers.
 */
#ifndef GW_VMM_CPU_STATE_H
#define GW_VMM_CPU_STATE_H

#include <linux/kvm.h>
#include <stddef.h>
#include <stdint.h>

struct kvm;
struct vcpu;

#define CPU_STATE_MAX_MSRS 256

struct cpu_state {
	struct kvm_regs regs;
	struct kvm_sregs sregs;
	struct kvm_xcrs xcrs;
	struct kvm_lapic_state lapic;
	struct kvm_vcpu_events events;
	struct kvm_mp_state mp;
	struct kvm_debugregs debugregs;
	uint32_t nr_msrs;
	struct kvm_msr_entry msrs[CPU_STATE_MAX_MSRS];
	struct kvm_xsave xsave;
};

struct vm_state {
	struct kvm_clock_data clock;
	struct kvm_irqchip pic_master, pic_slave, ioapic;
};

/* The MSRs this host lets us read and write, probed once per VM. */
struct msr_list {
	uint32_t nr;
	uint32_t index[CPU_STATE_MAX_MSRS];
};

int msr_list_probe(struct kvm *kvm, int vcpu_fd, struct msr_list *out, char *errmsg, size_t errlen);

/* -ENOTSUP if this host's XSAVE area is larger than struct kvm_xsave
 * (AMX tile data), which the state format does not carry yet. */
int cpu_state_check_host(struct kvm *kvm, char *errmsg, size_t errlen);

/* The vCPU must be paused (parked after an EINTR from KVM_RUN). */
int cpu_state_save(struct kvm *kvm, int vcpu_fd, const struct msr_list *msrs, struct cpu_state *s,
		   char *errmsg, size_t errlen);
int cpu_state_load(struct kvm *kvm, int vcpu_fd, const struct cpu_state *s, char *errmsg,
		   size_t errlen);

int vm_state_save(struct kvm *kvm, struct vm_state *s, char *errmsg, size_t errlen);
int vm_state_load(struct kvm *kvm, const struct vm_state *s, char *errmsg, size_t errlen);

#endif
