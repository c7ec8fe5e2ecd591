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
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <godwit/precopy.h>
#include <godwit/stream.h>

#include "lib/bitmap.h"
#include "lib/cancel.h"
#include "lib/clock.h"
#include "lib/internal.h"
#include "lib/engine/cpr_hello.h"
#include "lib/engine/job.h"
#include "lib/engine/postcopy_dest.h"
#include "lib/format/cpr.h"
#include "lib/format/mapped.h"
#include "lib/format/mapped_lazy.h"
#include "lib/format/mapped_load.h"
#include "lib/format/postcopy.h"
#include "lib/ram/page_server.h"
#include "lib/ram/multifd_rx.h"
#include "lib/transport/fd_pass.h"
#include "lib/transport/return_path.h"

/* A command that brought the stream has done its part when the stream
 * ends: it is killed, and this bounds the wait for one stuck in the kernel. */
#define EXEC_END_GRACE_MS 1000
/* The last word to the source: a few bytes into a socket it reads. */
#define REPORT_SEND_TIMEOUT_MS 5000
/* A failed lazy restore: how long the vCPUs' pause may take before the
 * page server lets go of a vCPU that waits for a page (pause_for_good). */
#define PAUSE_KICK_MS 200

struct gw_incoming {
	struct gw_job job; /* its lock guards stats too */
	struct gw_migration *m;
	struct gw_incoming_callbacks cb;
	struct gw_channel ch; /* ours */
	struct gw_incoming_params params;
	bool return_path;  /* the channel can answer */
	uint64_t received; /* atomic: the reader adds to it */
	struct gw_incoming_stats stats;
	uint64_t cpr_pause_ns; /* a local source's pause (its PAUSE or CPR record), for the downtime */
	bool adopted;          /* cpr-transfer: the source is on this host */
	/* params.multifd: reads the channels handed over (under job.lock,
	 * freed when the stream is over). */
	struct gw_multifd_rx *rx;
	/* When vm_ops.resume was called: the end of the downtime, as its
	 * start is the call of the source's pause. The vCPUs run within
	 * microseconds of it; the call's return may be later by a time slice,
	 * when this thread is preempted by the very vCPUs it woke. */
	uint64_t resumed_ns;
	/* A lazy restore: serving RAM from the file (set and cleared by the
	 * job's thread under the job's lock, so stats can read it); and
	 * whether its guest ran, after which a failure pauses it for good. */
	struct gw_mapped_lazy *lazy;
	bool lazy_resumed;
	/* its faults by thread, kept when it ends (under the job's lock) */
	struct gw_ps_thread_stats threads[GW_PS_THREADS_MAX];
	unsigned nr_threads;
	/* Post-copy (params.postcopy): the set the stream named; once the
	 * guest runs, the page server fetching it (under the job's lock, as
	 * lazy). */
	struct gw_load_postcopy pc;
	struct gw_pc_dest *pcd;
};

/*
 * A regular file that opens with a mapped-ram header is read by page
 * offset (lib/format/mapped_load.c), not as a stream; a file it does not
 * recognise is left for the stream reader, which says what it is not.
 */
static bool is_mapped_file(int fd)
{
	unsigned char h[GW_STREAM_HEADER_SIZE];
	struct stat st;

	return fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
	       pread(fd, h, sizeof(h), 0) == (ssize_t)sizeof(h) &&
	       gw_mapped_sniff(h, NULL) != -ENOMSG;
}

static int load_mapped(struct gw_incoming *in, struct gw_error *err)
{
	const struct gw_mapped_load_params mp = {
		.direct_io = in->params.direct_io,
		.readers = in->params.multifd_channels ? in->params.multifd_channels : 1,
	};

	return gw_mapped_load(in->m, in->ch.fd, &mp, &in->job.cancel, &in->received, err);
}

static int start_lazy(struct gw_incoming *in, struct gw_error *err)
{
	const struct gw_mapped_lazy_params lp = {
		.direct_io = in->params.direct_io,
		.mode = in->params.lazy_copy ? GW_PS_MISSING : GW_PS_MINOR,
		.rate = in->params.lazy_max_bandwidth,
	};
	struct gw_mapped_lazy *lz = NULL;
	int ret = gw_mapped_lazy_start(in->m, in->ch.fd, &lp, &in->job.cancel, &in->received, &lz,
				       err);

	pthread_mutex_lock(&in->job.lock);
	in->lazy = lz;
	/* A rate set while it started (gw_incoming_set_params). */
	if (lz)
		gw_mapped_lazy_set_rate(lz, in->params.lazy_max_bandwidth);
	pthread_mutex_unlock(&in->job.lock);
	return ret;
}

static uint32_t us_of(uint64_t ns)
{
	return ns / 1000 > UINT32_MAX ? UINT32_MAX : (uint32_t)(ns / 1000);
}

/* The page server's figures, a lazy restore's or post-copy's. */
static void ps_figures(const struct gw_ps_stats *ps, struct gw_incoming_stats *st)
{
	st->lazy_faulted = ps->faulted;
	st->lazy_background = ps->background;
	st->lazy_remaining = ps->remaining;
	st->lazy_fault_mean_us = ps->faults ? us_of(ps->fault_ns / ps->faults) : 0;
	st->lazy_fault_max_us = us_of(ps->fault_max_ns);
}

static void lazy_figures(struct gw_mapped_lazy *lz, struct gw_incoming_stats *st)
{
	struct gw_ps_stats ps;

	gw_mapped_lazy_stats(lz, &ps);
	ps_figures(&ps, st);
}

static void postcopy_figures(struct gw_incoming *in, struct gw_incoming_stats *st)
{
	struct gw_ps_stats ps;

	gw_pc_dest_stats(in->pcd, &ps, &st->postcopy_requests);
	ps_figures(&ps, st);
}

/* Stop serving RAM (a lazy restore's or post-copy's); its figures stay in
 * the stats. */
static void end_lazy(struct gw_incoming *in)
{
	struct gw_mapped_lazy *lz = in->lazy;
	struct gw_pc_dest *pcd = in->pcd;

	pthread_mutex_lock(&in->job.lock);
	if (lz) {
		lazy_figures(lz, &in->stats);
		in->nr_threads = gw_mapped_lazy_thread_stats(lz, in->threads);
	}
	if (pcd) {
		postcopy_figures(in, &in->stats);
		in->nr_threads = gw_pc_dest_thread_stats(pcd, in->threads);
	}
	in->lazy = NULL;
	in->pcd = NULL;
	pthread_mutex_unlock(&in->job.lock);
	gw_mapped_lazy_free(lz);
	gw_pc_dest_free(pcd);
}

struct lazy_pause {
	struct gw_migration *m;
	int efd; /* readable once pause returned */
	int ret;
	struct gw_error err;
};

static void *pause_thread(void *opaque)
{
	struct lazy_pause *p = opaque;
	uint64_t one = 1;

	p->ret = p->m->vm_ops.pause(p->m->vm_opaque, &p->err);
	while (write(p->efd, &one, sizeof(one)) < 0 && errno == EINTR)
		;
	return NULL;
}

/*
 * Stop the guest for good, then stop serving. A vCPU that waits for a
 * page that will never come cannot park: KVM retries the page without
 * looking at signals (its get_user_pages is not interruptible), so it
 * only moves on once the page server lets go of the range. Letting go
 * first would let it run on with a page that is not the source's (zeros,
 * or post-copy's stale copy); so the pause is asked
 * for first, in a thread (its kick reaches the vCPUs at once), and the
 * server lets go once the pause returned, or after PAUSE_KICK_MS if it
 * has not (a vCPU held by a missing page): kicked by then, the vCPU gets
 * that page in KVM, whose pending signal check stops it before it
 * enters the guest again, so the guest never reads the page. A machine so
 * loaded that the pause thread has not even kicked within PAUSE_KICK_MS
 * would let that vCPU run on briefly: the only timing this relies on.
 */
static int pause_for_good(struct gw_incoming *in, struct gw_error *err)
{
	struct lazy_pause p = {.m = in->m, .efd = eventfd(0, EFD_CLOEXEC)};
	struct pollfd pfd = {.fd = p.efd, .events = POLLIN};
	pthread_t t;
	int ret;

	if (p.efd < 0 || (ret = pthread_create(&t, NULL, pause_thread, &p)) != 0) {
		/* No thread: pause here, after letting go (see above). */
		end_lazy(in);
		if (p.efd >= 0)
			close(p.efd);
		return in->m->vm_ops.pause(in->m->vm_opaque, err);
	}
	if (poll(&pfd, 1, PAUSE_KICK_MS) <= 0)
		end_lazy(in);
	pthread_join(t, NULL);
	end_lazy(in);
	close(p.efd);
	if (p.ret < 0)
		*err = p.err;
	return p.ret;
}

/*
 * The guest runs; RAM still arrives. Wait for the last page, or for the
 * first that fails or a cancel: then the guest must not go on with
 * memory that will never be whole, and is paused for good.
 */
static int serve_lazily(struct gw_incoming *in, struct gw_error *err)
{
	struct gw_error perr = {0};
	int ret;

	gw_job_set_status(&in->job, GW_MIG_POSTCOPY_ACTIVE);
	ret = gw_mapped_lazy_wait(in->lazy, in->job.cancel.efd, err);
	if (ret < 0 && pause_for_good(in, &perr) < 0) {
		struct gw_error first = *err;

		gw_error_set(err, ret, "%s (and pausing the guest failed: %s)", first.msg,
			     perr.msg);
	}
	end_lazy(in);
	if (ret == -ECANCELED)
		gw_error_set(err, ret,
			     "cancelled during a lazy restore, with %llu pages of the file not loaded yet: the guest is paused and cannot run again here",
			     (unsigned long long)in->stats.lazy_remaining);
	return ret;
}

/*
 * Post-copy, the EARLY set whole (the source's guest still runs): unmap
 * those pages now, outside the blackout, and tell the source, which
 * waits for it before it pauses.
 */
static int early_done(void *opaque, struct gw_error *err)
{
	const struct gw_report discarded = {GW_REPORT_DISCARDED, 0, ""};
	struct gw_incoming *in = opaque;

	for (uint32_t i = 0; i < in->m->nr_ram; i++) {
		int ret = gw_postcopy_discard(&in->m->ram[i], in->pc.early[i], err);

		if (ret < 0)
			return ret;
	}
	if (!in->return_path)
		return gw_error_set(err, -EPROTO,
				    "post-copy over a channel that cannot answer (not a socket)");
	return gw_report_send(&in->job.cancel, (int)in->params.go_timeout_ms, &discarded, err);
}

/*
 * Post-copy, before READY: the pages the source named are stale here;
 * unmap them, so that only the page server can fill them. All of them,
 * the EARLY set's too: whatever touched one since would have mapped it
 * again, and a range unmapped already costs next to nothing.
 */
static int discard_stale(struct gw_incoming *in, struct gw_error *err)
{
	for (uint32_t i = 0; i < in->m->nr_ram; i++) {
		int ret = gw_postcopy_discard(&in->m->ram[i], in->pc.stale[i], err);

		if (ret < 0)
			return ret;
	}
	return 0;
}

/* Post-copy, after GO: serve the guest's RAM, the stale set fetched from
 * the source, the rest mapped as it is. */
static int start_postcopy(struct gw_incoming *in, struct gw_error *err)
{
	const struct gw_pc_dest_params p = {.rate = in->params.lazy_max_bandwidth,
					    .timeout_ms = (int)in->params.go_timeout_ms};
	struct gw_pc_dest *pcd = NULL;
	int ret = gw_pc_dest_start(in->m, &in->job, &in->ch, in->pc.stale, in->pc.stream_id, &p,
				   &pcd, err);

	pthread_mutex_lock(&in->job.lock);
	in->pcd = pcd;
	pthread_mutex_unlock(&in->job.lock);
	return ret;
}

/* The guest runs; its stale pages arrive, over new connections too if
 * one breaks. A stop while the source still has pages pauses the guest
 * for good. */
static int serve_postcopy(struct gw_incoming *in, struct gw_error *err)
{
	struct gw_error perr = {0};
	int ret;

	ret = gw_pc_dest_run(in->pcd, err);
	if (ret < 0 && pause_for_good(in, &perr) < 0) {
		struct gw_error first = *err;

		gw_error_set(err, ret, "%s (and pausing the guest failed: %s)", first.msg,
			     perr.msg);
	}
	end_lazy(in);
	if (ret < 0)
		gw_error_prefix(err, ret,
				"post-copy ended with pages still at the source: the guest is paused here for good and lost: ");
	return ret;
}

static void note_adopted(struct gw_incoming *in, uint64_t bytes, uint64_t ns)
{
	pthread_mutex_lock(&in->job.lock);
	in->stats.adopted_bytes = bytes;
	in->stats.adopt_us = ns / 1000;
	pthread_mutex_unlock(&in->job.lock);
}

/*
 * cpr-transfer: a unix socket may open with the hello of a local live
 * update instead of a stream. Its memfds are adopted and ADOPTED sent
 * back while the source's guest runs; the stream that follows must then
 * be a local live update's (*cpr).
 */
static int adopt_hello(struct gw_incoming *in, enum gw_load_cpr *cpr, struct gw_error *err)
{
	const struct gw_report adopted_msg = {GW_REPORT_ADOPTED, 0, ""};
	unsigned char first[GW_CPR_HELLO_MAGIC_LEN];
	uint64_t bytes = 0, t0;
	int ret;

	if (!in->return_path || !gw_fd_is_unix_socket(in->ch.fd))
		return 0;
	ret = gw_fds_peek(&in->job.cancel, first, sizeof(first), err);
	if (ret == -EPIPE)
		return 0; /* the reader says what an empty stream is */
	if (ret < 0 || !gw_cpr_hello_is(first))
		return ret;
	*cpr = GW_LOAD_CPR_ADOPTED;
	in->adopted = true;
	t0 = gw_now_ns();
	ret = gw_cpr_hello_receive(in->m, &in->job.cancel, (int)in->params.go_timeout_ms, &bytes,
				   err);
	if (ret < 0)
		return ret;
	note_adopted(in, bytes, gw_now_ns() - t0);
	return gw_report_send(&in->job.cancel, (int)in->params.go_timeout_ms, &adopted_msg, err);
}

/*
 * Load the whole stream; *commit says whether the source waits for READY,
 * *hold whether the guest must not run here (a background snapshot of a
 * guest that runs on, arriving live rather than restored from a file).
 */
static int load(struct gw_incoming *in, bool *commit, bool *hold, struct gw_error *err)
{
	enum gw_load_cpr cpr;
	uint64_t adopted = 0, t0;
	struct gw_reader *r;
	uint32_t flags = 0;
	struct stat st;
	bool file;
	int ret;

	*commit = false;
	*hold = false;
	if (is_mapped_file(in->ch.fd))
		return in->params.lazy_restore ? start_lazy(in, err) : load_mapped(in, err);
	if (in->params.lazy_restore)
		return gw_error_set(err, -EINVAL,
				    "x-godwit-lazy-restore restores mapped-ram files only (file:PATH of a mapped-ram save), and this stream is not one: turn the capability off to load it");
	/* Without a hello, a cpr-exec state says which fds this process
	 * inherited are the RAM (its CPR record); inode checks keep out any
	 * others. Only the file the exec'd image reads brings one: a peer on
	 * a socket or a pipe is another process, whose fd numbers mean nothing
	 * here, and it hands memfds over in a hello or not at all. */
	file = fstat(in->ch.fd, &st) == 0 && S_ISREG(st.st_mode);
	cpr = file ? GW_LOAD_CPR_EXEC : GW_LOAD_CPR_NO_HELLO;

	ret = adopt_hello(in, &cpr, err);
	if (ret < 0)
		return ret;
	ret = gw_reader_new(in->job.cancel.fd, &r, err);
	if (ret < 0)
		return ret;
	gw_reader_bind(r, in->job.cancel.efd);
	gw_reader_count_into(r, &in->received);
	t0 = gw_now_ns();
	ret = gw_load_cpr(in->m, r, cpr, in->rx, in->params.postcopy ? &in->pc : NULL, &flags,
			  &adopted, &in->cpr_pause_ns, err);
	/* The main stream broke because a channel failed first: its reason. */
	if ((ret == -EPIPE || ret == -ECONNRESET) && in->rx)
		gw_multifd_rx_failure(in->rx, err);
	if (adopted)
		note_adopted(in, adopted, gw_now_ns() - t0);
	*commit = flags & GW_HDRF_COMMIT;
	*hold = (flags & GW_HDRF_SNAPSHOT) && !file;
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
	const struct gw_report ready = {GW_REPORT_READY, 0, ""};
	struct gw_report go;
	uint64_t t0;
	int ret;

	ret = gw_report_send(&in->job.cancel, (int)in->params.go_timeout_ms, &ready, err);
	if (ret < 0)
		return ret;
	t0 = gw_now_ns();
	ret = gw_report_recv(&in->job.cancel, (int)in->params.go_timeout_ms,
			     "the source's GO (x-godwit-go-timeout)", &go, err);
	if (ret < 0)
		return ret;
	if (go.status != GW_REPORT_GO)
		return gw_error_set(err, -EPROTO, "the source sent %s where its GO belongs",
				    gw_report_name(go.status));
	pthread_mutex_lock(&in->job.lock);
	in->stats.go_wait_us = (gw_now_ns() - t0) / 1000;
	pthread_mutex_unlock(&in->job.lock);
	return 0;
}

static int cancelled_here(struct gw_incoming *in, struct gw_error *err)
{
	if (!gw_job_cancelled(&in->job))
		return 0;
	return gw_error_set(err, -ECANCELED, "cancelled on the destination");
}

/* Everything up to the resume; a failure anywhere leaves the guest unrun. */
static int receive(struct gw_incoming *in, struct gw_error *err)
{
	struct gw_migration *m = in->m;
	bool commit = false, hold = false;
	int ret = load(in, &commit, &hold, err);

	if (ret == 0 && commit && !in->return_path)
		ret = gw_error_set(err, -EPROTO,
				   "the source waits for the switchover handshake, but this channel cannot answer it (it is not a socket): the guest will not run here");
	if (ret == 0)
		ret = cancelled_here(in, err);
	if (ret == 0 && in->pc.active && !commit)
		ret = gw_error_set(err, -EPROTO, "post-copy without the switchover handshake");
	if (ret == 0 && in->pc.active)
		ret = discard_stale(in, err);
	if (ret == 0 && m->vm_ops.prepare && (ret = m->vm_ops.prepare(m->vm_opaque, err)) < 0)
		gw_error_prefix(err, ret,
				"the stream loaded, but its state cannot be put into effect: ");
	if (ret == 0 && commit)
		ret = await_go(in, err);
	/* The destination's commit point: a cancel from here is refused.
	 * Not for a lazy restore: its guest can be stopped until the last
	 * page is in. */
	if (ret == 0 && !in->lazy && !gw_job_commit(&in->job))
		ret = gw_error_set(err, -ECANCELED, "cancelled on the destination");
	if (ret == 0 && in->pc.active)
		ret = start_postcopy(in, err);
	if (ret < 0)
		end_lazy(in);
	if (ret == 0 && hold) {
		/* Its source still runs it: this copy waits for the operator. */
		pthread_mutex_lock(&in->job.lock);
		in->stats.held = true;
		pthread_mutex_unlock(&in->job.lock);
		return 0;
	}
	in->resumed_ns = gw_now_ns();
	if (ret == 0 && (ret = m->vm_ops.resume(m->vm_opaque, err)) < 0)
		gw_error_prefix(err, ret, "the stream loaded, but the guest cannot be resumed: ");
	if (in->lazy) {
		in->lazy_resumed = ret == 0;
		ret = ret == 0 ? serve_lazily(in, err) : (end_lazy(in), ret);
	} else if (in->pcd) {
		in->lazy_resumed = ret == 0;
		ret = ret == 0 ? serve_postcopy(in, err) : (end_lazy(in), ret);
	}
	/* A local live update: the source paused on this host's clock. */
	if (ret == 0 && in->cpr_pause_ns) {
		uint64_t end = in->resumed_ns;

		pthread_mutex_lock(&in->job.lock);
		in->stats.downtime_us = end > in->cpr_pause_ns ? (end - in->cpr_pause_ns) / 1000 :
								 0;
		pthread_mutex_unlock(&in->job.lock);
	}
	return ret;
}

/* Read and drop whatever the source still sends, until it hangs up. */
static void drain(struct gw_incoming *in)
{
	unsigned char buf[64 << 10];

	while (gw_cancel_poll(&in->job.cancel, POLLIN, -1) > 0) {
		ssize_t n = read(in->job.cancel.fd, buf, sizeof(buf));

		if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN))
			return;
	}
}

static int incoming_run(struct gw_job *j, struct gw_error *err)
{
	return receive(j->engine, err);
}

/* Tell the source how it ended, then decide the outcome. */
static enum gw_mig_status incoming_conclude(struct gw_job *j, int ret, struct gw_error *err)
{
	struct gw_incoming *in = j->engine;
	struct gw_report report = {GW_REPORT_RUNNING, 0, ""};

	if (ret < 0) {
		report = (struct gw_report){GW_REPORT_FAILED, ret, ""};
		snprintf(report.msg, sizeof(report.msg), "%s", err->msg);
	} else if (in->adopted) {
		snprintf(report.msg, sizeof(report.msg), "%llu",
			 (unsigned long long)in->resumed_ns);
	}
	/*
	 * The source is told either way. A RUNNING that cannot be sent leaves
	 * the source paused (it sent GO and never resumes by itself then); a
	 * FAILED that cannot be sent likewise, unless it had not sent GO.
	 */
	if (in->return_path)
		gw_report_send(&in->job.cancel, REPORT_SEND_TIMEOUT_MS, &report, NULL);
	else if (ret < 0)
		gw_cancel_shutdown(&in->job.cancel);
	if (ret == 0)
		return GW_MIG_COMPLETED;
	/* A lazy restore's or a post-copy's guest ran: cancelled or not, it
	 * is lost here. */
	return gw_job_cancelled(j) && !in->lazy_resumed ? GW_MIG_CANCELLED : GW_MIG_FAILED;
}

/* After the outcome: a failed destination drains its source (see the top),
 * then the channel ends. */
static void incoming_after(struct gw_job *j)
{
	struct gw_incoming *in = j->engine;

	pthread_mutex_lock(&in->job.lock);
	struct gw_multifd_rx *rx = in->rx;
	in->rx = NULL;
	pthread_mutex_unlock(&in->job.lock);
	gw_multifd_rx_free(rx);
	if (gw_job_status(j, NULL, NULL, NULL, 0) == GW_MIG_FAILED && in->return_path)
		drain(in);
	gw_channel_close_stream(&in->ch, NULL);
	if (in->ch.child > 0)
		gw_channel_abort(&in->ch);
	gw_channel_end(&in->ch, -1, EXEC_END_GRACE_MS, NULL);
}

static const struct gw_job_ops incoming_ops = {
	.run = incoming_run,
	.conclude = incoming_conclude,
	.after = incoming_after,
};

static void free_incoming(struct gw_incoming *in)
{
	for (uint32_t i = 0; in->pc.stale && i < in->m->nr_ram; i++)
		free(in->pc.stale[i]);
	free(in->pc.stale);
	for (uint32_t i = 0; in->pc.early && i < in->m->nr_ram; i++)
		free(in->pc.early[i]);
	free(in->pc.early);
	free(in);
}

static int alloc_stale(struct gw_incoming *in, struct gw_error *err);

int gw_incoming_start(struct gw_migration *m, struct gw_channel *ch,
		      const struct gw_incoming_params *params,
		      const struct gw_incoming_callbacks *cb, struct gw_incoming **out,
		      struct gw_error *err)
{
	struct gw_incoming *in;
	int ret;

	if (!m || !out || !ch)
		return gw_error_set(err, -EINVAL,
				    "incoming migration: no migration object, channel or result pointer");
	if (!m->vm_ops.resume)
		return gw_error_set(err, -EINVAL,
				    "incoming migration: the VMM has not set pause/resume (gw_migration_set_vm_ops)");
	if (params && (ret = gw_check_reserved(params->reserved, GW_ARRAY_SIZE(params->reserved),
					       "incoming parameters", err)) < 0)
		return ret;
	in = calloc(1, sizeof(*in));
	if (!in)
		return gw_error_set(err, -ENOMEM, "incoming migration: out of memory");
	in->m = m;
	in->ch = *ch;
	in->return_path = ch->bidirectional;
	if (params)
		in->params = *params;
	in->params.go_timeout_ms = gw_timeout_ms(in->params.go_timeout_ms,
						 GW_SWITCHOVER_TIMEOUT_DEFAULT_MS);
	if (cb)
		in->cb = *cb;
	if (in->params.postcopy && (ret = alloc_stale(in, err)) < 0) {
		free_incoming(in);
		return ret;
	}
	if (in->params.multifd && (ret = gw_multifd_rx_new(m, &in->job.cancel, in->ch.fd,
							   &in->received, &in->rx, err)) < 0) {
		free_incoming(in);
		return ret;
	}
	ret = gw_job_start(&in->job, &incoming_ops, in, "gw-incoming", in->ch.fd, GW_MIG_ACTIVE,
			   in->cb.status, in->cb.opaque, err);
	if (ret < 0) {
		gw_multifd_rx_free(in->rx);
		free_incoming(in);
		return gw_error_prefix(err, ret, "incoming migration: ");
	}
	*ch = (struct gw_channel){.fd = -1};
	*out = in;
	return 0;
}

/* Post-copy: one bitmap per RAM block for the set the stream may name. */
static int alloc_stale(struct gw_incoming *in, struct gw_error *err)
{
	in->pc.stale = calloc(in->m->nr_ram + 1, sizeof(*in->pc.stale));
	in->pc.early = calloc(in->m->nr_ram + 1, sizeof(*in->pc.early));
	if (!in->pc.stale || !in->pc.early)
		return gw_error_set(err, -ENOMEM, "incoming migration: out of memory");
	in->pc.early_done = early_done;
	in->pc.opaque = in;
	for (uint32_t i = 0; i < in->m->nr_ram; i++) {
		size_t words = gw_bitmap_words(in->m->ram[i].size / GW_PAGE_SIZE) + 1;

		in->pc.stale[i] = calloc(words, sizeof(uint64_t));
		in->pc.early[i] = calloc(words, sizeof(uint64_t));
		if (!in->pc.stale[i] || !in->pc.early[i])
			return gw_error_set(err, -ENOMEM,
					    "incoming migration: out of memory for the post-copy bitmaps");
	}
	return 0;
}

int gw_incoming_add_channel(struct gw_incoming *in, struct gw_channel *ch, struct gw_error *err)
{
	int ret;

	pthread_mutex_lock(&in->job.lock);
	if (!in->rx)
		ret = gw_error_set(err, -EPROTO,
				   in->params.multifd ?
					   "a connection after the migration's stream was over" :
					   "a second connection, and multifd is not on here");
	else
		ret = gw_multifd_rx_add(in->rx, ch, err);
	pthread_mutex_unlock(&in->job.lock);
	return ret;
}

void gw_incoming_stats(struct gw_incoming *in, struct gw_incoming_stats *out)
{
	pthread_mutex_lock(&in->job.lock);
	*out = in->stats;
	if (in->lazy)
		lazy_figures(in->lazy, out);
	if (in->pcd)
		postcopy_figures(in, out);
	out->status = gw_job_status_locked(&in->job, &out->total_time_ms, NULL, out->error,
					   sizeof(out->error));
	pthread_mutex_unlock(&in->job.lock);
	out->received = __atomic_load_n(&in->received, __ATOMIC_RELAXED);
}

int gw_incoming_set_params(struct gw_incoming *in, const struct gw_incoming_params *params,
			   struct gw_error *err)
{
	int ret = gw_check_reserved(params->reserved, GW_ARRAY_SIZE(params->reserved),
				    "incoming parameters", err);

	if (ret < 0)
		return ret;
	pthread_mutex_lock(&in->job.lock);
	in->params.lazy_max_bandwidth = params->lazy_max_bandwidth;
	if (in->lazy)
		gw_mapped_lazy_set_rate(in->lazy, params->lazy_max_bandwidth);
	pthread_mutex_unlock(&in->job.lock);
	return 0;
}

unsigned gw_incoming_fault_threads(struct gw_incoming *in, struct gw_fault_thread_stats *out,
				   unsigned max)
{
	struct gw_ps_thread_stats t[GW_PS_THREADS_MAX];
	unsigned n;

	pthread_mutex_lock(&in->job.lock);
	if (in->lazy)
		n = gw_mapped_lazy_thread_stats(in->lazy, t);
	else if (in->pcd)
		n = gw_pc_dest_thread_stats(in->pcd, t);
	else
		memcpy(t, in->threads, (n = in->nr_threads) * sizeof(t[0]));
	pthread_mutex_unlock(&in->job.lock);
	if (n > max)
		n = max;
	for (unsigned i = 0; i < n; i++)
		out[i] = (struct gw_fault_thread_stats){
			.tid = t[i].tid,
			.faults = t[i].faults,
			.fault_mean_us = t[i].faults ? us_of(t[i].fault_ns / t[i].faults) : 0,
			.fault_max_us = us_of(t[i].fault_max_ns),
			.fault_total_us = t[i].fault_ns / 1000,
		};
	return n;
}

int gw_incoming_recover(struct gw_incoming *in, struct gw_channel *ch, struct gw_error *err)
{
	int ret;

	pthread_mutex_lock(&in->job.lock);
	ret = in->pcd ?
		      gw_pc_dest_recover(in->pcd, ch, err) :
		      gw_error_set(err, -EINVAL,
				   "only a post-copy in postcopy-paused can be recovered (status %s)",
				   gw_mig_status_name(in->job.status));
	pthread_mutex_unlock(&in->job.lock);
	return ret;
}

void gw_incoming_cancel(struct gw_incoming *in)
{
	/* No shutdown: the source must still get our FAILED (see the top). */
	gw_job_cancel(&in->job);
}

bool gw_incoming_done(struct gw_incoming *in)
{
	return gw_job_done(&in->job);
}

void gw_incoming_free(struct gw_incoming *in)
{
	if (!in)
		return;
	/* A failed destination may still be draining; that ends here too. */
	gw_job_stop(&in->job);
	gw_job_join(&in->job);
	free_incoming(in);
}
