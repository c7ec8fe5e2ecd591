/*
 * Dirty-page tracking for libgodwit from KVM's dirty log, in manual-protect
 * mode, plus the pages the VMM itself wrote (guest_ram_write).
 */
#ifndef GW_VMM_DIRTY_KVM_H
#define GW_VMM_DIRTY_KVM_H

#include <godwit/precopy.h>

struct kvm;
struct guest_ram;

struct dirty_kvm {
	struct kvm *kvm;
	struct guest_ram *ram;
	uint64_t *scratch; /* one block's worth of bitmap */
};

int dirty_kvm_init(struct dirty_kvm *d, struct kvm *kvm, struct guest_ram *ram);
void dirty_kvm_destroy(struct dirty_kvm *d);

extern const struct gw_dirty_ops dirty_kvm_ops;

#endif
