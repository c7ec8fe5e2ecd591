/*
 * The source's post-copy phase (docs/format.md, "Post-copy" and
 * "Post-copy recovery"), from the end of the switch's stream on: the
 * destination's READY, the commit point and GO; then the destination
 * runs the guest and this side answers its page requests until every
 * page of the stale set has gone, and waits for its RUNNING.
 *
 * From GO on neither side alone holds the guest, so a broken connection
 * (or a destination out of step) is not an end: the status turns
 * postcopy-paused, this guest stays paused with the pages still owed,
 * and gw_precopy_resume() hands in a new connection to the destination
 * (which must be waiting for it: QEMU's migrate-recover); after the
 * resume handshake the serving goes on. Only a FAILED from the
 * destination (its guest will not go on) or the VMM going away ends it
 * before RUNNING, and then this copy stays paused (unconfirmed).
 */
#ifndef GW_LIB_ENGINE_POSTCOPY_SOURCE_H
#define GW_LIB_ENGINE_POSTCOPY_SOURCE_H

#include <stdint.h>

#include <godwit/channel.h>
#include <godwit/precopy.h>

#include "lib/engine/outgoing.h"

struct gw_pc_source {
	struct gw_precopy *h; /* the engine: job, stats */
	struct gw_migration *m;
	struct gw_channel *ch;  /* the engine's: a recovery replaces it */
	struct gw_handover *ho; /* the engine's */
	uint64_t *const *stale; /* per RAM block: the set the switch sent; cleared as pages leave */
	uint64_t pause_ns;      /* the guest paused: the blackout ends at GO */
};

/* After the switch's EOF (its stream flushed): 0 once the destination
 * said RUNNING, the last page in. */
int gw_postcopy_source_run(struct gw_pc_source *s, const struct gw_precopy_params *pp,
			   struct gw_error *err);

#endif
