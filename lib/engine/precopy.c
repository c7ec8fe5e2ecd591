/*
 * The pre-copy engine (<godwit/precopy.h>): one thread per outgoing
 * migration that decides which pages to send when.
 *
 * A round is: sync the dirty bitmap of every block, keep only pages the
 * kernel holds (populated.h), decide whether the rest fits the downtime
 * limit, and if not, send it while the guest runs. The first round's
 * bitmap is all ones, so it sends every populated page; later rounds send
 * what the guest wrote meanwhile. When the rest fits, the guest is paused
 * and the last sync, the last pages, device state and EOF follow.
 *
 * The rules, in one place (docs/format.md, "Live migration", says the same
 * for users):
 *
 *  - Switch over only after a sync where remaining / bandwidth <=
 *    downtime limit. remaining is the bytes of the dirty populated pages
 *    and what progressive sections (a disk) say they have left;
 *    bandwidth is how fast the last round that sent anything drained
 *    dirty pages (page bytes per second, zero pages included: draining
 *    them is what the downtime is spent on), or max-bandwidth if that is
 *    lower. Before the first round there is no measure, and nothing but
 *    an empty dirty set switches over (max-bandwidth alone is no measure:
 *    "unlimited" would make any first pass look free). Above the limit
 *    the engine keeps going forever: only the caller (a higher limit or
 *    bandwidth, or a cancel) ends a migration that does not converge.
 *  - Within the limit, the engine does not stop the guest at once while
 *    another round still pays: it keeps sending rounds as long as each
 *    sync finds at most 3/4 of the pages the previous one found (or the
 *    progressive sections have less left than at the sync before), and the
 *    rest would take more than SETTLE_NS to send, for at most
 *    SETTLE_ROUNDS rounds. Each such round is shorter than the one before
 *    (the set shrinks geometrically), so they cost little total time and
 *    take the downtime down to what the guest dirties in one short round
 *    instead of whatever the limit allows. QEMU stops at the limit.
 *  - Auto-converge: a period (sync to sync) is "hot" when the guest
 *    dirtied more than 50% of the bytes sent in it (QEMU's rule). While
 *    the engine does not switch over, the second hot period in a row
 *    throttles the vCPUs to throttle-initial, and every hot period after
 *    that adds throttle-increment, up to throttle-max. A cool period
 *    stops the climb but keeps the throttle; switchover, failure and
 *    cancel remove it.
 *  - max-bandwidth limits every byte sent while the guest runs (a token
 *    bucket, ratelimit.h); the final pass with the guest paused runs at
 *    full speed, since every millisecond of it is downtime.
 *  - A round that sent fewer than SMALL_ROUND pages is followed by a
 *    short sleep, so a nearly idle guest does not make the engine spin.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <godwit/precopy.h>
#include <godwit/stream.h>

#include "lib/bitmap.h"
#include "lib/cancel.h"
#include "lib/clock.h"
#include "lib/internal.h"
#include "lib/engine/job.h"
#include "lib/engine/outgoing.h"
#include "lib/engine/postcopy_source.h"
#include "lib/format/postcopy.h"
#include "lib/ram/populated.h"
#include "lib/ram/ram_batch.h"
#include "lib/ram/ram_sink.h"
#include "lib/ram/sink_file.h"
#include "lib/ratelimit.h"
#include "lib/transport/return_path.h"

#define PAGE ((uint64_t)GW_PAGE_SIZE)
/* A write failed: how long to look for a report that says why. */
#define EXPLAIN_TIMEOUT_MS 1000
#define SMALL_ROUND 64
#define IDLE_NS (5 * 1000000ull)
/* Progressive sections (a disk's blocks) between two RAM rounds: in
 * slices paced like RAM, and at most a round's worth, so a guest that
 * dirties RAM fast still gets its RAM rounds often. */
#define LIVE_SLICE (4ull << 20)
#define LIVE_ROUND (64ull << 20)
/* Longest sleep between two looks at max-bandwidth and cancel. */
#define RATE_SLICE_NS (10 * 1000000ull)
#define HOT_PERCENT 50
/* The settle rule (above): a rest this quick to send is not worth a round. */
#define SETTLE_NS (1000000ull)
#define SETTLE_ROUNDS 8

struct precopy {
	struct gw_precopy h; /* job, params, stats (outgoing.h) */
	struct gw_migration *m;
	struct gw_precopy_callbacks cb;
	struct gw_channel ch; /* ours: closed, and its command ended, before the outcome */
	bool return_path;
	/* multifd: the channels the sink takes at setup; the engine's once
	 * its thread runs (until then, on a failed start, the caller's). */
	struct gw_channel extra[GW_MULTIFD_MAX_CHANNELS];
	unsigned nr_extra;
	bool extra_owned;

	/* The migration thread's own. */
	struct gw_writer *w; /* the stream: header, sections, EOF */
	struct gw_stream_sink stream_sink;
	struct gw_ram_sink *sink; /* where RAM pages go */
	uint64_t **dirty;         /* per RAM block: pages still to send */
	uint64_t pending;         /* bits set in dirty */
	uint64_t synced;          /* pending found by the last sync */
	uint64_t synced_before;   /* ... and by the one before it */
	uint32_t settle_rounds;   /* rounds sent within the limit */
	uint64_t live_now,
		live_before; /* progressive sections' bytes left at this sync and the one before */
	bool dirty_started;
	bool update;           /* the file sink writes only what changed since its last save */
	bool paused;           /* this engine paused the guest */
	struct gw_handover ho; /* how far the switchover handshake got */
	uint64_t pause_ns;
	uint32_t throttle;    /* percent now applied */
	uint32_t hot_periods; /* hot periods in a row */
	bool hot;             /* the last period was hot */
	uint64_t pass;        /* syncs so far */
	uint64_t sync_ns;     /* time and stream offset of the last sync */
	uint64_t sync_xfer;
	uint64_t dirty_rate;  /* pages per second, last period */
	uint64_t bandwidth;   /* page bytes per second drained, 0 = not measured */
	uint64_t round_pages; /* pages the last round sent */
	uint64_t round_ns;    /* time and stream offset the current round started at */
	uint64_t round_taken;
	struct gw_ratelimit rl;
};

static void get_params(struct precopy *p, struct gw_precopy_params *out)
{
	gw_outgoing_params(&p->h, out);
}

static uint64_t max_bandwidth(struct precopy *p)
{
	uint64_t bw;

	pthread_mutex_lock(&p->h.job.lock);
	bw = p->h.params.max_bandwidth;
	pthread_mutex_unlock(&p->h.job.lock);
	return bw;
}

static void publish_transferred(struct precopy *p)
{
	pthread_mutex_lock(&p->h.job.lock);
	p->h.stats.transferred = p->sink ? gw_sink_sent(p->sink) : gw_writer_sent(p->w);
	p->h.stats.remaining = p->pending * PAGE;
	pthread_mutex_unlock(&p->h.job.lock);
}

static int cancelled(struct gw_error *err)
{
	return gw_error_set(err, -ECANCELED, "cancelled");
}

/* Between batches: stop for a cancel, or for a destination that gave up. */
static int stop_point(struct precopy *p, struct gw_error *err)
{
	int ready;

	if (gw_cancel_requested(&p->h.job.cancel))
		return cancelled(err);
	if (!p->return_path)
		return 0;
	ready = gw_cancel_poll(&p->h.job.cancel, POLLIN, 0);
	if (ready == -ECANCELED)
		return cancelled(err);
	if (ready < 0)
		return gw_error_set(err, ready, "return path: poll: %s", gw_strerror(ready));
	/* Before the stream ends, only a failure makes sense. */
	return ready ? gw_outgoing_expect(&p->h, &p->ho, EXPLAIN_TIMEOUT_MS, GW_REPORT_FAILED,
					  "the destination's report", err) :
		       0;
}

static int set_throttle(struct precopy *p, uint32_t percent, struct gw_error *err)
{
	int ret;

	if (percent == p->throttle)
		return 0;
	ret = p->cb.throttle(p->cb.opaque, percent, err);
	if (ret < 0)
		return gw_error_prefix(err, ret,
				       "auto-converge: cannot throttle the vCPUs to %u%%: ",
				       percent);
	p->throttle = percent;
	pthread_mutex_lock(&p->h.job.lock);
	p->h.stats.throttle_percent = percent;
	pthread_mutex_unlock(&p->h.job.lock);
	return 0;
}

/* Spend bytes from the bandwidth budget and wait until it allows more. */
static int limit_bandwidth(struct precopy *p, uint64_t bytes, struct gw_error *err)
{
	gw_ratelimit_spend(&p->rl, bytes);
	for (;;) {
		uint64_t delay = gw_ratelimit_delay_ns(&p->rl, max_bandwidth(p), gw_now_ns());

		if (!delay)
			return 0;
		/* In slices, so a raised limit takes effect at once. */
		if (gw_cancel_sleep(&p->h.job.cancel,
				    delay < RATE_SLICE_NS ? delay : RATE_SLICE_NS) < 0)
			return cancelled(err);
	}
}

/* Megabits per second of stream since the round began: a manager
 * (libvirt's progress, KubeVirt's stall check) reads mbps while a round
 * runs, and a first round of a large guest lasts many seconds. */
static double round_mbps(struct precopy *p)
{
	uint64_t dt = gw_now_ns() - p->round_ns;

	return (double)(gw_sink_taken(p->sink) - p->round_taken) * 8e3 / (double)(dt ? dt : 1);
}

/* A batch has left: count it (query-migrate reads these). */
static void account(struct precopy *p, const struct gw_ram_batch *b)
{
	double mbps = round_mbps(p);

	p->pending -= b->n;
	p->round_pages += b->n;
	pthread_mutex_lock(&p->h.job.lock);
	p->h.stats.mbps = mbps;
	p->h.stats.transferred = gw_sink_sent(p->sink);
	p->h.stats.remaining = p->pending * PAGE;
	p->h.stats.duplicate += b->zero;
	p->h.stats.normal += b->n - b->zero;
	p->h.stats.normal_bytes += (uint64_t)(b->n - b->zero) * PAGE;
	pthread_mutex_unlock(&p->h.job.lock);
}

static int send_batch(struct precopy *p, const struct gw_ram_batch *b, bool final,
		      struct gw_error *err)
{
	uint64_t before = gw_sink_taken(p->sink);
	int ret;

	/* In the final pass the guest is paused and its pages cannot change:
	 * a page that does not match its hash there is damage, not a tear. */
	ret = gw_sink_pages(p->sink, b->block, b->entries, b->n, final ? GW_SAVE_DATA_CRC : 0, err);
	if (ret < 0)
		return ret;
	account(p, b);
	if (!final) {
		ret = limit_bandwidth(p, gw_sink_taken(p->sink) - before, err);
		if (ret < 0)
			return ret;
	}
	return stop_point(p, err);
}

/* Pages per batch: at most a full bucket of the bandwidth limit, so a
 * slow limit is kept smoothly rather than in 4 MiB bursts. */
static uint32_t batch_pages(struct precopy *p, bool final)
{
	uint64_t burst = final ? UINT64_MAX : gw_ratelimit_burst(max_bandwidth(p)) / PAGE;

	return burst >= GW_PAGES_MAX ? GW_PAGES_MAX : burst ? (uint32_t)burst : 1;
}

/* True once post-copy was asked for (gw_precopy_start_postcopy). */
static bool postcopy_asked(struct precopy *p)
{
	return __atomic_load_n(&p->h.postcopy_requested, __ATOMIC_ACQUIRE);
}

/* Send and clear the dirty pages of one block. */
static int send_block(struct precopy *p, uint32_t block, bool final, struct gw_error *err)
{
	struct gw_ram_batch batch;
	struct gw_ram_walk walk;

	gw_ram_walk_init(&walk, &p->m->ram[block], block, p->dirty[block]);
	/* Post-copy asked for: the round stops here, not at its end; the
	 * pages it has not sent stay in the set (the walk clears a page's
	 * bit only as it takes it), so they are the destination's to fetch. */
	while (!(!final && postcopy_asked(p)) &&
	       gw_ram_walk_next(&walk, batch_pages(p, final), &batch)) {
		int ret = send_batch(p, &batch, final, err);

		if (ret < 0)
			return ret;
	}
	return 0;
}

static int send_round(struct precopy *p, bool final, struct gw_error *err)
{
	uint64_t t0 = gw_now_ns(), dt;

	p->round_ns = t0;
	p->round_taken = gw_sink_taken(p->sink);
	p->round_pages = 0;
	for (uint32_t i = 0; i < p->m->nr_ram; i++) {
		int ret = send_block(p, i, final, err);

		if (ret < 0)
			return ret;
	}
	if (!p->round_pages)
		return 0;
	dt = gw_now_ns() - t0;
	dt = dt ? dt : 1;
	p->bandwidth = (uint64_t)((double)(p->round_pages * PAGE) * 1e9 / (double)dt);
	pthread_mutex_lock(&p->h.job.lock);
	p->h.stats.mbps = round_mbps(p);
	pthread_mutex_unlock(&p->h.job.lock);
	return 0;
}

/* Collect what the guest dirtied, keep the populated pages, measure. */
static int sync_all(struct precopy *p, struct gw_error *err)
{
	const struct gw_migration *m = p->m;
	uint64_t before = p->pending, pending = 0, now, xfer;

	for (uint32_t i = 0; i < m->nr_ram; i++) {
		const struct gw_ram_block *b = &m->ram[i];
		uint64_t pages = b->size / PAGE;
		int ret = m->dirty_ops.sync(m->dirty_opaque, i, p->dirty[i], err);

		if (ret < 0)
			return gw_error_prefix(err, ret,
					       "dirty-page sync of RAM block '%s': ", b->name);
		gw_bitmap_trim(p->dirty[i], pages);
		ret = gw_populated_filter(b, p->dirty[i], err);
		if (ret < 0)
			return ret;
		pending += gw_bitmap_count(p->dirty[i], pages);
	}
	now = gw_now_ns();
	xfer = gw_sink_taken(p->sink);
	p->pending = pending;
	p->synced_before = p->synced;
	p->live_before = p->live_now;
	p->live_now = gw_save_live_pending(m);
	p->synced = pending;
	/* The first sync only re-arms tracking under the all-ones first round. */
	if (++p->pass > 1) {
		uint64_t fresh = pending > before ? pending - before : 0;
		uint64_t dt = now - p->sync_ns ? now - p->sync_ns : 1;

		p->dirty_rate = (uint64_t)((double)fresh * 1e9 / (double)dt);
		p->hot = fresh * PAGE * 100 > (xfer - p->sync_xfer) * HOT_PERCENT;
	}
	p->sync_ns = now;
	p->sync_xfer = xfer;
	pthread_mutex_lock(&p->h.job.lock);
	p->h.stats.dirty_sync_count = p->pass;
	p->h.stats.dirty_pages_rate = p->dirty_rate;
	p->h.stats.remaining = pending * PAGE;
	pthread_mutex_unlock(&p->h.job.lock);
	if (p->cb.pass)
		p->cb.pass(p->cb.opaque, p->pass);
	return 0;
}

/* Bytes per second the rest can be expected to drain at (rules above);
 * 0 before the first measure. */
static uint64_t drain_bandwidth(const struct precopy *p, const struct gw_precopy_params *pp)
{
	uint64_t bw = p->bandwidth;

	if (bw && pp->max_bandwidth && pp->max_bandwidth < bw)
		bw = pp->max_bandwidth;
	return bw;
}

/* After a sync: does the rest fit the downtime limit? Fills blocked if not. */
/* What must still go, RAM and progressive sections (a disk) alike, and
 * what the sink took but has not sent yet (multifd's queues): at the
 * pause it all goes before the device state. */
static uint64_t remaining_bytes(struct precopy *p)
{
	uint64_t live = p->live_now;

	pthread_mutex_lock(&p->h.job.lock);
	p->h.stats.live_pending = live;
	pthread_mutex_unlock(&p->h.job.lock);
	return p->pending * PAGE + live + gw_sink_backlog(p->sink);
}

static bool fits(struct precopy *p, const struct gw_precopy_params *pp)
{
	uint64_t remaining = remaining_bytes(p);
	uint64_t bw = drain_bandwidth(p, pp);
	uint64_t expected = 0;
	char blocked[sizeof(p->h.stats.blocked)] = "";

	if (remaining && bw)
		expected = (uint64_t)((double)remaining * 1000 / (double)bw);
	if (remaining && !bw)
		snprintf(blocked, sizeof(blocked),
			 "first pass: %llu MiB of guest RAM and state to send before the downtime can be estimated",
			 (unsigned long long)(remaining >> 20));
	else if (expected > pp->downtime_limit_ms)
		snprintf(blocked, sizeof(blocked),
			 "expected downtime %llu ms > limit %llu ms: guest dirties %.1f MB/s, link %.1f MB/s%s",
			 (unsigned long long)expected, (unsigned long long)pp->downtime_limit_ms,
			 (double)(p->dirty_rate * PAGE) / 1e6, (double)bw / 1e6,
			 p->throttle ? " (vCPUs throttled)" : "");
	pthread_mutex_lock(&p->h.job.lock);
	p->h.stats.expected_downtime_ms = expected;
	memcpy(p->h.stats.blocked, blocked, sizeof(blocked));
	pthread_mutex_unlock(&p->h.job.lock);
	return !blocked[0];
}

/* Within the limit: is one more round still worth it? (rules above) */
static bool settled(struct precopy *p, const struct gw_precopy_params *pp)
{
	uint64_t bw = drain_bandwidth(p, pp);
	uint64_t rest = remaining_bytes(p);
	double rest_ns;
	/* A disk being copied shrinks by a round's worth at a time, not
	 * geometrically: any progress pays, within SETTLE_ROUNDS. */
	bool shrinking = p->synced * 4 <= p->synced_before * 3 ||
			 (p->live_now && p->live_now < p->live_before);

	if (!rest || !bw)
		return true;
	rest_ns = (double)rest * 1e9 / (double)bw;
	if (rest_ns <= (double)SETTLE_NS || p->settle_rounds >= SETTLE_ROUNDS || !shrinking)
		return true;
	p->settle_rounds++;
	return false;
}

/* Auto-converge, after a round that did not switch over (rules above). */
static int converge(struct precopy *p, const struct gw_precopy_params *pp, struct gw_error *err)
{
	uint32_t next = p->throttle;

	if (!pp->auto_converge || !p->cb.throttle)
		next = 0;
	else if (!p->hot)
		p->hot_periods = 0;
	else if (++p->hot_periods >= 2 || p->throttle) {
		next = p->throttle ? p->throttle + pp->throttle_increment : pp->throttle_initial;
		if (next > pp->throttle_max)
			next = pp->throttle_max;
	}
	return set_throttle(p, next, err);
}

/*
 * Where RAM goes (outgoing.h); a stream to a socket asks for the
 * switchover handshake.
 */
static int open_sink(struct precopy *p, uint32_t *hdr_flags, struct gw_error *err)
{
	struct gw_precopy_params pp;
	int ret;

	get_params(p, &pp);
	ret = gw_outgoing_open_sink(p->m, p->ch.fd, p->w, &pp, &p->h.job.cancel, p->extra,
				    p->nr_extra, &p->stream_sink, &p->sink, hdr_flags, &p->update,
				    err);
	p->nr_extra = 0; /* the sink's now, whatever it returned */
	if (ret == 0 && !pp.mapped_ram && p->return_path)
		*hdr_flags |= GW_HDRF_COMMIT;
	return ret;
}

static int setup(struct precopy *p, struct gw_error *err)
{
	struct gw_migration *m = p->m;
	uint32_t hdr_flags = 0;
	uint64_t now;
	int ret;

	/* An incremental save may have left tracking on: it goes on. */
	if (!m->tracking && m->dirty_ops.start) {
		ret = m->dirty_ops.start(m->dirty_opaque, err);
		if (ret < 0)
			return gw_error_prefix(err, ret,
					       "setup: cannot start dirty-page tracking: ");
	}
	m->tracking = true;
	p->dirty_started = true;
	ret = stop_point(p, err);
	if (ret == 0)
		ret = gw_writer_new(p->h.job.cancel.fd, &p->w, err);
	if (ret == 0) {
		gw_writer_bind(p->w, p->h.job.cancel.efd);
		ret = open_sink(p, &hdr_flags, err);
	}
	if (ret == 0)
		ret = gw_save_begin_flags(m, p->w, hdr_flags, err);
	if (ret == 0)
		ret = gw_sink_begin(p->sink, err);
	if (ret < 0)
		return gw_error_prefix(err, ret, "setup: ");
	/* Round one sends every page that is there; the syncs say what changed
	 * since. Into the file of the last incremental save, the file already
	 * holds the rest: the first sync says what changed since that save. */
	for (uint32_t i = 0; i < m->nr_ram && !p->update; i++)
		gw_bitmap_fill(p->dirty[i], m->ram[i].size / PAGE);
	now = gw_now_ns();
	gw_ratelimit_init(&p->rl, now);
	p->sync_ns = now;
	publish_transferred(p);
	pthread_mutex_lock(&p->h.job.lock);
	p->h.stats.setup_time_ms = (now - p->h.job.start_ns) / 1000000;
	pthread_mutex_unlock(&p->h.job.lock);
	return 0;
}

/* PART records of the progressive sections, paced, up to LIVE_ROUND. */
static int send_live(struct precopy *p, struct gw_error *err)
{
	uint64_t total = 0, sent;
	int more;

	do {
		more = gw_save_iterate_budget(p->m, p->w, LIVE_SLICE, &sent, err);
		if (more < 0)
			return more;
		total += sent;
		int ret = limit_bandwidth(p, sent, err);
		if (ret < 0)
			return ret;
	} while (more && total < LIVE_ROUND);
	pthread_mutex_lock(&p->h.job.lock);
	p->h.stats.live_sent += total;
	pthread_mutex_unlock(&p->h.job.lock);
	return 0;
}

/* 0: switch over; 1: switch to post-copy. */
static int iterate(struct precopy *p, struct gw_error *err)
{
	for (;;) {
		struct gw_precopy_params pp;
		int ret;

		if (postcopy_asked(p))
			return 1;
		get_params(p, &pp);
		ret = stop_point(p, err);
		if (ret == 0)
			ret = sync_all(p, err);
		if (ret == 0 && fits(p, &pp)) {
			if (settled(p, &pp))
				return 0;
		} else if (ret == 0 && pp.postcopy && pp.postcopy_after_passes &&
			   p->pass >= pp.postcopy_after_passes) {
			/* Pre-copy does not converge: post-copy ends it. */
			return 1;
		} else if (ret == 0) {
			ret = converge(p, &pp, err);
		}
		if (ret == 0)
			ret = send_live(p, err);
		if (ret == 0)
			ret = send_round(p, false, err);
		if (ret == 0 && p->round_pages < SMALL_ROUND && !gw_save_live_pending(p->m) &&
		    gw_cancel_sleep(&p->h.job.cancel, IDLE_NS) < 0)
			ret = cancelled(err);
		if (ret < 0)
			return gw_error_prefix(err, ret,
					       "round %llu: ", (unsigned long long)p->pass);
	}
}

/* Pause the guest for a switchover (what names it in the message). */
static int pause_guest(struct precopy *p, const char *what, struct gw_error *err)
{
	int ret;

	/* Set first: a pause that fails half-way is undone too. */
	p->paused = true;
	p->pause_ns = gw_now_ns();
	ret = p->m->vm_ops.pause(p->m->vm_opaque, err);
	return ret < 0 ? gw_error_prefix(err, ret, "%s: cannot pause the guest: ", what) : 0;
}

static int switchover(struct precopy *p, struct gw_error *err)
{
	struct gw_migration *m = p->m;
	struct gw_precopy_params pp;
	int ret;

	get_params(p, &pp);
	ret = pause_guest(p, "switchover", err);
	if (ret < 0)
		return ret;
	if (pp.pause_before_switchover) {
		ret = gw_outgoing_pre_switchover(&p->h, &p->ho, p->return_path, err);
		if (ret < 0)
			return gw_error_prefix(err, ret, "switchover: ");
	}
	gw_job_set_status(&p->h.job, GW_MIG_DEVICE);
	/* A destination that stops reading cannot keep the guest paused
	 * for longer than this (counted from here: the manager's time in
	 * pre-switchover is not the destination's). */
	uint64_t deadline = gw_now_ns() + pp.switchover_timeout_ms * 1000000;
	gw_writer_set_deadline(p->w, deadline);
	gw_sink_set_deadline(p->sink, deadline);
	ret = stop_point(p, err);
	if (ret == 0)
		ret = set_throttle(p, 0, err);
	if (ret == 0)
		ret = sync_all(p, err);
	if (ret == 0)
		ret = send_round(p, true, err);
	if (ret == 0)
		ret = gw_sink_flush(p->sink, err);
	uint64_t live_left = gw_save_live_pending(m), before = gw_writer_offset(p->w);
	if (ret == 0)
		ret = gw_save_devices(m, p->w, err);
	/* The END records took what was left of the progressive sections. */
	if (ret == 0 && live_left) {
		pthread_mutex_lock(&p->h.job.lock);
		p->h.stats.live_sent += gw_writer_offset(p->w) - before;
		p->h.stats.live_pending = gw_save_live_pending(m);
		pthread_mutex_unlock(&p->h.job.lock);
	}
	if (ret == 0)
		ret = gw_save_finish(m, p->w, err);
	if (ret == 0)
		ret = gw_sink_finish(p->sink, err);
	if (ret == 0 && pp.mapped_ram) {
		pthread_mutex_lock(&p->h.job.lock);
		p->h.stats.incremental = p->update;
		p->h.stats.generation = gw_file_sink_generation(p->sink);
		pthread_mutex_unlock(&p->h.job.lock);
	}
	publish_transferred(p);
	/* One way into a command (ssh to a destination, say), the whole
	 * stream has left: the far side may run it at EOF, and if the command
	 * then fails nobody here can tell whether it did. */
	if (ret == 0 && !p->return_path && p->ch.child > 0)
		p->ho.handed_over = true;
	if (ret == -ETIMEDOUT)
		gw_error_prefix(err, ret,
				"the final pages and device state were not written within x-godwit-switchover-timeout (%llu ms): ",
				(unsigned long long)pp.switchover_timeout_ms);
	if (ret == 0 && p->return_path)
		ret = gw_outgoing_handshake(&p->h, &p->ho, &pp, err);
	if (ret < 0)
		return gw_error_prefix(err, ret, "switchover: ");
	gw_outgoing_downtime(&p->h, p->pause_ns, 0);
	return 0;
}

/*
 * Post-copy, while the guest still runs here: the pages already stale at
 * the destination (this sync's set) go as the EARLY set, which the
 * destination unmaps before it says DISCARDED. Unmapping costs time per
 * page; done now, the blackout only pays for what the guest dirties
 * from here to the pause.
 */
static int postcopy_early(struct precopy *p, const struct gw_precopy_params *pp,
			  struct gw_error *err)
{
	int ret = sync_all(p, err);

	if (ret == 0)
		ret = gw_sink_flush(p->sink, err);
	if (ret == 0)
		ret = gw_postcopy_put(p->w, p->m->ram, p->m->nr_ram, p->dirty, 0, GW_POSTCOPY_EARLY,
				      err);
	if (ret == 0)
		ret = gw_writer_flush(p->w, err);
	if (ret == 0)
		ret = gw_outgoing_expect(&p->h, &p->ho, pp->ready_timeout_ms, GW_REPORT_DISCARDED,
					 "the destination's DISCARDED (the early set unmapped)",
					 err);
	return ret < 0 ? gw_error_prefix(err, ret, "post-copy switch: ") : 0;
}

/*
 * Post-copy's switch (docs/format.md, "Post-copy"): the EARLY set, then
 * pause, sync, and send
 * the set of pages the destination lacks instead of the pages, then the
 * device state and EOF; from there the post-copy phase
 * (postcopy_source.h) takes the channel: READY and GO, the pages asked
 * for, RUNNING. From GO on the guest is the destination's: any failure
 * leaves this copy paused (conclude).
 */
static int postcopy_switchover(struct precopy *p, struct gw_error *err)
{
	struct gw_migration *m = p->m;
	struct gw_precopy_params pp;
	int ret;

	get_params(p, &pp);
	ret = postcopy_early(p, &pp, err);
	if (ret == 0)
		ret = pause_guest(p, "post-copy", err);
	if (ret < 0)
		return ret;
	gw_job_set_status(&p->h.job, GW_MIG_DEVICE);
	gw_writer_set_deadline(p->w, gw_now_ns() + pp.switchover_timeout_ms * 1000000);
	ret = set_throttle(p, 0, err);
	if (ret == 0)
		ret = sync_all(p, err);
	if (ret == 0)
		ret = gw_sink_flush(p->sink, err);
	if (ret == 0)
		ret = gw_postcopy_put(p->w, m->ram, m->nr_ram, p->dirty, 0, 0, err);
	if (ret == 0)
		ret = gw_save_devices(m, p->w, err);
	if (ret == 0)
		ret = gw_save_finish(m, p->w, err);
	if (ret == 0)
		ret = gw_sink_finish(p->sink, err);
	publish_transferred(p);
	if (ret < 0)
		return gw_error_prefix(err, ret, "post-copy switch: ");
	struct gw_pc_source s = {&p->h, m, &p->ch, &p->ho, p->dirty, p->pause_ns};
	return gw_postcopy_source_run(&s, &pp, err);
}

/*
 * A write failed because the destination hung up: it may have said why
 * on the return path first. Its reason replaces "broken pipe".
 */
static void explain(struct precopy *p, int ret, struct gw_error *err)
{
	struct gw_report r;

	if (!p->return_path || p->ho.handed_over || (ret != -EPIPE && ret != -ECONNRESET))
		return;
	if (gw_report_recv(&p->h.job.cancel, EXPLAIN_TIMEOUT_MS, "the destination's report", &r,
			   NULL) == 0 &&
	    r.status == GW_REPORT_FAILED)
		gw_error_set(err, r.code, "the destination failed: %s", r.msg);
}

static int migrate(struct precopy *p, struct gw_error *err)
{
	int ret;

	gw_job_set_status(&p->h.job, GW_MIG_SETUP);
	ret = setup(p, err);
	if (ret == 0) {
		gw_job_set_status(&p->h.job, GW_MIG_ACTIVE);
		ret = iterate(p, err);
	}
	if (ret == 1)
		ret = postcopy_switchover(p, err);
	else if (ret == 0)
		ret = switchover(p, err);
	if (ret < 0 && !gw_cancel_requested(&p->h.job.cancel))
		explain(p, ret, err);
	return ret;
}

/* Undo what the engine did to the source and decide the outcome. */
static enum gw_mig_status precopy_conclude(struct gw_job *j, int ret, struct gw_error *err)
{
	struct precopy *p = j->engine;
	struct gw_migration *m = p->m;
	enum gw_mig_status outcome = GW_MIG_COMPLETED;
	struct gw_error e2 = {0};
	bool unconfirmed;

	if (p->w)
		publish_transferred(p);
	/* A file sink's writers stop, and let go of its fds, before the
	 * channel closes: no write may land in a file that reuses the fd; a
	 * multifd sink's channels end or are shut down. */
	if (p->sink != &p->stream_sink.sink)
		gw_sink_release(p->sink);
	p->sink = NULL;
	gw_writer_free(p->w);
	p->w = NULL;
	if (ret < 0) {
		gw_error_prefix(err, ret, "%s: ", p->ch.desc);
		/* The destination must not wait for more: end the stream for it
		 * (closing our fd would not, if another process shares it). */
		gw_cancel_shutdown(&j->cancel);
	}
	{
		int end = gw_outgoing_end_channel(&p->h, &p->ch, p->ho.handed_over, ret, err);

		/* Confirmed, the guest runs there: closing our end cannot undo it. */
		ret = p->ho.confirmed ? 0 : end;
	}
	unconfirmed = ret < 0 && p->ho.handed_over && !p->ho.dest_failed;
	if (unconfirmed) {
		/* The other side may run the guest: resuming here could make
		 * two. Keep the complete copy, paused, and say so. */
		outcome = GW_MIG_FAILED;
		gw_error_append(err, "the source guest stays paused",
				p->return_path ?
					"the destination got GO and may be running the guest; 'cont' resumes it here only if the destination is known not to run it" :
					"the command got the whole stream and may have started the guest elsewhere; 'cont' resumes it here only if it is known not to run there");
	} else if (ret < 0) {
		outcome = gw_job_cancelled(j) && !p->ho.handed_over ? GW_MIG_CANCELLED :
								      GW_MIG_FAILED;
		/* A guest that cannot run again is a failure, even of a cancel. */
		if (p->paused && m->vm_ops.resume(m->vm_opaque, &e2) < 0) {
			gw_error_append(err, "and the source guest cannot be resumed", e2.msg);
			outcome = GW_MIG_FAILED;
		}
	}
	if (p->throttle && set_throttle(p, 0, &e2) < 0) {
		gw_error_append(err, "and the vCPU throttle cannot be removed", e2.msg);
		if (outcome == GW_MIG_CANCELLED)
			outcome = GW_MIG_FAILED;
	}
	/* A completed incremental save leaves tracking on for the next one;
	 * anything else ends it (and the file sink has set m->incr). */
	struct gw_precopy_params pp;
	get_params(p, &pp);
	if (p->dirty_started && !(outcome == GW_MIG_COMPLETED && pp.incremental && pp.mapped_ram))
		gw_migration_end_tracking(m);
	pthread_mutex_lock(&j->lock);
	p->h.stats.unconfirmed = unconfirmed;
	pthread_mutex_unlock(&j->lock);
	return outcome;
}

static int precopy_run(struct gw_job *j, struct gw_error *err)
{
	((struct precopy *)j->engine)->extra_owned = true;
	return migrate(j->engine, err);
}

static const struct gw_job_ops precopy_ops = {
	.run = precopy_run,
	.conclude = precopy_conclude,
};

static void precopy_release(struct gw_precopy *h)
{
	struct precopy *p = (struct precopy *)h;

	if (p->sink && p->sink != &p->stream_sink.sink)
		gw_sink_release(p->sink);
	for (unsigned i = 0; p->extra_owned && i < p->nr_extra; i++) {
		gw_channel_abort(&p->extra[i]);
		gw_channel_close(&p->extra[i], NULL);
	}
	for (uint32_t i = 0; p->dirty && i < p->m->nr_ram; i++)
		free(p->dirty[i]);
	free(p->dirty);
	free(p);
}

int gw_precopy_engine_start(struct gw_migration *m, struct gw_channel *ch, unsigned nr_channels,
			    const struct gw_precopy_params *params,
			    const struct gw_precopy_callbacks *cb, struct gw_precopy **out,
			    struct gw_error *err)
{
	struct precopy *p;

	if (!m->dirty_ops.sync)
		return gw_error_set(err, -EINVAL,
				    "pre-copy: the VMM has not set dirty-page tracking (gw_migration_set_dirty_ops)");
	if (params->auto_converge && (!cb || !cb->throttle))
		return gw_error_set(err, -EINVAL,
				    "pre-copy: auto-converge needs a throttle callback");
	p = calloc(1, sizeof(*p));
	if (!p)
		return gw_error_set(err, -ENOMEM, "pre-copy: out of memory");
	p->h.release = precopy_release;
	p->m = m;
	p->h.params = *params;
	if (cb)
		p->cb = *cb;
	p->ch = *ch;
	for (unsigned i = 1; i < nr_channels; i++)
		p->extra[p->nr_extra++] = ch[i];
	/* A socket can answer: the handshake runs over it. */
	p->return_path = p->ch.bidirectional;
	p->dirty = calloc(m->nr_ram + 1, sizeof(*p->dirty));
	if (!p->dirty) {
		free(p);
		return gw_error_set(err, -ENOMEM, "pre-copy: out of memory");
	}
	for (uint32_t i = 0; i < m->nr_ram; i++) {
		p->dirty[i] = calloc(gw_bitmap_words(m->ram[i].size / PAGE), sizeof(uint64_t));
		if (!p->dirty[i]) {
			precopy_release(&p->h);
			return gw_error_set(err, -ENOMEM,
					    "pre-copy: out of memory for the dirty bitmaps");
		}
	}
	int ret = gw_outgoing_launch(&p->h, m, &precopy_ops, p, "gw-precopy", cb, ch, out,
				     "pre-copy: ", err);
	for (unsigned i = 1; ret == 0 && i < nr_channels; i++)
		ch[i] = (struct gw_channel){.fd = -1};
	return ret;
}
