/*
 * The KVM virtual machine: /dev/kvm, the VM fd, memory slots and the
 * in-kernel interrupt controller. vCPUs are in vcpu.c.
 */
#ifndef GW_VMM_KVM_H
#define GW_VMM_KVM_H

#include <stddef.h>
#include <stdint.h>

struct guest_ram;
struct kvm_cpuid2;

struct kvm {
	int sys_fd; /* /dev/kvm */
	int vm_fd;
	int run_size;             /* mmap size of struct kvm_run */
	struct kvm_cpuid2 *cpuid; /* KVM_GET_SUPPORTED_CPUID, shared by vCPUs */
	unsigned nr_slots;        /* RAM slots registered (kvm_map_ram) */
};

/* -ENOENT with a clear message when /dev/kvm is missing. */
int kvm_create(struct kvm *kvm, char *errmsg, size_t errlen);
void kvm_destroy(struct kvm *kvm);

/* One memory slot per RAM block, slot id = block index. */
int kvm_map_ram(struct kvm *kvm, const struct guest_ram *ram, char *errmsg, size_t errlen);

/* Make next the guest's memory in place of cur (vCPUs stopped): cur's
 * slots (if any were registered) are deleted and next's created; on
 * failure cur's are back as they were. */
int kvm_replace_ram(struct kvm *kvm, const struct guest_ram *cur, const struct guest_ram *next,
		    char *errmsg, size_t errlen);

/* Turn KVM dirty logging on or off for every RAM slot. */
int kvm_set_dirty_logging(struct kvm *kvm, const struct guest_ram *ram, int on);

/* Level-triggered ISA interrupt line (in-kernel PIC/IOAPIC). */
int kvm_irq_line(struct kvm *kvm, unsigned irq, int level);

#endif
