/*
 * The job core (lib/engine/job.h): the order in which a caller learns how a job
 * ended, and what a cancel can and cannot do.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "lib/engine/job.h"

struct engine {
	struct gw_job job;
	pthread_mutex_t lock;
	enum gw_mig_status seen[8];
	int nr_seen;
	bool done_during_callback; /* gw_job_done() was true inside a callback */
	bool commit;               /* run() commits before it waits */
	bool committed;            /* ... and gw_job_commit() said yes */
	int result;                /* what run() returns when not woken */
	bool concluded;
	enum gw_mig_status outcome_at_conclude;
	bool after_ran, done_at_after;
	bool hold;                 /* run() waits for `released` once woken */
	bool released;
	pthread_cond_t cond;
	int sv[2];
};

static int run(struct gw_job *j, struct gw_error *err)
{
	struct engine *e = j->engine;

	gw_job_set_status(j, GW_MIG_ACTIVE);
	if (e->commit)
		e->committed = gw_job_commit(j);
	/* Wait for the peer or for a cancel, as an engine does. */
	int ready = gw_cancel_poll(&j->cancel, POLLIN, 5000);

	/* Hold the job in its body, so the test sees the status in between. */
	pthread_mutex_lock(&e->lock);
	while (e->hold && !e->released)
		pthread_cond_wait(&e->cond, &e->lock);
	pthread_mutex_unlock(&e->lock);
	if (ready == -ECANCELED)
		return gw_error_set(err, -ECANCELED, "cancelled");
	return e->result < 0 ? gw_error_set(err, e->result, "the peer failed") : 0;
}

static enum gw_mig_status conclude(struct gw_job *j, int ret, struct gw_error *err)
{
	struct engine *e = j->engine;

	(void)err;
	e->concluded = true;
	/* The outcome is not published yet: callers still see the old status. */
	e->outcome_at_conclude = gw_job_status(j, NULL, NULL, NULL, 0);
	if (ret == 0)
		return GW_MIG_COMPLETED;
	return gw_job_cancelled(j) ? GW_MIG_CANCELLED : GW_MIG_FAILED;
}

static void after(struct gw_job *j)
{
	struct engine *e = j->engine;

	e->after_ran = true;
	e->done_at_after = gw_job_done(j);
}

static const struct gw_job_ops ops = { run, conclude, after };

static void on_status(void *opaque, enum gw_mig_status s)
{
	struct engine *e = opaque;

	pthread_mutex_lock(&e->lock);
	if (e->nr_seen < 8)
		e->seen[e->nr_seen++] = s;
	if (gw_job_done(&e->job))
		e->done_during_callback = true;
	pthread_mutex_unlock(&e->lock);
}

static void sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

static void start(struct engine *e)
{
	struct gw_error err = { 0 };

	bool commit = e->commit, hold = e->hold;

	*e = (struct engine){ .commit = commit, .hold = hold };
	pthread_mutex_init(&e->lock, NULL);
	pthread_cond_init(&e->cond, NULL);
	CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, e->sv) == 0);
	CHECK_OK(gw_job_start(&e->job, &ops, e, "test-job", e->sv[0], GW_MIG_SETUP, on_status, e,
			      &err), &err);
}

static void wait_active(struct engine *e)
{
	for (int ms = 0; gw_job_status(&e->job, NULL, NULL, NULL, 0) != GW_MIG_ACTIVE; ms++) {
		CHECK(ms < 5000);
		sleep_ms(1);
	}
}

static void wait_done(struct engine *e)
{
	for (int ms = 0; !gw_job_done(&e->job); ms++) {
		CHECK(ms < 10000);
		sleep_ms(1);
	}
}

static void finish(struct engine *e)
{
	gw_job_join(&e->job);
	close(e->sv[0]);
	close(e->sv[1]);
	pthread_cond_destroy(&e->cond);
	pthread_mutex_destroy(&e->lock);
}

static void release(struct engine *e)
{
	pthread_mutex_lock(&e->lock);
	e->released = true;
	pthread_cond_broadcast(&e->cond);
	pthread_mutex_unlock(&e->lock);
}

static void check_seen(struct engine *e, const enum gw_mig_status *want, int n)
{
	CHECK(e->nr_seen == n);
	for (int i = 0; i < n; i++)
		if (e->seen[i] != want[i])
			FAIL("status %d: %s, expected %s", i, gw_mig_status_name(e->seen[i]),
			     gw_mig_status_name(want[i]));
}

/* Cancel: CANCELLING at once, then CANCELLING and CANCELLED to the callback,
 * and done only after both returned. */
static void test_cancel_order(void)
{
	static const enum gw_mig_status want[] = { GW_MIG_ACTIVE, GW_MIG_CANCELLING,
						   GW_MIG_CANCELLED };
	struct engine e = { .hold = true };

	start(&e);
	wait_active(&e);
	CHECK(gw_job_cancel(&e.job));
	/* At once, while the body has not returned yet. */
	CHECK(gw_job_status(&e.job, NULL, NULL, NULL, 0) == GW_MIG_CANCELLING);
	CHECK(!gw_job_done(&e.job));
	release(&e);
	wait_done(&e);
	CHECK(e.concluded && e.outcome_at_conclude == GW_MIG_CANCELLING);
	check_seen(&e, want, 3);
	CHECK(!e.done_during_callback);
	CHECK(e.after_ran && e.done_at_after);
	CHECK(gw_job_status(&e.job, NULL, NULL, NULL, 0) == GW_MIG_CANCELLED);
	/* Over: a second cancel changes nothing. */
	CHECK(!gw_job_cancel(&e.job));
	CHECK(gw_job_status(&e.job, NULL, NULL, NULL, 0) == GW_MIG_CANCELLED);
	finish(&e);
}

/* A failure: the error and its code are kept, FAILED is the one callback. */
static void test_failure(void)
{
	static const enum gw_mig_status want[] = { GW_MIG_ACTIVE, GW_MIG_FAILED };
	char error[GW_ERROR_MSG_MAX];
	uint64_t ms;
	int code;
	struct engine e = { 0 };

	start(&e);
	e.result = -EPIPE;
	wait_active(&e);
	CHECK(write(e.sv[1], "x", 1) == 1); /* the "peer" answers */
	wait_done(&e);
	check_seen(&e, want, 2);
	CHECK(gw_job_status(&e.job, &ms, &code, error, sizeof(error)) == GW_MIG_FAILED);
	CHECK(code == -EPIPE && strcmp(error, "the peer failed") == 0);
	finish(&e);
}

/* Past its commit point a job refuses cancels; stop still ends its waits. */
static void test_commit(void)
{
	static const enum gw_mig_status want[] = { GW_MIG_ACTIVE, GW_MIG_FAILED };
	struct engine e = { .commit = true };

	start(&e);
	wait_active(&e);
	for (int ms = 0; !e.committed; ms++) {
		CHECK(ms < 5000);
		sleep_ms(1);
	}
	CHECK(!gw_job_cancel(&e.job));
	CHECK(gw_job_status(&e.job, NULL, NULL, NULL, 0) == GW_MIG_ACTIVE);
	gw_job_stop(&e.job);
	wait_done(&e);
	/* Woken, not cancelled by the caller: the engine decides (here FAILED). */
	check_seen(&e, want, 2);
	finish(&e);
}

/* A cancel that comes first wins over the commit. */
static void test_cancel_before_commit(void)
{
	struct engine e = { .hold = true };

	start(&e);
	wait_active(&e);
	CHECK(gw_job_cancel(&e.job));
	/* The body, still running, reaches its commit point after the cancel. */
	CHECK(!gw_job_commit(&e.job));
	release(&e);
	wait_done(&e);
	CHECK(gw_job_status(&e.job, NULL, NULL, NULL, 0) == GW_MIG_CANCELLED);
	finish(&e);
}

int main(void)
{
	test_cancel_order();
	test_failure();
	test_commit();
	test_cancel_before_commit();
	CHECK(gw_mig_status_is_final(GW_MIG_COMPLETED) && !gw_mig_status_is_final(GW_MIG_DEVICE));
	printf("job: all tests passed\n");
	return 0;
}
