/*
 * The background-snapshot engine (<godwit/precopy.h>, QEMU's
 * background-snapshot): the guest as it was at one instant, saved while
 * it runs on.
 *
 * Arming comes first, while the guest runs: every RAM block is
 * write-protected whole (on a memfd that costs about 3 ms per GiB here,
 * too long to pause for), and a write that faults before the instant is
 * only let go and remembered (`early`). The instant is a pause of about a
 * millisecond: stop the vCPUs, protect again what was let go early, write
 * device state into the stream, resume. From then on every page that is
 * not saved yet is protected, so what the bulk reads from guest memory is
 * the page of the instant. Holes need nothing: every page that holds
 * data is known (`data`: populated when armed, found with SEEK_DATA, or
 * filled since), a page that does not was never written and is zero, and
 * the first touch of one during the snapshot waits for the fault thread
 * to fill it with zeros, write-protected. The instant saves what holds
 * data then; nothing ever reads a hole (a read would allocate it).
 *
 * Two kinds of thread share the pages still to save (`todo`, one bit per
 * page, under the lock):
 *
 *  - The fault thread reads write faults. A page still to save is
 *    claimed (its bit cleared) and copied, with the unsaved pages after
 *    it in its chunk (up to COPY_PAGES: a guest that writes a run pays
 *    one fault, not one per page), while holding the lock; the copy is
 *    queued and the pages are un-protected at once, so the write goes on
 *    within microseconds. A page of a chunk a bulk thread is writing is
 *    left to it (its un-protect wakes the writer); any other page (a hole
 *    at the instant, or one already saved) is un-protected.
 *  - Bulk threads (one for a stream, put_threads() for a mapped-ram
 *    file) write the queued copies first, then claim the next 2 MiB chunk
 *    (its todo bits, and a busy bit), write its pages straight from guest
 *    memory and un-protect the whole chunk with one call. Into a file the
 *    chunk's pages are copied out first and the chunk let go before the
 *    write: a write to it then waits for a memcpy, not for the disk. The chunk
 *    of the last copied fault goes first, then the chunks after it: a
 *    guest writing a run of memory soon writes where the bulk has been.
 *
 * Claiming under the lock is what makes it exact: a page is written once,
 * either from a copy made while it was still protected or from guest
 * memory before its chunk is un-protected, and the chunk's un-protect
 * can only follow a fault's copy, never overtake it.
 *
 * The end, whatever the outcome: un-protect and unregister everything
 * (waking any write still waiting), stop the fault thread, close the
 * userfaultfd; the guest runs on. The stream carries GW_HDRF_SNAPSHOT, so
 * a godwit destination on a socket loads it and keeps that copy paused.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/types.h>
#include <unistd.h>

#include <godwit/precopy.h>
#include <godwit/stream.h>

#include "lib/bitmap.h"
#include "lib/cancel.h"
#include "lib/clock.h"
#include "lib/compat/uapi.h"
#include "lib/engine/outgoing.h"
#include "lib/internal.h"
#include "lib/ram/populated.h"
#include "lib/ram/ram_sink.h"
#include "lib/ram/wp.h"
#include "lib/ratelimit.h"

#define PAGE ((uint64_t)GW_PAGE_SIZE)
#define CHUNK_PAGES 512u /* 2 MiB: what a bulk thread claims, writes and lets go at once */
#define COPY_PAGES 16u   /* at most, per fault */
#define SLOTS 256u       /* copies waiting for a bulk thread: 16 MiB at most */
#define MSGS 64u         /* faults read at once */
#define MAX_THREADS 64u
/* Protected runs closer than this are protected as one range: fewer
 * calls, and a fault on a hole between them costs one un-protect. */
#define GAP_PAGES 256u
/* Longest sleep between two looks at max-bandwidth and cancel. */
#define RATE_SLICE_NS (10 * 1000000ull)

_Static_assert(CHUNK_PAGES <= GW_PAGES_MAX, "a chunk goes in one call to the sink");

struct copy {
	uint32_t block, n;
	uint64_t first;      /* page */
	unsigned char *data; /* COPY_PAGES pages, page-aligned */
};

struct bblock {
	uint64_t pages, chunks;
	uint64_t *todo;    /* pages still to save */
	uint64_t *early;   /* let go of before the instant: protected again at it */
	uint64_t *data;    /* pages that hold data: populated when armed, or filled since */
	uint64_t *busy;    /* chunks a bulk thread is writing */
	uint64_t *wait_ns; /* per chunk: the first fault left to its writer, 0 = none */
};

struct background {
	struct gw_precopy h; /* job, params, stats (outgoing.h) */
	struct gw_migration *m;
	struct gw_precopy_callbacks cb;
	struct gw_channel ch; /* ours: closed, and its command ended, before the outcome */

	/* The job thread's own. */
	struct gw_writer *w;
	struct gw_stream_sink stream_sink;
	struct gw_ram_sink *sink;
	bool paused; /* this engine paused the guest */
	uint64_t pause_ns;
	uint32_t registered; /* RAM blocks registered with wp */
	struct gw_wp wp;
	int quit_efd; /* wakes the fault thread for good */
	pthread_t fault_thread;
	bool fault_started;

	/* Shared by the fault thread and the bulk threads. */
	pthread_mutex_t lock;
	pthread_cond_t cond; /* a copy queued or written, a chunk done, quit */
	struct bblock *blocks;
	struct copy slots[SLOTS];
	unsigned char *slot_mem;
	uint32_t free_slots[SLOTS], nr_free;
	uint32_t queue[SLOTS], qhead, qtail; /* copies to write, in order */
	uint32_t cur_block;                  /* the bulk's next chunk */
	uint64_t cur_chunk;
	bool hint; /* the bulk goes where the guest writes: */
	uint32_t hint_block;
	uint64_t hint_chunk;
	uint64_t pending; /* pages still to save */
	bool instant;     /* the instant is past: faults are copied */
	bool quit;        /* the fault thread copies nothing more */
	bool failed;      /* the first failure is in error */
	struct gw_error error;
	uint64_t faults, max_wait_ns;
	struct gw_ratelimit rl;
};

static int cancelled(struct gw_error *err)
{
	return gw_error_set(err, -ECANCELED, "cancelled");
}

/* Under the lock: record the first failure; the threads stop at it. */
static void fail_locked(struct background *b, const struct gw_error *e)
{
	if (!b->failed) {
		b->error = *e;
		b->failed = true;
	}
	pthread_cond_broadcast(&b->cond);
}

static void fail(struct background *b, const struct gw_error *e)
{
	pthread_mutex_lock(&b->lock);
	fail_locked(b, e);
	pthread_mutex_unlock(&b->lock);
}

static unsigned char *page_addr(const struct background *b, uint32_t block, uint64_t page)
{
	return b->m->ram[block].host + page * PAGE;
}

static int unprotect(struct background *b, uint32_t block, uint64_t page, uint64_t n,
		     struct gw_error *err)
{
	return gw_wp_protect(&b->wp, page_addr(b, block, page), n * PAGE, false, err);
}

static void note_wait(struct background *b, uint64_t since_ns)
{
	uint64_t d = gw_now_ns() - since_ns;

	if (d > b->max_wait_ns)
		b->max_wait_ns = d;
}

/* ---- the fault thread ------------------------------------------------ */

/* The RAM block holding host address addr, and its page there; nr_ram if none. */
static uint32_t block_of(const struct background *b, uint64_t addr, uint64_t *page)
{
	for (uint32_t i = 0; i < b->m->nr_ram; i++) {
		uint64_t host = (uint64_t)(uintptr_t)b->m->ram[i].host;

		if (addr >= host && addr - host < b->m->ram[i].size) {
			*page = (addr - host) / PAGE;
			return i;
		}
	}
	return b->m->nr_ram;
}

/*
 * A first touch of a hole: zeros, protected. The page was zero at the
 * instant (or the instant is still to come, and it is protected for it);
 * the bulk or a later write fault saves it like any other. Under the
 * lock, and unprotected once the snapshot is being disarmed: a protected
 * fill that races the unregister would leave its page protected (the
 * kernel drops the bits of the range as it unregisters, not of a page
 * filled meanwhile).
 */
static void on_missing(struct background *b, uint64_t addr)
{
	struct gw_error e = {0};

	uint64_t page = 0;
	uint32_t block = block_of(b, addr, &page);

	pthread_mutex_lock(&b->lock);
	if (gw_wp_fill_zero(&b->wp, (void *)(uintptr_t)addr, !b->quit, &e) < 0 && !b->quit)
		fail_locked(b, &e);
	if (block < b->m->nr_ram)
		gw_bitmap_set(b->blocks[block].data, page, 1);
	pthread_mutex_unlock(&b->lock);
}

/* Under the lock: wait for a slot to free, at most 10 ms, and take a
 * cancel as the end of copying. */
static void wait_slot(struct background *b)
{
	gw_cond_wait_ms(&b->cond, &b->lock, 10);
	if (gw_cancel_requested(&b->h.job.cancel))
		b->quit = true;
}

/* Under the lock: claim and copy the unsaved pages from `page` on (the
 * first is unsaved), queue the copy; returns how many. */
static uint32_t copy_locked(struct background *b, uint32_t block, uint64_t page)
{
	struct bblock *bb = &b->blocks[block];
	uint64_t end = (page / CHUNK_PAGES + 1) * CHUNK_PAGES;
	uint32_t n = 1, s = b->free_slots[--b->nr_free];
	struct copy *c = &b->slots[s];

	if (end > bb->pages)
		end = bb->pages;
	/* Pages to save hold data: the copy never reads a hole, which would
	 * wait for this very thread to fill it. */
	while (n < COPY_PAGES && page + n < end && gw_bitmap_test(bb->todo, page + n))
		n++;
	gw_bitmap_clear(bb->todo, page, n);
	b->pending -= b->pending < n ? b->pending : n;
	memcpy(c->data, page_addr(b, block, page), n * PAGE);
	c->block = block;
	c->first = page;
	c->n = n;
	b->queue[b->qtail++ % SLOTS] = s;
	/* The guest writes here: the bulk comes here next. */
	b->hint_block = block;
	b->hint_chunk = page / CHUNK_PAGES;
	b->hint = true;
	pthread_cond_broadcast(&b->cond);
	return n;
}

static void on_fault(struct background *b, uint64_t addr)
{
	uint64_t t0 = gw_now_ns(), page = 0, chunk;
	struct gw_error e = {0};
	uint32_t block, n = 1;
	struct bblock *bb;
	bool leave = false;
	int ret;

	block = block_of(b, addr, &page);
	if (block == b->m->nr_ram)
		return; /* not guest RAM: nothing of ours is registered there */
	bb = &b->blocks[block];
	chunk = page / CHUNK_PAGES;
	pthread_mutex_lock(&b->lock);
	if (!b->instant && !b->quit) {
		/* Before the instant: let go, and protect again at it. Under
		 * the lock, so that the instant cannot fall between the two. */
		gw_bitmap_set(bb->early, page, 1);
		ret = unprotect(b, block, page, 1, &e);
		if (ret < 0)
			fail_locked(b, &e);
		pthread_mutex_unlock(&b->lock);
		return;
	}
	if (!b->quit)
		b->faults++;
	for (;;) {
		if (!b->quit && gw_bitmap_test(bb->todo, page)) {
			if (!b->nr_free) {
				/* The writers are behind: the write waits for a slot,
				 * or for a cancel (the snapshot ends, nothing is
				 * copied any more). */
				wait_slot(b);
				continue;
			}
			n = copy_locked(b, block, page);
		} else if (!b->quit && gw_bitmap_test(bb->busy, chunk)) {
			/* Its writer un-protects the chunk, and so wakes the write. */
			if (!bb->wait_ns[chunk])
				bb->wait_ns[chunk] = t0;
			leave = true;
		}
		break;
	}
	pthread_mutex_unlock(&b->lock);
	if (leave)
		return;
	ret = unprotect(b, block, page, n, &e);
	pthread_mutex_lock(&b->lock);
	if (ret < 0 && !b->quit)
		fail_locked(b, &e);
	note_wait(b, t0);
	pthread_mutex_unlock(&b->lock);
}

static void *fault_main(void *opaque)
{
	struct background *b = opaque;
	struct uffd_msg msgs[MSGS];
	struct pollfd pfd[2] = {{.fd = b->wp.fd, .events = POLLIN},
				{.fd = b->quit_efd, .events = POLLIN}};

	pthread_setname_np(pthread_self(), "gw-wp-faults");
	for (;;) {
		ssize_t got;

		if (poll(pfd, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		/* Quit comes only once nothing is protected any more. */
		if (pfd[1].revents)
			break;
		got = read(b->wp.fd, msgs, sizeof(msgs));
		if (got < 0) {
			if (errno == EAGAIN || errno == EINTR)
				continue;
			struct gw_error e = {0};
			gw_error_set(&e, -errno, "userfaultfd: reading faults: %s",
				     gw_strerror(errno));
			fail(b, &e);
			break;
		}
		for (size_t i = 0; i < (size_t)got / sizeof(msgs[0]); i++) {
			if (msgs[i].event != UFFD_EVENT_PAGEFAULT)
				continue;
			if (msgs[i].arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP)
				on_fault(b, msgs[i].arg.pagefault.address);
			else
				on_missing(b, msgs[i].arg.pagefault.address);
		}
	}
	return NULL;
}

/* ---- the bulk -------------------------------------------------------- */

static void account(struct background *b, uint32_t n, uint32_t zero)
{
	uint64_t pending;

	pthread_mutex_lock(&b->lock);
	pending = b->pending;
	pthread_mutex_unlock(&b->lock);
	pthread_mutex_lock(&b->h.job.lock);
	b->h.stats.transferred = gw_sink_sent(b->sink);
	b->h.stats.remaining = pending * PAGE;
	b->h.stats.duplicate += zero;
	b->h.stats.normal += n - zero;
	b->h.stats.normal_bytes += (uint64_t)(n - zero) * PAGE;
	pthread_mutex_unlock(&b->h.job.lock);
}

/* Entries for pages [first, first+n) whose bit is set in bm (bit 0 =
 * first), zero pages flagged. */
static uint32_t make_entries(struct background *b, uint32_t block, uint64_t first,
			     const uint64_t *bm, uint32_t n, uint64_t *entries, uint32_t *zero)
{
	uint32_t k = 0;

	*zero = 0;
	for (uint32_t i = 0; i < n; i++) {
		if (!gw_bitmap_test(bm, i))
			continue;
		bool z = gw_page_is_zero(page_addr(b, block, first + i));

		entries[k++] = (first + i) * PAGE | (z ? GW_PAGE_ZERO : 0);
		*zero += z;
	}
	return k;
}

static int write_copy(struct background *b, const struct copy *c, struct gw_error *err)
{
	uint64_t entries[COPY_PAGES];
	uint32_t zero = 0, d = 0;
	int ret;

	/* Zero pages go without data; the rest stay packed in order. */
	for (uint32_t i = 0; i < c->n; i++) {
		const unsigned char *src = c->data + i * PAGE;
		bool z = gw_page_is_zero(src);

		entries[i] = (c->first + i) * PAGE | (z ? GW_PAGE_ZERO : 0);
		zero += z;
		if (!z) {
			if (d != i)
				memmove(c->data + d * PAGE, src, PAGE);
			d++;
		}
	}
	ret = gw_sink_put(b->sink, c->block, entries, c->n, c->data, GW_SAVE_DATA_CRC, err);
	if (ret == 0)
		account(b, c->n, zero);
	return ret;
}

/* Under the lock: claim chunk c of block i if it has pages to save. */
static bool take_locked(struct background *b, uint32_t i, uint64_t c, uint64_t *bm, uint32_t *n)
{
	struct bblock *bb = &b->blocks[i];
	uint64_t first = c * CHUNK_PAGES;
	uint64_t len = bb->pages - first < CHUNK_PAGES ? bb->pages - first : CHUNK_PAGES;
	uint64_t found = gw_bitmap_next_set(bb->todo, first + len, first);

	if (found >= first + len || gw_bitmap_test(bb->busy, c))
		return false;
	memset(bm, 0, CHUNK_PAGES / 8);
	for (uint64_t p = found; p < first + len; p++)
		if (gw_bitmap_test(bb->todo, p))
			gw_bitmap_set(bm, p - first, 1);
	gw_bitmap_clear(bb->todo, first, len);
	gw_bitmap_set(bb->busy, c, 1);
	*n = (uint32_t)len;
	return true;
}

/*
 * Under the lock: the next chunk with pages to save, claimed; false when
 * none is left. Where the guest writes comes first (the hint: the chunk
 * of the last copied fault, then the ones after it, as long as they have
 * pages to save), so that a guest writing a run of memory soon writes
 * into chunks already let go; the rest in address order.
 */
static bool claim_locked(struct background *b, uint32_t *block, uint64_t *chunk, uint64_t *bm,
			 uint32_t *n)
{
	while (b->hint) {
		uint32_t i = b->hint_block;
		uint64_t c = b->hint_chunk;

		if (c >= b->blocks[i].chunks || !take_locked(b, i, c, bm, n)) {
			b->hint = false;
			break;
		}
		b->hint_chunk = c + 1;
		*block = i;
		*chunk = c;
		return true;
	}
	while (b->cur_block < b->m->nr_ram) {
		struct bblock *bb = &b->blocks[b->cur_block];
		uint64_t p = gw_bitmap_next_set(bb->todo, bb->pages, b->cur_chunk * CHUNK_PAGES);

		b->cur_chunk = p / CHUNK_PAGES;
		if (p >= bb->pages) {
			b->cur_block++;
			b->cur_chunk = 0;
			continue;
		}
		/* Busy: a bulk thread has it, and its todo bits are clear. */
		if (take_locked(b, b->cur_block, b->cur_chunk, bm, n)) {
			*block = b->cur_block;
			*chunk = b->cur_chunk++;
			return true;
		}
		b->cur_chunk++;
	}
	return false;
}

/* Spend bytes from the bandwidth budget and wait until it allows more. */
static int limit_bandwidth(struct background *b, uint64_t bytes, struct gw_error *err)
{
	struct gw_precopy_params pp;

	gw_outgoing_params(&b->h, &pp);
	pthread_mutex_lock(&b->lock);
	gw_ratelimit_spend(&b->rl, bytes);
	pthread_mutex_unlock(&b->lock);
	for (;;) {
		uint64_t delay;

		pthread_mutex_lock(&b->lock);
		delay = gw_ratelimit_delay_ns(&b->rl, pp.max_bandwidth, gw_now_ns());
		pthread_mutex_unlock(&b->lock);
		if (!delay)
			return 0;
		if (gw_cancel_sleep(&b->h.job.cancel,
				    delay < RATE_SLICE_NS ? delay : RATE_SLICE_NS) < 0)
			return cancelled(err);
		gw_outgoing_params(&b->h, &pp);
	}
}

/* Under the lock: the chunk is written (or copied out): let its waiting
 * faults go, and count the wait. */
static void chunk_done_locked(struct background *b, uint32_t block, uint64_t chunk, uint32_t n)
{
	struct bblock *bb = &b->blocks[block];

	b->pending -= b->pending < n ? b->pending : n;
	gw_bitmap_clear(bb->busy, chunk, 1);
	if (bb->wait_ns[chunk]) {
		note_wait(b, bb->wait_ns[chunk]);
		bb->wait_ns[chunk] = 0;
	}
}

/*
 * Write a claimed chunk and let it go. With a bounce buffer (a file sink:
 * its write may wait for the disk, O_DIRECT reads guest memory until it
 * is done) the pages are copied out first and the chunk let go before
 * the write, so a guest write to it waits for a memcpy, not for the disk.
 */
static int write_chunk(struct background *b, uint32_t block, uint64_t chunk, const uint64_t *bm,
		       uint32_t len, unsigned char *bounce, struct gw_error *err)
{
	uint64_t entries[CHUNK_PAGES], first = chunk * CHUNK_PAGES;
	uint64_t before = gw_sink_taken(b->sink);
	struct gw_error e2 = {0};
	uint32_t zero = 0, n = make_entries(b, block, first, bm, len, entries, &zero), d = 0;
	int ret = 0, up;

	for (uint32_t i = 0; bounce && i < n; i++)
		if (!(entries[i] & GW_PAGE_ZERO))
			memcpy(bounce + (uint64_t)d++ * PAGE,
			       b->m->ram[block].host + (entries[i] & ~(PAGE - 1)), PAGE);
	if (n && !bounce)
		ret = gw_sink_put(b->sink, block, entries, n, NULL, GW_SAVE_DATA_CRC, err);
	up = unprotect(b, block, first, len, &e2);
	pthread_mutex_lock(&b->lock);
	chunk_done_locked(b, block, chunk, n);
	pthread_mutex_unlock(&b->lock);
	if (n && bounce)
		ret = gw_sink_put(b->sink, block, entries, n, bounce, GW_SAVE_DATA_CRC, err);
	if (ret == 0 && up < 0) {
		*err = e2;
		ret = up;
	}
	if (ret < 0)
		return ret;
	account(b, n, zero);
	return limit_bandwidth(b, gw_sink_taken(b->sink) - before, err);
}

/* One bulk thread: copies first, then chunks, until nothing is left. */
static int bulk_loop(struct background *b, unsigned char *bounce, struct gw_error *err)
{
	uint64_t bm[CHUNK_PAGES / 64];

	pthread_mutex_lock(&b->lock);
	for (;;) {
		uint32_t block, len;
		uint64_t chunk;
		int ret;

		if (b->failed) {
			*err = b->error;
			break;
		}
		if (gw_cancel_requested(&b->h.job.cancel)) {
			pthread_mutex_unlock(&b->lock);
			return cancelled(err);
		}
		if (b->qhead != b->qtail) {
			uint32_t s = b->queue[b->qhead++ % SLOTS];

			pthread_mutex_unlock(&b->lock);
			ret = write_copy(b, &b->slots[s], err);
			pthread_mutex_lock(&b->lock);
			b->free_slots[b->nr_free++] = s;
			pthread_cond_broadcast(&b->cond);
		} else if (claim_locked(b, &block, &chunk, bm, &len)) {
			pthread_mutex_unlock(&b->lock);
			ret = write_chunk(b, block, chunk, bm, len, bounce, err);
			pthread_mutex_lock(&b->lock);
		} else {
			/* Nothing left to claim, so no copy can be made any more. */
			pthread_mutex_unlock(&b->lock);
			return 0;
		}
		if (ret < 0) {
			fail_locked(b, err);
			break;
		}
	}
	pthread_mutex_unlock(&b->lock);
	return b->error.code ? b->error.code : -EIO;
}

static int bulk(struct background *b, struct gw_error *err)
{
	unsigned char *bounce = NULL;
	int ret;

	if (b->sink != &b->stream_sink.sink) {
		bounce = aligned_alloc(PAGE, CHUNK_PAGES * PAGE);
		if (!bounce)
			return gw_error_set(err, -ENOMEM, "out of memory for a writer's buffer");
	}
	ret = bulk_loop(b, bounce, err);
	free(bounce);
	return ret;
}

struct bulk_thread {
	struct background *b;
	pthread_t thread;
	struct gw_error err;
	int ret;
};

static void *bulk_main(void *opaque)
{
	struct bulk_thread *t = opaque;

	pthread_setname_np(pthread_self(), "gw-snap-writer");
	t->ret = bulk(t->b, &t->err);
	if (t->ret < 0)
		fail(t->b, &t->err);
	return NULL;
}

/* The job thread and put_threads() - 1 more write the RAM. */
static int save_ram(struct background *b, struct gw_error *err)
{
	uint32_t n = b->sink->ops->put_threads(b->sink), started = 0;
	struct bulk_thread *t;
	int ret;

	if (n < 1)
		n = 1;
	if (n > MAX_THREADS)
		n = MAX_THREADS;
	t = calloc(n, sizeof(*t));
	if (!t)
		return gw_error_set(err, -ENOMEM, "out of memory for the writers");
	for (uint32_t i = 1; i < n; i++) {
		t[i].b = b;
		if (pthread_create(&t[i].thread, NULL, bulk_main, &t[i]) != 0)
			break;
		started++;
	}
	ret = bulk(b, err);
	if (ret < 0)
		fail(b, err);
	for (uint32_t i = 1; i <= started; i++)
		pthread_join(t[i].thread, NULL);
	free(t);
	pthread_mutex_lock(&b->lock);
	if (b->failed && ret == 0) {
		*err = b->error;
		ret = b->error.code ? b->error.code : -EIO;
	}
	pthread_mutex_unlock(&b->lock);
	return ret;
}

/* ---- the instant ------------------------------------------------------ */

/* Protect the runs of pages of block i whose bit is set in bm, near runs
 * as one (the holes between them wait for a fill, which protects them). */
static int protect_runs(struct background *b, uint32_t i, const uint64_t *bm, struct gw_error *err)
{
	struct bblock *bb = &b->blocks[i];
	uint64_t p = gw_bitmap_next_set(bm, bb->pages, 0);

	while (p < bb->pages) {
		uint64_t q = gw_bitmap_next_clear(bm, bb->pages, p), next;
		int ret;

		while ((next = gw_bitmap_next_set(bm, bb->pages, q)) < bb->pages &&
		       next - q < GAP_PAGES)
			q = gw_bitmap_next_clear(bm, bb->pages, next);
		ret = gw_wp_protect(&b->wp, page_addr(b, i, p), (q - p) * PAGE, true, err);
		if (ret < 0)
			return gw_error_prefix(err, ret, "RAM block '%s': ", b->m->ram[i].name);
		p = next;
	}
	return 0;
}

/*
 * The instant: pause, protect again what was let go since arming, save
 * device state, resume. The fault thread waits for the lock meanwhile, so
 * a fault either came before (and is protected again here) or is handled
 * as one after the instant.
 */
static int capture(struct background *b, struct gw_error *err)
{
	struct gw_migration *m = b->m;
	uint64_t us, pending = 0;
	int ret;

	b->paused = true;
	b->pause_ns = gw_now_ns();
	ret = m->vm_ops.pause(m->vm_opaque, err);
	if (ret < 0)
		return gw_error_prefix(err, ret, "cannot pause the guest: ");
	pthread_mutex_lock(&b->lock);
	if (b->failed) {
		*err = b->error;
		ret = b->error.code ? b->error.code : -EIO;
	}
	for (uint32_t i = 0; ret == 0 && i < m->nr_ram; i++) {
		struct bblock *bb = &b->blocks[i];

		ret = protect_runs(b, i, bb->early, err);
		memset(bb->early, 0, gw_bitmap_words(bb->pages) * sizeof(uint64_t));
		/* What holds data now is what the instant saves. */
		memcpy(bb->todo, bb->data, gw_bitmap_words(bb->pages) * sizeof(uint64_t));
		pending += gw_bitmap_count(bb->todo, bb->pages);
	}
	b->pending = pending;
	b->instant = ret == 0;
	pthread_mutex_unlock(&b->lock);
	if (ret == 0)
		ret = gw_save_devices(m, b->w, err);
	if (ret < 0)
		return ret;
	ret = m->vm_ops.resume(m->vm_opaque, err);
	if (ret < 0)
		return gw_error_prefix(err, ret, "cannot resume the guest: ");
	b->paused = false;
	us = (gw_now_ns() - b->pause_ns) / 1000;
	pthread_mutex_lock(&b->h.job.lock);
	b->h.stats.pause_us = us;
	b->h.stats.downtime_ms = us / 1000;
	b->h.stats.remaining = pending * PAGE;
	pthread_mutex_unlock(&b->h.job.lock);
	return 0;
}

/* Un-protect and unregister every block, wake every waiting write, stop
 * the fault thread. Idempotent. */
static int disarm(struct background *b, struct gw_error *err)
{
	int ret = 0;

	pthread_mutex_lock(&b->lock);
	b->quit = true;
	pthread_cond_broadcast(&b->cond);
	pthread_mutex_unlock(&b->lock);
	while (b->registered) {
		const struct gw_ram_block *rb = &b->m->ram[--b->registered];
		struct gw_error e = {0};
		int r = gw_wp_release(&b->wp, rb->host, rb->size, &e);

		if (r < 0 && ret == 0) {
			*err = e;
			ret = r;
		}
	}
	if (b->fault_started) {
		uint64_t one = 1;

		if (write(b->quit_efd, &one, sizeof(one)) != sizeof(one))
			abort(); /* an eventfd write of 1 cannot fail */
		pthread_join(b->fault_thread, NULL);
		b->fault_started = false;
	}
	/* Closing the userfaultfd is what finally lets go of every page. */
	gw_wp_close(&b->wp);
	return ret;
}

/*
 * While the guest runs: register every block (holes now wait for a fill,
 * which comes protected), start the fault thread, then protect the pages
 * that hold data. Registered first, so that a page the guest fills while
 * the populated pages are looked up is protected either way; only what
 * holds data is protected, so that arming costs what the guest touched,
 * not the size of its RAM.
 */
static int arm(struct background *b, struct gw_error *err)
{
	uint64_t populated = 0;
	int ret = gw_wp_open(&b->wp, err);

	for (uint32_t i = 0; ret == 0 && i < b->m->nr_ram; i++) {
		const struct gw_ram_block *rb = &b->m->ram[i];

		ret = gw_wp_register(&b->wp, rb->host, rb->size, rb->name, err);
		if (ret == 0)
			b->registered++;
	}
	if (ret == 0 && (ret = pthread_create(&b->fault_thread, NULL, fault_main, b)) != 0)
		ret = gw_error_set(err, -ret, "cannot start the fault thread: %s",
				   gw_strerror(ret));
	b->fault_started = ret == 0;
	for (uint32_t i = 0; ret == 0 && i < b->m->nr_ram; i++) {
		const struct gw_ram_block *rb = &b->m->ram[i];
		struct bblock *bb = &b->blocks[i];

		/* todo is free until the instant: a scratch bitmap here. A
		 * page filled meanwhile is in data already. */
		gw_bitmap_fill(bb->todo, bb->pages);
		ret = gw_populated_filter(rb, bb->todo, err);
		if (ret == 0)
			ret = protect_runs(b, i, bb->todo, err);
		pthread_mutex_lock(&b->lock);
		for (size_t w = 0; w < gw_bitmap_words(bb->pages); w++)
			bb->data[w] |= bb->todo[w];
		populated += gw_bitmap_count(bb->data, bb->pages);
		pthread_mutex_unlock(&b->lock);
		memset(bb->todo, 0, gw_bitmap_words(bb->pages) * sizeof(uint64_t));
	}
	pthread_mutex_lock(&b->lock);
	b->pending = populated;
	pthread_mutex_unlock(&b->lock);
	pthread_mutex_lock(&b->h.job.lock);
	b->h.stats.remaining = populated * PAGE;
	pthread_mutex_unlock(&b->h.job.lock);
	return ret;
}

static int snapshot(struct background *b, struct gw_error *err)
{
	struct gw_migration *m = b->m;
	struct gw_precopy_params pp;
	uint32_t hdr_flags = 0;
	bool update;
	int ret;

	gw_job_set_status(&b->h.job, GW_MIG_SETUP);
	gw_outgoing_params(&b->h, &pp);
	ret = gw_writer_new(b->h.job.cancel.fd, &b->w, err);
	if (ret == 0) {
		gw_writer_bind(b->w, b->h.job.cancel.efd);
		ret = gw_outgoing_open_sink(m, b->ch.fd, b->w, &pp, &b->h.job.cancel, NULL, 0,
					    &b->stream_sink, &b->sink, &hdr_flags, &update, err);
	}
	if (ret == 0 && !b->sink->ops->put)
		ret = gw_error_set(err, -EOPNOTSUPP, "the RAM sink cannot write from threads");
	if (ret == 0)
		ret = gw_save_begin_flags(m, b->w, hdr_flags | GW_HDRF_SNAPSHOT, err);
	if (ret == 0)
		ret = arm(b, err);
	if (ret == 0 && gw_cancel_requested(&b->h.job.cancel))
		ret = cancelled(err);
	pthread_mutex_lock(&b->h.job.lock);
	b->h.stats.setup_time_ms = (gw_now_ns() - b->h.job.start_ns) / 1000000;
	pthread_mutex_unlock(&b->h.job.lock);
	if (ret < 0)
		return gw_error_prefix(err, ret, "setup: ");
	ret = capture(b, err);
	if (ret < 0)
		return gw_error_prefix(err, ret, "at the snapshot's instant: ");
	uint64_t t0 = gw_now_ns(), x0 = gw_sink_taken(b->sink);
	gw_ratelimit_init(&b->rl, t0);
	gw_job_set_status(&b->h.job, GW_MIG_ACTIVE);
	ret = save_ram(b, err);
	if (ret == 0) {
		uint64_t dt = gw_now_ns() - t0;
		pthread_mutex_lock(&b->h.job.lock);
		b->h.stats.mbps = (double)(gw_sink_taken(b->sink) - x0) * 8e3 /
				  (double)(dt ? dt : 1);
		pthread_mutex_unlock(&b->h.job.lock);
	}
	/* Every page is saved: nothing may stay protected while the file is
	 * synced. */
	if (ret == 0)
		ret = disarm(b, err);
	if (ret == 0)
		ret = gw_save_finish(m, b->w, err);
	if (ret == 0)
		ret = gw_sink_finish(b->sink, err);
	if (ret < 0)
		return gw_error_prefix(err, ret, "saving RAM: ");
	return 0;
}

static int background_run(struct gw_job *j, struct gw_error *err)
{
	return snapshot(j->engine, err);
}

static enum gw_mig_status background_conclude(struct gw_job *j, int ret, struct gw_error *err)
{
	struct background *b = j->engine;
	struct gw_migration *m = b->m;
	enum gw_mig_status outcome;
	struct gw_error e2 = {0};
	uint64_t faults, max_wait;

	if (disarm(b, &e2) < 0 && ret == 0) {
		*err = e2;
		ret = e2.code;
	} else if (e2.code) {
		gw_error_append(err, "and un-protecting guest RAM failed", e2.msg);
	}
	if (b->paused) {
		if (m->vm_ops.resume(m->vm_opaque, &e2) < 0) {
			gw_error_append(err, "and the guest cannot be resumed", e2.msg);
			ret = ret < 0 ? ret : -EIO;
		}
		b->paused = false;
	}
	pthread_mutex_lock(&b->lock);
	faults = b->faults;
	max_wait = b->max_wait_ns;
	pthread_mutex_unlock(&b->lock);
	pthread_mutex_lock(&j->lock);
	if (b->sink)
		b->h.stats.transferred = gw_sink_sent(b->sink);
	b->h.stats.remaining = ret == 0 ? 0 : b->h.stats.remaining;
	b->h.stats.wp_faults = faults;
	b->h.stats.wp_max_wait_us = max_wait / 1000;
	pthread_mutex_unlock(&j->lock);
	/* A file sink lets go of its fds before the channel closes. */
	if (b->sink && b->sink != &b->stream_sink.sink)
		gw_sink_release(b->sink);
	b->sink = NULL;
	gw_writer_free(b->w);
	b->w = NULL;
	if (ret < 0) {
		gw_error_prefix(err, ret, "%s: background snapshot: ", b->ch.desc);
		gw_cancel_shutdown(&j->cancel);
	}
	ret = gw_outgoing_end_channel(&b->h, &b->ch, false, ret, err);
	if (ret == 0)
		outcome = GW_MIG_COMPLETED;
	else
		outcome = gw_job_cancelled(j) ? GW_MIG_CANCELLED : GW_MIG_FAILED;
	return outcome;
}

static const struct gw_job_ops background_ops = {
	.run = background_run,
	.conclude = background_conclude,
};

static void background_release(struct gw_precopy *h)
{
	struct background *b = (struct background *)h;

	for (uint32_t i = 0; b->blocks && i < b->m->nr_ram; i++) {
		free(b->blocks[i].todo);
		free(b->blocks[i].busy);
		free(b->blocks[i].wait_ns);
		free(b->blocks[i].early);
		free(b->blocks[i].data);
	}
	free(b->blocks);
	free(b->slot_mem);
	if (b->quit_efd >= 0)
		close(b->quit_efd);
	pthread_cond_destroy(&b->cond);
	pthread_mutex_destroy(&b->lock);
	free(b);
}

int gw_background_start(struct gw_migration *m, struct gw_channel *ch,
			const struct gw_precopy_params *params,
			const struct gw_precopy_callbacks *cb, struct gw_precopy **out,
			struct gw_error *err)
{
	struct background *b;
	int ret;

	if (params->incremental)
		return gw_error_set(err, -EINVAL,
				    "background snapshot: an incremental save needs dirty tracking between saves, which a background snapshot does not run; turn x-godwit-incremental off");
	b = calloc(1, sizeof(*b));
	if (!b)
		return gw_error_set(err, -ENOMEM, "background snapshot: out of memory");
	b->h.release = background_release;
	b->h.params = *params;
	b->m = m;
	if (cb)
		b->cb = *cb;
	b->ch = *ch;
	b->wp.fd = -1;
	pthread_mutex_init(&b->lock, NULL);
	pthread_cond_init(&b->cond, NULL);
	b->quit_efd = eventfd(0, EFD_CLOEXEC);
	b->blocks = calloc(m->nr_ram + 1, sizeof(*b->blocks));
	b->slot_mem = aligned_alloc(PAGE, (size_t)SLOTS * COPY_PAGES * PAGE);
	ret = b->quit_efd >= 0 && b->blocks && b->slot_mem ? 0 : -ENOMEM;
	for (uint32_t i = 0; ret == 0 && i < m->nr_ram; i++) {
		struct bblock *bb = &b->blocks[i];

		bb->pages = m->ram[i].size / PAGE;
		bb->chunks = (bb->pages + CHUNK_PAGES - 1) / CHUNK_PAGES;
		bb->todo = calloc(gw_bitmap_words(bb->pages), sizeof(uint64_t));
		bb->busy = calloc(gw_bitmap_words(bb->chunks), sizeof(uint64_t));
		bb->wait_ns = calloc(bb->chunks, sizeof(uint64_t));
		bb->early = calloc(gw_bitmap_words(bb->pages), sizeof(uint64_t));
		bb->data = calloc(gw_bitmap_words(bb->pages), sizeof(uint64_t));
		if (!bb->todo || !bb->busy || !bb->wait_ns || !bb->early || !bb->data)
			ret = -ENOMEM;
	}
	if (ret < 0) {
		background_release(&b->h);
		return gw_error_set(err, ret, "background snapshot: out of memory");
	}
	for (uint32_t s = 0; s < SLOTS; s++) {
		b->slots[s].data = b->slot_mem + (size_t)s * COPY_PAGES * PAGE;
		b->free_slots[s] = s;
	}
	b->nr_free = SLOTS;
	return gw_outgoing_launch(&b->h, m, &background_ops, b, "gw-snapshot", cb, ch, out,
				  "background snapshot: ", err);
}
