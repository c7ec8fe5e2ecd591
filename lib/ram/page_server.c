/*
 * The userfaultfd page server (page_server.h).
 *
 * Who fills a page is decided by one compare-and-swap of its state from
 * EMPTY to FILLING: the fault thread for the page a fault names, the
 * background for each page of its run. Neither ever fills a page it did
 * not win, so each page is read from the source and mapped once. The
 * background maps a run only after the whole run is in and checked; a
 * fault on one of its pages is left to wait in the kernel, which wakes it
 * when the run is mapped, while the fault thread serves the next faults
 * (its latency is counted then, by the background). Only past WAITS_MAX
 * such faults at once does the fault thread wait itself, on the condition
 * variable the fills signal, which also ends on a failure or a stop, so
 * no wait outlives the server.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "lib/bitmap.h"
#include "lib/clock.h"
#include "lib/compat/uapi.h"
#include "lib/internal.h"
#include "lib/ram/page_server.h"
#include "lib/ram/wp.h"
#include "lib/ratelimit.h"
#include "lib/transport/pio.h"

#define PAGE ((uint64_t)GW_PAGE_SIZE)
/* 2 MiB: one read of that size runs at the disk's speed, and a fault that
 * lands in a run being filled waits for at most that much. */
#define RUN_PAGES_DEFAULT 512
/* Fault messages taken per read(): several vCPUs may fault at once. */
#define MSGS_PER_READ 16
/* The background's longest sleep before it looks at its rate again. */
#define PACE_MAX_SLEEP_MS 50
/* Faults on pages of background runs being read, counted when the run is
 * in: one per thread that can fault is plenty. */
#define WAITS_MAX 64

enum { EMPTY, FILLING, DONE };

struct wait {
	const struct ps_block *b;
	uint64_t page;
	uint64_t t0; /* when the fault was read */
	int32_t tid; /* who faulted */
};

struct ps_block {
	struct gw_ps_block b;
	uint8_t *state; /* per page, atomic */
	uint64_t pages;
	bool registered;
};

struct gw_page_server {
	int uffd;
	struct gw_ps_params params;
	struct gw_page_source src;
	struct ps_block *blocks;
	uint32_t nr;
	uint64_t nr_present;
	void *page_buf; /* the fault thread's page */
	void *run_buf;  /* the background's run */
	int stop_efd;   /* readable: both threads end */
	int done_efd;   /* readable: every page is in, or a fill failed */
	pthread_t fault_thread, bg_thread;
	bool fault_live, bg_live;

	pthread_mutex_t lock; /* the three below; cond: a fill ended */
	pthread_cond_t cond;
	bool stopping;
	bool failed;
	struct gw_error error; /* the first failure */
	struct wait waits[WAITS_MAX];
	uint32_t nr_waits;

	pthread_mutex_t threads_lock; /* the two below */
	struct gw_ps_thread_stats threads[GW_PS_THREADS_MAX];
	unsigned nr_threads;

	/* atomic */
	uint64_t filled; /* pages the source has, filled */
	struct gw_ps_stats st;
};

static void add(uint64_t *v, uint64_t n)
{
	__atomic_add_fetch(v, n, __ATOMIC_RELAXED);
}

static bool claim(struct ps_block *b, uint64_t page)
{
	uint8_t want = EMPTY;

	return __atomic_compare_exchange_n(&b->state[page], &want, FILLING, false, __ATOMIC_ACQ_REL,
					   __ATOMIC_ACQUIRE);
}

static bool has(const struct ps_block *b, uint64_t page)
{
	return b->b.present[page / 64] >> (page % 64) & 1;
}

static void signal_efd(int efd)
{
	uint64_t one = 1;

	while (write(efd, &one, sizeof(one)) < 0 && errno == EINTR)
		;
}

static void fail(struct gw_page_server *ps, const struct gw_error *e)
{
	pthread_mutex_lock(&ps->lock);
	if (!ps->failed) {
		ps->error = *e;
		ps->failed = true;
		signal_efd(ps->done_efd);
	}
	pthread_cond_broadcast(&ps->cond);
	pthread_mutex_unlock(&ps->lock);
}

static void note_thread(struct gw_page_server *ps, int32_t tid, uint64_t ns)
{
	unsigned i = 0;

	pthread_mutex_lock(&ps->threads_lock);
	while (i < ps->nr_threads && ps->threads[i].tid != tid)
		i++;
	if (i == ps->nr_threads && i < GW_PS_THREADS_MAX)
		ps->threads[ps->nr_threads++] = (struct gw_ps_thread_stats){.tid = tid};
	if (i < ps->nr_threads) {
		ps->threads[i].faults++;
		ps->threads[i].fault_ns += ns;
		if (ns > ps->threads[i].fault_max_ns)
			ps->threads[i].fault_max_ns = ns;
	}
	pthread_mutex_unlock(&ps->threads_lock);
}

static void note_latency(struct gw_page_server *ps, int32_t tid, uint64_t t0, uint64_t now)
{
	uint64_t ns = now - t0, max = __atomic_load_n(&ps->st.fault_max_ns, __ATOMIC_RELAXED);

	add(&ps->st.faults, 1);
	add(&ps->st.fault_ns, ns);
	while (ns > max && !__atomic_compare_exchange_n(&ps->st.fault_max_ns, &max, ns, false,
							__ATOMIC_RELAXED, __ATOMIC_RELAXED))
		;
	note_thread(ps, tid, ns);
}

/* Pages [first, first + n) are mapped: publish them, count the faults
 * that waited for them, wake the fault thread if it waits itself. */
static void done(struct gw_page_server *ps, struct ps_block *b, uint64_t first, uint64_t n,
		 uint64_t *counter)
{
	uint64_t present = 0;

	for (uint64_t p = first; p < first + n; p++) {
		__atomic_store_n(&b->state[p], DONE, __ATOMIC_RELEASE);
		present += has(b, p);
	}
	add(counter, n);
	pthread_mutex_lock(&ps->lock);
	if (present && __atomic_add_fetch(&ps->filled, present, __ATOMIC_RELAXED) == ps->nr_present)
		signal_efd(ps->done_efd);
	for (uint32_t i = 0; i < ps->nr_waits;) {
		const struct wait *w = &ps->waits[i];

		if (w->b == b && w->page >= first && w->page < first + n) {
			note_latency(ps, w->tid, w->t0, gw_now_ns());
			ps->waits[i] = ps->waits[--ps->nr_waits];
		} else {
			i++;
		}
	}
	pthread_cond_broadcast(&ps->cond);
	pthread_mutex_unlock(&ps->lock);
}

/* Drop what a failed fill left in the page cache (MINOR): the pages stay
 * holes, so nothing can ever map them. */
static void drop(struct gw_page_server *ps, struct ps_block *b, uint64_t first, uint64_t n)
{
	if (ps->params.mode == GW_PS_MINOR)
		fallocate(b->b.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
			  (off_t)(b->b.fd_offset + first * PAGE), (off_t)(n * PAGE));
}

/*
 * MINOR: checked pages into the memfd's page cache, outside the
 * registered mapping, for UFFDIO_CONTINUE to map. A write(2) rather than
 * a copy through a second mapping: a page a mapping touches first is
 * cleared by the kernel before the copy overwrites it, which a write of
 * whole pages skips (bench/lazy.py measured the mapping at 0.6-0.8 GB/s,
 * the write at 1.1 GB/s, as fast as UFFDIO_COPY).
 */
static int put_in_cache(struct ps_block *b, uint64_t first, uint64_t n, const void *buf,
			struct gw_error *err)
{
	uint64_t at = b->b.fd_offset + first * PAGE;
	int ret = gw_pwrite_full(b->b.fd, buf, n * PAGE, at, NULL);

	if (ret < 0)
		return gw_error_set(err, ret,
				    "page server, RAM block '%s': writing 0x%llx bytes at 0x%llx into its memfd: %s",
				    b->b.name, (unsigned long long)(n * PAGE),
				    (unsigned long long)(first * PAGE), gw_strerror(-ret));
	return 0;
}

/* One userfaultfd ioctl over [first, first + n), resumed where the kernel
 * stopped when it says EAGAIN (the address space changed under it). */
static int map_range(struct gw_page_server *ps, struct ps_block *b, uint64_t first, uint64_t n,
		     const void *from, struct gw_error *err)
{
	uint64_t at = (uint64_t)(uintptr_t)(b->b.host + first * PAGE), len = n * PAGE, did = 0;
	const char *what = "mapping";

	while (did < len) {
		int64_t got;
		int ret;

		if (ps->params.mode == GW_PS_MINOR) {
			struct uffdio_continue c = {.range = {at + did, len - did}};

			ret = ioctl(ps->uffd, UFFDIO_CONTINUE, &c);
			got = c.mapped;
			what = "UFFDIO_CONTINUE";
		} else if (from) {
			struct uffdio_copy c = {
				.dst = at + did,
				.src = (uint64_t)(uintptr_t)from + did,
				.len = len - did,
			};

			ret = ioctl(ps->uffd, UFFDIO_COPY, &c);
			got = c.copy;
			what = "UFFDIO_COPY";
		} else {
			struct uffdio_zeropage z = {.range = {at + did, len - did}};

			ret = ioctl(ps->uffd, UFFDIO_ZEROPAGE, &z);
			got = z.zeropage;
			what = "UFFDIO_ZEROPAGE";
		}
		if (ret == 0)
			return 0;
		if (got > 0)
			did += (uint64_t)got;
		if (errno != EAGAIN && errno != EINTR)
			return gw_error_set(err, -errno,
					    "page server, RAM block '%s': %s of 0x%llx bytes at 0x%llx: %s",
					    b->b.name, what, (unsigned long long)(len - did),
					    (unsigned long long)(first * PAGE + did),
					    gw_strerror(errno));
	}
	return 0;
}

/*
 * Fill [first, first + n), pages this thread won: from the source (all of
 * them present) through buf, checked, or zeros; then map them.
 */
static int fill(struct gw_page_server *ps, uint32_t bi, uint64_t first, uint64_t n, bool zero,
		void *buf, struct gw_error *err)
{
	struct ps_block *b = &ps->blocks[bi];
	bool minor = ps->params.mode == GW_PS_MINOR;
	int ret = 0;

	if (zero && minor) {
		/* A zeroed page in the page cache, for UFFDIO_CONTINUE. */
		if (fallocate(b->b.fd, 0, (off_t)(b->b.fd_offset + first * PAGE),
			      (off_t)(n * PAGE)) < 0)
			ret = gw_error_set(err, -errno,
					   "page server, RAM block '%s': allocating the zero page at 0x%llx: %s",
					   b->b.name, (unsigned long long)(first * PAGE),
					   gw_strerror(errno));
	} else if (!zero) {
		/* The fault thread fills through page_buf, the background
		 * through run_buf: a fault's read goes first at the source. */
		ret = ps->src.read(ps->src.opaque, bi, first, n, buf == ps->page_buf, buf, err);
		if (ret == 0 && minor)
			ret = put_in_cache(b, first, n, buf, err);
	}
	if (ret == 0)
		ret = map_range(ps, b, first, n, zero ? NULL : buf, err);
	if (ret < 0)
		drop(ps, b, first, n);
	return ret;
}

static struct ps_block *find(struct gw_page_server *ps, uint64_t addr, uint64_t *page)
{
	for (uint32_t i = 0; i < ps->nr; i++) {
		struct ps_block *b = &ps->blocks[i];
		uint64_t base = (uint64_t)(uintptr_t)b->b.host;

		if (addr >= base && addr - base < b->b.size) {
			*page = (addr - base) / PAGE;
			return b;
		}
	}
	return NULL;
}

/*
 * The background is filling the page. Leave the fault to its run (done()
 * counts it), or, with WAITS_MAX such faults already, wait until the page
 * is in. True if it is in now; false if it is left, or never comes (a
 * failure or a stop).
 */
static bool await_fill(struct gw_page_server *ps, struct ps_block *b, uint64_t page, int32_t tid,
		       uint64_t t0)
{
	bool in;

	pthread_mutex_lock(&ps->lock);
	/* done() stores DONE before it takes the lock to look at the waits:
	 * seen FILLING here, its look comes after this wait is listed. */
	in = __atomic_load_n(&b->state[page], __ATOMIC_ACQUIRE) == DONE;
	if (!in && ps->nr_waits < WAITS_MAX) {
		ps->waits[ps->nr_waits++] = (struct wait){b, page, t0, tid};
		pthread_mutex_unlock(&ps->lock);
		return false;
	}
	while (!(in = __atomic_load_n(&b->state[page], __ATOMIC_ACQUIRE) == DONE) && !ps->failed &&
	       !ps->stopping)
		pthread_cond_wait(&ps->cond, &ps->lock);
	pthread_mutex_unlock(&ps->lock);
	return in;
}

/*
 * A page the source lacks, in a block whose other pages are valid: a
 * minor fault says the memfd holds it, so it is mapped as it is (a zero
 * fill would lose it); a missing fault says it is a hole, i.e. zeros.
 */
static int keep_or_zero(struct gw_page_server *ps, struct ps_block *b, uint64_t page, bool minor,
			uint64_t **counter, struct gw_error *err)
{
	if (minor) {
		*counter = &ps->st.kept;
		return map_range(ps, b, page, 1, NULL, err);
	}
	*counter = &ps->st.zero;
	return fill(ps, (uint32_t)(b - ps->blocks), page, 1, true, ps->page_buf, err);
}

/* One fault: fill its page if nobody does, else wait for whoever does. */
static void serve(struct gw_page_server *ps, uint64_t addr, bool minor, int32_t tid, uint64_t t0)
{
	struct gw_error e = {0};
	uint64_t page;
	struct ps_block *b = find(ps, addr, &page);
	struct uffdio_range r = {addr & ~(PAGE - 1), PAGE};

	if (!b)
		return; /* not ours: cannot happen for registered ranges */
	if (claim(b, page)) {
		uint64_t *counter = has(b, page) ? &ps->st.faulted : &ps->st.zero;
		int ret = !has(b, page) && b->b.valid_outside ?
				  keep_or_zero(ps, b, page, minor, &counter, &e) :
				  fill(ps, (uint32_t)(b - ps->blocks), page, 1, !has(b, page),
				       ps->page_buf, &e);

		if (ret < 0) {
			fail(ps, &e);
			return;
		}
		done(ps, b, page, 1, counter);
	} else if (__atomic_load_n(&b->state[page], __ATOMIC_ACQUIRE) == FILLING) {
		add(&ps->st.waited, 1);
		if (!await_fill(ps, b, page, tid, t0))
			return;
	} else {
		/*
		 * In already. Mapped between the fault and now (the mapping
		 * woke whoever waited then; this wakes one that queued just
		 * after), or its page table entry went since (a swapped-out
		 * shmem page comes back as a minor fault): map it again.
		 */
		struct uffdio_continue c = {.range = r};

		if (ps->params.mode != GW_PS_MINOR || ioctl(ps->uffd, UFFDIO_CONTINUE, &c) < 0)
			ioctl(ps->uffd, UFFDIO_WAKE, &r);
	}
	note_latency(ps, tid, t0, gw_now_ns());
}

static void *fault_thread(void *opaque)
{
	struct gw_page_server *ps = opaque;
	struct pollfd p[2] = {{.fd = ps->uffd, .events = POLLIN},
			      {.fd = ps->stop_efd, .events = POLLIN}};
	struct uffd_msg msgs[MSGS_PER_READ];

	pthread_setname_np(pthread_self(), "gw-page-fault");
	for (;;) {
		ssize_t got;
		uint64_t t0;

		if (poll(p, 2, -1) < 0 && errno != EINTR)
			break;
		if (p[1].revents)
			break;
		got = read(ps->uffd, msgs, sizeof(msgs));
		t0 = gw_now_ns();
		for (ssize_t i = 0; got > 0 && i < got / (ssize_t)sizeof(msgs[0]); i++)
			if (msgs[i].event == UFFD_EVENT_PAGEFAULT)
				serve(ps, msgs[i].arg.pagefault.address,
				      msgs[i].arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_MINOR,
				      (int32_t)msgs[i].arg.pagefault.feat.ptid, t0);
	}
	return NULL;
}

static bool stopping(struct gw_page_server *ps)
{
	bool s;

	pthread_mutex_lock(&ps->lock);
	s = ps->stopping || ps->failed;
	pthread_mutex_unlock(&ps->lock);
	return s;
}

/* Keep to the rate; false if the server stops meanwhile. The rate may
 * change while it sleeps: it looks again every PACE_MAX_SLEEP_MS. */
static bool pace(struct gw_page_server *ps, struct gw_ratelimit *rl, uint64_t bytes)
{
	uint64_t ns;

	gw_ratelimit_spend(rl, bytes);
	while ((ns = gw_ratelimit_delay_ns(rl, __atomic_load_n(&ps->params.rate, __ATOMIC_RELAXED),
					   gw_now_ns())) > 0) {
		struct pollfd p = {.fd = ps->stop_efd, .events = POLLIN};
		uint64_t ms = ns / 1000000 + 1;

		if (poll(&p, 1, ms < PACE_MAX_SLEEP_MS ? (int)ms : PACE_MAX_SLEEP_MS) > 0)
			return false;
	}
	return true;
}

void gw_page_server_set_rate(struct gw_page_server *ps, uint64_t rate)
{
	__atomic_store_n(&ps->params.rate, rate, __ATOMIC_RELAXED);
}

/* Pages [s, t) of block bi, all present: fill the ones still empty, in
 * runs of the pages won in a row. */
static int sweep_run(struct gw_page_server *ps, uint32_t bi, uint64_t s, uint64_t t,
		     struct gw_ratelimit *rl, struct gw_error *err)
{
	struct ps_block *b = &ps->blocks[bi];

	while (s < t) {
		uint64_t e = s;

		while (e < t && claim(b, e))
			e++;
		if (e > s) {
			int ret = fill(ps, bi, s, e - s, false, ps->run_buf, err);

			if (ret < 0)
				return ret;
			done(ps, b, s, e - s, &ps->st.background);
			if (!pace(ps, rl, (e - s) * PAGE))
				return 0;
		}
		s = e + 1; /* e is someone else's (or t) */
	}
	return 0;
}

static void *background_thread(void *opaque)
{
	struct gw_page_server *ps = opaque;
	uint64_t run = ps->params.run_pages;
	struct gw_ratelimit rl;
	struct gw_error e = {0};

	pthread_setname_np(pthread_self(), "gw-page-fill");
	gw_ratelimit_init(&rl, gw_now_ns());
	for (uint32_t bi = 0; bi < ps->nr; bi++) {
		struct ps_block *b = &ps->blocks[bi];

		for (uint64_t p = 0; p < b->pages && !stopping(ps);) {
			uint64_t s = gw_bitmap_next_set(b->b.present, b->pages, p);
			uint64_t t = gw_bitmap_next_clear(b->b.present, b->pages, s);

			for (uint64_t q = s; q < t && !stopping(ps); q += run) {
				if (sweep_run(ps, bi, q, q + run < t ? q + run : t, &rl, &e) < 0) {
					fail(ps, &e);
					return NULL;
				}
			}
			p = t;
		}
	}
	/* What is left is being filled by the fault thread: done() says when. */
	return NULL;
}

int gw_page_server_wait(struct gw_page_server *ps, int cancel_efd, int wake_efd,
			struct gw_error *err)
{
	struct pollfd p[3] = {{.fd = ps->done_efd, .events = POLLIN},
			      {.fd = cancel_efd, .events = POLLIN},
			      {.fd = wake_efd, .events = POLLIN}};
	int ret = 0;

	while (poll(p, 3, -1) < 0)
		if (errno != EINTR)
			return gw_error_set(err, -errno, "page server: poll: %s",
					    gw_strerror(errno));
	if (!p[0].revents && !p[1].revents && p[2].revents)
		return 1;
	pthread_mutex_lock(&ps->lock);
	if (ps->failed) {
		*err = ps->error;
		ret = ps->error.code ? ps->error.code : -EIO;
	} else if (__atomic_load_n(&ps->filled, __ATOMIC_RELAXED) < ps->nr_present) {
		ret = gw_error_set(err, -ECANCELED, "cancelled while pages were still arriving");
	}
	pthread_mutex_unlock(&ps->lock);
	return ret;
}

void gw_page_server_stats(struct gw_page_server *ps, struct gw_ps_stats *out)
{
	out->faulted = __atomic_load_n(&ps->st.faulted, __ATOMIC_RELAXED);
	out->zero = __atomic_load_n(&ps->st.zero, __ATOMIC_RELAXED);
	out->background = __atomic_load_n(&ps->st.background, __ATOMIC_RELAXED);
	out->waited = __atomic_load_n(&ps->st.waited, __ATOMIC_RELAXED);
	out->faults = __atomic_load_n(&ps->st.faults, __ATOMIC_RELAXED);
	out->fault_ns = __atomic_load_n(&ps->st.fault_ns, __ATOMIC_RELAXED);
	out->kept = __atomic_load_n(&ps->st.kept, __ATOMIC_RELAXED);
	out->fault_max_ns = __atomic_load_n(&ps->st.fault_max_ns, __ATOMIC_RELAXED);
	out->remaining = ps->nr_present - __atomic_load_n(&ps->filled, __ATOMIC_RELAXED);
}

unsigned gw_page_server_thread_stats(struct gw_page_server *ps,
				     struct gw_ps_thread_stats out[GW_PS_THREADS_MAX])
{
	unsigned n;

	pthread_mutex_lock(&ps->threads_lock);
	n = ps->nr_threads;
	memcpy(out, ps->threads, n * sizeof(*out));
	pthread_mutex_unlock(&ps->threads_lock);
	return n;
}

static int open_uffd(struct gw_page_server *ps, struct gw_error *err)
{
	/* THREAD_ID: faults counted per faulting thread (a vCPU's). */
	uint64_t want = UFFD_FEATURE_MISSING_SHMEM | UFFD_FEATURE_THREAD_ID |
			(ps->params.mode == GW_PS_MINOR ? UFFD_FEATURE_MINOR_SHMEM : 0);
	struct uffdio_api api = {.api = UFFD_API, .features = want};

	ps->uffd = gw_uffd_new(err);
	if (ps->uffd < 0)
		return ps->uffd;
	if (ioctl(ps->uffd, UFFDIO_API, &api) < 0)
		return gw_error_set(err, errno == EINVAL ? -EOPNOTSUPP : -errno,
				    "userfaultfd: this kernel cannot serve %s faults on shared memory (features 0x%llx): %s",
				    ps->params.mode == GW_PS_MINOR ? "minor" : "missing-page",
				    (unsigned long long)want, gw_strerror(errno));
	return 0;
}

static int setup_block(struct gw_page_server *ps, struct ps_block *b, struct gw_error *err)
{
	bool minor = ps->params.mode == GW_PS_MINOR;
	struct uffdio_register r = {
		.range = {(uint64_t)(uintptr_t)b->b.host, b->b.size},
		.mode = UFFDIO_REGISTER_MODE_MISSING | (minor ? UFFDIO_REGISTER_MODE_MINOR : 0),
	};
	uint64_t need = minor ? 1ull << _UFFDIO_CONTINUE :
				(1ull << _UFFDIO_COPY) | (1ull << _UFFDIO_ZEROPAGE);

	b->pages = b->b.size / PAGE;
	b->state = calloc(b->pages, 1);
	if (!b->state)
		return gw_error_set(err, -ENOMEM, "page server: out of memory for block '%s'",
				    b->b.name);
	if (ioctl(ps->uffd, UFFDIO_REGISTER, &r) < 0)
		return gw_error_set(err, -errno,
				    "userfaultfd: cannot register RAM block '%s' (%p, 0x%llx bytes) for %s faults: %s",
				    b->b.name, b->b.host, (unsigned long long)b->b.size,
				    minor ? "minor" : "missing-page", gw_strerror(errno));
	b->registered = true;
	if ((r.ioctls & need) != need)
		return gw_error_set(err, -EOPNOTSUPP,
				    "userfaultfd: RAM block '%s' cannot be filled with %s (it must be a MAP_SHARED memfd mapping)",
				    b->b.name, minor ? "UFFDIO_CONTINUE" : "UFFDIO_COPY");
	for (uint64_t w = 0; w < (b->pages + 63) / 64; w++)
		ps->nr_present += (uint64_t)__builtin_popcountll(b->b.present[w]);
	return 0;
}

static int setup(struct gw_page_server *ps, const struct gw_ps_block *blocks, struct gw_error *err)
{
	int ret = open_uffd(ps, err);

	for (uint32_t i = 0; ret == 0 && i < ps->nr; i++) {
		if (blocks[i].size % PAGE || (ps->params.mode == GW_PS_MINOR && blocks[i].fd < 0))
			return gw_error_set(err, -EINVAL,
					    "page server: RAM block '%s' is not whole pages of a memfd",
					    blocks[i].name);
		ps->blocks[i].b = blocks[i];
		ret = setup_block(ps, &ps->blocks[i], err);
	}
	if (ret < 0)
		return ret;
	ps->page_buf = aligned_alloc(PAGE, PAGE);
	ps->run_buf = aligned_alloc(PAGE, ps->params.run_pages * PAGE);
	if (!ps->page_buf || !ps->run_buf)
		return gw_error_set(err, -ENOMEM, "page server: out of memory for buffers");
	ps->stop_efd = eventfd(0, EFD_CLOEXEC);
	ps->done_efd = eventfd(0, EFD_CLOEXEC);
	if (ps->stop_efd < 0 || ps->done_efd < 0)
		return gw_error_set(err, -errno, "page server: eventfd: %s", gw_strerror(errno));
	if (ps->nr_present == 0)
		signal_efd(ps->done_efd);
	if ((ret = pthread_create(&ps->fault_thread, NULL, fault_thread, ps)) != 0)
		return gw_error_set(err, -ret, "page server: starting the fault thread: %s",
				    gw_strerror(ret));
	ps->fault_live = true;
	if ((ret = pthread_create(&ps->bg_thread, NULL, background_thread, ps)) != 0)
		return gw_error_set(err, -ret, "page server: starting the background thread: %s",
				    gw_strerror(ret));
	ps->bg_live = true;
	return 0;
}

int gw_page_server_start(const struct gw_ps_block *blocks, uint32_t n,
			 const struct gw_ps_params *params, const struct gw_page_source *src,
			 struct gw_page_server **out, struct gw_error *err)
{
	struct gw_page_server *ps = calloc(1, sizeof(*ps));
	int ret;

	if (!ps)
		return gw_error_set(err, -ENOMEM, "page server: out of memory");
	ps->uffd = ps->stop_efd = ps->done_efd = -1;
	ps->params = *params;
	if (!ps->params.run_pages)
		ps->params.run_pages = RUN_PAGES_DEFAULT;
	ps->src = *src;
	ps->nr = n;
	pthread_mutex_init(&ps->lock, NULL);
	pthread_mutex_init(&ps->threads_lock, NULL);
	pthread_cond_init(&ps->cond, NULL);
	ps->blocks = calloc(n ? n : 1, sizeof(*ps->blocks));
	ret = ps->blocks ? setup(ps, blocks, err) :
			   gw_error_set(err, -ENOMEM, "page server: out of memory");
	if (ret < 0) {
		gw_page_server_free(ps);
		return ret;
	}
	*out = ps;
	return 0;
}

void gw_page_server_free(struct gw_page_server *ps)
{
	if (!ps)
		return;
	pthread_mutex_lock(&ps->lock);
	ps->stopping = true;
	pthread_cond_broadcast(&ps->cond);
	pthread_mutex_unlock(&ps->lock);
	if (ps->stop_efd >= 0)
		signal_efd(ps->stop_efd);
	if (ps->bg_live)
		pthread_join(ps->bg_thread, NULL);
	if (ps->fault_live)
		pthread_join(ps->fault_thread, NULL);
	for (uint32_t i = 0; ps->blocks && i < ps->nr; i++) {
		struct ps_block *b = &ps->blocks[i];
		struct uffdio_range r = {(uint64_t)(uintptr_t)b->b.host, b->b.size};

		/* Unregistering wakes every waiter on the range. */
		if (b->registered)
			ioctl(ps->uffd, UFFDIO_UNREGISTER, &r);
		free(b->state);
	}
	free(ps->blocks);
	if (ps->uffd >= 0)
		close(ps->uffd);
	if (ps->stop_efd >= 0)
		close(ps->stop_efd);
	if (ps->done_efd >= 0)
		close(ps->done_efd);
	free(ps->page_buf);
	free(ps->run_buf);
	pthread_cond_destroy(&ps->cond);
	pthread_mutex_destroy(&ps->threads_lock);
	pthread_mutex_destroy(&ps->lock);
	free(ps);
}
