/*
 * The outgoing handle and the steps every outgoing engine shares
 * (outgoing.h).
 */
#include <errno.h>
#include <stdio.h>

#include <godwit/precopy.h>

#include "lib/clock.h"
#include "lib/engine/outgoing.h"
#include "lib/internal.h"
#include "lib/ram/sink_file.h"
#include "lib/ram/sink_multifd.h"

void gw_precopy_params_default(struct gw_precopy_params *p)
{
	*p = (struct gw_precopy_params){
		.downtime_limit_ms = 300,
		.max_bandwidth = 128ull << 20, /* QEMU's MAX_THROTTLE */
		.throttle_initial = 20,
		.throttle_increment = 10,
		.throttle_max = 99,
		.switchover_timeout_ms = GW_SWITCHOVER_TIMEOUT_DEFAULT_MS,
		.ready_timeout_ms = GW_SWITCHOVER_TIMEOUT_DEFAULT_MS,
		.confirm_timeout_ms = GW_SWITCHOVER_TIMEOUT_DEFAULT_MS,
		.exec_grace_ms = GW_EXEC_GRACE_DEFAULT_MS,
	};
}

/* Throttle settings out of range are brought into it (QEMU's ranges);
 * a switchover timeout of 0 is the default. */
static void clamp_params(struct gw_precopy_params *p)
{
	p->switchover_timeout_ms = gw_timeout_ms(p->switchover_timeout_ms,
						 GW_SWITCHOVER_TIMEOUT_DEFAULT_MS);
	p->ready_timeout_ms = gw_timeout_ms(p->ready_timeout_ms, GW_SWITCHOVER_TIMEOUT_DEFAULT_MS);
	p->confirm_timeout_ms = gw_timeout_ms(p->confirm_timeout_ms,
					      GW_SWITCHOVER_TIMEOUT_DEFAULT_MS);
	p->exec_grace_ms = gw_timeout_ms(p->exec_grace_ms, GW_EXEC_GRACE_DEFAULT_MS);
	if (p->throttle_max < 1 || p->throttle_max > 99)
		p->throttle_max = p->throttle_max < 1 ? 1 : 99;
	if (p->throttle_initial < 1 || p->throttle_initial > p->throttle_max)
		p->throttle_initial = p->throttle_initial < 1 ? 1 : p->throttle_max;
	if (p->throttle_increment < 1 || p->throttle_increment > 99)
		p->throttle_increment = p->throttle_increment < 1 ? 1 : 99;
}

int gw_precopy_start(struct gw_migration *m, struct gw_channel *channels, unsigned nr_channels,
		     const struct gw_precopy_params *params, const struct gw_precopy_callbacks *cb,
		     struct gw_precopy **out, struct gw_error *err)
{
	struct gw_precopy_params pp;
	int ret;

	if (!m || !out || !channels)
		return gw_error_set(err, -EINVAL,
				    "pre-copy: no migration object, channel or result pointer");
	if (nr_channels < 1 || nr_channels > 1 + GW_MULTIFD_MAX_CHANNELS)
		return gw_error_set(err, -EINVAL,
				    "pre-copy: %u channels given; one stream channel and up to %u multifd channels",
				    nr_channels, GW_MULTIFD_MAX_CHANNELS);
	if (!m->vm_ops.pause)
		return gw_error_set(err, -EINVAL,
				    "pre-copy: the VMM has not set pause/resume (gw_migration_set_vm_ops)");
	if (params && (ret = gw_check_reserved(params->reserved, GW_ARRAY_SIZE(params->reserved),
					       "pre-copy parameters", err)) < 0)
		return ret;
	if (params)
		pp = *params;
	else
		gw_precopy_params_default(&pp);
	clamp_params(&pp);
	if (pp.mode > GW_MODE_CPR_EXEC)
		return gw_error_set(err, -EINVAL, "migration mode %llu is unknown",
				    (unsigned long long)pp.mode);
	if (pp.mode != GW_MODE_NORMAL && (pp.background_snapshot || pp.mapped_ram))
		return gw_error_set(err, -EINVAL,
				    "a local live update (cpr-transfer, cpr-exec) hands RAM over: it is neither a background snapshot nor a mapped-ram save");
	if (nr_channels > 1 && (pp.mode != GW_MODE_NORMAL || pp.background_snapshot ||
				pp.mapped_ram || !channels[0].bidirectional))
		return gw_error_set(err, -EINVAL,
				    "multifd channels are for a live migration over sockets: not a local live update, a background snapshot, a mapped-ram file or a one-way channel");
	/* Their pauses are not a switchover a manager can act in: a
	 * snapshot's guest stays here, a local update's RAM never moves. */
	if (pp.pause_before_switchover && (pp.mode != GW_MODE_NORMAL || pp.background_snapshot))
		return gw_error_set(err, -EINVAL,
				    "pause-before-switchover applies to a pre-copy migration, not to a background snapshot or a local live update");
	if (pp.postcopy && (pp.mode != GW_MODE_NORMAL || pp.background_snapshot || pp.mapped_ram ||
			    nr_channels > 1 || !channels[0].bidirectional))
		return gw_error_set(err, -EINVAL,
				    "post-copy (postcopy-ram) is for a live migration over one socket: not a local live update, a background snapshot, a mapped-ram file, multifd or a one-way channel");
	if (pp.mode != GW_MODE_NORMAL)
		return gw_cpr_start(m, channels, &pp, cb, out, err);
	if (pp.background_snapshot)
		return gw_background_start(m, channels, &pp, cb, out, err);
	return gw_precopy_engine_start(m, channels, nr_channels, &pp, cb, out, err);
}

int gw_precopy_set_params(struct gw_precopy *p, const struct gw_precopy_params *params,
			  struct gw_error *err)
{
	int ret = gw_check_reserved(params->reserved, GW_ARRAY_SIZE(params->reserved),
				    "pre-copy parameters", err);
	bool background, pause, postcopy;
	uint64_t mode;

	if (ret < 0)
		return ret;
	pthread_mutex_lock(&p->job.lock);
	/* What the engine is cannot change under it. */
	background = p->params.background_snapshot;
	mode = p->params.mode;
	pause = p->params.pause_before_switchover;
	postcopy = p->params.postcopy;
	p->params = *params;
	p->params.postcopy = postcopy;
	p->params.background_snapshot = background;
	p->params.mode = mode;
	p->params.pause_before_switchover = pause;
	clamp_params(&p->params);
	pthread_mutex_unlock(&p->job.lock);
	return 0;
}

int gw_outgoing_launch(struct gw_precopy *h, struct gw_migration *m, const struct gw_job_ops *ops,
		       void *engine, const char *name, const struct gw_precopy_callbacks *cb,
		       struct gw_channel *ch, struct gw_precopy **out, const char *what,
		       struct gw_error *err)
{
	int ret;

	for (uint32_t i = 0; i < m->nr_ram; i++)
		h->stats.total += m->ram[i].size;
	h->stats.page_size = GW_PAGE_SIZE;
	h->resume.efd = -1; /* shut: only a post-copy phase opens it */
	ret = gw_job_start(&h->job, ops, engine, name, ch->fd, GW_MIG_SETUP, cb ? cb->status : NULL,
			   cb ? cb->opaque : NULL, err);
	if (ret < 0) {
		h->release(h);
		return gw_error_prefix(err, ret, "%s", what);
	}
	/* The channel is the engine's now. */
	*ch = (struct gw_channel){.fd = -1};
	*out = h;
	return 0;
}

void gw_outgoing_params(struct gw_precopy *h, struct gw_precopy_params *out)
{
	pthread_mutex_lock(&h->job.lock);
	*out = h->params;
	pthread_mutex_unlock(&h->job.lock);
}

void gw_precopy_stats(struct gw_precopy *p, struct gw_precopy_stats *out)
{
	/* One snapshot: the status and the fields that explain it together. */
	pthread_mutex_lock(&p->job.lock);
	*out = p->stats;
	/* Post-copy's answers, as they leave (atomic: the serving thread's). */
	uint64_t pages = __atomic_load_n(&p->pc_served.pages, __ATOMIC_RELAXED);
	out->postcopy_requests = pages;
	out->normal += pages;
	out->normal_bytes += pages * GW_PAGE_SIZE;
	out->transferred += __atomic_load_n(&p->pc_served.bytes, __ATOMIC_RELAXED);
	out->status = gw_job_status_locked(&p->job, &out->total_time_ms, &out->error_code,
					   out->error, sizeof(out->error));
	pthread_mutex_unlock(&p->job.lock);
}

bool gw_precopy_cancel(struct gw_precopy *p)
{
	return gw_job_cancel(&p->job);
}

void gw_precopy_abort(struct gw_precopy *p)
{
	/* After GO only the wait for RUNNING is left: end it (unconfirmed). */
	gw_job_stop(&p->job);
}

bool gw_precopy_done(struct gw_precopy *p)
{
	return gw_job_done(&p->job);
}

void gw_precopy_free(struct gw_precopy *p)
{
	if (!p)
		return;
	gw_job_stop(&p->job);
	gw_job_join(&p->job);
	p->release(p);
}

int gw_outgoing_open_sink(struct gw_migration *m, int fd, struct gw_writer *w,
			  const struct gw_precopy_params *pp, struct gw_cancel *cancel,
			  struct gw_channel *extra, unsigned nr_extra, struct gw_stream_sink *ss,
			  struct gw_ram_sink **sink, uint32_t *hdr_flags, bool *update,
			  struct gw_error *err)
{
	*update = false;
	if (nr_extra) {
		*hdr_flags = GW_HDRF_MULTIFD;
		return gw_multifd_sink_open(m, w, extra, nr_extra, cancel, sink, err);
	}
	if (!pp->mapped_ram) {
		gw_stream_sink_init(ss, m, w);
		*sink = &ss->sink;
		*hdr_flags = 0;
		return 0;
	}
	const struct gw_file_sink_params sp = {
		.direct_io = pp->direct_io,
		.writers = pp->multifd_channels ? pp->multifd_channels : 1,
		.incremental = pp->incremental,
		.cancel = cancel,
	};
	*hdr_flags = GW_HDRF_MAPPED_RAM;
	return gw_file_sink_open(m, fd, w, &sp, sink, update, err);
}

void gw_error_append(struct gw_error *err, const char *what, const char *why)
{
	char msg[2 * GW_ERROR_MSG_MAX + 128];

	snprintf(msg, sizeof(msg), "%s; %s%s%s", err->msg, what, why ? ": " : "", why ? why : "");
	gw_error_set(err, err->code, "%s", msg);
}

int gw_outgoing_end_channel(struct gw_precopy *h, struct gw_channel *ch, bool handed_over, int ret,
			    struct gw_error *err)
{
	bool is_exec = ch->child > 0;
	struct gw_precopy_params pp;
	struct gw_error e2 = {0};
	int end;

	gw_outgoing_params(h, &pp);
	if (ret < 0 && is_exec && !handed_over)
		gw_channel_abort(ch);
	end = gw_channel_end(ch, h->job.cancel.efd, (unsigned)pp.exec_grace_ms, &e2);
	if (ret == 0)
		return end < 0 ? gw_error_set(err, end, "%s", e2.msg) : 0;
	if (is_exec && ret == -EPIPE && end == 0)
		gw_error_append(err,
				"the command exited (status 0) before it read the whole stream",
				NULL);
	else if (end < 0)
		gw_error_append(err, e2.msg, NULL);
	return ret;
}

int gw_outgoing_expect(struct gw_precopy *h, struct gw_handover *ho, uint64_t timeout_ms,
		       enum gw_report_status want, const char *what, struct gw_error *err)
{
	struct gw_report r;
	int ret = gw_report_recv(&h->job.cancel, (int)timeout_ms, what, &r, err);

	if (ret < 0)
		return ret;
	ho->resumed_ns = gw_report_time_ns(&r);
	if (r.status == GW_REPORT_FAILED) {
		ho->dest_failed = true;
		return gw_error_set(err, r.code, "the destination failed: %s", r.msg);
	}
	if (r.status != want)
		return gw_error_set(err, -EPROTO,
				    "return path: the destination sent %s where %s belongs",
				    gw_report_name(r.status), what);
	return 0;
}

int gw_outgoing_handshake(struct gw_precopy *h, struct gw_handover *ho,
			  const struct gw_precopy_params *pp, struct gw_error *err)
{
	const struct gw_report go = {GW_REPORT_GO, 0, ""};
	uint64_t ready_ns;
	int ret;

	ret = gw_outgoing_expect(h, ho, pp->ready_timeout_ms, GW_REPORT_READY,
				 "the destination's READY (x-godwit-ready-timeout)", err);
	if (ret == 0 && !gw_job_commit(&h->job))
		ret = gw_error_set(err, -ECANCELED, "cancelled");
	if (ret == 0)
		ret = gw_report_send(&h->job.cancel, (int)pp->confirm_timeout_ms, &go, err);
	if (ret < 0)
		return ret;
	ho->handed_over = true;
	ready_ns = gw_now_ns();
	ret = gw_outgoing_expect(h, ho, pp->confirm_timeout_ms, GW_REPORT_RUNNING,
				 "the destination's RUNNING (x-godwit-confirm-timeout)", err);
	ho->confirmed = ret == 0;
	pthread_mutex_lock(&h->job.lock);
	h->stats.handshake_us = (gw_now_ns() - ready_ns) / 1000;
	pthread_mutex_unlock(&h->job.lock);
	return ret;
}

void gw_outgoing_downtime(struct gw_precopy *h, uint64_t pause_ns, uint64_t end_ns)
{
	uint64_t now = gw_now_ns();
	/* A time from another clock, or nonsense, is not believed. */
	uint64_t ns = (end_ns > pause_ns && end_ns <= now ? end_ns : now) - pause_ns;

	pthread_mutex_lock(&h->job.lock);
	h->stats.downtime_ms = ns / 1000000;
	h->stats.downtime_us = ns / 1000;
	pthread_mutex_unlock(&h->job.lock);
}
