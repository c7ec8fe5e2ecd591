/*
 * Post-copy recovery's handshake (docs/format.md, "Post-copy recovery"):
 * what the two sides say on a new connection before it carries a page.
 * The old connection broke while the destination's guest ran with pages
 * still at the source; both sides kept their state (the source its
 * paused guest and the set it still owes, the destination its page
 * server and what it received). The source connects and the three
 * messages decide whether this connection resumes that post-copy:
 *
 *   source       RESUME (fingerprint of the switch's stale set)  ──►
 *   destination  ◄── RESUME (the same), then POSTCOPY records: the pages
 *                    it still lacks, every block of CONFIG in order
 *   source       GO  ──►  (then REQUESTs and their answers, as before)
 *
 * The destination's set is the truth (a page the source sent may have
 * been lost with the old connection), and the source checks it against
 * the switch's: a page outside it would be one the destination's guest
 * may have written since, and sending it would overwrite that write.
 * Either side says FAILED with its reason before it gives up, so both
 * errors name the same cause; the connection is then dropped and the
 * post-copy stays paused, ready for another try.
 */
#ifndef GW_LIB_ENGINE_POSTCOPY_RESUME_H
#define GW_LIB_ENGINE_POSTCOPY_RESUME_H

#include <stdint.h>

#include <godwit/error.h>

#include "lib/cancel.h"

struct gw_ram_block;

/*
 * The source's side on c's fd (a connected socket; c's eventfd ends every
 * wait, each message waited for at most timeout_ms). ram: the nr blocks
 * in CONFIG's order; orig: the switch's stale set; owed: the set still
 * owed, replaced by the destination's on success.
 */
int gw_pc_resume_source(struct gw_cancel *c, int timeout_ms, uint64_t fingerprint,
			const struct gw_ram_block *ram, uint32_t nr, uint64_t *const *orig,
			uint64_t *const *owed, struct gw_error *err);

/*
 * The destination's side: needed is the set it lacks (blocks as ram, in
 * CONFIG's order); 0 once the source said GO.
 */
int gw_pc_resume_destination(struct gw_cancel *c, int timeout_ms, uint64_t fingerprint,
			     const struct gw_ram_block *ram, uint32_t nr, uint64_t *const *needed,
			     struct gw_error *err);

#endif
