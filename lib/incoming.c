/*
 * The destination of a live migration (<godwit/precopy.h>): one thread
 * that loads a stream into the registered blocks and sections, puts the
 * state into effect when all of it arrived and checked out, and, when the
 * source asks for the switchover handshake, says READY and resumes the
 * guest only on the source's GO (docs/format.md, "Switchover handshake").
 *
 * The rule that keeps the guest from running twice: once this side says
 * FAILED it never resumes, and it resumes only after a whole GO. Every
 * failure before the resume, a cancel included, is reported FAILED, so a
 * source that already sent GO learns that it may take its guest back.
 *
 * A failed destination must also unblock its source, which may still be
 * sending: with a return path it sends its failure report and then keeps
 * reading (and discarding) until the source hangs up, so the source's
 * writes keep flowing until it reads the report between two batches;
 * without one, it shuts a socket down so the source's writes fail.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <godwit/precopy.h>
#include <godwit/stream.h>

#include "cancel.h"
#include "clock.h"
#include "internal.h"
#include "return_path.h"

struct gw_incoming {
	struct gw_migration *m;
	struct gw_incoming_callbacks cb;
	struct gw_cancel cancel;
	struct gw_incoming_params params;
	pthread_t thread;
	uint64_t start_ns;
	uint64_t received; /* atomic: the reader adds to it */

	pthread_mutex_t lock; /* stats */
	struct gw_incoming_stats stats;
	bool finished;          /* the final status callback has returned */
};

static bool final_status(enum gw_mig_status s)
{
	return s == GW_MIG_COMPLETED || s == GW_MIG_FAILED || s == GW_MIG_CANCELLED;
}

/* Load the whole stream; *commit says whether the source waits for READY. */
static int load(struct gw_incoming *in, bool *commit, struct gw_error *err)
{
	struct gw_reader *r;
	uint32_t flags = 0;
	int ret;

	ret = gw_reader_new(in->cancel.fd, &r, err);
	if (ret < 0)
		return ret;
	gw_reader_bind(r, in->cancel.efd);
	gw_reader_count_into(r, &in->received);
	ret = gw_load_flags(in->m, r, &flags, err);
	*commit = flags & GW_HDRF_COMMIT;
	/* The source sends nothing after EOF until it has our READY. */
	if (ret == 0 && *commit && gw_reader_buffered(r))
		ret = gw_error_set(err, -EPROTO,
				   "the source sent %zu bytes after the EOF record, before the handshake",
				   gw_reader_buffered(r));
	gw_reader_free(r);
	return ret;
}

/* READY, then wait for GO: the commit point of the destination. */
static int await_go(struct gw_incoming *in, struct gw_error *err)
{
	const struct gw_report ready = { GW_REPORT_READY, 0, "" };
	struct gw_report go;
	uint64_t t0;
	int ret;

	ret = gw_report_send(in->cancel.fd, &ready, err);
	if (ret < 0)
		return ret;
	t0 = gw_now_ns();
	ret = gw_report_recv(&in->cancel, (int)in->params.go_timeout_ms,
			     "the source's GO (x-godwit-go-timeout)", &go, err);
	if (ret < 0)
		return ret;
	if (go.status != GW_REPORT_GO)
		return gw_error_set(err, -EPROTO, "the source sent %s where its GO belongs",
				    gw_report_name(go.status));
	pthread_mutex_lock(&in->lock);
	in->stats.go_wait_us = (gw_now_ns() - t0) / 1000;
	pthread_mutex_unlock(&in->lock);
	return 0;
}

static int cancelled_here(struct gw_incoming *in, struct gw_error *err)
{
	if (!gw_cancel_requested(&in->cancel))
		return 0;
	return gw_error_set(err, -ECANCELED, "cancelled on the destination");
}

/* Everything up to the resume; a failure anywhere leaves the guest unrun. */
static int receive(struct gw_incoming *in, struct gw_error *err)
{
	struct gw_migration *m = in->m;
	bool commit = false;
	int ret = load(in, &commit, err);

	if (ret == 0 && commit && !in->params.return_path)
		ret = gw_error_set(err, -EPROTO,
				   "the source waits for the switchover handshake, but this channel cannot answer it (it is not a socket): the guest will not run here");
	if (ret == 0)
		ret = cancelled_here(in, err);
	if (ret == 0 && m->vm_ops.prepare && (ret = m->vm_ops.prepare(m->vm_opaque, err)) < 0)
		gw_error_prefix(err, ret, "the stream loaded, but its state cannot be put into effect: ");
	if (ret == 0 && commit)
		ret = await_go(in, err);
	if (ret == 0)
		ret = cancelled_here(in, err);
	if (ret == 0 && (ret = m->vm_ops.resume(m->vm_opaque, err)) < 0)
		gw_error_prefix(err, ret, "the stream loaded, but the guest cannot be resumed: ");
	return ret;
}

/* Read and drop whatever the source still sends, until it hangs up. */
static void drain(struct gw_incoming *in)
{
	unsigned char buf[64 << 10];

	while (gw_cancel_poll(&in->cancel, POLLIN, -1) > 0) {
		ssize_t n = read(in->cancel.fd, buf, sizeof(buf));

		if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN))
			return;
	}
}

static void *incoming_thread(void *opaque)
{
	struct gw_incoming *in = opaque;
	struct gw_error err = { 0 };
	struct gw_report report = { GW_REPORT_RUNNING, 0, "" };
	enum gw_mig_status outcome = GW_MIG_COMPLETED;
	int ret;

	/* Named so that top -H and perf show where a migration's time goes. */
	pthread_setname_np(pthread_self(), "gw-incoming");
	ret = receive(in, &err);
	if (ret < 0) {
		report = (struct gw_report){ GW_REPORT_FAILED, ret, "" };
		snprintf(report.msg, sizeof(report.msg), "%s", err.msg);
		outcome = gw_cancel_requested(&in->cancel) ? GW_MIG_CANCELLED : GW_MIG_FAILED;
	}
	/*
	 * The source is told either way. A RUNNING that cannot be sent leaves
	 * the source paused (it sent GO and never resumes by itself then); a
	 * FAILED that cannot be sent likewise, unless it had not sent GO.
	 */
	if (in->params.return_path)
		gw_report_send(in->cancel.fd, &report, NULL);
	else if (ret < 0)
		gw_cancel_shutdown(&in->cancel);

	pthread_mutex_lock(&in->lock);
	in->stats.status = outcome;
	in->stats.total_time_ms = (gw_now_ns() - in->start_ns) / 1000000;
	if (outcome == GW_MIG_FAILED)
		snprintf(in->stats.error, sizeof(in->stats.error), "%s",
			 err.msg[0] ? err.msg : gw_strerror(ret));
	pthread_mutex_unlock(&in->lock);
	if (in->cb.status) {
		if (outcome == GW_MIG_CANCELLED)
			in->cb.status(in->cb.opaque, GW_MIG_CANCELLING);
		in->cb.status(in->cb.opaque, outcome);
	}
	pthread_mutex_lock(&in->lock);
	in->finished = true;
	pthread_mutex_unlock(&in->lock);
	if (outcome == GW_MIG_FAILED && in->params.return_path)
		drain(in);
	return NULL;
}

int gw_incoming_start(struct gw_migration *m, int fd, const struct gw_incoming_params *params,
		      const struct gw_incoming_callbacks *cb, struct gw_incoming **out,
		      struct gw_error *err)
{
	struct gw_incoming *in;
	int ret;

	if (!m || !out || fd < 0)
		return gw_error_set(err, -EINVAL, "incoming migration: no migration object, fd or result pointer");
	if (!m->vm_ops.resume)
		return gw_error_set(err, -EINVAL,
				    "incoming migration: the VMM has not set pause/resume (gw_migration_set_vm_ops)");
	in = calloc(1, sizeof(*in));
	if (!in)
		return gw_error_set(err, -ENOMEM, "incoming migration: out of memory");
	ret = gw_cancel_init(&in->cancel, fd, err);
	if (ret < 0) {
		free(in);
		return gw_error_prefix(err, ret, "incoming migration: ");
	}
	in->m = m;
	if (params)
		in->params = *params;
	in->params.go_timeout_ms = gw_timeout_ms(in->params.go_timeout_ms,
						 GW_SWITCHOVER_TIMEOUT_DEFAULT_MS);
	if (cb)
		in->cb = *cb;
	pthread_mutex_init(&in->lock, NULL);
	in->stats.status = GW_MIG_ACTIVE;
	in->start_ns = gw_now_ns();
	ret = pthread_create(&in->thread, NULL, incoming_thread, in);
	if (ret) {
		pthread_mutex_destroy(&in->lock);
		gw_cancel_fini(&in->cancel);
		free(in);
		return gw_error_set(err, -ret, "incoming migration: cannot start the thread: %s",
				    gw_strerror(ret));
	}
	*out = in;
	return 0;
}

void gw_incoming_stats(struct gw_incoming *in, struct gw_incoming_stats *out)
{
	pthread_mutex_lock(&in->lock);
	*out = in->stats;
	if (!final_status(out->status))
		out->total_time_ms = (gw_now_ns() - in->start_ns) / 1000000;
	pthread_mutex_unlock(&in->lock);
	out->received = __atomic_load_n(&in->received, __ATOMIC_RELAXED);
}

void gw_incoming_cancel(struct gw_incoming *in)
{
	bool running;

	pthread_mutex_lock(&in->lock);
	running = !final_status(in->stats.status);
	if (running)
		in->stats.status = GW_MIG_CANCELLING;
	pthread_mutex_unlock(&in->lock);
	/* No shutdown: the source must still get our FAILED (see the top). */
	if (running)
		gw_cancel_wake(&in->cancel);
}

bool gw_incoming_done(struct gw_incoming *in)
{
	bool done;

	pthread_mutex_lock(&in->lock);
	done = in->finished;
	pthread_mutex_unlock(&in->lock);
	return done;
}

void gw_incoming_free(struct gw_incoming *in)
{
	bool failed;

	if (!in)
		return;
	gw_incoming_cancel(in);
	/* A failed destination may still be draining; that ends here too. */
	pthread_mutex_lock(&in->lock);
	failed = in->stats.status == GW_MIG_FAILED;
	pthread_mutex_unlock(&in->lock);
	if (failed)
		gw_cancel_wake(&in->cancel);
	pthread_join(in->thread, NULL);
	pthread_mutex_destroy(&in->lock);
	gw_cancel_fini(&in->cancel);
	free(in);
}
