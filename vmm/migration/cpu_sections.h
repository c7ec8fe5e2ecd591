/*
 * The cpu and kvm-vm sections: what a migration moves of the vCPU and
 * VM-wide KVM state (vmm/x86/cpu_state.c reads and writes it), which values a
 * destination accepts back, and when the state is taken and put back.
 *
 * The source reads it from KVM in the sections' pre_save hooks, with the
 * vCPUs paused, right before each section is saved. The destination
 * decodes and checks it into the buffers below and puts it into KVM only
 * once the whole stream has loaded (cpu_sections_apply(), from the
 * prepare vm op): a stream that fails after the cpu sections must leave
 * nothing a guest could run.
 *
 * Everything here reaches KVM through vmm/x86/cpu_state.c, so the load
 * fuzzer links these very tables and checks over a KVM of its own.
 */
#ifndef GW_VMM_CPU_SECTIONS_H
#define GW_VMM_CPU_SECTIONS_H

#include <godwit/error.h>

#include "vmm/x86/cpu_state.h"
#include "guests/abi.h"

/* Section "cpu", instance = the vCPU's index. */
struct cpu_section {
	struct kvm *kvm;
	int fd; /* the vCPU's */
	const struct msr_list *msrs;
	/* What the section saves and loads; last, since struct kvm_xsave
	 * ends in a flexible array (unused here). */
	struct cpu_state st;
};

/* Section "kvm-vm": kvmclock and the in-kernel PIC and IOAPIC. */
struct vm_section {
	struct vm_state st;
	struct kvm *kvm;
};

struct cpu_sections {
	struct msr_list msrs; /* probed when the sections are registered */
	unsigned nr;
	struct cpu_section cpu[GW_MAX_VCPUS];
	struct vm_section vm;
};

/* Destination, once the whole stream has loaded and checked out: the
 * VM-wide state, then each vCPU's, into KVM. The guest does not run. */
int cpu_sections_apply(struct cpu_sections *cs, struct gw_error *err);

#endif
