/*
 * The source's post-copy phase (postcopy_source.h).
 */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <godwit/io.h>

#include "lib/bitmap.h"
#include "lib/engine/postcopy_resume.h"
#include "lib/engine/postcopy_serve.h"
#include "lib/engine/postcopy_source.h"
#include "lib/format/postcopy.h"
#include "lib/internal.h"
#include "lib/transport/return_path.h"

#define PAGE ((uint64_t)GW_PAGE_SIZE)

struct run {
	struct gw_pc_source *s;
	const struct gw_precopy_params *pp;
	uint64_t fingerprint;
	uint64_t **orig; /* the switch's set, which a resume may not go beyond */
};

static int cancelled(struct gw_error *err)
{
	return gw_error_set(err, -ECANCELED, "cancelled");
}

/* Answer requests over the engine's channel until the set is empty, then
 * the destination's RUNNING. */
static int serve(struct run *r, bool *dest_failed, struct gw_error *err)
{
	struct gw_pc_source *s = r->s;
	struct gw_writer *w;
	int ret = gw_writer_new(s->ch->fd, &w, err);

	if (ret < 0)
		return ret;
	gw_writer_bind(w, s->h->job.cancel.efd);
	ret = gw_postcopy_serve(s->m, &s->h->job.cancel, w, s->stale,
				(int)r->pp->confirm_timeout_ms, &s->h->pc_served, dest_failed, err);
	gw_writer_free(w);
	if (ret == 0)
		ret = gw_outgoing_expect(s->h, s->ho, r->pp->confirm_timeout_ms, GW_REPORT_RUNNING,
					 "the destination's RUNNING once every page is in", err);
	*dest_failed = *dest_failed || s->ho->dest_failed;
	return ret;
}

/* postcopy-paused (or back to it) with why. */
static void pause_with(struct gw_pc_source *s, const struct gw_error *why)
{
	gw_job_set_status_error(&s->h->job, GW_MIG_POSTCOPY_PAUSED, why->msg);
}

/* The connection a gw_precopy_resume() handed in, or a stop. */
static int wait_for_connection(struct gw_pc_source *s, struct gw_channel *ch, struct gw_error *err)
{
	struct gw_precopy *h = s->h;
	struct pollfd p[2] = {{.fd = h->job.cancel.efd, .events = POLLIN},
			      {.fd = h->resume_efd, .events = POLLIN}};
	uint64_t n;

	for (;;) {
		/* No limit: whoever runs the two sides decides when to retry. */
		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			return gw_error_set(err, -errno, "poll: %s", gw_strerror(errno));
		}
		if (p[0].revents)
			return cancelled(err);
		if (read(h->resume_efd, &n, sizeof(n)) < 0 && errno != EAGAIN)
			return gw_error_set(err, -errno, "eventfd: %s", gw_strerror(errno));
		pthread_mutex_lock(&h->job.lock);
		bool got = h->resume_pending;
		*ch = h->resume_ch;
		h->resume_pending = false;
		pthread_mutex_unlock(&h->job.lock);
		if (got)
			return 0;
	}
}

/*
 * The connection broke: paused until a new one passes the resume
 * handshake (then it is the engine's channel) or a stop.
 */
static int recover(struct run *r, struct gw_error *err)
{
	struct gw_pc_source *s = r->s;
	struct gw_job *j = &s->h->job;

	pause_with(s, err);
	/* The destination may not know yet: the old connection is over. */
	gw_cancel_shutdown(&j->cancel);
	for (;;) {
		struct gw_channel ch;
		struct gw_error e = {0};
		int ret = wait_for_connection(s, &ch, err);

		if (ret < 0)
			return gw_error_prefix(err, ret, "in postcopy-paused: ");
		gw_job_set_status(j, GW_MIG_POSTCOPY_RECOVER);
		/* The job's cancel, over the new connection until it is ours. */
		struct gw_cancel c = j->cancel;

		c.fd = ch.fd;
		c.is_socket = true;
		ret = gw_pc_resume_source(&c, (int)r->pp->ready_timeout_ms, r->fingerprint,
					  s->m->ram, s->m->nr_ram, r->orig, s->stale, &e);
		/* Only this side's stop ends the recovery: any failure of the
		 * attempt, whatever its code, leaves the post-copy paused. */
		if (ret < 0 && gw_cancel_requested(&j->cancel)) {
			gw_channel_close(&ch, NULL);
			return gw_error_set(err, ret, "stopped during post-copy recovery");
		}
		if (ret < 0) {
			gw_channel_close(&ch, NULL);
			pause_with(s, &e);
			continue;
		}
		pthread_mutex_lock(&j->lock);
		struct gw_channel old = *s->ch;
		*s->ch = ch;
		j->cancel.fd = ch.fd;
		j->cancel.is_socket = c.is_socket;
		pthread_mutex_unlock(&j->lock);
		gw_channel_abort(&old);
		gw_channel_close(&old, NULL);
		gw_job_set_status(j, GW_MIG_POSTCOPY_ACTIVE);
		return 0;
	}
}

static int run_phase(struct run *r, struct gw_error *err)
{
	const struct gw_report go = {GW_REPORT_GO, 0, ""};
	struct gw_pc_source *s = r->s;
	struct gw_precopy *h = s->h;
	int ret = gw_outgoing_expect(h, s->ho, r->pp->ready_timeout_ms, GW_REPORT_READY,
				     "the destination's READY (x-godwit-ready-timeout)", err);

	if (ret == 0 && !gw_job_commit(&h->job))
		ret = cancelled(err);
	if (ret == 0)
		ret = gw_report_send(&h->job.cancel, (int)r->pp->confirm_timeout_ms, &go, err);
	if (ret < 0)
		return gw_error_prefix(err, ret, "post-copy switch: ");
	s->ho->handed_over = true;
	/* The guest runs there from now: the blackout ended. */
	gw_outgoing_downtime(h, s->pause_ns, 0);
	gw_job_set_status(&h->job, GW_MIG_POSTCOPY_ACTIVE);
	for (;;) {
		bool dest_failed = false;

		ret = serve(r, &dest_failed, err);
		if (ret == 0 || dest_failed || gw_cancel_requested(&h->job.cancel))
			break;
		ret = recover(r, err);
		if (ret < 0)
			break;
	}
	s->ho->confirmed = ret == 0;
	/* Even a destination that said FAILED ran the guest since GO: this
	 * copy is out of date and must stay paused (conclude resumes a
	 * source only when the destination never took the guest). */
	if (ret < 0)
		s->ho->dest_failed = false;
	if (ret < 0)
		return gw_error_prefix(err, ret,
				       "post-copy: the guest runs at the destination with pages missing, and this copy stays paused: ");
	return 0;
}

int gw_postcopy_source_run(struct gw_pc_source *s, const struct gw_precopy_params *pp,
			   struct gw_error *err)
{
	struct gw_migration *m = s->m;
	struct run r = {.s = s, .pp = pp};
	int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK), ret = 0;

	if (efd < 0)
		return gw_error_set(err, -errno, "post-copy: cannot create an eventfd: %s",
				    gw_strerror(errno));
	r.orig = calloc(m->nr_ram + 1, sizeof(*r.orig));
	for (uint32_t i = 0; r.orig && i < m->nr_ram; i++) {
		size_t bytes = gw_bitmap_words(m->ram[i].size / PAGE) * sizeof(uint64_t);

		if (!(r.orig[i] = malloc(bytes + sizeof(uint64_t))))
			break;
		memcpy(r.orig[i], s->stale[i], bytes);
	}
	for (uint32_t i = 0; i < m->nr_ram; i++)
		if (!r.orig || !r.orig[i])
			ret = gw_error_set(err, -ENOMEM, "post-copy: out of memory");
	if (ret == 0) {
		r.fingerprint = gw_postcopy_fingerprint(m->ram, m->nr_ram,
							(const uint64_t *const *)r.orig);
		pthread_mutex_lock(&s->h->job.lock);
		s->h->resume_efd = efd;
		s->h->resume_open = true;
		pthread_mutex_unlock(&s->h->job.lock);
		ret = run_phase(&r, err);
		pthread_mutex_lock(&s->h->job.lock);
		s->h->resume_open = false;
		if (s->h->resume_pending)
			gw_channel_close(&s->h->resume_ch, NULL);
		s->h->resume_pending = false;
		pthread_mutex_unlock(&s->h->job.lock);
	}
	close(efd);
	for (uint32_t i = 0; r.orig && i < m->nr_ram; i++)
		free(r.orig[i]);
	free(r.orig);
	return ret;
}

int gw_precopy_start_postcopy(struct gw_precopy *h, struct gw_error *err)
{
	enum gw_mig_status s;
	bool on;

	pthread_mutex_lock(&h->job.lock);
	on = h->params.postcopy;
	s = gw_job_status_locked(&h->job, NULL, NULL, NULL, 0);
	pthread_mutex_unlock(&h->job.lock);
	if (!on)
		return gw_error_set(err, -EINVAL,
				    "post-copy is not enabled: set the postcopy-ram capability on both sides before the migration starts");
	if (s != GW_MIG_SETUP && s != GW_MIG_ACTIVE)
		return gw_error_set(err, -EINVAL,
				    "post-copy can only start while the pre-copy rounds run (status %s)",
				    gw_mig_status_name(s));
	__atomic_store_n(&h->postcopy_requested, true, __ATOMIC_RELEASE);
	return 0;
}

int gw_precopy_resume(struct gw_precopy *h, struct gw_channel *ch, struct gw_error *err)
{
	uint64_t one = 1;
	int ret = 0;

	if (!ch->bidirectional)
		return gw_error_set(err, -EINVAL,
				    "post-copy resumes over a connection that answers (tcp:, unix:, a socket fd:), not %s",
				    ch->desc);
	pthread_mutex_lock(&h->job.lock);
	if (h->job.status != GW_MIG_POSTCOPY_PAUSED || !h->resume_open)
		ret = gw_error_set(err, -EINVAL,
				   "only a post-copy in postcopy-paused can resume (status %s)",
				   gw_mig_status_name(h->job.status));
	else if (h->resume_pending)
		ret = gw_error_set(err, -EBUSY, "a resume is already under way");
	else if (write(h->resume_efd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		ret = gw_error_set(err, -errno, "eventfd: %s", gw_strerror(errno));
	if (ret == 0) {
		h->resume_ch = *ch;
		h->resume_pending = true;
		*ch = (struct gw_channel){.fd = -1};
	}
	pthread_mutex_unlock(&h->job.lock);
	return ret;
}
