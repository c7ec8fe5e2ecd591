/*
 * The destination's post-copy phase (docs/format.md, "Post-copy" and
 * "Post-copy recovery"), from GO on: the guest runs on RAM that is
 * partly still at the source. The page server (page_server.h) maps the
 * pages the pre-copy rounds left valid as they are and fetches the
 * switch's stale set over the engine's channel (postcopy_fetch.h), on a
 * fault first and in the background otherwise.
 *
 * A connection that breaks is not an end: the status turns
 * postcopy-paused (with why, and what the operator can do), the vCPUs
 * that touch a missing page wait for it in the kernel, and
 * gw_pc_dest_recover() hands in a new connection from the source; after
 * the resume handshake (postcopy_resume.h) it becomes the engine's
 * channel and the fetch goes on over it.
 */
#ifndef GW_LIB_ENGINE_POSTCOPY_DEST_H
#define GW_LIB_ENGINE_POSTCOPY_DEST_H

#include <stdint.h>

#include <godwit/channel.h>
#include <godwit/error.h>

#include "lib/engine/job.h"
#include "lib/ram/page_server.h"

struct gw_migration;
struct gw_pc_dest;

struct gw_pc_dest_params {
	uint64_t rate;  /* bytes per second of the background fetch, 0 = unlimited */
	int timeout_ms; /* a request leaving; each message of a resume handshake */
};

/*
 * Start serving m's RAM. stale[i]: block i's pages to fetch (borrowed
 * until free; their memfd pages dropped already); stream_id[i]: block
 * i's index in CONFIG. job is the engine's, ch its channel, which a
 * recovery replaces (job->cancel.fd with it).
 */
int gw_pc_dest_start(struct gw_migration *m, struct gw_job *job, struct gw_channel *ch,
		     uint64_t *const *stale, const uint32_t *stream_id,
		     const struct gw_pc_dest_params *p, struct gw_pc_dest **out,
		     struct gw_error *err);

/* The phase, on the job's thread: 0 once every page is in; -ECANCELED for
 * a stop of the job (in postcopy-paused too); another failure if serving
 * cannot go on. The caller then stops the guest before gw_pc_dest_free(). */
int gw_pc_dest_run(struct gw_pc_dest *d, struct gw_error *err);

/* A new connection from the source, for a phase in postcopy-paused (d
 * takes ch, *ch cleared). The caller holds the job's lock. */
int gw_pc_dest_recover(struct gw_pc_dest *d, struct gw_channel *ch, struct gw_error *err);

/* The page server's figures and the pages asked for so far. Any thread. */
void gw_pc_dest_stats(struct gw_pc_dest *d, struct gw_ps_stats *ps, uint64_t *requested);

/* The faults by thread, as gw_page_server_thread_stats(). Any thread. */
unsigned gw_pc_dest_thread_stats(struct gw_pc_dest *d,
				 struct gw_ps_thread_stats out[GW_PS_THREADS_MAX]);

/* Let go of the guest's RAM (a page never fetched then reads as its
 * stale copy, or zeros: stop the vCPUs first) and free d. NULL is fine. */
void gw_pc_dest_free(struct gw_pc_dest *d);

#endif
