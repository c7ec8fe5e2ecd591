#include "vmm/kvm/dirty_kvm.h"
#include "vmm/kvm/guest_ram.h"
#include "vmm/kvm/kvm.h"

#include <errno.h>
#include <linux/kvm.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

/* Pages re-protected per KVM_CLEAR_DIRTY_LOG: 1 GiB, so the kernel's MMU
 * lock is never held for a whole large slot while vCPUs fault. */
#define CLEAR_CHUNK_PAGES (1u << 18)

static uint64_t block_pages(const struct ram_block *b)
{
	return b->size / 4096;
}

int dirty_kvm_init(struct dirty_kvm *d, struct kvm *kvm, struct guest_ram *ram)
{
	uint64_t max_pages = 0;
	for (unsigned i = 0; i < ram->nr_blocks; i++)
		if (block_pages(&ram->blocks[i]) > max_pages)
			max_pages = block_pages(&ram->blocks[i]);
	d->kvm = kvm;
	d->ram = ram;
	d->scratch = calloc((max_pages + 63) / 64, sizeof(uint64_t));
	return d->scratch ? 0 : -ENOMEM;
}

void dirty_kvm_destroy(struct dirty_kvm *d)
{
	free(d->scratch);
	d->scratch = NULL;
}

static int dk_start(void *opaque, struct gw_error *err)
{
	struct dirty_kvm *d = opaque;
	if (kvm_set_dirty_logging(d->kvm, d->ram, 1) < 0)
		return gw_error_set(err, -errno, "enabling KVM dirty logging: %s", strerror(errno));
	/* Earlier VMM writes are covered by the first full round. */
	for (unsigned i = 0; i < d->ram->nr_blocks; i++) {
		memset(d->scratch, 0, (block_pages(&d->ram->blocks[i]) + 63) / 64 * 8);
		guest_ram_take_vmm_dirty(d->ram, i, d->scratch);
	}
	return 0;
}

static int dk_sync(void *opaque, uint32_t block, uint64_t *bitmap, struct gw_error *err)
{
	struct dirty_kvm *d = opaque;
	if (block >= d->ram->nr_blocks)
		return gw_error_set(err, -EINVAL, "dirty sync: no RAM block %u", block);
	uint64_t pages = block_pages(&d->ram->blocks[block]);
	uint64_t words = (pages + 63) / 64;
	memset(d->scratch, 0, words * 8);
	struct kvm_dirty_log log = {.slot = block, .dirty_bitmap = d->scratch};
	if (ioctl(d->kvm->vm_fd, KVM_GET_DIRTY_LOG, &log) < 0)
		return gw_error_set(err, -errno, "KVM_GET_DIRTY_LOG on slot %u: %s", block,
				    strerror(errno));
	/* Re-protect exactly the pages reported, before anyone reads them:
	 * a guest write after this point is in the next sync. */
	for (uint64_t first = 0; first < pages; first += CLEAR_CHUNK_PAGES) {
		uint64_t n = pages - first < CLEAR_CHUNK_PAGES ? pages - first : CLEAR_CHUNK_PAGES;
		bool any = false;
		for (uint64_t w = first / 64; w < (first + n + 63) / 64 && !any; w++)
			any = d->scratch[w] != 0;
		if (!any)
			continue;
		struct kvm_clear_dirty_log clear = {
			.slot = block,
			.num_pages = (uint32_t)n,
			.first_page = first,
			.dirty_bitmap = d->scratch + first / 64,
		};
		if (ioctl(d->kvm->vm_fd, KVM_CLEAR_DIRTY_LOG, &clear) < 0)
			return gw_error_set(err, -errno, "KVM_CLEAR_DIRTY_LOG on slot %u: %s",
					    block, strerror(errno));
	}
	for (uint64_t w = 0; w < words; w++)
		bitmap[w] |= d->scratch[w];
	guest_ram_take_vmm_dirty(d->ram, block, bitmap);
	return 0;
}

static void dk_stop(void *opaque)
{
	struct dirty_kvm *d = opaque;
	kvm_set_dirty_logging(d->kvm, d->ram, 0);
}

const struct gw_dirty_ops dirty_kvm_ops = {
	.start = dk_start,
	.sync = dk_sync,
	.stop = dk_stop,
};
