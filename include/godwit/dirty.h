/*
 * The manual dirty-page back-end: for programs that know every write they
 * make to the memory they migrate (tests, a process migrating its own
 * memory, a VMM's own writes when no hardware tracking runs). The program
 * reports each write with gw_dirty_manual_mark() and hands
 * gw_dirty_manual_ops to gw_migration_set_dirty_ops() with the object as
 * opaque; the migration engine collects the marks at each sync.
 *
 *     struct gw_dirty_manual *d;
 *     gw_dirty_manual_new(m, &d, &err);     // after the RAM blocks are added
 *     gw_migration_set_dirty_ops(m, &gw_dirty_manual_ops, d, &err);
 *     ...
 *     memcpy(ram + off, src, len);
 *     gw_dirty_manual_mark(d, 0, off, len); // after the write, never before
 *
 * Mark after writing: a mark made before the write can be collected, and
 * the page sent, before the new data is there, and nothing would send it
 * again. Tracking is always on (a mark costs one atomic OR per 64 pages),
 * so marks made before a migration starts are harmless: its first round
 * sends every populated page anyway.
 *
 * Threads: gw_dirty_manual_mark() may be called from any number of threads
 * at once, also while a sync runs. The object must outlive every migration
 * that uses it; free it after gw_precopy_free().
 */
#ifndef GODWIT_DIRTY_H
#define GODWIT_DIRTY_H

#include <stdint.h>

#include <godwit/error.h>
#include <godwit/export.h>
#include <godwit/migration.h>
#include <godwit/tracking.h>

#ifdef __cplusplus
extern "C" {
#endif

struct gw_dirty_manual;

/* Track the RAM blocks m has now (their sizes are read here, once). */
GW_API int gw_dirty_manual_new(const struct gw_migration *m, struct gw_dirty_manual **out,
			       struct gw_error *err);
GW_API void gw_dirty_manual_free(struct gw_dirty_manual *d);

/*
 * Record a write of len bytes at byte offset off of RAM block `block`
 * (registration order): every page the range touches becomes dirty.
 * Returns 0, or -EINVAL (nothing marked) if the block does not exist or
 * the range leaves it; len 0 marks nothing.
 */
GW_API int gw_dirty_manual_mark(struct gw_dirty_manual *d, uint32_t block, uint64_t off,
				uint64_t len);

/* The ops to register, with the gw_dirty_manual as opaque. */
GW_API extern const struct gw_dirty_ops gw_dirty_manual_ops;

#ifdef __cplusplus
}
#endif

#endif
