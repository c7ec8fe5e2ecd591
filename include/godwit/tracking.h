/*
 * Dirty-page tracking: how an engine learns which guest pages were
 * written since it last looked. Every engine that copies RAM while the
 * guest runs uses it (pre-copy now; background snapshot and post-copy
 * recovery later), so it is its own concept, apart from any engine.
 */
#ifndef GODWIT_TRACKING_H
#define GODWIT_TRACKING_H

#include <stdint.h>

#include <godwit/error.h>
#include <godwit/export.h>

#ifdef __cplusplus
extern "C" {
#endif

struct gw_migration;

/*
 * Dirty-page tracking, provided by the VMM (KVM dirty log, userfaultfd)
 * or by the library's manual back-end for programs that mark writes
 * themselves.
 *
 * start: begin tracking every RAM block; from here on every write to
 *   guest memory, by the guest or by the VMM, must be reported by sync.
 * sync: OR into bitmap (bit i = page i of block, GW_PAGE_SIZE pages, 64
 *   pages per word) every page written since start or since the previous
 *   sync of that block, and re-arm tracking for those pages BEFORE
 *   returning: a write that lands after sync returns must appear in the
 *   next sync. The engine reads the pages only after sync returns.
 * stop: end tracking (also after failures and cancels).
 * Only sync is required; start and stop may be NULL (a tracker that is
 * always on, like the manual one of <godwit/dirty.h>).
 */
struct gw_dirty_ops {
	int (*start)(void *opaque, struct gw_error *err);
	int (*sync)(void *opaque, uint32_t block, uint64_t *bitmap, struct gw_error *err);
	void (*stop)(void *opaque);
};

GW_API int gw_migration_set_dirty_ops(struct gw_migration *m, const struct gw_dirty_ops *ops,
				      void *opaque, struct gw_error *err);
/* Stop the dirty tracking an incremental save left on
 * (gw_precopy_params.incremental); the next save of m is a full one. Call
 * it only while no engine runs on m. */
GW_API void gw_migration_end_tracking(struct gw_migration *m);

#ifdef __cplusplus
}
#endif

#endif
