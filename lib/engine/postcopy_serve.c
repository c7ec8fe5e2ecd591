/*
 * Post-copy's source side (postcopy_serve.h).
 */
#include <errno.h>

#include <godwit/io.h>

#include "lib/bitmap.h"
#include "lib/clock.h"
#include "lib/format/postcopy.h"
#include "lib/engine/postcopy_serve.h"
#include "lib/internal.h"
#include "lib/transport/return_path.h"

#define PAGE ((uint64_t)GW_PAGE_SIZE)

static uint64_t count_stale(const struct gw_migration *m, uint64_t *const *stale)
{
	uint64_t n = 0;

	for (uint32_t i = 0; i < m->nr_ram; i++)
		n += gw_bitmap_count(stale[i], m->ram[i].size / PAGE);
	return n;
}

/* Every page asked for is still owed; then they are not any more. */
static int take(const struct gw_migration *m, uint64_t *const *stale,
		const struct gw_page_request *rq, struct gw_error *err)
{
	uint64_t *bits = stale[rq->block];

	for (uint64_t p = rq->first; p < rq->first + rq->count; p++)
		if (!(bits[p / 64] >> (p % 64) & 1))
			return gw_error_set(err, -EBADMSG,
					    "post-copy: the destination asked for the page at 0x%llx of RAM block '%s', which it has already (valid before the switch, or sent since)",
					    (unsigned long long)(p * PAGE), m->ram[rq->block].name);
	for (uint64_t p = rq->first; p < rq->first + rq->count; p++)
		bits[p / 64] &= ~(1ull << (p % 64));
	return 0;
}

int gw_postcopy_serve(struct gw_migration *m, struct gw_cancel *c, struct gw_writer *w,
		      uint64_t *const *stale, int idle_timeout_ms, struct gw_pc_serve_stats *stats,
		      bool *dest_failed, struct gw_error *err)
{
	uint64_t owed = count_stale(m, stale);

	while (owed) {
		struct gw_report r;
		int ret = gw_report_recv(c, idle_timeout_ms, "the destination's next page request",
					 &r, err);

		if (ret < 0)
			return ret;
		if (r.status == GW_REPORT_FAILED) {
			*dest_failed = true;
			return gw_error_set(err, r.code, "the destination failed: %s", r.msg);
		}
		if (r.status != GW_REPORT_REQUEST)
			return gw_error_set(err, -EBADMSG,
					    "post-copy: the destination sent %s where only page requests belong",
					    gw_report_name(r.status));
		uint64_t before = gw_writer_offset(w);

		/* A destination that stops reading breaks the connection too. */
		gw_writer_set_deadline(w, gw_now_ns() + (uint64_t)idle_timeout_ms * 1000000);
		ret = gw_page_request_check(&r.req, m->ram, m->nr_ram, err);
		if (ret == 0)
			ret = take(m, stale, &r.req, err);
		if (ret == 0)
			ret = gw_postcopy_answer(m, w, &r.req, err);
		if (ret == 0)
			ret = gw_writer_flush(w, err);
		if (ret < 0)
			return ret;
		owed -= r.req.count;
		if (stats) {
			__atomic_add_fetch(&stats->requests, 1, __ATOMIC_RELAXED);
			__atomic_add_fetch(&stats->pages, r.req.count, __ATOMIC_RELAXED);
			__atomic_add_fetch(&stats->bytes, gw_writer_offset(w) - before,
					   __ATOMIC_RELAXED);
		}
	}
	return 0;
}
