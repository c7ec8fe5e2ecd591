/*
 * RAM pages: what gw_save_pages() refuses, zero pages on the destination
 * (a hole punched in the memfd, or cleared memory without one), pages that
 * do not match their hash (torn while sent, or damaged), and a large
 * machine's RAM moved through a socket by two threads, page data going
 * straight from source memory to destination memory.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "lib/format/torn.h"
#include "testvm.h"

static const struct gw_machine mc = { "godwit-test", "1", "ram-test", 1 };

struct machine {
	struct gw_migration *m;
	unsigned char *host;
	uint64_t size;
	int fd;
};

static void machine_init(struct machine *mm, uint64_t size, bool with_fd)
{
	struct gw_error err = { 0 };
	struct gw_ram ram;

	mm->size = size;
	mm->fd = -1;
	if (with_fd) {
		mm->fd = memfd_create("ram", MFD_CLOEXEC);
		CHECK(mm->fd >= 0 && ftruncate(mm->fd, size) == 0);
		mm->host = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, mm->fd, 0);
	} else {
		mm->host = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	}
	CHECK(mm->host != MAP_FAILED);
	ram = (struct gw_ram){ "ram", mm->host, size, mm->fd, 0, 0 };
	CHECK_OK(gw_migration_new(&mc, &mm->m, &err), &err);
	CHECK_OK(gw_migration_add_ram(mm->m, &ram, &err), &err);
}

static void machine_free(struct machine *mm)
{
	gw_migration_free(mm->m);
	munmap(mm->host, mm->size);
	if (mm->fd >= 0)
		close(mm->fd);
}

static void test_is_zero(void)
{
	static unsigned char page[GW_PAGE_SIZE] __attribute__((aligned(64)));

	CHECK(gw_page_is_zero(page));
	page[GW_PAGE_SIZE - 1] = 1;
	CHECK(!gw_page_is_zero(page));
	page[GW_PAGE_SIZE - 1] = 0;
	page[0] = 0x80;
	CHECK(!gw_page_is_zero(page));
	page[0] = 0;
	page[2048] = 3;
	CHECK(!gw_page_is_zero(page));
}

static void test_save_refuses(void)
{
	struct machine mm;
	struct gw_error err = { 0 };
	struct gw_writer *w;
	uint64_t e[GW_PAGES_MAX + 1];
	int fd = test_memfd(NULL, 0);

	machine_init(&mm, 16 * GW_PAGE_SIZE, true);
	for (uint32_t i = 0; i <= GW_PAGES_MAX; i++)
		e[i] = (uint64_t)i * GW_PAGE_SIZE;
	CHECK_OK(gw_writer_new(fd, &w, &err), &err);
	CHECK_ERR(gw_save_pages(mm.m, w, 0, e, 1, 0, &err), -EINVAL, &err,
		  "no stream begun (call gw_save_begin first)");
	CHECK_OK(gw_save_begin(mm.m, w, &err), &err);
	uint64_t before = gw_writer_offset(w);
	CHECK_ERR(gw_save_pages(mm.m, w, 1, e, 1, 0, &err), -EINVAL, &err,
		  "no RAM block 1 (1 registered)");
	CHECK_ERR(gw_save_pages(mm.m, w, 0, e, 0, 0, &err), -EINVAL, &err,
		  "RAM block 'ram': 0 pages, not 1..1024");
	CHECK_ERR(gw_save_pages(mm.m, w, 0, e, GW_PAGES_MAX + 1, 0, &err), -EINVAL, &err,
		  "1025 pages");
	CHECK_ERR(gw_save_pages(mm.m, w, 0, e, 1, 0x8, &err), -EINVAL, &err, "unknown flags 0x8");
	CHECK_ERR(gw_save_pages(mm.m, w, 0, e, 17, 0, &err), -EINVAL, &err,
		  "page offset 0x10000 is beyond its size 0x10000");
	uint64_t unordered[] = { 2 * GW_PAGE_SIZE, GW_PAGE_SIZE };
	CHECK_ERR(gw_save_pages(mm.m, w, 0, unordered, 2, 0, &err), -EINVAL, &err,
		  "RAM block 'ram': gw_save_pages: entry 1 (offset 0x1000) does not follow entry 0 (offset 0x2000)");
	uint64_t twice[] = { GW_PAGE_SIZE, GW_PAGE_SIZE | GW_PAGE_ZERO };
	CHECK_ERR(gw_save_pages(mm.m, w, 0, twice, 2, 0, &err), -EINVAL, &err, "increasing order");
	uint64_t flagged[] = { GW_PAGE_SIZE | 0x2 };
	CHECK_ERR(gw_save_pages(mm.m, w, 0, flagged, 1, 0, &err), -EINVAL, &err,
		  "entry 0 has unknown page flags 0x2");
	/* Nothing refused reached the stream. */
	CHECK(gw_writer_offset(w) == before);
	CHECK_OK(gw_save_pages(mm.m, w, 0, e, 16, 0, &err), &err);
	gw_writer_free(w);
	close(fd);
	machine_free(&mm);
}

static uint64_t allocated(int fd)
{
	struct stat st;

	CHECK(fstat(fd, &st) == 0);
	return (uint64_t)st.st_blocks * 512;
}

/* ZERO entries clear destination pages without writing data: a hole with a memfd. */
static void test_zero_pages(bool with_fd)
{
	struct machine src, dst;
	struct gw_error err = { 0 };
	struct gw_writer *w;
	struct test_buf s;
	uint64_t e[8];
	int fd = test_memfd(NULL, 0);

	machine_init(&src, 8 * GW_PAGE_SIZE, true);
	machine_init(&dst, 8 * GW_PAGE_SIZE, with_fd);
	memset(dst.host, 0x77, 8 * GW_PAGE_SIZE);
	memset(src.host, 0x11, 8 * GW_PAGE_SIZE);
	for (int i = 0; i < 8; i++)
		e[i] = (uint64_t)i * GW_PAGE_SIZE | (i == 0 || i == 3 ? 0 : GW_PAGE_ZERO);
	CHECK_OK(gw_writer_new(fd, &w, &err), &err);
	CHECK_OK(gw_save_begin(src.m, w, &err), &err);
	CHECK_OK(gw_save_pages(src.m, w, 0, e, 8, 0, &err), &err);
	CHECK_OK(gw_save_devices(src.m, w, &err), &err);
	CHECK_OK(gw_save_finish(src.m, w, &err), &err);
	gw_writer_free(w);
	test_slurp(fd, &s);
	if (with_fd)
		CHECK(allocated(dst.fd) == 8 * GW_PAGE_SIZE);
	CHECK_OK(test_load(dst.m, s.p, s.len, &err), &err);
	/* The zero pages are holes now: the memory went back to the system. (Check
	 * before reading them: a read fault on a shared memfd hole allocates.) */
	if (with_fd)
		CHECK(allocated(dst.fd) == 2 * GW_PAGE_SIZE);
	for (int i = 0; i < 8; i++) {
		if (i == 0 || i == 3)
			CHECK(memcmp(dst.host + i * GW_PAGE_SIZE, src.host, GW_PAGE_SIZE) == 0);
		else
			CHECK(gw_page_is_zero(dst.host + i * GW_PAGE_SIZE));
	}
	free(s.p);
	close(fd);
	machine_free(&src);
	machine_free(&dst);
}

/* The page hash on the wire is the one docs/format.md gives for this page. */
static void test_page_hash(void)
{
	struct machine mm;
	struct gw_error err = { 0 };
	struct gw_writer *w;
	struct test_buf s;
	uint64_t e[2] = { 0, GW_PAGE_SIZE | GW_PAGE_ZERO }, at, hash[2];
	int fd = test_memfd(NULL, 0);

	machine_init(&mm, 2 * GW_PAGE_SIZE, true);
	for (unsigned i = 0; i < GW_PAGE_SIZE; i++)
		mm.host[i] = (unsigned char)i;
	CHECK_OK(gw_writer_new(fd, &w, &err), &err);
	CHECK_OK(gw_save_begin(mm.m, w, &err), &err);
	at = gw_writer_offset(w);
	CHECK_OK(gw_save_pages(mm.m, w, 0, e, 2, 0, &err), &err);
	CHECK_OK(gw_writer_flush(w, &err), &err);
	gw_writer_free(w);
	test_slurp(fd, &s);
	memcpy(hash, s.p + at + GW_RECORD_HEADER_SIZE + 16 + 2 * 8, sizeof(hash));
	CHECK(hash[0] == 0xEB4B7C3707879151ull && hash[1] == 0);
	free(s.p);
	close(fd);
	machine_free(&mm);
}

/*
 * Torn pages. A stream is built record by record; tear() then rewrites the
 * data of one page in a record already written, which is what the receiver
 * sees when the guest writes a page between its hash and its copy into the
 * socket (or when the transport damages it).
 */
struct torn_stream {
	struct machine src;
	struct gw_writer *w;
	int fd;
	struct test_buf s;
};

static void torn_begin(struct torn_stream *t, uint64_t pages)
{
	struct gw_error err = { 0 };

	machine_init(&t->src, pages * GW_PAGE_SIZE, true);
	for (uint64_t i = 0; i < pages; i++)
		memset(t->src.host + i * GW_PAGE_SIZE, 0x10 + i % 128, GW_PAGE_SIZE);
	t->fd = test_memfd(NULL, 0);
	CHECK_OK(gw_writer_new(t->fd, &t->w, &err), &err);
	CHECK_OK(gw_save_begin(t->src.m, t->w, &err), &err);
}

/* Pages [first, first + n) in one record; returns its stream offset. */
static uint64_t torn_send(struct torn_stream *t, uint64_t first, uint32_t n, unsigned flags)
{
	struct gw_error err = { 0 };
	uint64_t e[GW_PAGES_MAX], at = gw_writer_offset(t->w);

	for (uint32_t i = 0; i < n; i++) {
		uint64_t off = (first + i) * GW_PAGE_SIZE;

		e[i] = off | (gw_page_is_zero(t->src.host + off) ? GW_PAGE_ZERO : 0);
	}
	CHECK_OK(gw_save_pages(t->src.m, t->w, 0, e, n, flags, &err), &err);
	return at;
}

static void torn_end(struct torn_stream *t)
{
	struct gw_error err = { 0 };

	CHECK_OK(gw_save_devices(t->src.m, t->w, &err), &err);
	CHECK_OK(gw_save_finish(t->src.m, t->w, &err), &err);
	gw_writer_free(t->w);
	test_slurp(t->fd, &t->s);
	close(t->fd);
}

/* The data of page i of the record at rec (n pages, all with data) arrives as p. */
static void tear(struct torn_stream *t, uint64_t rec, uint32_t n, uint32_t i, const void *p)
{
	memcpy(t->s.p + rec + GW_RECORD_HEADER_SIZE + GW_PAGES_DESC_SIZE(n) +
	       (uint64_t)i * GW_PAGE_SIZE, p, GW_PAGE_SIZE);
}

static void torn_free(struct torn_stream *t)
{
	free(t->s.p);
	machine_free(&t->src);
}

static int torn_load(struct torn_stream *t, struct machine *dst, size_t len, struct gw_error *err)
{
	machine_init(dst, t->src.size, true);
	return test_load(dst->m, t->s.p, len, err);
}

static void test_torn_pages(void)
{
	unsigned char guest_wrote[GW_PAGE_SIZE];
	struct gw_error err = { 0 };
	struct torn_stream t;
	struct machine dst;
	char want[160];
	uint64_t r1, r2, r3;

	memset(guest_wrote, 0xb3, sizeof(guest_wrote)); /* unlike any page of torn_begin() */

	/* The guest writes page 3 while it is sent: the data that arrives is the
	 * new one, the hash the old one. The page is dirty, so the final pass
	 * sends it again with the guest paused, and that copy wins. */
	torn_begin(&t, 8);
	r1 = torn_send(&t, 0, 8, 0);
	memcpy(t.src.host + 3 * GW_PAGE_SIZE, guest_wrote, GW_PAGE_SIZE);
	torn_send(&t, 3, 1, GW_SAVE_DATA_CRC);
	torn_end(&t);
	tear(&t, r1, 8, 3, guest_wrote);
	CHECK_OK(torn_load(&t, &dst, t.s.len, &err), &err);
	CHECK(memcmp(dst.host, t.src.host, t.src.size) == 0);
	machine_free(&dst);
	torn_free(&t);

	/* Damaged and never sent again: refused at EOF, naming page and record. */
	torn_begin(&t, 8);
	r1 = torn_send(&t, 0, 8, 0);
	torn_end(&t);
	tear(&t, r1, 8, 3, guest_wrote);
	snprintf(want, sizeof(want),
		 "page 0x3000 of RAM block 'ram' arrived damaged (checksum mismatch in the RAM_PAGES record at stream offset %llu) and was never sent again",
		 (unsigned long long)r1);
	CHECK_ERR(torn_load(&t, &dst, t.s.len, &err), -EBADMSG, &err, want);
	CHECK(!strstr(err.msg, "in all"));
	machine_free(&dst);
	torn_free(&t);

	/* Only the last copy counts: torn, whole again, torn again in r3. Two
	 * pages end torn; the message names the earlier damage. */
	torn_begin(&t, 8);
	r1 = torn_send(&t, 0, 8, 0);
	r2 = torn_send(&t, 2, 4, 0);
	r3 = torn_send(&t, 5, 1, 0);
	torn_end(&t);
	tear(&t, r1, 8, 3, guest_wrote);
	tear(&t, r1, 8, 5, guest_wrote);
	tear(&t, r2, 4, 0, guest_wrote);
	tear(&t, r3, 1, 0, guest_wrote);
	snprintf(want, sizeof(want), "page 0x2000 of RAM block 'ram' arrived damaged (checksum mismatch in the RAM_PAGES record at stream offset %llu)",
		 (unsigned long long)r2);
	CHECK_ERR(torn_load(&t, &dst, t.s.len, &err), -EBADMSG, &err, want, "(2 pages in all)");
	machine_free(&dst);
	torn_free(&t);

	/* A torn page that the guest then zeroes is sent as ZERO: whole. */
	torn_begin(&t, 8);
	r1 = torn_send(&t, 0, 8, 0);
	memset(t.src.host + 3 * GW_PAGE_SIZE, 0, GW_PAGE_SIZE);
	torn_send(&t, 3, 1, 0);
	torn_end(&t);
	tear(&t, r1, 8, 3, guest_wrote);
	CHECK_OK(torn_load(&t, &dst, t.s.len, &err), &err);
	CHECK(memcmp(dst.host, t.src.host, t.src.size) == 0);
	machine_free(&dst);
	torn_free(&t);

	/* With DATA_CRC the pages could not change while sent: a mismatch fails
	 * at that record, before anything after it is read. */
	torn_begin(&t, 8);
	r1 = torn_send(&t, 0, 8, GW_SAVE_DATA_CRC);
	r2 = torn_send(&t, 5, 1, 0);
	torn_end(&t);
	tear(&t, r1, 8, 5, guest_wrote);
	snprintf(want, sizeof(want), "RAM_PAGES record at offset %llu, RAM block 'ram': page 0x5000 is corrupted (page hash 0x",
		 (unsigned long long)r1);
	CHECK_ERR(torn_load(&t, &dst, r2, &err), -EBADMSG, &err, want,
		  "the record's pages could not change while sent");
	machine_free(&dst);
	torn_free(&t);

	/* More pages torn at once than there are notes: every page is still
	 * tracked, and one torn without a note is named without its record.
	 * The first GW_TORN_NOTES pages have notes, and settle. */
	torn_begin(&t, 2 * GW_TORN_NOTES);
	r1 = torn_send(&t, 0, 2 * GW_TORN_NOTES, 0);
	torn_send(&t, 0, GW_TORN_NOTES, 0);
	torn_end(&t);
	for (uint32_t i = 0; i < 2 * GW_TORN_NOTES; i++)
		tear(&t, r1, 2 * GW_TORN_NOTES, i, guest_wrote);
	snprintf(want, sizeof(want), "page 0x%x of RAM block 'ram' arrived damaged (checksum mismatch in a RAM_PAGES record before the EOF at stream offset %llu)",
		 GW_TORN_NOTES * GW_PAGE_SIZE, (unsigned long long)(t.s.len - GW_RECORD_HEADER_SIZE));
	CHECK_ERR(torn_load(&t, &dst, t.s.len, &err), -EBADMSG, &err, want, "(256 pages in all)");
	machine_free(&dst);
	torn_free(&t);
}

/*
 * Records of fresh pages, of pages loaded before and of both, pages zeroed
 * and written again, into a block with a writable and with a read-only fd
 * (zero pages cannot be punched out of that one): every way must end with
 * the source's bytes.
 */
static void test_load_paths(void)
{
	struct gw_error err = { 0 };
	struct torn_stream t;
	struct machine dst;

	torn_begin(&t, 300);
	torn_send(&t, 0, 100, 0);     /* fresh */
	torn_send(&t, 50, 100, 0);    /* half loaded, half fresh */
	torn_send(&t, 10, 20, 0);     /* loaded */
	memset(t.src.host + 12 * GW_PAGE_SIZE, 0, GW_PAGE_SIZE);
	torn_send(&t, 12, 1, 0);      /* zero: punched out */
	memset(t.src.host + 12 * GW_PAGE_SIZE, 0x77, GW_PAGE_SIZE);
	torn_send(&t, 11, 3, GW_SAVE_DATA_CRC); /* written again after the hole */
	torn_send(&t, 150, 150, GW_SAVE_DATA_CRC);
	torn_end(&t);
	for (int rdonly = 0; rdonly < 2; rdonly++) {
		struct gw_ram ram;
		char path[64];

		machine_init(&dst, t.src.size, true);
		if (rdonly) {
			/* The same memory, registered with a read-only fd. */
			gw_migration_free(dst.m);
			int ro;

			snprintf(path, sizeof(path), "/proc/self/fd/%d", dst.fd);
			ro = open(path, O_RDONLY | O_CLOEXEC);
			CHECK(ro >= 0);
			close(dst.fd);
			dst.fd = ro;
			ram = (struct gw_ram){ "ram", dst.host, dst.size, dst.fd, 0, 0 };
			CHECK_OK(gw_migration_new(&mc, &dst.m, &err), &err);
			CHECK_OK(gw_migration_add_ram(dst.m, &ram, &err), &err);
		}
		CHECK_OK(test_load(dst.m, t.s.p, t.s.len, &err), &err);
		CHECK(memcmp(t.src.host, dst.host, t.src.size) == 0);
		machine_free(&dst);
	}
	torn_free(&t);
}

/* A big RAM block through a socket, saver and loader in two threads. */
struct big {
	struct machine *mm;
	int fd;
	unsigned flags;
	int ret;
	struct gw_error err;
};

static void *big_save(void *arg)
{
	struct big *b = arg;
	uint64_t pages = b->mm->size / GW_PAGE_SIZE;
	uint64_t *e = malloc(GW_PAGES_MAX * sizeof(*e));
	struct gw_writer *w;

	CHECK_OK(gw_writer_new(b->fd, &w, &b->err), &b->err);
	CHECK_OK(gw_save_begin(b->mm->m, w, &b->err), &b->err);
	/* Even pages first, then odd ones: batches of non-contiguous pages. */
	for (int pass = 0; pass < 2; pass++) {
		uint32_t n = 0;

		for (uint64_t p = pass; p < pages; p += 2) {
			uint64_t off = p * GW_PAGE_SIZE;

			e[n++] = off | (gw_page_is_zero(b->mm->host + off) ? GW_PAGE_ZERO : 0);
			if (n == GW_PAGES_MAX || p + 2 >= pages) {
				CHECK_OK(gw_save_pages(b->mm->m, w, 0, e, n, b->flags, &b->err), &b->err);
				n = 0;
			}
		}
	}
	CHECK_OK(gw_save_devices(b->mm->m, w, &b->err), &b->err);
	CHECK_OK(gw_save_finish(b->mm->m, w, &b->err), &b->err);
	gw_writer_free(w);
	free(e);
	return NULL;
}

static void test_big(unsigned flags)
{
	const uint64_t size = 64ull << 20;
	struct machine src, dst;
	struct big b = { &src, -1, flags, 0, { 0 } };
	struct gw_error err = { 0 };
	struct gw_reader *r;
	struct timespec t0, t1;
	pthread_t th;
	int sv[2];

	machine_init(&src, size, true);
	machine_init(&dst, size, true);
	for (uint64_t off = 0; off < size; off += GW_PAGE_SIZE)
		if ((off / GW_PAGE_SIZE) % 5 != 2)
			for (unsigned i = 0; i < GW_PAGE_SIZE; i += 512)
				memcpy(src.host + off + i, &(uint64_t){ off * 31 + i }, 8);
	CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
	b.fd = sv[1];
	clock_gettime(CLOCK_MONOTONIC, &t0);
	CHECK(pthread_create(&th, NULL, big_save, &b) == 0);
	CHECK_OK(gw_reader_new(sv[0], &r, &err), &err);
	CHECK_OK(gw_load(dst.m, r, &err), &err);
	CHECK(pthread_join(th, NULL) == 0);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	CHECK(memcmp(src.host, dst.host, size) == 0);
	printf("ram: 64 MiB through a unix socket%s in %.0f ms\n",
	       flags & GW_SAVE_DATA_CRC ? " with DATA_CRC" : "",
	       (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6);
	gw_reader_free(r);
	close(sv[0]);
	close(sv[1]);
	machine_free(&src);
	machine_free(&dst);
}

int main(void)
{
	test_is_zero();
	test_save_refuses();
	test_zero_pages(true);
	test_zero_pages(false);
	test_page_hash();
	test_torn_pages();
	test_load_paths();
	test_big(0);
	test_big(GW_SAVE_DATA_CRC);
	printf("ram: all tests passed\n");
	return 0;
}
