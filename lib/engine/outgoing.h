/*
 * What every outgoing engine shares: the handle <godwit/precopy.h> hands
 * out (struct gw_precopy, whichever engine runs behind it — pre-copy or
 * a background snapshot), and the steps at both ends of a stream that do
 * not depend on how pages are chosen: opening the RAM sink the
 * parameters ask for, and ending the channel (an exec: command's exit
 * included) before the outcome is published.
 */
#ifndef GW_LIB_ENGINE_OUTGOING_H
#define GW_LIB_ENGINE_OUTGOING_H

#include <stdbool.h>

#include <godwit/channel.h>
#include <godwit/precopy.h>

#include "lib/engine/job.h"
#include "lib/engine/postcopy_handoff.h"
#include "lib/engine/postcopy_serve.h"
#include "lib/ram/ram_sink.h"
#include "lib/transport/return_path.h"

/* The first member of every outgoing engine's state. */
struct gw_precopy {
	struct gw_job job; /* its lock guards params and stats too */
	struct gw_precopy_params params;
	struct gw_precopy_stats stats;
	void (*release)(struct gw_precopy *h); /* frees the engine, thread joined */
	/* pause-before-switchover (pre_switchover.c): while the engine waits,
	 * an eventfd that gw_precopy_continue() makes readable */
	bool pre_switchover_waiting;
	int continue_efd;
	bool postcopy_requested; /* atomic: gw_precopy_start_postcopy() */
	/* Post-copy (postcopy_source.c): the answers so far (atomic), and
	 * while its phase runs, where gw_precopy_resume() hands in a
	 * connection. */
	struct gw_pc_serve_stats pc_served;
	struct gw_pc_handoff resume;
};

/*
 * How far the switchover handshake got (docs/format.md, "Switchover
 * handshake"): who may run the guest now.
 */
struct gw_handover {
	bool handed_over;    /* GO (or, one way, EOF into a command) left whole: only
			     the other side may run the guest now */
	bool dest_failed;    /* ... but it said it will not */
	bool confirmed;      /* ... and it said RUNNING */
	uint64_t resumed_ns; /* ... at this time of its clock, if it said (0) */
};

/*
 * Wait for the destination's next report, which must be `want`; a FAILED
 * report in its place ends the migration with the destination's reason
 * (ho->dest_failed: its guest will never run).
 */
int gw_outgoing_expect(struct gw_precopy *h, struct gw_handover *ho, uint64_t timeout_ms,
		       enum gw_report_status want, const char *what, struct gw_error *err);

/*
 * The handshake after EOF: READY from the destination, the commit point
 * (a cancel from here is refused), GO from here, RUNNING back. Until GO
 * has left whole any failure leaves the guest to the source; after that
 * only a FAILED report gives it back. Sets stats.handshake_us.
 */
int gw_outgoing_handshake(struct gw_precopy *h, struct gw_handover *ho,
			  const struct gw_precopy_params *pp, struct gw_error *err);

/*
 * pause-before-switchover: with the guest paused by the engine, report
 * GW_MIG_PRE_SWITCHOVER and wait for gw_precopy_continue(), a cancel, or
 * (return_path) the destination's failure, however long the caller takes.
 */
int gw_outgoing_pre_switchover(struct gw_precopy *h, struct gw_handover *ho, bool return_path,
			       struct gw_error *err);

/* The guest ran again on the other side (at end_ns, or now for 0):
 * publish the downtime since pause_ns (stats.downtime_ms and _us). */
void gw_outgoing_downtime(struct gw_precopy *h, uint64_t pause_ns, uint64_t end_ns);

/* The engines behind gw_precopy_start(). params are clamped, checked.
 * Pre-copy takes channels past the first as multifd channels. */
int gw_precopy_engine_start(struct gw_migration *m, struct gw_channel *ch, unsigned nr_channels,
			    const struct gw_precopy_params *params,
			    const struct gw_precopy_callbacks *cb, struct gw_precopy **out,
			    struct gw_error *err);
int gw_background_start(struct gw_migration *m, struct gw_channel *ch,
			const struct gw_precopy_params *params,
			const struct gw_precopy_callbacks *cb, struct gw_precopy **out,
			struct gw_error *err);
int gw_cpr_start(struct gw_migration *m, struct gw_channel *ch,
		 const struct gw_precopy_params *params, const struct gw_precopy_callbacks *cb,
		 struct gw_precopy **out, struct gw_error *err);

/*
 * The end of an engine's start: the stats every engine has (total,
 * page_size), its job started on the channel's fd with cb's status
 * callback, the channel taken over (*ch cleared) and *out set. On
 * failure h->release(h) has freed the engine; the message starts with
 * what ("pre-copy: ").
 */
int gw_outgoing_launch(struct gw_precopy *h, struct gw_migration *m, const struct gw_job_ops *ops,
		       void *engine, const char *name, const struct gw_precopy_callbacks *cb,
		       struct gw_channel *ch, struct gw_precopy **out, const char *what,
		       struct gw_error *err);

/* A copy of the parameters, under the lock. */
void gw_outgoing_params(struct gw_precopy *h, struct gw_precopy_params *out);

/*
 * Where RAM goes, as pp says: RAM_PAGES records in the stream w (ss is
 * the caller's, initialised here), one fixed slot per page of the
 * mapped-ram file fd, or with nr_extra channels, spread over them
 * (multifd; the sink takes them, *extra cleared). The last two are
 * allocated: gw_sink_release() frees them. *hdr_flags gets the header
 * flags the sink's layout needs, *update whether a file sink updates the
 * last incremental save.
 */
int gw_outgoing_open_sink(struct gw_migration *m, int fd, struct gw_writer *w,
			  const struct gw_precopy_params *pp, struct gw_cancel *cancel,
			  struct gw_channel *extra, unsigned nr_extra, struct gw_stream_sink *ss,
			  struct gw_ram_sink **sink, uint32_t *hdr_flags, bool *update,
			  struct gw_error *err);

/*
 * The stream is over (ret says how it went): close the channel and, for
 * exec:, wait for the command, whose exit says whether a stream that left
 * whole arrived. A command fed a stream that failed is not waited for (it
 * may be stuck on the network that is the reason for the failure) unless
 * handed_over. Returns ret, or the channel's failure for a ret of 0; the
 * message says both.
 */
int gw_outgoing_end_channel(struct gw_precopy *h, struct gw_channel *ch, bool handed_over, int ret,
			    struct gw_error *err);

/* Add "; what: why" (or "; what") to the message in err. */
void gw_error_append(struct gw_error *err, const char *what, const char *why);

#endif
