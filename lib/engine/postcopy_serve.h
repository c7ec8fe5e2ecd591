/*
 * The source's side of post-copy once the destination runs the guest
 * (docs/format.md, "Post-copy"): answer the destination's requests, in
 * the order they come, until every page of the stale set has gone once.
 * The source's own guest is paused throughout, so its RAM is the truth
 * and every answer goes under DATA_CRC.
 *
 * The set is the source's record of what the destination still lacks:
 * a request for a page outside it (a page the destination has, or was
 * sent already) is a destination out of step, and fails rather than
 * send a page twice, which could land over one the guest has written.
 */
#ifndef GW_LIB_ENGINE_POSTCOPY_SERVE_H
#define GW_LIB_ENGINE_POSTCOPY_SERVE_H

#include <stdbool.h>
#include <stdint.h>

#include <godwit/error.h>

#include "lib/cancel.h"

struct gw_migration;
struct gw_writer;

/* Added to atomically as answers leave: any thread may read them so. */
struct gw_pc_serve_stats {
	uint64_t requests; /* REQUEST messages answered */
	uint64_t pages;    /* pages sent */
	uint64_t bytes;    /* stream bytes of the answers */
};

/*
 * Serve until the set is empty: 0. stale has one bitmap per RAM block of
 * m (set = the destination lacks the page), cleared as pages leave; w
 * writes c's stream fd. Waits at most idle_timeout_ms for each request,
 * and for its answer to leave (-ETIMEDOUT);
 * a cancel of c ends any wait (-ECANCELED). A FAILED report fails with
 * the destination's reason (and *dest_failed set: its guest will not go
 * on); a closed connection with -EPIPE; a request out of range or outside
 * the set with -EBADMSG, before anything of it is sent. stats (may be
 * NULL) count the answers.
 */
int gw_postcopy_serve(struct gw_migration *m, struct gw_cancel *c, struct gw_writer *w,
		      uint64_t *const *stale, int idle_timeout_ms, struct gw_pc_serve_stats *stats,
		      bool *dest_failed, struct gw_error *err);

#endif
