/*
 * The destination's post-copy phase (postcopy_dest.h).
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/bitmap.h"
#include "lib/engine/postcopy_dest.h"
#include "lib/engine/postcopy_handoff.h"
#include "lib/engine/postcopy_resume.h"
#include "lib/format/postcopy.h"
#include "lib/internal.h"
#include "lib/ram/postcopy_fetch.h"

struct gw_pc_dest {
	struct gw_migration *m;
	struct gw_job *job;
	struct gw_channel *ch; /* the engine's */
	int timeout_ms;
	struct gw_postcopy_fetch *fetch;
	struct gw_page_server *ps;
	/* The resume handshake's view: the blocks in CONFIG's order, the
	 * switch's fingerprint, and the pages still needed, by block (ours,
	 * and the same bitmaps in CONFIG's order). */
	struct gw_ram_block *cfg_ram;
	uint64_t **needed, **needed_cfg;
	uint64_t fingerprint;
	struct gw_pc_handoff handoff; /* gw_pc_dest_recover()'s, while run */
};

/* postcopy-paused (again), with why and what the operator can do. */
static void paused_because(struct gw_pc_dest *d, const struct gw_error *why)
{
	char msg[GW_ERROR_MSG_MAX];
	struct gw_ps_stats st;

	gw_page_server_stats(d->ps, &st);
	snprintf(msg, sizeof(msg),
		 "%.300s; the guest's vCPUs wait for the %llu pages still at the source: migrate-recover here and migrate with resume=true there go on; if the source is gone, the guest is lost",
		 why->msg, (unsigned long long)st.remaining);
	gw_job_set_status_error(d->job, GW_MIG_POSTCOPY_PAUSED, msg);
}

/*
 * The connection to the source broke: postcopy-paused until a new one
 * passes the resume handshake (postcopy_resume.h) and becomes the
 * engine's channel, or a stop. Meanwhile a vCPU that touches a missing
 * page waits for it in the kernel (it cannot be paused there); the
 * others run on.
 */
static int recover(struct gw_pc_dest *d, struct gw_error *err)
{
	struct gw_error why = {0};
	uint64_t n;

	if (read(gw_postcopy_fetch_break_fd(d->fetch), &n, sizeof(n)) < 0 && errno != EAGAIN)
		return gw_error_set(err, -errno, "eventfd: %s", gw_strerror(errno));
	if (!gw_postcopy_fetch_broken(d->fetch, &why))
		return 0;
	paused_because(d, &why);
	/* The source may not know yet: the old connection is over. */
	gw_cancel_shutdown(&d->job->cancel);
	for (;;) {
		struct gw_channel ch;
		struct gw_error e = {0};
		int ret = gw_pc_handoff_take(&d->handoff, d->job, &ch, err);

		if (ret < 0)
			return ret;
		gw_job_set_status(d->job, GW_MIG_POSTCOPY_RECOVER);
		struct gw_cancel c = d->job->cancel;

		c.fd = ch.fd;
		c.is_socket = true;
		gw_postcopy_fetch_needed(d->fetch, d->needed);
		ret = gw_pc_resume_destination(&c, d->timeout_ms, d->fingerprint, d->cfg_ram,
					       d->m->nr_ram, d->needed_cfg, &e);
		/* Only this side's stop ends the recovery: any failure of the
		 * attempt, whatever its code, leaves the post-copy paused. */
		if (ret < 0 && gw_cancel_requested(&d->job->cancel)) {
			gw_channel_close(&ch, NULL);
			return gw_error_set(err, ret, "stopped during post-copy recovery");
		}
		if (ret < 0) {
			gw_channel_close(&ch, NULL);
			paused_because(d, &e);
			continue;
		}
		pthread_mutex_lock(&d->job->lock);
		struct gw_channel old = *d->ch;
		*d->ch = ch;
		d->job->cancel.fd = ch.fd;
		d->job->cancel.is_socket = true;
		pthread_mutex_unlock(&d->job->lock);
		gw_channel_abort(&old);
		gw_channel_close(&old, NULL);
		ret = gw_postcopy_fetch_resume(d->fetch, err);
		if (ret < 0)
			return ret;
		gw_job_set_status(d->job, GW_MIG_POSTCOPY_ACTIVE);
		return 0;
	}
}

/* The recovery's view of the set: CONFIG's order, the switch's fingerprint. */
static int prepare_recovery(struct gw_pc_dest *d, uint64_t *const *stale, const uint32_t *stream_id,
			    struct gw_error *err)
{
	struct gw_migration *m = d->m;
	const uint64_t **cfg_stale = calloc(m->nr_ram + 1, sizeof(*cfg_stale));
	int ret = 0;

	d->cfg_ram = calloc(m->nr_ram + 1, sizeof(*d->cfg_ram));
	d->needed = calloc(m->nr_ram + 1, sizeof(*d->needed));
	d->needed_cfg = calloc(m->nr_ram + 1, sizeof(*d->needed_cfg));
	if (!cfg_stale || !d->cfg_ram || !d->needed || !d->needed_cfg)
		ret = gw_error_set(err, -ENOMEM, "post-copy: out of memory");
	for (uint32_t i = 0; ret == 0 && i < m->nr_ram; i++) {
		uint32_t id = stream_id[i];

		d->needed[i] = calloc(gw_bitmap_words(m->ram[i].size / GW_PAGE_SIZE) + 1,
				      sizeof(uint64_t));
		if (!d->needed[i])
			ret = gw_error_set(err, -ENOMEM, "post-copy: out of memory");
		d->cfg_ram[id] = m->ram[i];
		d->needed_cfg[id] = d->needed[i];
		cfg_stale[id] = stale[i];
	}
	if (ret == 0)
		d->fingerprint = gw_postcopy_fingerprint(d->cfg_ram, m->nr_ram, cfg_stale);
	free(cfg_stale);
	return ret;
}

/* The page server over the fetch: the stale set fetched, the rest mapped. */
static int start_serving(struct gw_pc_dest *d, uint64_t *const *stale, const uint32_t *stream_id,
			 uint64_t rate, struct gw_error *err)
{
	struct gw_migration *m = d->m;
	const struct gw_ps_params pp = {.mode = GW_PS_MINOR, .rate = rate};
	struct gw_ps_block *blocks = calloc(m->nr_ram + 1, sizeof(*blocks));
	struct gw_pf_block *pf = calloc(m->nr_ram + 1, sizeof(*pf));
	struct gw_page_source src;
	int ret = 0;

	if (!blocks || !pf)
		ret = gw_error_set(err, -ENOMEM, "post-copy: out of memory");
	for (uint32_t i = 0; ret == 0 && i < m->nr_ram; i++) {
		const struct gw_ram_block *b = &m->ram[i];

		blocks[i] = (struct gw_ps_block){b->name,      b->host,  b->size, b->fd,
						 b->fd_offset, stale[i], true};
		pf[i] = (struct gw_pf_block){b->name, stream_id[i], b->size, stale[i]};
	}
	if (ret == 0)
		ret = gw_postcopy_fetch_new(&d->job->cancel, d->timeout_ms, pf, m->nr_ram,
					    &d->fetch, err);
	if (ret == 0) {
		src = gw_postcopy_fetch_source(d->fetch);
		ret = gw_page_server_start(blocks, m->nr_ram, &pp, &src, &d->ps, err);
	}
	free(blocks);
	free(pf);
	return ret;
}

int gw_pc_dest_start(struct gw_migration *m, struct gw_job *job, struct gw_channel *ch,
		     uint64_t *const *stale, const uint32_t *stream_id,
		     const struct gw_pc_dest_params *p, struct gw_pc_dest **out,
		     struct gw_error *err)
{
	struct gw_pc_dest *d = calloc(1, sizeof(*d));
	int ret;

	if (!d)
		return gw_error_set(err, -ENOMEM, "post-copy: out of memory");
	*d = (struct gw_pc_dest){.m = m,
				 .job = job,
				 .ch = ch,
				 .timeout_ms = p->timeout_ms,
				 .handoff = {.efd = -1}};
	ret = prepare_recovery(d, stale, stream_id, err);
	if (ret == 0)
		ret = start_serving(d, stale, stream_id, p->rate, err);
	if (ret < 0) {
		gw_pc_dest_free(d);
		return gw_error_prefix(err, ret, "post-copy: ");
	}
	ret = gw_pc_handoff_open(&d->handoff, job, err);
	if (ret < 0) {
		gw_pc_dest_free(d);
		return ret;
	}
	*out = d;
	return 0;
}

int gw_pc_dest_run(struct gw_pc_dest *d, struct gw_error *err)
{
	int ret;

	gw_job_set_status(d->job, GW_MIG_POSTCOPY_ACTIVE);
	do
		ret = gw_page_server_wait(d->ps, d->job->cancel.efd,
					  gw_postcopy_fetch_break_fd(d->fetch), err);
	while (ret == 1 && (ret = recover(d, err)) == 0);
	gw_pc_handoff_shut(&d->handoff, d->job);
	return ret;
}

int gw_pc_dest_recover(struct gw_pc_dest *d, struct gw_channel *ch, struct gw_error *err)
{
	return gw_pc_handoff_give(&d->handoff, d->job, ch, err);
}

void gw_pc_dest_stats(struct gw_pc_dest *d, struct gw_ps_stats *ps, uint64_t *requested)
{
	gw_page_server_stats(d->ps, ps);
	*requested = gw_postcopy_fetch_requested(d->fetch);
}

unsigned gw_pc_dest_thread_stats(struct gw_pc_dest *d,
				 struct gw_ps_thread_stats out[GW_PS_THREADS_MAX])
{
	return gw_page_server_thread_stats(d->ps, out);
}

void gw_pc_dest_free(struct gw_pc_dest *d)
{
	if (!d)
		return;
	/* The page server's threads may wait for a resume that will not come. */
	if (d->fetch) {
		struct gw_error why = {0};

		gw_error_set(&why, -ECANCELED, "post-copy ended");
		gw_postcopy_fetch_abort(d->fetch, &why);
	}
	gw_page_server_free(d->ps);
	gw_postcopy_fetch_free(d->fetch);
	gw_pc_handoff_shut(&d->handoff, d->job);
	for (uint32_t i = 0; d->needed && i < d->m->nr_ram; i++)
		free(d->needed[i]);
	free(d->needed);
	free(d->needed_cfg);
	free(d->cfg_ram);
	free(d);
}
