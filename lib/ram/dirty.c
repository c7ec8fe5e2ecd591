/*
 * Dirty-page tracking: how a migration object learns its tracker, and the
 * manual back-end (<godwit/dirty.h>). Hardware back-ends (KVM dirty log,
 * dirty ring) live in the VMM, which knows KVM; they reach the engines
 * through the same struct gw_dirty_ops.
 */
#include <errno.h>
#include <stdlib.h>

#include <godwit/dirty.h>
#include <godwit/precopy.h>

#include "lib/bitmap.h"
#include "lib/internal.h"

int gw_migration_set_dirty_ops(struct gw_migration *m, const struct gw_dirty_ops *ops, void *opaque,
			       struct gw_error *err)
{
	if (!ops || !ops->sync)
		return gw_error_set(err, -EINVAL, "dirty tracking: the sync callback is required");
	m->dirty_ops = *ops;
	m->dirty_opaque = opaque;
	return 0;
}

void gw_migration_end_tracking(struct gw_migration *m)
{
	if (m->tracking && m->dirty_ops.stop)
		m->dirty_ops.stop(m->dirty_opaque);
	m->tracking = false;
	m->incr.valid = false;
}

struct manual_block {
	uint64_t pages;
	uint64_t *bits; /* accessed only with atomics */
};

struct gw_dirty_manual {
	uint32_t nr_blocks;
	struct manual_block blocks[];
};

int gw_dirty_manual_new(const struct gw_migration *m, struct gw_dirty_manual **out,
			struct gw_error *err)
{
	struct gw_dirty_manual *d;

	d = calloc(1, sizeof(*d) + m->nr_ram * sizeof(d->blocks[0]));
	if (!d)
		return gw_error_set(err, -ENOMEM, "manual dirty tracking: out of memory");
	d->nr_blocks = m->nr_ram;
	for (uint32_t i = 0; i < m->nr_ram; i++) {
		struct manual_block *b = &d->blocks[i];

		b->pages = m->ram[i].size / GW_PAGE_SIZE;
		b->bits = calloc(gw_bitmap_words(b->pages), sizeof(*b->bits));
		if (!b->bits) {
			gw_dirty_manual_free(d);
			return gw_error_set(err, -ENOMEM,
					    "manual dirty tracking: out of memory for RAM block '%s'",
					    m->ram[i].name);
		}
	}
	*out = d;
	return 0;
}

void gw_dirty_manual_free(struct gw_dirty_manual *d)
{
	if (!d)
		return;
	for (uint32_t i = 0; i < d->nr_blocks; i++)
		free(d->blocks[i].bits);
	free(d);
}

int gw_dirty_manual_mark(struct gw_dirty_manual *d, uint32_t block, uint64_t off, uint64_t len)
{
	const struct manual_block *b;
	uint64_t first, last;

	if (block >= d->nr_blocks)
		return -EINVAL;
	b = &d->blocks[block];
	if (off + len < off || off + len > b->pages * GW_PAGE_SIZE)
		return -EINVAL;
	if (len == 0)
		return 0;
	first = off / GW_PAGE_SIZE;
	last = (off + len - 1) / GW_PAGE_SIZE;
	for (uint64_t w = first / 64; w <= last / 64; w++) {
		uint64_t lo = w == first / 64 ? first % 64 : 0;
		uint64_t hi = w == last / 64 ? last % 64 : 63;
		uint64_t mask = (~0ull << lo) & (~0ull >> (63 - hi));

		/* Release: the engine that collects the bit sees the write before it. */
		__atomic_fetch_or(&b->bits[w], mask, __ATOMIC_RELEASE);
	}
	return 0;
}

static int manual_sync(void *opaque, uint32_t block, uint64_t *bitmap, struct gw_error *err)
{
	struct gw_dirty_manual *d = opaque;
	const struct manual_block *b;

	if (block >= d->nr_blocks)
		return gw_error_set(err, -EINVAL,
				    "manual dirty tracking: no RAM block %u (it tracks %u; create it after adding RAM)",
				    block, d->nr_blocks);
	b = &d->blocks[block];
	for (size_t w = 0; w < gw_bitmap_words(b->pages); w++) {
		/* Most words are clear: look before writing the cache line. */
		if (!__atomic_load_n(&b->bits[w], __ATOMIC_RELAXED))
			continue;
		/* Taking the word re-arms it: a mark after this lands in the next sync. */
		bitmap[w] |= __atomic_exchange_n(&b->bits[w], 0, __ATOMIC_ACQUIRE);
	}
	return 0;
}

const struct gw_dirty_ops gw_dirty_manual_ops = {
	.sync = manual_sync,
};
