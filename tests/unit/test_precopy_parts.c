/*
 * The pieces the pre-copy engine is built from, each on its own: page
 * bitmaps, the populated-page filter (against the kernel's own answer),
 * the manual dirty back-end, the return-path report (nothing but a
 * well-formed report is accepted) and the bandwidth limiter.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <godwit/dirty.h>
#include <godwit/godwit.h>

#include "check.h"
#include "lib/bitmap.h"
#include "lib/crc32c.h"
#include "lib/ram/populated.h"
#include "lib/ratelimit.h"
#include "lib/transport/return_path.h"

#define PAGE GW_PAGE_SIZE

static void test_bitmap(void)
{
	static const uint64_t sizes[] = { 1, 63, 64, 65, 130, 1000 };

	for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
		uint64_t n = sizes[s];
		uint64_t bm[16] = { 0 };

		gw_bitmap_fill(bm, n);
		CHECK(gw_bitmap_count(bm, n) == n);
		CHECK(gw_bitmap_words(n) == 16 || bm[gw_bitmap_words(n)] == 0);
		CHECK(gw_bitmap_next_set(bm, n, 0) == 0);
		CHECK(gw_bitmap_next_clear(bm, n, 0) == n);
		gw_bitmap_clear(bm, 0, n);
		CHECK(gw_bitmap_count(bm, n) == 0);
		CHECK(gw_bitmap_next_set(bm, n, 0) == n);
		CHECK(gw_bitmap_next_clear(bm, n, n - 1) == n - 1);
	}

	uint64_t bm[3] = { 0 };

	gw_bitmap_fill(bm, 150);
	gw_bitmap_clear(bm, 3, 125); /* 3..127 */
	CHECK(gw_bitmap_count(bm, 150) == 3 + 22);
	CHECK(gw_bitmap_next_clear(bm, 150, 0) == 3);
	CHECK(gw_bitmap_next_set(bm, 150, 3) == 128);
	CHECK(gw_bitmap_next_clear(bm, 150, 128) == 150);
	CHECK(gw_bitmap_test(bm, 2) && !gw_bitmap_test(bm, 3) && gw_bitmap_test(bm, 149));
	bm[2] = ~0ull; /* a sync that set bits past the end */
	gw_bitmap_trim(bm, 150);
	CHECK(gw_bitmap_count(bm, 150) == 3 + 22);
	CHECK(bm[2] == (1ull << 22) - 1);
}

/* A memfd-backed block of `pages` pages starting at page `first` of the memfd. */
struct block {
	int fd;
	unsigned char *map; /* the whole memfd */
	struct gw_ram_block b;
};

static void block_init(struct block *k, uint64_t first, uint64_t pages)
{
	k->fd = memfd_create("populated", MFD_CLOEXEC);
	CHECK(k->fd >= 0);
	CHECK(ftruncate(k->fd, (off_t)((first + pages) * PAGE)) == 0);
	k->map = mmap(NULL, (first + pages) * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, k->fd, 0);
	CHECK(k->map != MAP_FAILED);
	memset(&k->b, 0, sizeof(k->b));
	strcpy(k->b.name, "ram");
	k->b.host = k->map + first * PAGE;
	k->b.size = pages * PAGE;
	k->b.fd = k->fd;
	k->b.fd_offset = first * PAGE;
}

static void block_free(struct block *k)
{
	munmap(k->map, k->b.fd_offset + k->b.size);
	close(k->fd);
}

static bool populated_page(uint64_t i)
{
	/* Runs of different lengths, isolated pages, a long hole, data at the end. */
	return (i >= 3 && i < 9) || i == 64 || i == 65 || i == 127 || (i >= 200 && i < 330) ||
	       i % 97 == 5 || i >= 1020;
}

static void test_populated(void)
{
	const uint64_t pages = 1024;

	for (uint64_t first = 0; first <= 64; first += 64) {
		struct block k;
		uint64_t bm[16], want[16];
		struct gw_error err = { 0 };
		uint64_t seed = 7;

		block_init(&k, first, pages);
		/* Data in the memfd before and after the block must not count. */
		if (first)
			k.map[0] = 1;
		for (uint64_t i = 0; i < pages; i++)
			if (populated_page(i))
				k.b.host[i * PAGE + 17] = 1;

		gw_bitmap_fill(bm, pages);
		CHECK_OK(gw_populated_filter(&k.b, bm, &err), &err);
		for (uint64_t i = 0; i < pages; i++)
			if (gw_bitmap_test(bm, i) != populated_page(i))
				FAIL("first %llu: page %llu: filter says %d",
				     (unsigned long long)first, (unsigned long long)i,
				     gw_bitmap_test(bm, i));

		/* Sparse bitmaps: the result is the bitmap AND the populated pages. */
		for (int round = 0; round < 50; round++) {
			memset(bm, 0, sizeof(bm));
			for (int j = 0; j < 40; j++) {
				seed = seed * 6364136223846793005ull + 1442695040888963407ull;
				uint64_t at = (seed >> 33) % pages, len = 1 + (seed >> 20) % 9;

				for (uint64_t i = at; i < at + len && i < pages; i++)
					bm[i / 64] |= 1ull << (i % 64);
			}
			memcpy(want, bm, sizeof(bm));
			for (uint64_t i = 0; i < pages; i++)
				if (!populated_page(i))
					want[i / 64] &= ~(1ull << (i % 64));
			CHECK_OK(gw_populated_filter(&k.b, bm, &err), &err);
			CHECK(memcmp(bm, want, sizeof(bm)) == 0);
		}

		/* Memory without an fd counts as populated. */
		k.b.fd = -1;
		gw_bitmap_fill(bm, pages);
		CHECK_OK(gw_populated_filter(&k.b, bm, &err), &err);
		CHECK(gw_bitmap_count(bm, pages) == pages);
		block_free(&k);
	}
}

static struct gw_migration *two_blocks(int fds[2], void *maps[2])
{
	const struct gw_machine mach = { "test", "1", "test-machine", 1 };
	const uint64_t sizes[2] = { 200 * PAGE, 3 * PAGE };
	struct gw_migration *m;
	struct gw_error err = { 0 };

	CHECK_OK(gw_migration_new(&mach, &m, &err), &err);
	for (int i = 0; i < 2; i++) {
		struct gw_ram r = { i ? "b1" : "b0", NULL, sizes[i], -1, 0, GW_GPA_NONE };

		fds[i] = memfd_create("b", MFD_CLOEXEC);
		CHECK(ftruncate(fds[i], (off_t)sizes[i]) == 0);
		maps[i] = mmap(NULL, sizes[i], PROT_READ | PROT_WRITE, MAP_SHARED, fds[i], 0);
		r.host = maps[i];
		r.fd = fds[i];
		CHECK_OK(gw_migration_add_ram(m, &r, &err), &err);
	}
	return m;
}

static void test_manual(void)
{
	struct gw_error err = { 0 };
	struct gw_dirty_manual *d;
	struct gw_migration *m;
	int fds[2];
	void *maps[2];
	uint64_t bm[4] = { 0 };

	m = two_blocks(fds, maps);
	CHECK_OK(gw_dirty_manual_new(m, &d, &err), &err);
	CHECK_OK(gw_migration_set_dirty_ops(m, &gw_dirty_manual_ops, d, &err), &err);

	CHECK(gw_dirty_manual_mark(d, 0, 0, 1) == 0);
	CHECK(gw_dirty_manual_mark(d, 0, 63 * PAGE + 5, PAGE) == 0); /* pages 63 and 64 */
	CHECK(gw_dirty_manual_mark(d, 0, 130 * PAGE, 70 * PAGE) == 0); /* 130..199 */
	CHECK(gw_dirty_manual_mark(d, 0, 100 * PAGE, 0) == 0);         /* nothing */
	CHECK(gw_dirty_manual_mark(d, 0, 199 * PAGE, 2 * PAGE) == -EINVAL);
	CHECK(gw_dirty_manual_mark(d, 0, UINT64_MAX - 10, 20) == -EINVAL);
	CHECK(gw_dirty_manual_mark(d, 2, 0, 1) == -EINVAL);
	CHECK(gw_dirty_manual_mark(d, 1, 2 * PAGE, PAGE) == 0);

	CHECK_OK(gw_dirty_manual_ops.sync(d, 0, bm, &err), &err);
	CHECK(gw_bitmap_count(bm, 200) == 1 + 2 + 70);
	CHECK(gw_bitmap_test(bm, 0) && gw_bitmap_test(bm, 63) && gw_bitmap_test(bm, 64));
	CHECK(!gw_bitmap_test(bm, 65) && !gw_bitmap_test(bm, 129) && gw_bitmap_test(bm, 130));
	CHECK(gw_bitmap_test(bm, 199));
	/* A sync ORs into the bitmap and re-arms: the next one is empty. */
	CHECK_OK(gw_dirty_manual_ops.sync(d, 0, bm, &err), &err);
	CHECK(gw_bitmap_count(bm, 200) == 73);
	memset(bm, 0, sizeof(bm));
	CHECK_OK(gw_dirty_manual_ops.sync(d, 0, bm, &err), &err);
	CHECK(gw_bitmap_count(bm, 200) == 0);
	CHECK_OK(gw_dirty_manual_ops.sync(d, 1, bm, &err), &err);
	CHECK(bm[0] == 4);
	CHECK_ERR(gw_dirty_manual_ops.sync(d, 2, bm, &err), -EINVAL, &err, "no RAM block 2");
	CHECK_ERR(gw_migration_set_dirty_ops(m, &(struct gw_dirty_ops){ 0 }, d, &err), -EINVAL,
		  &err, "sync callback is required");

	gw_dirty_manual_free(d);
	gw_migration_free(m);
	for (int i = 0; i < 2; i++) {
		munmap(maps[i], i ? 3 * PAGE : 200 * PAGE);
		close(fds[i]);
	}
}

static void test_report(void)
{
	struct gw_report ok = { GW_REPORT_RUNNING, 0, "" };
	struct gw_report bad = { GW_REPORT_FAILED, -EBADMSG, "" };
	struct gw_report r;
	struct gw_error err = { 0 };
	unsigned char buf[GW_REPORT_MAX];
	size_t len;

	len = gw_report_encode(&ok, buf);
	CHECK(len == GW_REPORT_HEAD_SIZE + 4);
	CHECK(memcmp(buf, "\x89GWBACK\n", 8) == 0);
	CHECK_OK(gw_report_decode(buf, len, &r, &err), &err);
	CHECK(r.status == GW_REPORT_RUNNING && r.code == 0 && r.msg[0] == '\0');

	snprintf(bad.msg, sizeof(bad.msg), "corrupted record header at offset 4096\n(tab\there)");
	len = gw_report_encode(&bad, buf);
	CHECK_OK(gw_report_decode(buf, len, &r, &err), &err);
	CHECK(r.status == GW_REPORT_FAILED && r.code == -EBADMSG);
	/* Control characters go out as '?', so the text stays printable. */
	CHECK(strcmp(r.msg, "corrupted record header at offset 4096?(tab?here)") == 0);

	/* Every single-bit error, and every truncation, is refused. */
	for (size_t i = 0; i < len * 8; i++) {
		buf[i / 8] ^= 1u << (i % 8);
		if (gw_report_decode(buf, len, &r, NULL) == 0)
			FAIL("report with bit %zu flipped was accepted", i);
		buf[i / 8] ^= 1u << (i % 8);
	}
	for (size_t n = 0; n < len; n++)
		CHECK(gw_report_decode(buf, n, &r, NULL) < 0);

	/* A stream header is not a report. */
	memset(buf, 0, sizeof(buf));
	memcpy(buf, GW_STREAM_MAGIC, GW_STREAM_MAGIC_LEN);
	CHECK_ERR(gw_report_decode(buf, 28, &r, &err), -EBADMSG, &err, "garbage");

	/* A failure without a code is sent as -EIO: it can never read as success. */
	bad.code = 0;
	len = gw_report_encode(&bad, buf);
	CHECK_OK(gw_report_decode(buf, len, &r, &err), &err);
	CHECK(r.status == GW_REPORT_FAILED && r.code == -EIO);

	/* Longest message. */
	memset(bad.msg, 'x', sizeof(bad.msg) - 1);
	bad.msg[sizeof(bad.msg) - 1] = '\0';
	len = gw_report_encode(&bad, buf);
	CHECK(len == GW_REPORT_MAX);
	CHECK_OK(gw_report_decode(buf, len, &r, &err), &err);
	CHECK(strlen(r.msg) == GW_REPORT_MSG_MAX);
}

/* Recompute a status-only message's CRC after a field was changed. */
static void reseal(unsigned char *buf)
{
	uint32_t crc = gw_crc32c(0, buf, GW_REPORT_HEAD_SIZE);

	for (int i = 0; i < 4; i++)
		buf[GW_REPORT_HEAD_SIZE + i] = (unsigned char)(crc >> (8 * i));
}

/* The handshake's messages: READY and GO carry nothing but their status,
 * and nothing else decodes as one of them. */
static void test_handshake_messages(void)
{
	static const enum gw_report_status plain[] = { GW_REPORT_RUNNING, GW_REPORT_READY,
						       GW_REPORT_GO, GW_REPORT_ADOPTED };
	struct gw_error err = { 0 };
	unsigned char buf[GW_REPORT_MAX];
	struct gw_report r;
	size_t len;

	for (size_t i = 0; i < sizeof(plain) / sizeof(plain[0]); i++) {
		/* Code and text on a message that has none are not sent. */
		struct gw_report m = { plain[i], -EIO, "ignored" };

		len = gw_report_encode(&m, buf);
		CHECK(len == GW_REPORT_HEAD_SIZE + 4);
		CHECK_OK(gw_report_decode(buf, len, &r, &err), &err);
		CHECK(r.status == plain[i] && r.code == 0 && r.msg[0] == '\0');
		CHECK(strcmp(gw_report_name(plain[i]), "unknown") != 0);

		/* With a code smuggled in (and the CRC made right), refused. */
		buf[16] = 5;
		reseal(buf);
		CHECK_ERR(gw_report_decode(buf, len, &r, &err), -EBADMSG, &err, "malformed");
	}
	/* A status this side does not know is refused as soon as the head shows it. */
	struct gw_report m = { GW_REPORT_GO, 0, "" };

	len = gw_report_encode(&m, buf);
	buf[12] = 5;
	reseal(buf);
	CHECK_ERR(gw_report_decode(buf, len, &r, &err), -EBADMSG, &err, "status 5");
	/* RUNNING may carry the resume's time, in digits and nothing else. */
	struct gw_report run = { GW_REPORT_RUNNING, 0, "123456789" };
	uint32_t crc;

	len = gw_report_encode(&run, buf);
	CHECK_OK(gw_report_decode(buf, len, &r, &err), &err);
	CHECK(gw_report_time_ns(&r) == 123456789ull);
	buf[GW_REPORT_HEAD_SIZE] = 'x';
	crc = gw_crc32c(0, buf, len - 4);
	for (int i = 0; i < 4; i++)
		buf[len - 4 + i] = (unsigned char)(crc >> (8 * i));
	CHECK_ERR(gw_report_decode(buf, len, &r, &err), -EBADMSG, &err, "decimal digits");
	/* Version 1 peers had no handshake: refused with both versions named. */
	len = gw_report_encode(&m, buf);
	buf[8] = 1;
	CHECK_ERR(gw_report_decode(buf, len, &r, &err), -EPROTONOSUPPORT, &err,
		  "handshake version 1 is not supported (this side speaks version 2)");
}

static void test_ratelimit(void)
{
	struct gw_ratelimit rl;
	const uint64_t s = 1000000000ull;

	gw_ratelimit_init(&rl, 0);
	CHECK(gw_ratelimit_delay_ns(&rl, 1000, 0) == 0);
	gw_ratelimit_spend(&rl, 500);
	/* 500 bytes owed at 1000 B/s: half a second. */
	CHECK(gw_ratelimit_delay_ns(&rl, 1000, 0) > s / 2 - 1000);
	CHECK(gw_ratelimit_delay_ns(&rl, 1000, s / 4) <= s / 4 + 1);
	CHECK(gw_ratelimit_delay_ns(&rl, 1000, s / 2) <= 1);
	/* An idle minute buys a tenth of a second, not a minute. */
	CHECK(gw_ratelimit_delay_ns(&rl, 1000, 61 * s) == 0);
	gw_ratelimit_spend(&rl, 1100);
	CHECK(gw_ratelimit_delay_ns(&rl, 1000, 61 * s) >= s - 1000);
	/* Unlimited: no wait, and no debt carried into a later limit. */
	CHECK(gw_ratelimit_delay_ns(&rl, 0, 61 * s) == 0);
	CHECK(gw_ratelimit_delay_ns(&rl, 1000, 61 * s) == 0);
	CHECK(gw_ratelimit_burst(1000) == 100);
	CHECK(gw_ratelimit_burst(0) == UINT64_MAX);
}

int main(void)
{
	test_bitmap();
	test_populated();
	test_manual();
	test_report();
	test_handshake_messages();
	test_ratelimit();
	return 0;
}
