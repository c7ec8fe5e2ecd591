/*
 * Post-copy's fetch path inside one process (lib/ram/postcopy_fetch.c
 * under lib/ram/page_server.c): a "source" thread at the other end of a
 * socketpair answers the REQUESTs it reads on the return path with
 * RAM_PAGES records, as docs/format.md "Post-copy" says, from its own
 * copy of the RAM; the destination's memfd holds the pages outside the
 * fetch set already (valid_outside) and holes where the set is. Threads
 * touch every page while the background pulls the rest. Then the lies:
 * a page that fails its hash, other pages than those asked for, a source
 * that dies half-way: each fails the wait with the reason, and no page
 * of the set is mapped with bytes that did not check out.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <godwit/io.h>

#include "check.h"
#include "lib/crc32c.h"
#include "lib/engine/postcopy_serve.h"
#include "lib/format/postcopy.h"
#include "lib/internal.h"
#include "lib/ram/page_server.h"
#include "lib/ram/postcopy_fetch.h"
#include "lib/transport/return_path.h"

#define PAGE 4096ull
#define PAGES 2048ull
#define STREAM_ID 3 /* the block's index in CONFIG: not the page server's 0 */

enum lie { HONEST, BAD_HASH, OTHER_PAGES, DIES };

struct source {
	int fd;
	enum lie lie;
	uint64_t lie_page;      /* the page the lie is about (or after which it dies) */
	unsigned char *ram;     /* the source's copy */
	void *extra[STREAM_ID]; /* the blocks before it */
	bool serve;             /* answer with gw_postcopy_serve() */
	int serve_ret;
	bool dest_failed;
	struct gw_pc_serve_stats stats;
	uint32_t reads[PAGES]; /* times each page was sent */
	struct gw_error error; /* why it stopped */
};

static uint64_t stale[PAGES / 64];

static uint64_t word_of(uint64_t p)
{
	return p % 32 == 7 ? 0 : 0x5a5a000000000000ull | (p + 1);
}

static bool is_stale(uint64_t p)
{
	return stale[p / 64] >> (p % 64) & 1;
}

/* A lying answer: a page whose bytes do not match its hash, or the pages
 * from one after the one asked for. */
static int lie(struct source *s, struct gw_writer *w, const struct gw_page_request *rq,
	       struct gw_error *err)
{
	static unsigned char desc[GW_PAGES_DESC_SIZE(GW_PAGES_MAX)];
	static unsigned char data[GW_PAGES_MAX * PAGE];
	uint32_t n = rq->count, d = 0;
	struct iovec iov[2];

	gw_le32(desc, STREAM_ID);
	gw_le32(desc + 4, n);
	gw_le32(desc + 8, 0);
	gw_le32(desc + 12, 0);
	for (uint32_t i = 0; i < n; i++) {
		uint64_t p = rq->first + i +
			     (s->lie == OTHER_PAGES && rq->first + i >= s->lie_page);
		const unsigned char *page = s->ram + p * PAGE;
		bool zero = word_of(p) == 0;

		CHECK(p < PAGES);
		gw_le64(desc + 16 + 8 * i, p * PAGE | (zero ? GW_PAGE_ZERO : 0));
		gw_le64(desc + 16 + 8 * n + 8 * i, zero ? 0 : gw_page_hash(page));
		if (zero)
			continue;
		memcpy(data + d * PAGE, page, PAGE);
		if (s->lie == BAD_HASH && p == s->lie_page)
			data[d * PAGE + 100] ^= 1;
		d++;
	}
	iov[0] = (struct iovec){desc, GW_PAGES_DESC_SIZE(n)};
	iov[1] = (struct iovec){data, d * PAGE};
	return gw_record_writev(w, GW_REC_RAM_PAGES, GW_RECF_DATA_CRC,
				gw_crc32c(0, desc, GW_PAGES_DESC_SIZE(n)), iov, 2, err);
}

/* The source's migration object: three small blocks before the real one,
 * so a block's index in CONFIG is not the page server's. */
static struct gw_migration *source_migration(struct source *s)
{
	static const struct gw_machine machine = {"test", "0", "test-machine", 1};
	static const char *const names[] = {"ram-a", "ram-b", "ram-c"};
	struct gw_migration *m;
	struct gw_error err = {0};

	CHECK_OK(gw_migration_new(&machine, &m, &err), &err);
	for (int i = 0; i < STREAM_ID; i++) {
		void *p = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
			       0);
		const struct gw_ram extra = {names[i], p, PAGE, -1, 0, GW_GPA_NONE};

		CHECK(p != MAP_FAILED);
		s->extra[i] = p;
		CHECK_OK(gw_migration_add_ram(m, &extra, &err), &err);
	}
	const struct gw_ram ram = {"ram-test", s->ram, PAGES * PAGE, -1, 0, GW_GPA_NONE};
	CHECK_OK(gw_migration_add_ram(m, &ram, &err), &err);
	return m;
}

static void *source_thread(void *opaque)
{
	struct source *s = opaque;
	struct gw_migration *m = source_migration(s);
	struct gw_page_request out = {STREAM_ID, 1, PAGES};
	struct gw_cancel c;
	struct gw_writer *w;
	struct gw_error err = {0};

	CHECK_OK(gw_cancel_init(&c, s->fd, &s->error), &s->error);
	CHECK_OK(gw_writer_new(s->fd, &w, &s->error), &s->error);
	/* A request past the block, or of a block past CONFIG's, is refused
	 * before anything is read or written: the writer stays empty. */
	CHECK_ERR(gw_postcopy_answer(m, w, &out, &err), -EBADMSG, &err, "'ram-test', which has");
	out = (struct gw_page_request){STREAM_ID + 1, 1, 0};
	CHECK_ERR(gw_postcopy_answer(m, w, &out, &err), -EBADMSG, &err, "block 4, and there are 4");
	CHECK(gw_writer_offset(w) == 0);
	if (s->serve) {
		uint64_t none[STREAM_ID] = {0}, owed[PAGES / 64];
		uint64_t *const bits[STREAM_ID + 1] = {&none[0], &none[1], &none[2], owed};

		memcpy(owed, stale, sizeof(owed));
		s->serve_ret = gw_postcopy_serve(m, &c, w, bits, 60000, &s->stats, &s->dest_failed,
						 &s->error);
	}
	for (; !s->serve;) {
		struct gw_report r;
		int ret;

		if (gw_report_recv(&c, 60000, "a request", &r, &s->error) < 0)
			break; /* the destination is done, or gone */
		CHECK(r.status == GW_REPORT_REQUEST && r.req.block == STREAM_ID);
		if (s->lie == DIES && r.req.first + r.req.count > s->lie_page)
			break;
		for (uint32_t i = 0; i < r.req.count; i++)
			s->reads[r.req.first + i]++;
		if (s->lie == HONEST || s->lie == DIES)
			ret = gw_postcopy_answer(m, w, &r.req, &s->error);
		else
			ret = lie(s, w, &r.req, &s->error);
		if (ret < 0 || gw_writer_flush(w, &s->error) < 0)
			break;
	}
	gw_writer_free(w);
	gw_cancel_fini(&c);
	gw_migration_free(m);
	for (int i = 0; i < STREAM_ID; i++)
		munmap(s->extra[i], PAGE);
	/* Both directions: the destination must see the end, not wait. */
	shutdown(s->fd, SHUT_RDWR);
	return NULL;
}

struct dest {
	int fd;
	unsigned char *host;
	struct gw_cancel c;
	struct gw_postcopy_fetch *f;
	struct gw_page_server *ps;
};

/* The destination as post-copy leaves it at the switch: pages outside the
 * set hold what pre-copy sent, the set's are holes. */
static void dest_start(struct dest *d, enum gw_ps_mode mode, int fd)
{
	const struct gw_pf_block pf = {"ram-test", STREAM_ID, PAGES * PAGE, stale};
	const struct gw_ps_params params = {.mode = mode, .rate = 4ull << 20, .run_pages = 16};
	struct gw_page_source src;
	struct gw_error err = {0};

	d->fd = memfd_create("pc-test", MFD_CLOEXEC);
	CHECK(d->fd >= 0 && ftruncate(d->fd, (off_t)(PAGES * PAGE)) == 0);
	d->host = mmap(NULL, PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, d->fd, 0);
	CHECK(d->host != MAP_FAILED);
	for (uint64_t p = 0; p < PAGES; p++) {
		/* What a stale page held is garbage now: it must never show. */
		uint64_t v = is_stale(p) ? 0xdeadull : word_of(p);

		for (uint64_t k = 0; k < PAGE / 8 && v; k++)
			((uint64_t *)(d->host + p * PAGE))[k] = v;
	}
	struct gw_ram_block rb = {.name = "ram-test",
				  .host = d->host,
				  .size = PAGES * PAGE,
				  .fd = d->fd};
	CHECK_OK(gw_postcopy_discard(&rb, stale, &err), &err);
	/* MISSING fills holes only (page_server.h): the stale pages go from
	 * the memfd too. MINOR writes over them, as post-copy does. */
	for (uint64_t p = 0; mode == GW_PS_MISSING && p < PAGES; p++)
		if (is_stale(p))
			CHECK(fallocate(d->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
					(off_t)(p * PAGE), PAGE) == 0);
	CHECK(madvise(d->host, PAGES * PAGE, MADV_DONTNEED) == 0);
	CHECK_OK(gw_cancel_init(&d->c, fd, &err), &err);
	CHECK_OK(gw_postcopy_fetch_new(&d->c, 10000, &pf, 1, &d->f, &err), &err);
	src = gw_postcopy_fetch_source(d->f);
	const struct gw_ps_block b = {"ram-test", d->host, PAGES * PAGE, d->fd, 0, stale, true};
	CHECK_OK(gw_page_server_start(&b, 1, &params, &src, &d->ps, &err), &err);
}

static void dest_end(struct dest *d)
{
	struct gw_error why = {0};

	gw_error_set(&why, -ECANCELED, "the test is over");
	gw_postcopy_fetch_abort(d->f, &why);
	gw_page_server_free(d->ps);
	gw_postcopy_fetch_free(d->f);
	gw_cancel_fini(&d->c);
	munmap(d->host, PAGES * PAGE);
	close(d->fd);
}

static void check_page(const unsigned char *host, uint64_t p)
{
	const uint64_t *w = (const uint64_t *)(host + p * PAGE);

	for (uint64_t k = 0; k < PAGE / 8; k++)
		if (w[k] != word_of(p))
			FAIL("page %llu word %llu: 0x%llx, expected 0x%llx", (unsigned long long)p,
			     (unsigned long long)k, (unsigned long long)w[k],
			     (unsigned long long)word_of(p));
}

static void *touch_all(void *opaque)
{
	unsigned char *host = opaque;

	for (uint64_t i = 0; i < PAGES; i++)
		check_page(host, (i * 13 + (uint64_t)(uintptr_t)pthread_self() % 7) % PAGES);
	return NULL;
}

static void setup_source(struct source *s, enum lie lie, uint64_t lie_page, int fd)
{
	memset(s, 0, sizeof(*s));
	s->fd = fd;
	s->lie = lie;
	s->lie_page = lie_page;
	s->ram = mmap(NULL, PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
		      0);
	CHECK(s->ram != MAP_FAILED);
	for (uint64_t p = 0; p < PAGES; p++)
		for (uint64_t k = 0; k < PAGE / 8; k++)
			((uint64_t *)(s->ram + p * PAGE))[k] = word_of(p);
	memset(stale, 0, sizeof(stale));
	/* Every other run of 48 pages was dirtied after its last copy. */
	for (uint64_t p = 0; p < PAGES; p++)
		if (p / 48 % 2 == 0)
			stale[p / 64] |= 1ull << (p % 64);
}

/* The whole fetch: every page right, each page of the set sent once,
 * the requests counted; with serve, the source's own loop answers and
 * returns by itself once the last page of the set has left. */
static void test_fetch(enum gw_ps_mode mode, bool serve)
{
	int sv[2];
	struct source s;
	struct dest d;
	struct gw_error err = {0};
	struct gw_ps_stats st;
	pthread_t src_th, th[2];
	uint64_t nr_stale = 0, kept = 0, holes = 0;

	CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	setup_source(&s, HONEST, 0, sv[1]);
	s.serve = serve;
	CHECK(pthread_create(&src_th, NULL, source_thread, &s) == 0);
	dest_start(&d, mode, sv[0]);
	for (int i = 0; i < 2; i++)
		CHECK(pthread_create(&th[i], NULL, touch_all, d.host) == 0);
	for (int i = 0; i < 2; i++)
		pthread_join(th[i], NULL);
	CHECK_OK(gw_page_server_wait(d.ps, -1, -1, &err), &err);
	gw_page_server_stats(d.ps, &st);
	for (uint64_t p = 0; p < PAGES; p++) {
		nr_stale += is_stale(p);
		/* Counted by the test's loop; serve refuses a page twice itself. */
		if (!serve && s.reads[p] != (is_stale(p) ? 1u : 0u))
			FAIL("page %llu sent %u times", (unsigned long long)p, s.reads[p]);
	}
	CHECK(gw_postcopy_fetch_requested(d.f) == nr_stale);
	CHECK(st.remaining == 0 && st.faulted + st.background == nr_stale);
	CHECK(st.faulted > 0);
	/* Every page is touched: under MINOR each valid page the memfd holds
	 * is mapped as it is, each hole outside the set zero-filled. */
	for (uint64_t p = 0; p < PAGES; p++)
		if (!is_stale(p)) {
			kept += word_of(p) != 0;
			holes += word_of(p) == 0;
		}
	CHECK(st.kept == (mode == GW_PS_MINOR ? kept : 0) && st.zero == holes);
	if (serve) {
		/* Done without the destination closing first. */
		pthread_join(src_th, NULL);
		CHECK_OK(s.serve_ret, &s.error);
		CHECK(s.stats.pages == nr_stale && s.stats.requests > 0);
	}
	dest_end(&d);
	shutdown(sv[0], SHUT_RDWR); /* the source's next read ends */
	if (!serve)
		pthread_join(src_th, NULL);
	close(sv[0]);
	close(sv[1]);
	munmap(s.ram, PAGES * PAGE);
	printf("ok fetch%s (%s): %llu pages of the set, %llu for faults, %llu kept\n",
	       serve ? " served" : "", mode == GW_PS_MINOR ? "minor" : "missing",
	       (unsigned long long)nr_stale, (unsigned long long)st.faulted,
	       (unsigned long long)st.kept);
}

/* Nothing touches the set: the background pulls into the lie and fails. */
static void test_lie(enum gw_ps_mode mode, enum lie lie, uint64_t page, int code, const char *why)
{
	int sv[2];
	struct source s;
	struct dest d;
	struct gw_error err = {0};
	struct gw_ps_stats st;
	pthread_t src_th;

	CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	setup_source(&s, lie, page, sv[1]);
	CHECK(pthread_create(&src_th, NULL, source_thread, &s) == 0);
	dest_start(&d, mode, sv[0]);
	/* The fetch breaks the connection and waits for another. */
	CHECK(gw_page_server_wait(d.ps, -1, gw_postcopy_fetch_break_fd(d.f), &err) == 1);
	struct gw_error broke = {0};
	CHECK(gw_postcopy_fetch_broken(d.f, &broke));
	CHECK_ERR((err = broke).code, code, &err, "post-copy: fetching", why);
	gw_page_server_stats(d.ps, &st);
	CHECK(st.remaining > 0);
	/* What a resume would ask for: part of the set, the page that lied included. */
	uint64_t needed[PAGES / 64];
	uint64_t *const nb[1] = {needed};
	gw_postcopy_fetch_needed(d.f, nb);
	for (uint64_t w = 0; w < PAGES / 64; w++)
		CHECK((needed[w] & ~stale[w]) == 0);
	if (page < PAGES)
		CHECK(needed[page / 64] >> (page % 64) & 1);
	/* The page that lied is not mapped: with the server stopped, the
	 * memfd reads as zeros there, never as the bytes that failed. */
	dest_end(&d);
	shutdown(sv[0], SHUT_RDWR); /* the source's next read ends */
	pthread_join(src_th, NULL);
	close(sv[0]);
	close(sv[1]);
	munmap(s.ram, PAGES * PAGE);
	printf("ok %s refused (%s)\n", why, mode == GW_PS_MINOR ? "minor" : "missing");
}

/*
 * A destination out of step or gone: the source's loop stops with the
 * reason, and sends nothing for the request that broke the rule.
 */
enum dest_lie { ASKS_VALID, ASKS_TWICE, SENDS_FAILED, SENDS_READY, HANGS_UP };

static void test_serve_refuses(enum dest_lie what, int code, const char *why)
{
	struct source s;
	struct gw_migration *m;
	struct gw_cancel c;
	struct gw_writer *w;
	struct gw_error err = {0};
	uint64_t none[STREAM_ID] = {0}, owed[PAGES / 64];
	uint64_t *const bits[STREAM_ID + 1] = {&none[0], &none[1], &none[2], owed};
	struct gw_pc_serve_stats st = {0};
	struct gw_report r = {GW_REPORT_REQUEST, 0, "", {STREAM_ID, 1, 0}};
	uint64_t before;
	int sv[2];

	CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	setup_source(&s, HONEST, 0, sv[1]);
	m = source_migration(&s);
	memcpy(owed, stale, sizeof(owed));
	CHECK_OK(gw_cancel_init(&c, sv[0], &err), &err);
	switch (what) {
	case ASKS_VALID: /* page 48 was valid at the switch */
		r.req.first = 48;
		break;
	case ASKS_TWICE:
		CHECK_OK(gw_report_send(&c, 1000, &r, &err), &err);
		break;
	case SENDS_FAILED:
		r = (struct gw_report){GW_REPORT_FAILED, -EIO, "boom"};
		break;
	case SENDS_READY:
		r = (struct gw_report){GW_REPORT_READY, 0, ""};
		break;
	case HANGS_UP:
		break;
	}
	if (what != HANGS_UP)
		CHECK_OK(gw_report_send(&c, 1000, &r, &err), &err);
	shutdown(sv[0], SHUT_WR);
	gw_cancel_fini(&c);
	CHECK_OK(gw_cancel_init(&c, sv[1], &err), &err);
	CHECK_OK(gw_writer_new(sv[1], &w, &err), &err);
	bool failed = false;
	CHECK_ERR(gw_postcopy_serve(m, &c, w, bits, 10000, &st, &failed, &err), code, &err, why);
	CHECK(failed == (what == SENDS_FAILED));
	before = what == ASKS_TWICE ? 1 : 0;
	CHECK(st.pages == before && st.requests == before);
	gw_writer_free(w);
	gw_cancel_fini(&c);
	gw_migration_free(m);
	for (int i = 0; i < STREAM_ID; i++)
		munmap(s.extra[i], PAGE);
	munmap(s.ram, PAGES * PAGE);
	close(sv[0]);
	close(sv[1]);
	printf("ok serve stops: %s\n", why);
}

int main(void)
{
	static const enum gw_ps_mode modes[] = {GW_PS_MINOR, GW_PS_MISSING};

	for (size_t i = 0; i < 2; i++) {
		test_fetch(modes[i], false);
		test_fetch(modes[i], true);
		test_lie(modes[i], BAD_HASH, 200, -EBADMSG, "does not match its hash");
		test_lie(modes[i], OTHER_PAGES, 100, -EBADMSG, "the one asked for");
		test_lie(modes[i], DIES, 500, -EPIPE, "truncated stream");
	}
	test_serve_refuses(ASKS_VALID, -EBADMSG, "which it has already");
	test_serve_refuses(ASKS_TWICE, -EBADMSG, "which it has already");
	test_serve_refuses(SENDS_FAILED, -EIO, "the destination failed: boom");
	test_serve_refuses(SENDS_READY, -EBADMSG, "sent READY where only page requests belong");
	test_serve_refuses(HANGS_UP, -EPIPE, "closed the connection");
	return 0;
}
