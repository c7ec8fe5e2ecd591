/*
 * The job core (job.h): one thread per engine, one status, one way to end.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "lib/clock.h"
#include "lib/internal.h"
#include "lib/engine/job.h"

const char *gw_mig_status_name(enum gw_mig_status s)
{
	switch (s) {
	case GW_MIG_NONE:
		return "none";
	case GW_MIG_SETUP:
		return "setup";
	case GW_MIG_ACTIVE:
		return "active";
	case GW_MIG_DEVICE:
		return "device";
	case GW_MIG_COMPLETED:
		return "completed";
	case GW_MIG_FAILED:
		return "failed";
	case GW_MIG_CANCELLING:
		return "cancelling";
	case GW_MIG_CANCELLED:
		return "cancelled";
	case GW_MIG_POSTCOPY_ACTIVE:
		return "postcopy-active";
	case GW_MIG_PRE_SWITCHOVER:
		return "pre-switchover";
	case GW_MIG_POSTCOPY_PAUSED:
		return "postcopy-paused";
	case GW_MIG_POSTCOPY_RECOVER:
		return "postcopy-recover";
	}
	return "unknown";
}

bool gw_mig_status_is_final(enum gw_mig_status s)
{
	return s == GW_MIG_COMPLETED || s == GW_MIG_FAILED || s == GW_MIG_CANCELLED;
}

static void notify(struct gw_job *j, enum gw_mig_status s)
{
	if (j->status_cb)
		j->status_cb(j->cb_opaque, s);
}

/* Publish the outcome, then tell the caller, then say it is done: a caller
 * that sees gw_job_done() has had every callback. */
static void publish(struct gw_job *j, enum gw_mig_status outcome, int ret,
		    const struct gw_error *err)
{
	pthread_mutex_lock(&j->lock);
	j->status = outcome;
	j->end_ns = gw_now_ns();
	if (outcome == GW_MIG_FAILED) {
		j->error_code = ret < 0 ? ret : -EIO;
		snprintf(j->error, sizeof(j->error), "%s",
			 err->msg[0] ? err->msg : gw_strerror(j->error_code));
	}
	pthread_mutex_unlock(&j->lock);
	if (outcome == GW_MIG_CANCELLED)
		notify(j, GW_MIG_CANCELLING);
	notify(j, outcome);
	pthread_mutex_lock(&j->lock);
	j->finished = true;
	pthread_mutex_unlock(&j->lock);
}

static void *job_thread(void *opaque)
{
	struct gw_job *j = opaque;
	struct gw_error err = {0};
	int ret;

	pthread_setname_np(pthread_self(), j->name);
	ret = j->ops->run(j, &err);
	publish(j, j->ops->conclude(j, ret, &err), ret, &err);
	if (j->ops->after)
		j->ops->after(j);
	return NULL;
}

int gw_job_start(struct gw_job *j, const struct gw_job_ops *ops, void *engine, const char *name,
		 int fd, enum gw_mig_status initial,
		 void (*status_cb)(void *opaque, enum gw_mig_status s), void *cb_opaque,
		 struct gw_error *err)
{
	int ret = gw_cancel_init(&j->cancel, fd, err);

	if (ret < 0)
		return ret;
	j->ops = ops;
	j->engine = engine;
	snprintf(j->name, sizeof(j->name), "%s", name);
	j->status_cb = status_cb;
	j->cb_opaque = cb_opaque;
	j->status = initial;
	j->committed = j->finished = j->cancel_accepted = false;
	j->start_ns = gw_now_ns();
	j->end_ns = 0;
	j->error_code = 0;
	j->error[0] = '\0';
	pthread_mutex_init(&j->lock, NULL);
	ret = pthread_create(&j->thread, NULL, job_thread, j);
	if (ret) {
		pthread_mutex_destroy(&j->lock);
		gw_cancel_fini(&j->cancel);
		return gw_error_set(err, -ret, "cannot start the %s thread: %s", name,
				    gw_strerror(ret));
	}
	return 0;
}

void gw_job_set_status_error(struct gw_job *j, enum gw_mig_status s, const char *why)
{
	bool cancelling;

	pthread_mutex_lock(&j->lock);
	cancelling = j->status == GW_MIG_CANCELLING;
	if (!cancelling)
		j->status = s;
	if (!cancelling && why)
		snprintf(j->error, sizeof(j->error), "%s", why);
	pthread_mutex_unlock(&j->lock);
	if (!cancelling)
		notify(j, s);
}

void gw_job_set_status(struct gw_job *j, enum gw_mig_status s)
{
	gw_job_set_status_error(j, s, NULL);
}

bool gw_job_cancel(struct gw_job *j)
{
	bool running;

	pthread_mutex_lock(&j->lock);
	running = !gw_mig_status_is_final(j->status) && !j->committed;
	if (running) {
		j->status = GW_MIG_CANCELLING;
		j->cancel_accepted = true;
	}
	pthread_mutex_unlock(&j->lock);
	if (running)
		gw_cancel_wake(&j->cancel);
	return running;
}

bool gw_job_cancelled(struct gw_job *j)
{
	bool yes;

	pthread_mutex_lock(&j->lock);
	yes = j->cancel_accepted;
	pthread_mutex_unlock(&j->lock);
	return yes;
}

bool gw_job_commit(struct gw_job *j)
{
	bool cancelling;

	pthread_mutex_lock(&j->lock);
	cancelling = j->status == GW_MIG_CANCELLING;
	j->committed = !cancelling;
	pthread_mutex_unlock(&j->lock);
	return !cancelling;
}

void gw_job_stop(struct gw_job *j)
{
	if (!gw_job_cancel(j))
		gw_cancel_wake(&j->cancel);
}

enum gw_mig_status gw_job_status(struct gw_job *j, uint64_t *total_ms, int *error_code, char *error,
				 size_t error_size)
{
	enum gw_mig_status s;

	pthread_mutex_lock(&j->lock);
	s = gw_job_status_locked(j, total_ms, error_code, error, error_size);
	pthread_mutex_unlock(&j->lock);
	return s;
}

enum gw_mig_status gw_job_status_locked(struct gw_job *j, uint64_t *total_ms, int *error_code,
					char *error, size_t error_size)
{
	enum gw_mig_status s = j->status;

	if (total_ms)
		*total_ms = ((gw_mig_status_is_final(s) ? j->end_ns : gw_now_ns()) - j->start_ns) /
			    1000000;
	if (error_code)
		*error_code = j->error_code;
	if (error)
		snprintf(error, error_size, "%s", j->error);
	return s;
}

bool gw_job_done(struct gw_job *j)
{
	bool done;

	pthread_mutex_lock(&j->lock);
	done = j->finished;
	pthread_mutex_unlock(&j->lock);
	return done;
}

void gw_job_join(struct gw_job *j)
{
	pthread_join(j->thread, NULL);
	pthread_mutex_destroy(&j->lock);
	gw_cancel_fini(&j->cancel);
}
