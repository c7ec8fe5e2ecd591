/*
 * The source's post-copy phase (postcopy_source.h).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

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
		int ret = gw_pc_handoff_take(&s->h->resume, j, &ch, err);

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
	int ret = 0;

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
		ret = gw_pc_handoff_open(&s->h->resume, &s->h->job, err);
		if (ret == 0)
			ret = run_phase(&r, err);
		gw_pc_handoff_shut(&s->h->resume, &s->h->job);
	}
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
	pthread_mutex_lock(&h->job.lock);
	int ret = gw_pc_handoff_give(&h->resume, &h->job, ch, err);
	pthread_mutex_unlock(&h->job.lock);
	return ret;
}
