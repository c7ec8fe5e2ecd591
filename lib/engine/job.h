/*
 * The job core: what every engine shares — its thread, its one status,
 * its cancel, and the order in which a caller learns the outcome. An
 * engine is a body (run) and a conclusion (conclude) on the job's thread:
 *
 *   status SETUP/ACTIVE/... set by the body through gw_job_set_status()
 *   run() returns 0 or -errno
 *   conclude() undoes what must be undone and decides the outcome
 *   the outcome is published: status, error, end time; then the status
 *     callback gets CANCELLING (for a cancelled job) and the outcome
 *   gw_job_done() turns true only after that callback returned
 *   after() (optional) runs last, for work that must not delay the outcome
 *
 * A cancel (gw_job_cancel) is a request: the status turns CANCELLING at
 * once and every wait made through the job's gw_cancel ends; the body
 * notices and returns. An engine past its commit point refuses cancels
 * (gw_job_commit). gw_job_stop() ends every wait whatever the state, for
 * a caller that is going away.
 */
#ifndef GW_LIB_JOB_H
#define GW_LIB_JOB_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include <godwit/error.h>
#include <godwit/status.h>

#include "lib/cancel.h"

struct gw_job;

struct gw_job_ops {
	int (*run)(struct gw_job *j, struct gw_error *err);
	enum gw_mig_status (*conclude)(struct gw_job *j, int ret, struct gw_error *err);
	void (*after)(struct gw_job *j); /* may be NULL */
};

struct gw_job {
	const struct gw_job_ops *ops;
	void *engine;
	char name[16]; /* the thread's, for top -H and perf */
	struct gw_cancel cancel;
	pthread_t thread;
	void (*status_cb)(void *opaque, enum gw_mig_status s);
	void *cb_opaque;

	pthread_mutex_t lock; /* everything below, and the engine's stats */
	enum gw_mig_status status;
	bool committed;       /* cancels are refused from here */
	bool cancel_accepted; /* gw_job_cancel() said yes */
	bool finished;        /* the final status callback has returned */
	uint64_t start_ns;
	uint64_t end_ns;
	int error_code; /* of a failed job */
	char error[GW_ERROR_MSG_MAX];
};

/*
 * Set up j for the engine (status `initial`, no callback for it) over the
 * stream fd, and start its thread. On failure nothing is left to free.
 */
int gw_job_start(struct gw_job *j, const struct gw_job_ops *ops, void *engine, const char *name,
		 int fd, enum gw_mig_status initial,
		 void (*status_cb)(void *opaque, enum gw_mig_status s), void *cb_opaque,
		 struct gw_error *err);

/* A non-final status, with its callback; a pending cancel keeps CANCELLING. */
void gw_job_set_status(struct gw_job *j, enum gw_mig_status s);
/* The same with the error that explains it (postcopy-paused: why). */
void gw_job_set_status_error(struct gw_job *j, enum gw_mig_status s, const char *why);

/* From any thread: false, and nothing changes, if the job is over or committed. */
bool gw_job_cancel(struct gw_job *j);
/* Was a cancel accepted (the body's check between steps, and how
 * conclude() tells a cancel from a stop or a failure)? */
bool gw_job_cancelled(struct gw_job *j);
/* The commit point: false if a cancel came first, else cancels are refused. */
bool gw_job_commit(struct gw_job *j);
/* End every wait of the job now, committed or not. */
void gw_job_stop(struct gw_job *j);

/* Status, time since start (until the end once final), error: under the lock. */
enum gw_mig_status gw_job_status(struct gw_job *j, uint64_t *total_ms, int *error_code, char *error,
				 size_t error_size);
/* The same with j->lock already held (a snapshot with the engine's stats). */
enum gw_mig_status gw_job_status_locked(struct gw_job *j, uint64_t *total_ms, int *error_code,
					char *error, size_t error_size);
bool gw_job_done(struct gw_job *j);
/* Join the thread (stop it first if it must end now) and release j. */
void gw_job_join(struct gw_job *j);

#endif
