/*
 * The wire pieces of post-copy (lib/format/postcopy.c and the REQUEST
 * message of lib/transport/return_path.c): a bitmap split into records
 * arrives bit for bit; every hostile variant of a record or a request
 * is refused with the field it broke, and nothing of a refused record
 * reaches the bitmap. Post-copy recovery's handshake
 * (lib/engine/postcopy_resume.c) over a socket pair: the destination's
 * set replaces what the source owes; another migration's fingerprint,
 * or a set beyond the switch's, is refused on both sides.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <godwit/io.h>
#include <godwit/migration.h>

#include "check.h"
#include "lib/cancel.h"
#include "lib/crc32c.h"
#include "lib/engine/postcopy_resume.h"
#include "lib/format/postcopy.h"
#include "lib/internal.h"
#include "lib/transport/return_path.h"

#define PAGE 4096ull
/* Two blocks; the second ends mid-word, as a block of any size may. */
#define PAGES0 256ull
#define PAGES1 130ull

static struct gw_ram_block ram[2];
static uint64_t want0[PAGES0 / 64], want1[(PAGES1 + 63) / 64];
static uint64_t got0[PAGES0 / 64], got1[(PAGES1 + 63) / 64];
static uint64_t *const want[2] = {want0, want1};
static uint64_t *const got[2] = {got0, got1};
static unsigned char buf[GW_POSTCOPY_HEAD_SIZE + 4096];

static void setup(void)
{
	memset(ram, 0, sizeof(ram));
	strcpy(ram[0].name, "ram-low");
	ram[0].size = PAGES0 * PAGE;
	strcpy(ram[1].name, "ram-high");
	ram[1].size = PAGES1 * PAGE;
	for (uint64_t p = 0; p < PAGES0; p++)
		if (p % 3 == 0 || p == PAGES0 - 1)
			want0[p / 64] |= 1ull << (p % 64);
	for (uint64_t p = 0; p < PAGES1; p++)
		if (p % 5 == 1 || p == PAGES1 - 1)
			want1[p / 64] |= 1ull << (p % 64);
}

static int accept_rec(struct gw_postcopy_cursor *c, uint64_t len, struct gw_error *err)
{
	return gw_postcopy_accept(c, buf, len, ram, 2, got, 0, 4242, err);
}

/* Block 0 in pieces of 64 and 192 bits, block 1 whole: every bit lands. */
static void test_round_trip(void)
{
	struct gw_postcopy_cursor c = {0};
	struct gw_error err = {0};
	uint64_t len;

	memset(got0, 0, sizeof(got0));
	memset(got1, 0, sizeof(got1));
	CHECK_ERR(gw_postcopy_complete(&c, ram, 2, &err), -EBADMSG, &err, "'ram-low'",
		  "page 0 of 256");
	len = gw_postcopy_encode(0, 0, 64, want0, 0, buf);
	CHECK(len == GW_POSTCOPY_HEAD_SIZE + 8);
	CHECK_OK(accept_rec(&c, len, &err), &err);
	len = gw_postcopy_encode(0, 64, PAGES0 - 64, want0, 0, buf);
	CHECK_OK(accept_rec(&c, len, &err), &err);
	CHECK_ERR(gw_postcopy_complete(&c, ram, 2, &err), -EBADMSG, &err, "'ram-high'");
	len = gw_postcopy_encode(1, 0, PAGES1, want1, 0, buf);
	CHECK(len == GW_POSTCOPY_HEAD_SIZE + 3 * 8);
	CHECK_OK(accept_rec(&c, len, &err), &err);
	CHECK_OK(gw_postcopy_complete(&c, ram, 2, &err), &err);
	CHECK(memcmp(got0, want0, sizeof(got0)) == 0);
	CHECK(memcmp(got1, want1, sizeof(got1)) == 0);
	printf("ok bitmap round trip\n");
}

/* A record of block 0 from page 0, altered by `lie`, must be refused. */
enum lie {
	LIE_SHORT,
	LIE_FLAGS,
	LIE_BLOCK,
	LIE_ORDER,
	LIE_ZERO,
	LIE_PAST_END,
	LIE_MID_WORD,
	LIE_LENGTH,
	LIE_TOO_MANY,
};

static void check_lie(enum lie lie, const char *why)
{
	struct gw_postcopy_cursor c = {0};
	struct gw_error err = {0};
	uint64_t len = gw_postcopy_encode(0, 0, PAGES0, want0, 0, buf);

	memset(got0, 0, sizeof(got0));
	switch (lie) {
	case LIE_SHORT:
		len = GW_POSTCOPY_HEAD_SIZE - 1;
		break;
	case LIE_FLAGS:
		gw_le32(buf + 4, 1);
		break;
	case LIE_BLOCK:
		gw_le32(buf, 2);
		break;
	case LIE_ORDER: /* block 1 before block 0 */
		len = gw_postcopy_encode(1, 0, PAGES1, want1, 0, buf);
		break;
	case LIE_ZERO:
		gw_le64(buf + 16, 0);
		break;
	case LIE_PAST_END:
		gw_le64(buf + 16, PAGES0 + 64);
		break;
	case LIE_MID_WORD: /* 100 bits that do not end the block */
		len = gw_postcopy_encode(0, 0, 100, want0, 0, buf);
		break;
	case LIE_LENGTH:
		len -= 8;
		break;
	case LIE_TOO_MANY:
		gw_le64(buf + 16, (uint64_t)GW_POSTCOPY_BITS_MAX + 64);
		break;
	}
	CHECK_ERR(accept_rec(&c, len, &err), -EBADMSG, &err, "offset 4242", why);
	CHECK(c.block == 0 && c.next == 0);
	for (size_t i = 0; i < PAGES0 / 64; i++)
		CHECK(got0[i] == 0);
}

static void test_hostile_bitmaps(void)
{
	struct gw_postcopy_cursor c = {1, 0};
	struct gw_error err = {0};
	uint64_t len;

	check_lie(LIE_SHORT, "shorter than its head");
	check_lie(LIE_FLAGS, "flags not those of the set it belongs to");
	check_lie(LIE_BLOCK, "block index past CONFIG's blocks");
	check_lie(LIE_ORDER, "expected block 0 page 0");
	check_lie(LIE_ZERO, "bit count out of range");
	check_lie(LIE_PAST_END, "bit count out of range");
	check_lie(LIE_MID_WORD, "ends mid-word");
	check_lie(LIE_LENGTH, "length does not match");
	check_lie(LIE_TOO_MANY, "bit count out of range");
	/* A bit for page 130 of a 130-page block. */
	len = gw_postcopy_encode(1, 0, PAGES1, want1, 0, buf);
	gw_le64(buf + GW_POSTCOPY_HEAD_SIZE + 16, 1ull << (PAGES1 % 64));
	CHECK_ERR(accept_rec(&c, len, &err), -EBADMSG, &err, "bits set past the block's last page");
	/* A block covered twice. */
	c = (struct gw_postcopy_cursor){2, 0};
	len = gw_postcopy_encode(1, 0, PAGES1, want1, 0, buf);
	CHECK_ERR(accept_rec(&c, len, &err), -EBADMSG, &err, "expected block 2");
	printf("ok hostile bitmaps refused\n");
}

static void round_trip_request(const struct gw_page_request *rq, struct gw_report *out)
{
	struct gw_report r = {GW_REPORT_REQUEST, 0, "", *rq};
	unsigned char m[GW_REPORT_MAX];
	struct gw_error err = {0};
	size_t len = gw_report_encode(&r, m);

	CHECK(len == GW_REPORT_HEAD_SIZE + GW_PAGE_REQUEST_SIZE + 4);
	CHECK_OK(gw_report_decode(m, len, out, &err), &err);
	CHECK(out->status == GW_REPORT_REQUEST && out->code == 0);
	CHECK(out->req.block == rq->block && out->req.count == rq->count &&
	      out->req.first == rq->first);
	/* Any flipped bit is refused (the CRC), so no request is misread. */
	for (size_t i = 0; i < len * 8; i++) {
		m[i / 8] ^= (unsigned char)(1u << (i % 8));
		if (gw_report_decode(m, len, out, NULL) == 0)
			FAIL("request with bit %zu flipped was accepted", i);
		m[i / 8] ^= (unsigned char)(1u << (i % 8));
	}
}

static void test_requests(void)
{
	static const struct gw_page_request bad[] = {
		{2, 1, 0},                /* a third block */
		{0, 0, 0},                /* nothing */
		{0, 1, PAGES0},           /* one past the end */
		{1, 2, PAGES1 - 1},       /* across the end */
		{1, 1, UINT64_MAX},       /* first + count wraps */
		{0, GW_PAGES_MAX + 1, 0}, /* more than a batch */
	};
	const struct gw_page_request ok = {1, 2, PAGES1 - 2};
	struct gw_report r = {GW_REPORT_REQUEST, 0, "", {0, 0, 0}};
	unsigned char m[GW_REPORT_MAX];
	struct gw_error err = {0};
	size_t len;

	round_trip_request(&ok, &r);
	CHECK_OK(gw_page_request_check(&r.req, ram, 2, &err), &err);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		round_trip_request(&bad[i], &r);
		CHECK_ERR(gw_page_request_check(&r.req, ram, 2, &err), -EBADMSG, &err,
			  "the destination asked for");
	}
	/* The framing: a REQUEST with a code, or another size, is garbage. */
	len = gw_report_encode(&r, m);
	gw_le32(m + 16, 5);
	gw_le32(m + len - 4, gw_crc32c(0, m, len - 4));
	CHECK_ERR(gw_report_decode(m, len, &r, &err), -EBADMSG, &err, "malformed message");
	len = gw_report_encode(&r, m);
	gw_le32(m + 20, GW_PAGE_REQUEST_SIZE - 8);
	len -= 8;
	gw_le32(m + len - 4, gw_crc32c(0, m, len - 4));
	CHECK_ERR(gw_report_decode(m, len, &r, &err), -EBADMSG, &err, "malformed message");
	printf("ok page requests\n");
}

/*
 * Through the real framing: gw_postcopy_put() into a pipe, records read
 * back with their headers and CRCs and accepted, in pieces of 64 bits
 * and whole; the bitmaps arrive bit for bit and cover every block.
 */
static void test_through_stream(uint64_t piece, unsigned want_records)
{
	static const struct gw_machine machine = {"test", "0", "test-machine", 1};
	struct gw_postcopy_cursor c = {0};
	struct gw_migration *m;
	struct gw_writer *w;
	struct gw_reader *r;
	struct gw_error err = {0};
	unsigned char *payload = NULL;
	size_t cap = 0;
	unsigned records = 0;
	int fds[2];

	CHECK_OK(gw_migration_new(&machine, &m, &err), &err);
	for (int i = 0; i < 2; i++) {
		void *host = mmap(NULL, ram[i].size, PROT_READ | PROT_WRITE,
				  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		const struct gw_ram g = {ram[i].name, host, ram[i].size, -1, 0, GW_GPA_NONE};

		CHECK(host != MAP_FAILED);
		CHECK_OK(gw_migration_add_ram(m, &g, &err), &err);
	}
	CHECK(pipe(fds) == 0);
	CHECK_OK(gw_writer_new(fds[1], &w, &err), &err);
	CHECK_OK(gw_postcopy_put(w, m->ram, m->nr_ram, want, piece, 0, &err), &err);
	CHECK_OK(gw_writer_flush(w, &err), &err);
	gw_writer_free(w);
	close(fds[1]);
	memset(got0, 0, sizeof(got0));
	memset(got1, 0, sizeof(got1));
	CHECK_OK(gw_reader_new(fds[0], &r, &err), &err);
	while (gw_postcopy_complete(&c, ram, 2, NULL) < 0) {
		struct gw_rec_hdr h;

		CHECK_OK(gw_record_read_header(r, &h, &err), &err);
		CHECK(h.type == GW_REC_POSTCOPY && h.flags == 0);
		CHECK_OK(gw_record_read_payload(r, &h, &payload, &cap, &err), &err);
		CHECK_OK(gw_record_check_crc(&h, gw_crc32c(0, payload, h.length), &err), &err);
		CHECK_OK(gw_postcopy_accept(&c, payload, h.length, ram, 2, got, 0, h.offset, &err),
			 &err);
		records++;
	}
	CHECK(records == want_records);
	CHECK(memcmp(got0, want0, sizeof(got0)) == 0 && memcmp(got1, want1, sizeof(got1)) == 0);
	CHECK_ERR(gw_postcopy_put(NULL, m->ram, m->nr_ram, want, 100, 0, &err), -EINVAL, &err,
		  "multiple of 64");
	free(payload);
	gw_reader_free(r);
	close(fds[0]);
	for (uint32_t i = 0; i < 2; i++)
		munmap(m->ram[i].host, ram[i].size);
	gw_migration_free(m);
	printf("ok through the stream in pieces of %llu bits: %u records\n",
	       (unsigned long long)(piece ? piece : GW_POSTCOPY_BITS_MAX), records);
}

/* The source's side, in a thread: orig is the switch's set (want). */
struct resume_src {
	int fd;
	uint64_t fingerprint;
	uint64_t owed0[PAGES0 / 64], owed1[(PAGES1 + 63) / 64];
	int ret;
	struct gw_error err;
};

static void *resume_source(void *opaque)
{
	struct resume_src *r = opaque;
	uint64_t *const owed[2] = {r->owed0, r->owed1};
	struct gw_cancel c;

	CHECK_OK(gw_cancel_init(&c, r->fd, &r->err), &r->err);
	r->ret = gw_pc_resume_source(&c, 10000, r->fingerprint, ram, 2, want, owed, &r->err);
	gw_cancel_fini(&c);
	return NULL;
}

/* One handshake: the destination asks for `needed` with its fingerprint. */
static void resume_once(uint64_t src_fp, uint64_t dst_fp, uint64_t *const *needed, int want_src,
			int want_dst, const char *why)
{
	struct resume_src r = {.fingerprint = src_fp};
	struct gw_error err = {0};
	struct gw_cancel c;
	pthread_t t;
	int sv[2];

	CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	memset(r.owed0, 0xff, sizeof(r.owed0));
	r.fd = sv[1];
	CHECK(pthread_create(&t, NULL, resume_source, &r) == 0);
	CHECK_OK(gw_cancel_init(&c, sv[0], &err), &err);
	int ret = gw_pc_resume_destination(&c, 10000, dst_fp, ram, 2, needed, &err);
	/* A refused handshake drops the connection: the other side must not
	 * wait for more. */
	shutdown(sv[0], SHUT_RDWR);
	pthread_join(t, NULL);
	gw_cancel_fini(&c);
	if (ret != want_dst || r.ret != want_src)
		FAIL("resume: destination %d (%s), source %d (%s); expected %d and %d", ret,
		     err.msg, r.ret, r.err.msg, want_dst, want_src);
	if (why && !strstr(r.err.msg, why) && !strstr(err.msg, why))
		FAIL("resume: neither \"%s\" nor \"%s\" says \"%s\"", err.msg, r.err.msg, why);
	/* What the source owes now is the destination's set, or untouched. */
	if (want_src == 0)
		CHECK(!memcmp(r.owed0, needed[0], sizeof(r.owed0)) &&
		      !memcmp(r.owed1, needed[1], sizeof(r.owed1)));
	else
		CHECK(r.owed0[0] == ~0ull);
	close(sv[0]);
	close(sv[1]);
}

static void test_resume(void)
{
	uint64_t n0[PAGES0 / 64], n1[(PAGES1 + 63) / 64];
	uint64_t *const needed[2] = {n0, n1};
	uint64_t fp;

	memset(want0, 0, sizeof(want0));
	memset(want1, 0, sizeof(want1));
	want0[1] = 0xf0f0f0f0f0f0f0f0ull;
	want1[2] = 0x3;
	fp = gw_postcopy_fingerprint(ram, 2, (const uint64_t *const *)want);
	/* Part of the set arrived before the cut: the rest is owed. */
	memcpy(n0, want0, sizeof(n0));
	memcpy(n1, want1, sizeof(n1));
	n0[1] &= 0xffff0000ffff0000ull;
	resume_once(fp, fp, needed, 0, 0, NULL);
	/* Another migration's destination. */
	/* The side that refuses says why; the other learns it was refused. */
	resume_once(fp, fp ^ 1, needed, -ECONNREFUSED, -EPROTO, "is another one");
	/* A page the switch left valid there: sending it could undo a write. */
	n1[0] = 1;
	resume_once(fp, fp, needed, -EBADMSG, -ECONNREFUSED, "did not leave at the source");
	/* The fingerprint covers every bit of the set. */
	want1[2] = 0x1;
	CHECK(gw_postcopy_fingerprint(ram, 2, (const uint64_t *const *)want) != fp);
	printf("ok resume handshake\n");
}

int main(void)
{
	setup();
	test_round_trip();
	test_hostile_bitmaps();
	test_requests();
	/* 256 bits in 4 pieces and 130 in 3; or one record a block. */
	test_through_stream(64, 7);
	test_through_stream(0, 2);
	test_resume();
	return 0;
}
