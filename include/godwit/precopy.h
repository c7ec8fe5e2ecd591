/*
 * Pre-copy live migration: the engine that decides which pages to send
 * when, and its counterpart on the destination.
 *
 * Source: gw_precopy_start() runs the migration in its own thread over a
 * connected fd: setup, iterative rounds (sync the dirty bitmap, send dirty
 * pages straight from guest memory), a switchover decision from the
 * measured bandwidth and dirty rate against the downtime limit, then pause
 * (gw_vm_ops.pause), the last pages, device state, EOF. With a return
 * path the switchover ends in a handshake (docs/format.md, "Switchover
 * handshake"): the destination says READY once everything is loaded and
 * checked, the source answers GO unless it was cancelled or timed out,
 * and the destination resumes only on GO and then confirms RUNNING, so
 * the downtime reported is the one the guest saw and the guest never runs
 * on both sides. The source guest stays paused after a completed
 * migration ("postmigrate"); after a failure or a cancel before GO the
 * engine resumes it if it had paused it. After GO it never resumes it by
 * itself: if the destination neither confirms nor reports a failure, the
 * migration fails with stats.unconfirmed set and the guest stays paused
 * (the one decision left to the operator).
 *
 * Background snapshot (gw_precopy_params.background_snapshot): the same
 * handle, another engine (lib/engine/background.c). It pauses the guest,
 * write-protects the populated RAM with userfaultfd, saves device state,
 * and resumes: that instant is the snapshot. Then it writes RAM while the
 * guest runs; a guest (or VMM) write to a page not yet written faults, a
 * thread copies the page and lets the write go on at once, and the copy
 * is written ahead of the rest. The stream carries GW_HDRF_SNAPSHOT (the
 * guest runs on at its source); status completed leaves the guest
 * running; a failure or cancel leaves it running with nothing protected.
 *
 * Destination: gw_incoming_start() loads a stream in its own thread
 * (gw_load), and only when every byte has arrived and checked out calls
 * gw_vm_ops.prepare, then (after GO, with a handshake) gw_vm_ops.resume,
 * and reports back over the return path.
 *
 * Threads: the engines call the VMM's callbacks (vm ops, dirty ops,
 * gw_precopy_callbacks) from their own thread. gw_*_stats(),
 * gw_*_cancel() and gw_precopy_set_params() may be called from any thread
 * at any time. The engines own their channels (below).
 */
#ifndef GODWIT_PRECOPY_H
#define GODWIT_PRECOPY_H

#include <stdbool.h>
#include <stdint.h>

#include <godwit/channel.h>
#include <godwit/error.h>
#include <godwit/export.h>
#include <godwit/migration.h>
#include <godwit/status.h>
#include <godwit/tracking.h>

#ifdef __cplusplus
extern "C" {
#endif

struct gw_precopy_params {
	uint64_t downtime_limit_ms; /* switch over when the rest fits; QEMU's default 300 */
	uint64_t max_bandwidth;     /* bytes per second, 0 = unlimited */
	bool auto_converge;         /* throttle vCPUs when the guest dirties faster than we send */
	uint32_t throttle_initial;  /* percent, first throttle step (QEMU: 20) */
	uint32_t throttle_increment;/* percent added per non-converging round (QEMU: 10) */
	uint32_t throttle_max;      /* percent ceiling (QEMU: 99) */
	/* How long each step of the switchover may take before the source
	 * gives up and resumes its guest, in ms (0 = the default, 30000): */
	uint64_t switchover_timeout_ms; /* pause until EOF is written */
	uint64_t ready_timeout_ms;      /* EOF written until the destination's READY */
	uint64_t confirm_timeout_ms;    /* GO sent until RUNNING; past it the
					   guest stays paused (unconfirmed) */
	/* exec: how long the command may take to exit after the end of the
	 * stream (then SIGTERM), and after SIGTERM (then SIGKILL); 0 = 10000. */
	uint64_t exec_grace_ms;
	/* Saving into a regular file (docs/format.md, "Mapped-RAM files"): */
	bool mapped_ram;           /* every page at a fixed offset (QEMU: mapped-ram) */
	bool direct_io;            /* page data with O_DIRECT (QEMU: direct-io) */
	uint32_t multifd_channels; /* threads writing pages, 1..64; 0 = 1 (QEMU: multifd-channels) */
	/* With mapped_ram: leave dirty tracking on after a completed save, and
	 * save into the file of the last such save (same guest, tracking on
	 * since) only the pages dirtied since; any other file gets a full
	 * save. A migration without it ends the tracking. */
	bool incremental;
	/* A background snapshot (QEMU: background-snapshot) instead of a
	 * migration: the stream holds the guest as it was when the engine
	 * paused it, for a few milliseconds, and the guest runs on while its
	 * RAM is saved (below). Downtime limit, auto-converge and the
	 * handshake do not apply; incremental is refused. */
	bool background_snapshot;
	/* GW_MODE_*: a local live update hands the RAM's memfds to the new
	 * process instead of copying pages (QEMU: mode). */
	uint64_t mode;
	/* Pre-copy: stop at the switchover point with the guest paused and
	 * nothing of the final state sent (status GW_MIG_PRE_SWITCHOVER) until
	 * gw_precopy_continue(), so the caller can act (move storage, networks)
	 * before the destination may take over (QEMU: pause-before-switchover). */
	bool pause_before_switchover;
	/* Post-copy may be started (QEMU: postcopy-ram, on both sides):
	 * gw_precopy_start_postcopy() then switches after the batch under
	 * way (docs/format.md, "Post-copy"). A live migration over one
	 * socket only. */
	bool postcopy;
	/* With postcopy: switch to post-copy by itself once this many passes
	 * have synced without the rest fitting the downtime limit (0: only
	 * gw_precopy_start_postcopy() switches). */
	uint64_t postcopy_after_passes;
	uint64_t reserved[2]; /* 0: later versions give them a meaning (export.h) */
};

/* gw_precopy_params.mode, QEMU's MigMode. */
enum gw_mig_mode {
	GW_MODE_NORMAL = 0,
	/* cpr-transfer: over a unix socket to a new process on this host, which
	 * receives the memfds (SCM_RIGHTS) before the pause and only device and
	 * vCPU state during it; the switchover handshake as for a migration. */
	GW_MODE_CPR_TRANSFER = 1,
	/* cpr-exec: into a file, with the memfds' fd numbers, for this process
	 * to exec a new binary that inherits them and loads the file. The engine
	 * completes with the guest paused and the memfds intact; the exec is the
	 * VMM's. */
	GW_MODE_CPR_EXEC = 2,
};

#define GW_SWITCHOVER_TIMEOUT_DEFAULT_MS 30000
#define GW_EXEC_GRACE_DEFAULT_MS 10000

/* Defaults as QEMU's (max_bandwidth 128 MiB/s), the switchover timeouts
 * at 30 s, the exec grace at 10 s. Throttle values outside QEMU's ranges
 * (1..99) are clamped into them. */
GW_API void gw_precopy_params_default(struct gw_precopy_params *p);

/* What query-migrate reports; fields named after QEMU's. */
struct gw_precopy_stats {
	enum gw_mig_status status;
	uint64_t total_time_ms;       /* start until now, or until the end */
	uint64_t setup_time_ms;
	uint64_t downtime_ms;         /* source pause until destination running (completed only) */
	uint64_t expected_downtime_ms;
	uint64_t transferred;         /* bytes written to the fd */
	uint64_t remaining;           /* bytes of dirty pages not sent yet */
	uint64_t live_sent;           /* bytes of progressive sections' records (a disk) */
	uint64_t live_pending;        /* what they said was left at the last round */
	uint64_t total;               /* bytes of guest RAM */
	uint64_t duplicate;           /* zero pages sent as a flag */
	uint64_t normal;              /* pages sent with their data */
	uint64_t normal_bytes;
	uint64_t dirty_pages_rate;    /* pages per second, last round */
	double mbps;                  /* megabits per second of the round under way (so far), else the last */
	uint64_t dirty_sync_count;    /* bitmap syncs = rounds */
	uint64_t page_size;
	uint32_t throttle_percent;    /* current auto-converge throttle */
	char blocked[256];            /* why it does not switch over yet, "" if nothing */
	char error[GW_ERROR_MSG_MAX]; /* failure reason (failed only) */
	int error_code;               /* its negative errno (failed only) */
	/* Failed after GO without word from the destination: it may run the
	 * guest, so the source guest stays paused (docs/format.md). */
	bool unconfirmed;
	uint64_t handshake_us;        /* GO sent until RUNNING received */
	/* A mapped-ram save that wrote only the pages dirtied since the last
	 * save into its file (gw_precopy_params.incremental). */
	bool incremental;
	uint32_t generation;  /* of the mapped-ram file written: 1 = a full save */
	/* A background snapshot: its write faults (pages a write reached before
	 * the bulk did: copied, then let go) and the longest any write waited,
	 * from the fault read to the page writable again. downtime_ms is the
	 * pause; pause_us the same in microseconds. */
	uint64_t wp_faults;
	uint64_t wp_max_wait_us;
	uint64_t pause_us;
	/* downtime_ms in microseconds (pre-copy and cpr-transfer). */
	uint64_t downtime_us;
	/* A local live update: bytes of device and vCPU state written (its RAM
	 * is handed over, so transferred, normal and duplicate stay 0). */
	uint64_t state_bytes;
	/* Post-copy: page requests the destination sent (pages asked for). */
	uint64_t postcopy_requests;
	uint64_t reserved[1]; /* for fields of later versions: do not read */
};

struct gw_precopy_callbacks {
	/* Every status change, from the migration thread (MIGRATION event). */
	void (*status)(void *opaque, enum gw_mig_status status);
	/* Each round's bitmap sync (MIGRATION_PASS event); pass counts from 1. */
	void (*pass)(void *opaque, uint64_t pass);
	/* Auto-converge: slow every vCPU down to (100 - percent)% of its time;
	 * 0 removes the throttle. May be NULL if auto_converge is never set. */
	int (*throttle)(void *opaque, uint32_t percent, struct gw_error *err);
	void *opaque;
};

struct gw_precopy;

/*
 * Start migrating m (RAM blocks, sections, vm ops and dirty ops all
 * registered) over the connected channels: the stream's, then for a
 * live migration over sockets up to GW_MULTIFD_MAX_CHANNELS multifd
 * channels to the same destination, which carry its pages (docs/format.md,
 * "multifd"; the destination must have params.multifd). On success the
 * engine owns them: it closes them, and waits for an exec: command's exit,
 * before it publishes the outcome, so the outcome includes whether the
 * command took the whole stream; *channels is then cleared. A channel
 * that can answer (a socket) runs the switchover handshake. Returns once
 * the thread runs; progress and the outcome are in gw_precopy_stats().
 * Fails at once (-EINVAL) if m lacks vm ops or dirty ops; the channels
 * are then still the caller's.
 */
GW_API int gw_precopy_start(struct gw_migration *m, struct gw_channel *channels, unsigned nr_channels,
		     const struct gw_precopy_params *params, const struct gw_precopy_callbacks *cb,
		     struct gw_precopy **out, struct gw_error *err);
/* New limits take effect at the next round (max-bandwidth at once);
 * background_snapshot, mode and pause_before_switchover stay as started. */
/* -EINVAL if a reserved word is set. */
GW_API int gw_precopy_set_params(struct gw_precopy *p, const struct gw_precopy_params *params,
				 struct gw_error *err);
GW_API void gw_precopy_stats(struct gw_precopy *p, struct gw_precopy_stats *out);
/* Let a migration stopped in GW_MIG_PRE_SWITCHOVER go on to its final
 * pass. -EINVAL, and nothing changes, in any other status. */
GW_API int gw_precopy_continue(struct gw_precopy *p, struct gw_error *err);
/* Switch to post-copy after the batch of pages under way (the round
 * stops there; what it has not sent is fetched): the guest is paused
 * here, the destination runs it and fetches the pages it lacks; from
 * then on neither side alone holds the whole guest. -EINVAL, and nothing
 * changes, without the postcopy parameter or past the pre-copy rounds. */
GW_API int gw_precopy_start_postcopy(struct gw_precopy *p, struct gw_error *err);
/* A post-copy in GW_MIG_POSTCOPY_PAUSED goes on over ch, a new connection
 * to the destination, which must be waiting for it (gw_incoming_recover):
 * the engine takes ch (*ch cleared) and runs the resume handshake
 * (docs/format.md, "Post-copy recovery"); if that fails, the post-copy
 * stays paused for another try. -EINVAL in any other status. */
GW_API int gw_precopy_resume(struct gw_precopy *p, struct gw_channel *ch, struct gw_error *err);
/* Ask the migration to stop; it ends CANCELLED with the source guest
 * running. Every wait of the engine ends at once (sockets and pipes are
 * written without blocking; a socket is also shut down so the peer
 * stops). Returns false, and changes nothing, from the commit point on
 * (the destination said READY and GO is about to leave or has left). */
GW_API bool gw_precopy_cancel(struct gw_precopy *p);
/* For a VMM that exits: as cancel, and after GO it also ends the wait for
 * the destination's RUNNING (the migration then fails unconfirmed). */
GW_API void gw_precopy_abort(struct gw_precopy *p);
/* True once the status is final (completed, failed or cancelled) and the
 * status callback for it has returned. */
GW_API bool gw_precopy_done(struct gw_precopy *p);
/* Cancel if still running, join the thread, free. After GO it ends the
 * wait for the destination's confirmation (unconfirmed) instead. */
GW_API void gw_precopy_free(struct gw_precopy *p);

struct gw_incoming_stats {
	enum gw_mig_status status;
	uint64_t total_time_ms;
	uint64_t received;       /* bytes read from the fd */
	uint64_t go_wait_us;     /* READY sent until GO arrived: what the handshake cost */
	char error[GW_ERROR_MSG_MAX];
	/* Completed without resuming: the stream was a background snapshot
	 * (GW_HDRF_SNAPSHOT) read from a socket or pipe, of a guest that runs
	 * on at its source; the VMM keeps this copy paused. */
	bool held;
	/* A local live update: the bytes of RAM adopted (no page copied), how
	 * long mapping and pre-faulting them took, and (cpr-exec, where the
	 * source is this process before its exec) the pause until the guest
	 * ran again here, in microseconds. */
	uint64_t adopted_bytes;
	uint64_t adopt_us;
	uint64_t downtime_us;
	/* A lazy restore (x-godwit-lazy-restore): pages of the file read for
	 * a fault and by the background (each checked against its hash in the
	 * file before it was mapped: together, once all are in, every page
	 * the file has), pages of the file not in yet, and the faults' latency
	 * (fault read until the page is mapped; faults on pages the file
	 * lacks, filled with zeros, included), mean and max in µs. */
	uint64_t lazy_faulted;
	uint64_t lazy_background;
	uint64_t lazy_remaining;
	uint32_t lazy_fault_mean_us;
	uint32_t lazy_fault_max_us;
	/* Post-copy: pages asked of the source. */
	uint64_t postcopy_requests;
};

/* A lazy restore's or a post-copy's faults by the thread that took
 * them: a vCPU's, or a VMM thread's that read guest RAM (the first
 * GW_FAULT_THREADS_MAX threads that faulted). Latency as in
 * gw_incoming_stats; fault_total_us is all of it added up, the time the
 * thread was blocked (QEMU's postcopy-vcpu-blocktime). */
#define GW_FAULT_THREADS_MAX 64
struct gw_fault_thread_stats {
	int32_t tid; /* the thread's id (gettid()) */
	uint32_t fault_mean_us;
	uint32_t fault_max_us;
	uint64_t faults;
	uint64_t fault_total_us;
	uint64_t reserved[1]; /* for fields of later versions: do not read */
};

struct gw_incoming_params {
	uint64_t go_timeout_ms; /* READY sent until GO; 0 = 30000. Past it the
				   guest never runs here, and the source is told */
	/* A mapped-ram file (recognised from the file itself): */
	bool direct_io;            /* read page data with O_DIRECT */
	uint32_t multifd_channels; /* threads reading pages, 1..64; 0 = 1 */
	/* Run the guest as soon as the sections are in and serve its RAM
	 * from the file meanwhile (lib/format/mapped_lazy.h); the status is
	 * postcopy-active until every page is in. lazy_copy: fill pages
	 * with UFFDIO_COPY instead of a second mapping and UFFDIO_CONTINUE.
	 * A stream that is not a mapped-ram file is refused. */
	bool lazy_restore;
	bool lazy_copy;
	/* A stream may send its pages on multifd channels, further
	 * connections handed over with gw_incoming_add_channel() (QEMU: the
	 * multifd capability, on both sides). */
	bool multifd;
	uint64_t lazy_max_bandwidth; /* bytes/s the background reads, 0 = unlimited */
	/* A source may switch to post-copy (QEMU: postcopy-ram, on both
	 * sides): the guest then runs here while the pages the stream named
	 * are fetched from the source; lazy_max_bandwidth bounds the fetch
	 * in the background, and the lazy_* figures are its page server's.
	 * If the connection breaks: GW_MIG_POSTCOPY_PAUSED until
	 * gw_incoming_recover(). */
	bool postcopy;
	uint64_t reserved[4]; /* 0 (export.h) */
};

struct gw_incoming_callbacks {
	void (*status)(void *opaque, enum gw_mig_status status);
	void *opaque;
};

struct gw_incoming;

/*
 * Load a stream from fd in a thread; on success call gw_vm_ops.prepare,
 * wait for GO if the stream asks for the handshake, call gw_vm_ops.resume
 * and (with a return path) tell the source. On failure the guest is not
 * resumed: it is half-loaded or not ours, and must never run. A stream
 * that asks for the handshake over a channel without a return path fails.
 * The channel becomes the engine's on success (*ch is cleared): a socket
 * carries the reports back; after the stream the engine closes it, and
 * ends an exec: command (which has brought what it had to).
 *
 * The status is ACTIVE from the return of gw_incoming_start (no callback
 * for it); callbacks report the changes after that. A failed destination
 * with a return path keeps reading and discarding the stream after
 * reporting FAILED, until the source hangs up or gw_incoming_free().
 */
GW_API int gw_incoming_start(struct gw_migration *m, struct gw_channel *ch,
		      const struct gw_incoming_params *params,
		      const struct gw_incoming_callbacks *cb, struct gw_incoming **out,
		      struct gw_error *err);
/*
 * A further connection of the migration (params.multifd): a multifd
 * channel, read by a thread of its own from now on. It becomes the
 * engine's (*ch cleared) on success; it proves it belongs to this
 * migration from its first bytes, and a stranger fails the migration.
 * From any thread, while the engine runs; -EPROTO once its stream is
 * over, or without multifd.
 */
GW_API int gw_incoming_add_channel(struct gw_incoming *in, struct gw_channel *ch,
				   struct gw_error *err);
/*
 * A post-copy in GW_MIG_POSTCOPY_PAUSED goes on over ch, a new connection
 * from the source (gw_precopy_resume): the engine takes ch (*ch cleared)
 * and runs the resume handshake, which sends the source the pages still
 * missing here; if it fails, the post-copy stays paused for another try.
 * From any thread; -EINVAL in any other status.
 */
GW_API int gw_incoming_recover(struct gw_incoming *in, struct gw_channel *ch,
			       struct gw_error *err);
GW_API void gw_incoming_stats(struct gw_incoming *in, struct gw_incoming_stats *out);
/* New parameters: only lazy_max_bandwidth takes effect (at once, during
 * a lazy restore); the others were read at the start. -EINVAL if a
 * reserved word is set. */
GW_API int gw_incoming_set_params(struct gw_incoming *in, const struct gw_incoming_params *params,
				  struct gw_error *err);
/* A lazy restore's or a post-copy's faults by thread, now (and once it
 * ended): at most max into out; returns how many. 0 for any other
 * incoming migration. */
GW_API unsigned gw_incoming_fault_threads(struct gw_incoming *in, struct gw_fault_thread_stats *out,
					  unsigned max);
GW_API void gw_incoming_cancel(struct gw_incoming *in);
/* As gw_precopy_done(). */
GW_API bool gw_incoming_done(struct gw_incoming *in);
GW_API void gw_incoming_free(struct gw_incoming *in);

#ifdef __cplusplus
}
#endif

#endif
