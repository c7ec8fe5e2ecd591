/*
 * The userfaultfd page server (lib/ram/page_server.c) inside one process:
 * a memfd "guest RAM" that threads touch from user mode while the
 * background fills it from an in-memory source that counts every page it
 * is asked for. Each test runs in both fill modes (MINOR + UFFDIO_CONTINUE
 * and MISSING + UFFDIO_COPY) and asserts outcomes only: what every page
 * holds, how often the source was read for it, what the waits return.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "lib/ram/page_server.h"

#define PAGE 4096ull
#define PAGES 2048ull
/* Upper bound for any wait: only a hang reaches it. */
#define WAIT_MAX_NS (60ull * 1000000000ull)

struct source {
	uint32_t reads[PAGES]; /* atomic: times each page was read */
	uint64_t present[PAGES / 64];
	uint64_t bad_page; /* a page whose read fails after writing garbage; or PAGES */
	/* race test: the first background run waits until a fault waits on
	 * it and another fault was served */
	bool gate;
	uint64_t gate_first;       /* atomic: its first page + 1, once known */
	struct gw_page_server *ps; /* atomic: for the gate */
};

static struct source src;

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Page p's content in the source: its number in every word. */
static uint64_t word_of(uint64_t p)
{
	return 0x5a5a000000000000ull | (p + 1);
}

static bool is_present(uint64_t p)
{
	return src.present[p / 64] >> (p % 64) & 1;
}

static int src_read(void *opaque, uint32_t block, uint64_t first, uint64_t n, bool urgent,
		    void *dst, struct gw_error *err)
{
	(void)opaque;
	CHECK(block == 0);
	/* A fault asks for its one page; the background for runs. */
	CHECK(!urgent || n == 1);
	if (src.gate && n > 1 && !__atomic_load_n(&src.gate_first, __ATOMIC_ACQUIRE)) {
		struct gw_page_server *ps;
		struct gw_ps_stats st = {0};
		uint64_t t0 = now_ns();

		__atomic_store_n(&src.gate_first, first + 1, __ATOMIC_RELEASE);
		/* Until a fault on this run is known to wait for it, and a fault
		 * elsewhere was served meanwhile. */
		while (st.waited == 0 || st.faulted == 0) {
			CHECK(now_ns() - t0 < WAIT_MAX_NS);
			if ((ps = __atomic_load_n(&src.ps, __ATOMIC_ACQUIRE)))
				gw_page_server_stats(ps, &st);
			usleep(1000);
		}
	}
	for (uint64_t i = 0; i < n; i++) {
		uint64_t p = first + i, *w = (uint64_t *)((unsigned char *)dst + i * PAGE);

		CHECK(p < PAGES && is_present(p));
		__atomic_add_fetch(&src.reads[p], 1, __ATOMIC_RELAXED);
		for (uint64_t k = 0; k < PAGE / 8; k++)
			w[k] = p == src.bad_page ? 0xbadbadbadbadbadull : word_of(p);
		if (p == src.bad_page)
			return gw_error_set(err, -EBADMSG, "the page at 0x%llx is corrupted",
					    (unsigned long long)(p * PAGE));
	}
	return 0;
}

struct ram {
	int fd;
	unsigned char *host;
};

static struct ram ram_new(void)
{
	struct ram r;

	r.fd = memfd_create("ps-test", MFD_CLOEXEC);
	CHECK(r.fd >= 0 && ftruncate(r.fd, (off_t)(PAGES * PAGE)) == 0);
	r.host = mmap(NULL, PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, r.fd, 0);
	CHECK(r.host != MAP_FAILED);
	return r;
}

static void ram_free(struct ram *r)
{
	munmap(r->host, PAGES * PAGE);
	close(r->fd);
}

/* Every third page in 8 missing, the rest present. */
static void source_reset(void)
{
	memset(&src, 0, sizeof(src));
	for (uint64_t p = 0; p < PAGES; p++)
		if (p % 8 != 3)
			src.present[p / 64] |= 1ull << (p % 64);
	src.bad_page = PAGES;
}

static struct gw_page_server *start(struct ram *r, enum gw_ps_mode mode, uint64_t rate,
				    uint64_t run_pages)
{
	const struct gw_ps_block b = {"ram-test", r->host, PAGES * PAGE, r->fd, 0, src.present};
	const struct gw_ps_params params = {.mode = mode, .rate = rate, .run_pages = run_pages};
	const struct gw_page_source s = {src_read, NULL};
	struct gw_page_server *ps = NULL;
	struct gw_error err = {0};

	CHECK_OK(gw_page_server_start(&b, 1, &params, &s, &ps, &err), &err);
	__atomic_store_n(&src.ps, ps, __ATOMIC_RELEASE);
	return ps;
}

/* What a guest must see in page p (through the registered mapping). */
static void check_page(const unsigned char *host, uint64_t p)
{
	const uint64_t *w = (const uint64_t *)(host + p * PAGE);
	uint64_t want = is_present(p) ? word_of(p) : 0;

	for (uint64_t k = 0; k < PAGE / 8; k++)
		if (w[k] != want)
			FAIL("page %llu word %llu: 0x%llx, expected 0x%llx", (unsigned long long)p,
			     (unsigned long long)k, (unsigned long long)w[k],
			     (unsigned long long)want);
}

struct toucher {
	unsigned char *host;
	unsigned seed;
	pid_t tid;
};

/* Touch every page once, in a shuffled order, and check each. */
static void *touch_all(void *opaque)
{
	struct toucher *t = opaque;
	static uint64_t order[2][PAGES];
	uint64_t *o = order[t->seed & 1];

	t->tid = gettid();
	for (uint64_t p = 0; p < PAGES; p++)
		o[p] = p;
	for (uint64_t p = PAGES - 1; p > 0; p--) {
		uint64_t q = (uint64_t)rand_r(&t->seed) % (p + 1), x = o[p];

		o[p] = o[q];
		o[q] = x;
	}
	for (uint64_t i = 0; i < PAGES; i++)
		check_page(t->host, o[i]);
	return NULL;
}

static void check_exactly_once(void)
{
	for (uint64_t p = 0; p < PAGES; p++)
		if (src.reads[p] != (is_present(p) ? 1u : 0u))
			FAIL("page %llu read %u times from the source", (unsigned long long)p,
			     src.reads[p]);
}

/* Two threads fault all over while a slow background fills: every page
 * right, every present page read once, the counts add up. */
static void test_faults_and_background(enum gw_ps_mode mode)
{
	struct ram r = ram_new();
	struct gw_error err = {0};
	struct gw_ps_stats st;
	uint64_t present = 0;
	struct gw_page_server *ps;
	pthread_t th[2];
	struct toucher t[2] = {{r.host, 1}, {r.host, 2}};

	source_reset();
	/* 4 MiB/s in 64 KiB runs: the background is still at it while the
	 * threads fault, and ends by itself within two seconds. */
	ps = start(&r, mode, 4ull << 20, 16);
	for (int i = 0; i < 2; i++)
		CHECK(pthread_create(&th[i], NULL, touch_all, &t[i]) == 0);
	for (int i = 0; i < 2; i++)
		pthread_join(th[i], NULL);
	CHECK_OK(gw_page_server_wait(ps, -1, -1, &err), &err);
	gw_page_server_stats(ps, &st);
	for (uint64_t p = 0; p < PAGES; p++)
		present += is_present(p);
	CHECK(st.remaining == 0);
	CHECK(st.faulted > 0);
	/* Zero pages are faulted, never read; present ones by either. */
	CHECK(st.faulted + st.background == present);
	CHECK(st.zero == PAGES - present); /* the threads touched them all */
	CHECK(st.faults >= st.faulted + st.zero && st.fault_max_ns > 0 &&
	      st.fault_ns >= st.fault_max_ns);
	check_exactly_once();
	/* Each thread's faults, by the thread id the kernel gave. */
	{
		struct gw_ps_thread_stats th_st[GW_PS_THREADS_MAX];
		unsigned n = gw_page_server_thread_stats(ps, th_st), seen = 0;
		uint64_t sum = 0;

		for (unsigned i = 0; i < n; i++) {
			sum += th_st[i].faults;
			for (int k = 0; k < 2; k++)
				if (th_st[i].tid == t[k].tid && th_st[i].faults > 0 &&
				    th_st[i].fault_ns >= th_st[i].fault_max_ns)
					seen++;
		}
		CHECK(seen == 2 && sum == st.faults);
	}
	gw_page_server_free(ps);
	/* After the unregister: the memory is just memory, and right. */
	for (uint64_t p = 0; p < PAGES; p++)
		check_page(r.host, p);
	ram_free(&r);
	printf("ok faults and background (%s): %llu faulted, %llu background\n",
	       mode == GW_PS_MINOR ? "minor" : "missing", (unsigned long long)st.faulted,
	       (unsigned long long)st.background);
}

/* Nothing touches: the background alone fills everything, once. */
static void test_background_alone(enum gw_ps_mode mode)
{
	struct ram r = ram_new();
	struct gw_error err = {0};
	struct gw_ps_stats st;
	struct gw_page_server *ps;

	source_reset();
	ps = start(&r, mode, 0, 0);
	CHECK_OK(gw_page_server_wait(ps, -1, -1, &err), &err);
	gw_page_server_stats(ps, &st);
	CHECK(st.faulted == 0 && st.zero == 0 && st.remaining == 0);
	check_exactly_once();
	gw_page_server_free(ps);
	for (uint64_t p = 0; p < PAGES; p++)
		check_page(r.host, p);
	ram_free(&r);
	printf("ok background alone (%s)\n", mode == GW_PS_MINOR ? "minor" : "missing");
}

struct one_touch {
	unsigned char *host;
	uint64_t page;
	uint64_t word; /* what the toucher read */
};

static void *touch_one(void *opaque)
{
	struct one_touch *o = opaque;

	o->word = __atomic_load_n((uint64_t *)(o->host + o->page * PAGE), __ATOMIC_RELAXED);
	return NULL;
}

/* A fault on a page of the run the background is filling waits for that
 * fill: it is not filled a second time, and reads the source's data; and
 * the fault thread serves other faults meanwhile (the run's read waits
 * until one was served). */
static void test_fault_races_background(enum gw_ps_mode mode)
{
	struct ram r = ram_new();
	struct gw_error err = {0};
	struct gw_ps_stats st;
	struct gw_page_server *ps;
	struct one_touch o = {r.host, 0, 0};
	pthread_t th;
	uint64_t t0 = now_ns(), first, far;

	source_reset();
	src.gate = true;
	ps = start(&r, mode, 0, 64);
	while (!(first = __atomic_load_n(&src.gate_first, __ATOMIC_ACQUIRE))) {
		CHECK(now_ns() - t0 < WAIT_MAX_NS);
		usleep(1000);
	}
	o.page = first; /* gate_first is the first page + 1: the run's second page */
	CHECK(is_present(o.page));
	CHECK(pthread_create(&th, NULL, touch_one, &o) == 0);
	do {
		CHECK(now_ns() - t0 < WAIT_MAX_NS);
		usleep(1000);
		gw_page_server_stats(ps, &st);
	} while (st.waited == 0);
	far = PAGES - 2;
	CHECK(is_present(far) && far > o.page + 64);
	check_page(r.host, far);
	pthread_join(th, NULL);
	CHECK(o.word == word_of(o.page));
	CHECK_OK(gw_page_server_wait(ps, -1, -1, &err), &err);
	gw_page_server_stats(ps, &st);
	CHECK(st.waited >= 1 && st.faulted >= 1);
	/* Both faults counted: the far one at once, the other when its run
	 * was in. */
	CHECK(st.faults >= 2);
	check_exactly_once();
	gw_page_server_free(ps);
	ram_free(&r);
	printf("ok fault races background (%s)\n", mode == GW_PS_MINOR ? "minor" : "missing");
}

/*
 * A page whose read fails (after writing garbage where it was to land)
 * is never mapped: the wait says which page, a thread that touched it
 * waits until the server is freed and then reads zeros, never the bytes.
 */
static void test_bad_page(enum gw_ps_mode mode, bool far)
{
	struct ram r = ram_new();
	struct gw_error err = {0};
	struct gw_page_server *ps;
	struct one_touch o = {r.host, 0, 0};
	pthread_t th;
	uint64_t word = 1;
	char where[32];

	source_reset();
	src.bad_page = far ? 1234 : 1;
	CHECK(is_present(src.bad_page));
	/* Far: a background too slow to reach the page before the fault. */
	ps = start(&r, mode, far ? 4096 : 0, 1);
	o.page = src.bad_page;
	CHECK(pthread_create(&th, NULL, touch_one, &o) == 0);
	snprintf(where, sizeof(where), "0x%llx", (unsigned long long)(src.bad_page * PAGE));
	CHECK_ERR(gw_page_server_wait(ps, -1, -1, &err), -EBADMSG, &err, where);
	/* The bytes never reached the memfd: it reads zero there. */
	CHECK(pread(r.fd, &word, sizeof(word), (off_t)(src.bad_page * PAGE)) == sizeof(word));
	CHECK(word == 0);
	gw_page_server_free(ps);
	pthread_join(th, NULL);
	CHECK(o.word == 0);
	ram_free(&r);
	printf("ok bad page %s (%s)\n", far ? "far from the background" : "in its first run",
	       mode == GW_PS_MINOR ? "minor" : "missing");
}

/* Post-copy's start: the destination already holds some pages the source
 * lacks (sent in pre-copy rounds), the rest of those are holes. */
static uint64_t old_word_of(uint64_t p)
{
	return 0x01d0000000000000ull | (p + 1);
}

static bool was_valid(uint64_t p)
{
	return !is_present(p) && p % 16 == 3;
}

/*
 * valid_outside: a page outside the set is mapped as the memfd holds it,
 * never zero-filled over; a hole there reads as zeros; the set's pages
 * come from the source once. Every page is touched, by two threads.
 */
static void test_valid_outside(enum gw_ps_mode mode)
{
	struct ram r = ram_new();
	struct gw_error err = {0};
	struct gw_ps_stats st;
	struct gw_page_server *ps;
	uint64_t valid = 0, holes = 0;
	struct gw_ps_block b;
	const struct gw_ps_params params = {.mode = mode, .rate = 4ull << 20, .run_pages = 16};
	const struct gw_page_source s = {src_read, NULL};

	source_reset();
	for (uint64_t p = 0; p < PAGES; p++) {
		uint64_t *w = (uint64_t *)(r.host + p * PAGE);

		if (!was_valid(p)) {
			holes += !is_present(p);
			continue;
		}
		valid++;
		for (uint64_t k = 0; k < PAGE / 8; k++)
			w[k] = old_word_of(p);
	}
	/* The memfd keeps them; the guest mapping must fault to see them. */
	CHECK(madvise(r.host, PAGES * PAGE, MADV_DONTNEED) == 0);
	b = (struct gw_ps_block){"ram-test", r.host, PAGES * PAGE, r.fd, 0, src.present, true};
	CHECK_OK(gw_page_server_start(&b, 1, &params, &s, &ps, &err), &err);
	for (uint64_t p = 0; p < PAGES; p++) {
		const uint64_t *w = (const uint64_t *)(r.host + (p * 7 % PAGES) * PAGE);
		uint64_t q = p * 7 % PAGES;
		uint64_t want = is_present(q) ? word_of(q) : was_valid(q) ? old_word_of(q) : 0;

		for (uint64_t k = 0; k < PAGE / 8; k += 97)
			if (w[k] != want)
				FAIL("page %llu word %llu: 0x%llx, expected 0x%llx",
				     (unsigned long long)q, (unsigned long long)k,
				     (unsigned long long)w[k], (unsigned long long)want);
	}
	CHECK_OK(gw_page_server_wait(ps, -1, -1, &err), &err);
	gw_page_server_stats(ps, &st);
	/* MINOR: a page the memfd holds faults minor and is kept; MISSING:
	 * it does not fault at all. Holes fault missing either way. */
	CHECK(st.kept == (mode == GW_PS_MINOR ? valid : 0));
	CHECK(st.zero == holes);
	check_exactly_once();
	gw_page_server_free(ps);
	ram_free(&r);
	printf("ok valid outside the set (%s): %llu kept, %llu zero\n",
	       mode == GW_PS_MINOR ? "minor" : "missing", (unsigned long long)st.kept,
	       (unsigned long long)st.zero);
}

/* A wait ends when its cancel eventfd fires, with pages still missing. */
static void test_cancel(enum gw_ps_mode mode)
{
	struct ram r = ram_new();
	struct gw_error err = {0};
	struct gw_page_server *ps;
	int efd = eventfd(0, EFD_CLOEXEC);
	uint64_t one = 1;

	source_reset();
	ps = start(&r, mode, 4096, 1); /* one page a second: far from done */
	CHECK(write(efd, &one, sizeof(one)) == sizeof(one));
	CHECK_ERR(gw_page_server_wait(ps, efd, -1, &err), -ECANCELED, &err, "cancelled");
	gw_page_server_free(ps);
	close(efd);
	ram_free(&r);
	printf("ok cancel (%s)\n", mode == GW_PS_MINOR ? "minor" : "missing");
}

int main(void)
{
	static const enum gw_ps_mode modes[] = {GW_PS_MINOR, GW_PS_MISSING};

	for (size_t i = 0; i < 2; i++) {
		test_background_alone(modes[i]);
		test_faults_and_background(modes[i]);
		test_fault_races_background(modes[i]);
		test_bad_page(modes[i], true);
		test_bad_page(modes[i], false);
		test_cancel(modes[i]);
		test_valid_outside(modes[i]);
	}
	return 0;
}
