/*
 * A new connection handed to a paused post-copy (postcopy_source.h,
 * postcopy_dest.h): the caller's thread (a VMM's, from QMP) gives it,
 * the phase's thread, waiting in postcopy-paused, takes it and runs the
 * resume handshake on it. One slot, an eventfd that says it is full;
 * everything under the job's lock.
 */
#ifndef GW_LIB_ENGINE_POSTCOPY_HANDOFF_H
#define GW_LIB_ENGINE_POSTCOPY_HANDOFF_H

#include <stdbool.h>

#include <godwit/channel.h>
#include <godwit/error.h>

#include "lib/engine/job.h"

struct gw_pc_handoff {
	int efd;      /* readable once a connection is given; -1 while shut */
	bool pending; /* ch holds one the phase has not taken yet */
	struct gw_channel ch;
};

/* Set the slot up: from now on gw_pc_handoff_give() may succeed. */
int gw_pc_handoff_open(struct gw_pc_handoff *h, struct gw_job *j, struct gw_error *err);
/* No more: a connection given and not taken is closed. Idempotent. */
void gw_pc_handoff_shut(struct gw_pc_handoff *h, struct gw_job *j);

/*
 * With j->lock held: take ch (*ch cleared) for a phase in
 * GW_MIG_POSTCOPY_PAUSED. -EINVAL in any other status, for a channel
 * that cannot answer, or once shut; -EBUSY while one waits already.
 */
int gw_pc_handoff_give(struct gw_pc_handoff *h, struct gw_job *j, struct gw_channel *ch,
		       struct gw_error *err);

/* The phase's thread: wait, with no limit (the operator decides when to
 * retry), for a connection given, or for a stop of j (-ECANCELED). */
int gw_pc_handoff_take(struct gw_pc_handoff *h, struct gw_job *j, struct gw_channel *ch,
		       struct gw_error *err);

#endif
