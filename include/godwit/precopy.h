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
 * Destination: gw_incoming_start() loads a stream in its own thread
 * (gw_load), and only when every byte has arrived and checked out calls
 * gw_vm_ops.prepare, then (after GO, with a handshake) gw_vm_ops.resume,
 * and reports back over the return path.
 *
 * Threads: the engines call the VMM's callbacks (vm ops, dirty ops,
 * gw_precopy_callbacks) from their own thread. gw_*_stats(),
 * gw_*_cancel() and gw_precopy_set_params() may be called from any thread
 * at any time. The fd is borrowed: the caller closes it after gw_*_free().
 */
#ifndef GODWIT_PRECOPY_H
#define GODWIT_PRECOPY_H

#include <stdbool.h>
#include <stdint.h>

#include <godwit/error.h>
#include <godwit/migration.h>

#ifdef __cplusplus
extern "C" {
#endif

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

int gw_migration_set_dirty_ops(struct gw_migration *m, const struct gw_dirty_ops *ops,
			       void *opaque, struct gw_error *err);

/* QEMU's MigrationStatus names, so existing tooling understands them. */
enum gw_mig_status {
	GW_MIG_NONE,
	GW_MIG_SETUP,
	GW_MIG_ACTIVE,     /* rounds, guest running */
	GW_MIG_DEVICE,     /* guest paused, final pages and device state */
	GW_MIG_COMPLETED,
	GW_MIG_FAILED,
	GW_MIG_CANCELLING,
	GW_MIG_CANCELLED,
};

const char *gw_mig_status_name(enum gw_mig_status s);

struct gw_precopy_params {
	uint64_t downtime_limit_ms; /* switch over when the rest fits; QEMU's default 300 */
	uint64_t max_bandwidth;     /* bytes per second, 0 = unlimited */
	bool auto_converge;         /* throttle vCPUs when the guest dirties faster than we send */
	uint32_t throttle_initial;  /* percent, first throttle step (QEMU: 20) */
	uint32_t throttle_increment;/* percent added per non-converging round (QEMU: 10) */
	uint32_t throttle_max;      /* percent ceiling (QEMU: 99) */
	bool return_path;           /* fd is bidirectional: run the switchover handshake
				       (read by gw_precopy_start only) */
	/* How long each step of the switchover may take before the source
	 * gives up and resumes its guest, in ms (0 = the default, 30000): */
	uint64_t switchover_timeout_ms; /* pause until EOF is written */
	uint64_t ready_timeout_ms;      /* EOF written until the destination's READY */
	uint64_t confirm_timeout_ms;    /* GO sent until RUNNING; past it the
					   guest stays paused (unconfirmed) */
};

#define GW_SWITCHOVER_TIMEOUT_DEFAULT_MS 30000

/* Defaults as QEMU's (max_bandwidth 128 MiB/s), return path on, the
 * switchover timeouts at 30 s. Throttle values outside QEMU's ranges
 * (1..99) are clamped into them. */
void gw_precopy_params_default(struct gw_precopy_params *p);

/* What query-migrate reports; fields named after QEMU's. */
struct gw_precopy_stats {
	enum gw_mig_status status;
	uint64_t total_time_ms;       /* start until now, or until the end */
	uint64_t setup_time_ms;
	uint64_t downtime_ms;         /* source pause until destination running (completed only) */
	uint64_t expected_downtime_ms;
	uint64_t transferred;         /* bytes written to the fd */
	uint64_t remaining;           /* bytes of dirty pages not sent yet */
	uint64_t total;               /* bytes of guest RAM */
	uint64_t duplicate;           /* zero pages sent as a flag */
	uint64_t normal;              /* pages sent with their data */
	uint64_t normal_bytes;
	uint64_t dirty_pages_rate;    /* pages per second, last round */
	double mbps;                  /* throughput of the last round, megabits per second */
	uint64_t dirty_sync_count;    /* bitmap syncs = rounds */
	uint64_t page_size;
	uint32_t throttle_percent;    /* current auto-converge throttle */
	char blocked[256];            /* why it does not switch over yet, "" if nothing */
	char error[GW_ERROR_MSG_MAX]; /* failure reason (failed only) */
	int error_code;               /* its negative errno (failed only) */
	/* Failed after GO without word from the destination: it may run the
	 * guest, so the source guest stays paused (docs/format.md). */
	bool unconfirmed;
	uint64_t handshake_us;        /* READY received until RUNNING received */
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
 * registered) over fd. Returns once the thread runs; progress and the
 * outcome are in gw_precopy_stats(). Fails at once (-EINVAL) if m lacks
 * vm ops or dirty ops.
 */
int gw_precopy_start(struct gw_migration *m, int fd, const struct gw_precopy_params *params,
		     const struct gw_precopy_callbacks *cb, struct gw_precopy **out,
		     struct gw_error *err);
/* New limits take effect at the next round (max-bandwidth at once). */
void gw_precopy_set_params(struct gw_precopy *p, const struct gw_precopy_params *params);
void gw_precopy_stats(struct gw_precopy *p, struct gw_precopy_stats *out);
/* Ask the migration to stop; it ends CANCELLED with the source guest
 * running. Every wait of the engine ends at once (sockets and pipes are
 * written without blocking; a socket is also shut down so the peer
 * stops). Returns false, and changes nothing, once the source has sent
 * GO: the guest is the destination's then. */
bool gw_precopy_cancel(struct gw_precopy *p);
/* For a VMM that exits: as cancel, and after GO it also ends the wait for
 * the destination's RUNNING (the migration then fails unconfirmed). */
void gw_precopy_abort(struct gw_precopy *p);
/* True once the status is final (completed, failed or cancelled) and the
 * status callback for it has returned. */
bool gw_precopy_done(struct gw_precopy *p);
/* Cancel if still running, join the thread, free. After GO it ends the
 * wait for the destination's confirmation (unconfirmed) instead. */
void gw_precopy_free(struct gw_precopy *p);

struct gw_incoming_stats {
	enum gw_mig_status status;
	uint64_t total_time_ms;
	uint64_t received;       /* bytes read from the fd */
	uint64_t go_wait_us;     /* READY sent until GO arrived: what the handshake cost */
	char error[GW_ERROR_MSG_MAX];
};

struct gw_incoming_params {
	bool return_path;       /* fd is bidirectional: report back, and take part
				   in the handshake if the source asks for it */
	uint64_t go_timeout_ms; /* READY sent until GO; 0 = 30000. Past it the
				   guest never runs here, and the source is told */
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
 *
 * The status is ACTIVE from the return of gw_incoming_start (no callback
 * for it); callbacks report the changes after that. A failed destination
 * with a return path keeps reading and discarding the stream after
 * reporting FAILED, until the source hangs up or gw_incoming_free().
 */
int gw_incoming_start(struct gw_migration *m, int fd, const struct gw_incoming_params *params,
		      const struct gw_incoming_callbacks *cb, struct gw_incoming **out,
		      struct gw_error *err);
void gw_incoming_stats(struct gw_incoming *in, struct gw_incoming_stats *out);
void gw_incoming_cancel(struct gw_incoming *in);
/* As gw_precopy_done(). */
bool gw_incoming_done(struct gw_incoming *in);
void gw_incoming_free(struct gw_incoming *in);

#ifdef __cplusplus
}
#endif

#endif
