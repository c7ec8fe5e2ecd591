/*
 * The stream format end to end inside one process: a source test machine
 * saves, a destination loads, and every hostile variant of the stream —
 * each byte flipped, each length of truncation, wrong magic and version,
 * absurd lengths — is refused with a clear error instead of being loaded.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "lib/crc32c.h"
#include "testvm.h"

static void test_roundtrip(unsigned flags)
{
	struct test_vm src, dst;
	struct test_buf s;
	struct gw_error err = { 0 };

	test_vm_init(&src, NULL);
	test_vm_init(&dst, NULL);
	test_vm_fill(&src, 1);
	test_vm_fill(&dst, 2); /* the destination starts different, zero pages included */
	memset(dst.ram[0].host + GW_PAGE_SIZE, 0xaa, GW_PAGE_SIZE);
	test_save(&src, flags, &s);
	CHECK_OK(test_load(dst.m, s.p, s.len, &err), &err);
	test_vm_compare(&src, &dst);
	CHECK(dst.live.phases[GW_PHASE_START] == 1);
	CHECK(dst.live.phases[GW_PHASE_PART] == 2);
	CHECK(dst.live.phases[GW_PHASE_END] == 1);

	/* The same machine saves again (a retried migration) and loads again. */
	test_vm_fill(&src, 3);
	free(s.p);
	test_save(&src, flags, &s);
	CHECK_OK(test_load(dst.m, s.p, s.len, &err), &err);
	test_vm_compare(&src, &dst);
	free(s.p);
	test_vm_free(&src);
	test_vm_free(&dst);
}

/* The offsets of page data in a stream (the bytes page hashes protect). */
static void page_data_map(const struct test_buf *s, unsigned char *is_data)
{
	struct gw_error err = { 0 };
	struct gw_record_info info;
	struct gw_walker *wk;
	struct gw_reader *r;
	int fd = test_memfd(s->p, s->len);

	memset(is_data, 0, s->len);
	CHECK_OK(gw_reader_new(fd, &r, &err), &err);
	CHECK_OK(gw_walker_new(r, &wk, &err), &err);
	while (gw_walker_next(wk, &info, &err) == 1) {
		uint64_t data;

		if (info.type != GW_REC_RAM_PAGES)
			continue;
		data = info.offset + GW_RECORD_HEADER_SIZE + GW_PAGES_DESC_SIZE(info.nr_pages);
		memset(is_data + data, 1, info.offset + GW_RECORD_HEADER_SIZE + info.length - data);
	}
	CHECK(err.code == 0);
	gw_walker_free(wk);
	gw_reader_free(r);
	close(fd);
}

static int load_fd(struct gw_migration *m, int fd, struct gw_error *err)
{
	struct gw_reader *r;
	int ret;

	CHECK(lseek(fd, 0, SEEK_SET) == 0);
	CHECK_OK(gw_reader_new(fd, &r, err), err);
	gw_error_clear(err);
	ret = gw_load(m, r, err);
	gw_reader_free(r);
	return ret;
}

/*
 * Flip each byte of a small stream in turn: every flip must fail the load
 * with a corruption-class error and a message. Page data is covered by the
 * page hashes: with DATA_CRC a mismatch fails at its record; without it the
 * page might have been torn by the running guest, so the load fails at EOF
 * because no later copy replaced it (docs/format.md).
 */
static void test_flip_every_byte(unsigned flags)
{
	struct test_vm_opts small = { .ram_size = { 2 * GW_PAGE_SIZE, GW_PAGE_SIZE } };
	static const unsigned char masks[] = { 0x01, 0x80, 0xff };
	struct test_vm src, dst;
	struct gw_error err = { 0 };
	struct test_buf s;
	unsigned char *is_data;
	unsigned refused = 0, pages_refused = 0;
	int fd;

	test_vm_init(&src, &small);
	test_vm_init(&dst, &small);
	test_vm_fill(&src, 7);
	test_save(&src, flags, &s);
	is_data = malloc(s.len);
	CHECK(is_data);
	page_data_map(&s, is_data);
	fd = test_memfd(s.p, s.len);

	CHECK_OK(load_fd(dst.m, fd, &err), &err);
	for (size_t off = 0; off < s.len; off++) {
		for (size_t k = 0; k < sizeof(masks); k++) {
			unsigned char b = s.p[off] ^ masks[k];
			int ret;

			CHECK(pwrite(fd, &b, 1, off) == 1);
			ret = load_fd(dst.m, fd, &err);
			if (ret == 0)
				FAIL("flipping byte %zu (mask 0x%02x) of %zu went undetected",
				     off, masks[k], s.len);
			if (is_data[off]) {
				const char *want = flags & SAVE_DATA_CRC ? "is corrupted (page hash 0x" :
					"arrived damaged (checksum mismatch in the RAM_PAGES record at stream offset ";

				if (ret != -EBADMSG || !strstr(err.msg, want))
					FAIL("flipping page data byte %zu: %d '%s'", off, ret, err.msg);
				pages_refused++;
			}
			if (ret != -EBADMSG && ret != -EPROTO && ret != -EPROTONOSUPPORT)
				FAIL("flipping byte %zu: unexpected error %d: %s", off, ret, err.msg);
			if (err.code != ret || strlen(err.msg) < 20)
				FAIL("flipping byte %zu: poor message '%s'", off, err.msg);
			refused++;
		}
		CHECK(pwrite(fd, &s.p[off], 1, off) == 1);
	}
	printf("flip%s: %zu bytes, all %u flips refused (%u in page data)\n",
	       flags & SAVE_DATA_CRC ? " (DATA_CRC)" : "", s.len, refused, pages_refused);
	/* After all that, the intact stream still loads. */
	CHECK_OK(load_fd(dst.m, fd, &err), &err);
	test_vm_compare(&src, &dst);
	close(fd);
	free(is_data);
	free(s.p);
	test_vm_free(&src);
	test_vm_free(&dst);
}

/* Every proper prefix of a stream is truncated and says where. */
static void test_truncate_everywhere(void)
{
	struct test_vm_opts small = { .ram_size = { 2 * GW_PAGE_SIZE, GW_PAGE_SIZE } };
	struct test_vm src, dst;
	struct gw_error err = { 0 };
	struct test_buf s;
	char where[64];
	int fd;

	test_vm_init(&src, &small);
	test_vm_init(&dst, &small);
	test_vm_fill(&src, 9);
	test_save(&src, 0, &s);
	fd = test_memfd(s.p, s.len);
	for (size_t len = s.len; len-- > 0;) {
		CHECK(ftruncate(fd, len) == 0);
		snprintf(where, sizeof(where), "truncated stream at offset %zu ", len);
		CHECK_ERR(load_fd(dst.m, fd, &err), -EPIPE, &err, where);
	}
	close(fd);
	free(s.p);
	test_vm_free(&src);
	test_vm_free(&dst);
}

static void test_header(void)
{
	struct test_vm src, dst;
	struct gw_error err = { 0 };
	struct test_buf s;

	test_vm_init(&src, NULL);
	test_vm_init(&dst, NULL);
	test_save(&src, 0, &s);

	memcpy(s.p, "QEVM", 4);
	CHECK_ERR(test_load(dst.m, s.p, s.len, &err), -EPROTO, &err,
		  "not a godwit stream", "magic 51 45 56 4d");
	memcpy(s.p, GW_STREAM_MAGIC, 4);
	s.p[8] = 2;
	CHECK_ERR(test_load(dst.m, s.p, s.len, &err), -EPROTONOSUPPORT, &err,
		  "format version 2 is not supported", "supports version 1");
	s.p[8] = 1;
	s.p[12] = 0x40;
	CHECK_ERR(test_load(dst.m, s.p, s.len, &err), -EPROTONOSUPPORT, &err,
		  "header flags 0x40");
	/* multifd: only the incoming engine reads channels; and a channel's
	 * stream is no migration of its own. */
	s.p[12] = GW_HDRF_MULTIFD;
	CHECK_ERR(test_load(dst.m, s.p, s.len, &err), -EPROTO, &err,
		  "turn on the multifd capability");
	s.p[12] = GW_HDRF_CHANNEL;
	CHECK_ERR(test_load(dst.m, s.p, s.len, &err), -EPROTO, &err, "a multifd channel");
	/* A local live update holds no RAM: only an adopting loader takes it. */
	s.p[12] = GW_HDRF_CPR;
	CHECK_ERR(test_load(dst.m, s.p, s.len, &err), -EPROTO, &err, "local live update",
		  "adopted");
	/* A live migration's stream (COMMIT) resumes only on the source's GO:
	 * a plain load must not run it. */
	s.p[12] = GW_HDRF_COMMIT;
	CHECK_ERR(test_load(dst.m, s.p, s.len, &err), -EPROTO, &err,
		  "needs the switchover handshake");
	s.p[12] = 0;
	CHECK_ERR(test_load(dst.m, s.p, 0, &err), -EPIPE, &err,
		  "stream header", "truncated stream at offset 0");
	/* Something that is not a stream at all. */
	CHECK_ERR(test_load(dst.m, "hello, world, this is text\n", 27, &err), -EPROTO, &err,
		  "not a godwit stream");
	CHECK_OK(test_load(dst.m, s.p, s.len, &err), &err);
	free(s.p);
	test_vm_free(&src);
	test_vm_free(&dst);
}

/* A record header with a valid CRC, as a buggy or malicious writer would make it. */
static void put_header(unsigned char *h, uint16_t type, uint16_t flags, uint64_t length,
		       uint32_t payload_crc)
{
	uint32_t crc;

	memset(h, 0, GW_RECORD_HEADER_SIZE);
	memcpy(h, &type, 2);
	memcpy(h + 2, &flags, 2);
	memcpy(h + 8, &length, 8);
	memcpy(h + 16, &payload_crc, 4);
	crc = gw_crc32c(0, h, 20);
	memcpy(h + 20, &crc, 4);
}

/* Offset just after the CONFIG record of a stream. */
static size_t after_config(const struct test_buf *s)
{
	uint64_t len;

	memcpy(&len, s->p + GW_STREAM_HEADER_SIZE + 8, 8);
	return GW_STREAM_HEADER_SIZE + GW_RECORD_HEADER_SIZE + len;
}

/* Lengths that pass the header CRC but not the bounds: nothing is allocated or read. */
static void test_absurd_lengths(void)
{
	static const struct {
		uint16_t type, flags;
		uint64_t length;
		int code;
		const char *msg;
	} cases[] = {
		{ GW_REC_SECTION_FULL, 0, 1ull << 62, -EBADMSG, "SECTION_FULL record (type 0x0005) at offset" },
		{ GW_REC_SECTION_PART, 0, GW_SECTION_RECORD_MAX + 1, -EBADMSG, "exceeds the limit of 67108864 bytes" },
		{ GW_REC_RAM_PAGES, 0, GW_PAGES_RECORD_MAX + 1, -EBADMSG, "RAM_PAGES record" },
		{ GW_REC_VMDESC, GW_RECF_SKIPPABLE, UINT64_MAX, -EBADMSG, "VMDESC record" },
		{ GW_REC_EOF, 0, 1, -EBADMSG, "EOF record" },
		{ 0x4242, GW_RECF_SKIPPABLE, 1ull << 40, -EBADMSG, "unknown record (type 0x4242)" },
		{ GW_REC_SECTION_FULL, 0x0100, 10, -EBADMSG, "reserved bits set" },
		{ GW_REC_SECTION_FULL, GW_RECF_DATA_CRC, 10, -EBADMSG, "DATA_CRC flag on a record without page data" },
	};
	struct test_vm src, dst;
	struct gw_error err = { 0 };
	struct test_buf s;
	size_t at;

	test_vm_init(&src, NULL);
	test_vm_init(&dst, NULL);
	test_save(&src, 0, &s);
	at = after_config(&s);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		unsigned char *p = malloc(at + GW_RECORD_HEADER_SIZE);

		memcpy(p, s.p, at);
		put_header(p + at, cases[i].type, cases[i].flags, cases[i].length, 0);
		CHECK_ERR(test_load(dst.m, p, at + GW_RECORD_HEADER_SIZE, &err), cases[i].code, &err,
			  cases[i].msg);
		free(p);
	}
	free(s.p);
	test_vm_free(&src);
	test_vm_free(&dst);
}

/* RAM_PAGES descriptors that lie, with valid CRCs everywhere. */
static void test_bad_pages(void)
{
	struct test_vm src, dst;
	struct gw_error err = { 0 };
	struct test_buf s;
	unsigned char rec[GW_RECORD_HEADER_SIZE + GW_PAGES_DESC_SIZE(2) + GW_PAGE_SIZE];
	unsigned char *desc = rec + GW_RECORD_HEADER_SIZE;
	static const struct {
		uint32_t block, n;
		uint64_t e0, e1;
		int code;
		const char *msg;
		uint32_t reserved;
		uint64_t h1; /* the hash of entry 1 */
	} cases[] = {
		{ 5, 2, 0, GW_PAGE_SIZE | GW_PAGE_ZERO, -EBADMSG, "block id 5 is not in the CONFIG table" },
		{ 0, 2, 0x800000, 0x801000 | GW_PAGE_ZERO, -EBADMSG, "beyond the 0x8000 bytes of RAM block 'pc.ram'" },
		{ 0, 2, GW_PAGE_SIZE, 0 | GW_PAGE_ZERO, -EBADMSG, "increasing order" },
		{ 0, 2, GW_PAGE_SIZE, GW_PAGE_SIZE | GW_PAGE_ZERO, -EBADMSG, "increasing order" },
		{ 0, 2, 0 | 0x4, GW_PAGE_SIZE | GW_PAGE_ZERO, -EBADMSG, "unknown page flags 0x4" },
		{ 0, 2, 0, GW_PAGE_SIZE, -EBADMSG, "does not match its 2 pages (2 with data)" },
		{ 0, 3000, 0, GW_PAGE_SIZE, -EBADMSG, "3000 pages" },
		{ 0, 0, 0, GW_PAGE_SIZE, -EBADMSG, "0 pages" },
		{ 0, 2, 0, GW_PAGE_SIZE | GW_PAGE_ZERO, -EBADMSG, "reserved fields are 0x7 0x0, not zero", 7 },
		{ 0, 2, 0, GW_PAGE_SIZE | GW_PAGE_ZERO, -EBADMSG,
		  "entry 1 is a zero page but has page hash 0x0000000000001234, not 0", 0, 0x1234 },
	};

	test_vm_init(&src, NULL);
	test_vm_init(&dst, NULL);
	test_save(&src, 0, &s);
	size_t at = after_config(&s);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		size_t len = sizeof(rec) - GW_RECORD_HEADER_SIZE;
		unsigned char *p = malloc(at + sizeof(rec));

		memset(desc, 0x5a, len);
		memcpy(desc, &cases[i].block, 4);
		memcpy(desc + 4, &cases[i].n, 4);
		memcpy(desc + 8, &cases[i].reserved, 4);
		memset(desc + 12, 0, 4);
		memcpy(desc + 16, &cases[i].e0, 8);
		memcpy(desc + 24, &cases[i].e1, 8);
		memset(desc + 32, 0, 8);
		memcpy(desc + 40, &cases[i].h1, 8);
		put_header(rec, GW_REC_RAM_PAGES, 0, len, gw_crc32c(0, desc, GW_PAGES_DESC_SIZE(2)));
		memcpy(p, s.p, at);
		memcpy(p + at, rec, sizeof(rec));
		CHECK_ERR(test_load(dst.m, p, at + sizeof(rec), &err), cases[i].code, &err,
			  cases[i].msg);
		free(p);
	}
	free(s.p);
	test_vm_free(&src);
	test_vm_free(&dst);
}

int main(void)
{
	test_roundtrip(0);
	test_roundtrip(SAVE_DATA_CRC);
	test_roundtrip(SAVE_ONE_BATCH);
	test_header();
	test_absurd_lengths();
	test_bad_pages();
	test_truncate_everywhere();
	test_flip_every_byte(SAVE_DATA_CRC);
	test_flip_every_byte(0);
	printf("stream: all tests passed\n");
	return 0;
}
