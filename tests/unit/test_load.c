/*
 * What a destination refuses, and that it refuses before it changes
 * anything: configuration mismatches, section versions outside the
 * accepted range, unknown and missing sections, records out of order,
 * and device callbacks that misbehave.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "lib/crc32c.h"
#include "testvm.h"

/* Save a source built with src_opts and load it into a destination built with
 * dst_opts; returns the load's result with err filled, after checking that
 * a failed load left the destination's RAM untouched. */
static int transfer(const struct test_vm_opts *src_opts, const struct test_vm_opts *dst_opts,
		    struct gw_error *err)
{
	struct test_vm src, dst;
	struct test_buf s;
	unsigned char *before[2];
	int ret;

	test_vm_init(&src, src_opts);
	test_vm_init(&dst, dst_opts);
	test_vm_fill(&src, 11);
	test_vm_fill(&dst, 12);
	for (int i = 0; i < 2; i++) {
		before[i] = malloc(dst.ram[i].size);
		memcpy(before[i], dst.ram[i].host, dst.ram[i].size);
	}
	test_save(&src, 0, &s);
	gw_error_clear(err);
	ret = test_load(dst.m, s.p, s.len, err);
	for (int i = 0; i < 2; i++) {
		if (ret < 0)
			CHECK(memcmp(before[i], dst.ram[i].host, dst.ram[i].size) == 0);
		free(before[i]);
	}
	free(s.p);
	test_vm_free(&src);
	test_vm_free(&dst);
	return ret;
}

static void test_config_mismatch(void)
{
	struct gw_error err = { 0 };
	struct test_vm_opts big = { .ram_size = { 16 * GW_PAGE_SIZE } };
	struct test_vm_opts cpus = { .nr_vcpus = 4 };
	struct test_vm_opts machine = { .machine = "other-machine" };
	struct test_vm_opts renamed = { .ram1_name = "vram2" };
	struct test_vm_opts more_ram = { .extra_ram = true };

	CHECK_ERR(transfer(NULL, &big, &err), -EINVAL, &err,
		  "RAM block 'pc.ram': stream has 32768 bytes, this VMM has 65536 bytes");
	CHECK_ERR(transfer(&big, NULL, &err), -EINVAL, &err,
		  "RAM block 'pc.ram': stream has 65536 bytes, this VMM has 32768 bytes");
	CHECK_ERR(transfer(NULL, &cpus, &err), -EINVAL, &err, "stream has 2 vCPUs, this VMM has 4");
	CHECK_ERR(transfer(NULL, &machine, &err), -EINVAL, &err,
		  "stream is for machine 'test-machine', this VMM runs 'other-machine'");
	CHECK_ERR(transfer(NULL, &renamed, &err), -ENOENT, &err,
		  "RAM block 'vga.vram' (16384 bytes) of the stream does not exist in this VMM");
	CHECK_ERR(transfer(NULL, &more_ram, &err), -EINVAL, &err,
		  "RAM block 'extra.ram' of this VMM is not in the stream");
	CHECK_ERR(transfer(&more_ram, NULL, &err), -ENOENT, &err, "RAM block 'extra.ram'");
	CHECK(strstr(err.msg, "the stream does not fit this VMM: ") == err.msg);
}

static void test_section_versions(void)
{
	struct gw_error err = { 0 };
	struct test_vm_opts v1 = { .uart_version = 1 };
	struct test_vm_opts v3 = { .uart_version = 3 };
	struct test_vm_opts only_v2 = { .uart_version = 2, .uart_min_version = 2 };
	struct test_vm src, dst;
	struct test_buf s;

	CHECK_ERR(transfer(&v3, NULL, &err), -ENOTSUP, &err,
		  "section 'uart' instance 0: stream has version 3, this VMM accepts versions 1..2");
	CHECK_ERR(transfer(&v1, &only_v2, &err), -ENOTSUP, &err,
		  "section 'uart' instance 0: stream has version 1, this VMM accepts versions 2..2");
	CHECK_OK(transfer(&v3, &v3, &err), &err);

	/* An older version in range loads; the field it lacks keeps its default. */
	test_vm_init(&src, &v1);
	test_vm_init(&dst, NULL);
	test_vm_fill(&src, 1);
	dst.uart[0].scratch = 0xdefa017;
	dst.uart[1].scratch = 0xdefa017;
	test_save(&src, 0, &s);
	CHECK_OK(test_load(dst.m, s.p, s.len, &err), &err);
	for (int i = 0; i < 2; i++) {
		CHECK(dst.uart[i].scratch == 0xdefa017);
		src.uart[i].scratch = 0xdefa017;
	}
	test_vm_compare(&src, &dst);
	free(s.p);
	test_vm_free(&src);
	test_vm_free(&dst);
}

static void test_sections_present(void)
{
	struct gw_error err = { 0 };
	struct test_vm_opts extra = { .extra = true };
	struct test_vm_opts optional = { .extra_optional = true };
	struct test_vm_opts live = { .extra_live = true };
	struct test_vm_opts no_blob = { .no_blob = true };

	CHECK_ERR(transfer(&extra, NULL, &err), -ENOENT, &err,
		  "unknown section 'extra' instance 0 (version 2)");
	CHECK_ERR(transfer(NULL, &extra, &err), -EINVAL, &err,
		  "section 'extra' instance 0 of this VMM is not in the stream");
	CHECK_ERR(transfer(&no_blob, NULL, &err), -EINVAL, &err,
		  "section 'blob' instance 0 of this VMM is not in the stream");
	CHECK_OK(transfer(NULL, &optional, &err), &err);
	CHECK_OK(transfer(&extra, &optional, &err), &err);
	CHECK_ERR(transfer(&extra, &live, &err), -EPROTO, &err,
		  "section 'extra' instance 0 is one-shot in the stream but progressive in this VMM");
}

/* A stream cut into records, to reorder, drop, duplicate or rewrite them. */
struct rec {
	size_t off, len;
	uint16_t type;
};

static size_t split(const struct test_buf *s, struct rec *recs, size_t max)
{
	size_t n = 0;

	for (size_t off = GW_STREAM_HEADER_SIZE; off < s->len; n++) {
		uint64_t len;

		CHECK(n < max);
		memcpy(&recs[n].type, s->p + off, 2);
		memcpy(&len, s->p + off + 8, 8);
		recs[n].off = off;
		recs[n].len = GW_RECORD_HEADER_SIZE + len;
		off += recs[n].len;
	}
	return n;
}

/* Index of the record of type whose section name (START/FULL) or id (PART/END) matches. */
static size_t find(const struct test_buf *s, const struct rec *recs, size_t n, uint16_t type,
		   const char *name, uint32_t instance)
{
	for (size_t i = 0; i < n; i++) {
		const unsigned char *p = s->p + recs[i].off + GW_RECORD_HEADER_SIZE;
		uint32_t inst;

		if (recs[i].type != type)
			continue;
		if (!name)
			return i;
		memcpy(&inst, p + 4, 4);
		if (p[12] == strlen(name) && !memcmp(p + 13, name, p[12]) && inst == instance)
			return i;
	}
	FAIL("no %s record for '%s'", gw_record_type_name(type), name ? name : "");
}

/* Build a stream from records picked by index (-1 ends the list). */
static void join(const struct test_buf *s, const struct rec *recs, const int *pick,
		 struct test_buf *out)
{
	out->p = malloc(s->len * 2);
	memcpy(out->p, s->p, GW_STREAM_HEADER_SIZE);
	out->len = GW_STREAM_HEADER_SIZE;
	for (; *pick >= 0; pick++) {
		memcpy(out->p + out->len, s->p + recs[*pick].off, recs[*pick].len);
		out->len += recs[*pick].len;
	}
}

/* Recompute the CRCs of a record rewritten in place. */
static void reseal(unsigned char *rec)
{
	uint64_t len;
	uint32_t crc;

	memcpy(&len, rec + 8, 8);
	crc = gw_crc32c(0, rec + GW_RECORD_HEADER_SIZE, len);
	memcpy(rec + 16, &crc, 4);
	crc = gw_crc32c(0, rec, 20);
	memcpy(rec + 20, &crc, 4);
}

static void expect_stream(struct test_vm *dst, const struct test_buf *s, const struct rec *recs,
			  const int *pick, int code, const char *msg1, const char *msg2)
{
	struct gw_error err = { 0 };
	struct test_buf t;

	join(s, recs, pick, &t);
	if (code == 0)
		CHECK_OK(test_load(dst->m, t.p, t.len, &err), &err);
	else
		CHECK_ERR(test_load(dst->m, t.p, t.len, &err), code, &err, msg1, msg2);
	free(t.p);
}

static void test_record_order(void)
{
	struct test_vm src, dst;
	struct test_buf s;
	struct rec recs[64];
	size_t n;

	test_vm_init(&src, NULL);
	test_vm_init(&dst, NULL);
	test_vm_fill(&src, 21);
	test_save(&src, 0, &s);
	n = split(&s, recs, 64);

	int cfg = find(&s, recs, n, GW_REC_CONFIG, NULL, 0);
	int start = find(&s, recs, n, GW_REC_SECTION_START, "live", 0);
	int part = find(&s, recs, n, GW_REC_SECTION_PART, NULL, 0);
	int part2 = part + 1 + find(&s, recs + part + 1, n - part - 1, GW_REC_SECTION_PART, NULL, 0);
	int end = find(&s, recs, n, GW_REC_SECTION_END, NULL, 0);
	int uart0 = find(&s, recs, n, GW_REC_SECTION_FULL, "uart", 0);
	int uart1 = find(&s, recs, n, GW_REC_SECTION_FULL, "uart", 1);
	int blob = find(&s, recs, n, GW_REC_SECTION_FULL, "blob", 0);
	int vmdesc = find(&s, recs, n, GW_REC_VMDESC, NULL, 0);
	int eof = find(&s, recs, n, GW_REC_EOF, NULL, 0);
	CHECK(cfg == 0 && eof == (int)n - 1 && vmdesc == eof - 1);

	/* The minimal complete stream, with no RAM and no VMDESC: loads. */
	expect_stream(&dst, &s, recs,
		      (int[]){ cfg, start, part, part2, end, uart0, uart1, blob, eof, -1 },
		      0, NULL, NULL);
	/* Sections in any order, interleaved with others: loads. */
	expect_stream(&dst, &s, recs,
		      (int[]){ cfg, blob, start, uart1, part, vmdesc, part2, uart0, end, eof, -1 },
		      0, NULL, NULL);
	expect_stream(&dst, &s, recs, (int[]){ start, cfg, eof, -1 }, -EPROTO,
		      "stream does not start with a CONFIG record", "found SECTION_START");
	expect_stream(&dst, &s, recs, (int[]){ cfg, cfg, eof, -1 }, -EPROTO,
		      "a second CONFIG record at offset", NULL);
	expect_stream(&dst, &s, recs, (int[]){ cfg, part, eof, -1 }, -EPROTO,
		      "section 'live' instance 0 (SECTION_PART record at offset",
		      "out of order: it has not been started");
	expect_stream(&dst, &s, recs, (int[]){ cfg, start, start, eof, -1 }, -EPROTO,
		      "section 'live' instance 0", "it was already started");
	expect_stream(&dst, &s, recs, (int[]){ cfg, start, part, part2, end, part, eof, -1 }, -EPROTO,
		      "section 'live' instance 0", "it has already ended");
	expect_stream(&dst, &s, recs, (int[]){ cfg, uart0, uart0, eof, -1 }, -EPROTO,
		      "section 'uart' instance 0", "its state was already loaded");
	expect_stream(&dst, &s, recs, (int[]){ cfg, start, part, part2, end, uart0, uart1, eof, -1 }, -EPROTO,
		      "incomplete stream: EOF at offset",
		      "section 'blob' instance 0 has no state in the stream");
	expect_stream(&dst, &s, recs, (int[]){ cfg, start, uart0, uart1, blob, eof, -1 }, -EPROTO,
		      "section 'live' instance 0 was not ended", NULL);
	/* No EOF: the stream is truncated even at a record boundary. */
	expect_stream(&dst, &s, recs, (int[]){ cfg, start, part, part2, end, uart0, uart1, blob, -1 }, -EPIPE,
		      "truncated stream at offset", "record header");

	/* A record that claims to be another section than its CONFIG entry. */
	unsigned char *rec = s.p + recs[uart1].off;
	unsigned char *payload = rec + GW_RECORD_HEADER_SIZE;
	uint32_t id = 0, bad_id = 999;

	memcpy(payload, &id, 4); /* uart 1 record, id of uart 0 */
	reseal(rec);
	expect_stream(&dst, &s, recs, (int[]){ cfg, uart1, eof, -1 }, -EBADMSG,
		      "section 'uart' instance 1 version 2 does not match its CONFIG entry 0 ('uart' instance 0 version 2)",
		      NULL);
	memcpy(payload, &bad_id, 4);
	reseal(rec);
	expect_stream(&dst, &s, recs, (int[]){ cfg, uart1, eof, -1 }, -EBADMSG,
		      "section id 999 is not in the CONFIG table (4 sections)", NULL);
	free(s.p);
	test_vm_free(&src);
	test_vm_free(&dst);
}

/* Records of types this reader does not know. */
static void test_unknown_records(void)
{
	struct test_vm src, dst;
	struct gw_error err = { 0 };
	struct test_buf s, t;
	struct rec recs[64];
	unsigned char unknown[GW_RECORD_HEADER_SIZE + 5] = { 0x77, 0x77, 0x01, 0x00 };
	size_t n, at;

	test_vm_init(&src, NULL);
	test_vm_init(&dst, NULL);
	test_vm_fill(&src, 31);
	test_save(&src, 0, &s);
	n = split(&s, recs, 64);
	CHECK(n > 2);
	memcpy(unknown + 8, &(uint64_t){ 5 }, 8);
	memcpy(unknown + GW_RECORD_HEADER_SIZE, "hello", 5);
	reseal(unknown);

	/* Insert the unknown record right after CONFIG. */
	at = recs[1].off;
	t.len = s.len + sizeof(unknown);
	t.p = malloc(t.len);
	memcpy(t.p, s.p, at);
	memcpy(t.p + at, unknown, sizeof(unknown));
	memcpy(t.p + at + sizeof(unknown), s.p + at, s.len - at);
	CHECK_OK(test_load(dst.m, t.p, t.len, &err), &err);
	test_vm_compare(&src, &dst);

	/* Corrupted, it is refused although it would be skipped. */
	t.p[at + GW_RECORD_HEADER_SIZE] ^= 1;
	CHECK_ERR(test_load(dst.m, t.p, t.len, &err), -EBADMSG, &err,
		  "corrupted unknown record at offset", "payload CRC");
	t.p[at + GW_RECORD_HEADER_SIZE] ^= 1;

	/* Without the SKIPPABLE flag it cannot be skipped. */
	t.p[at + 2] = 0;
	reseal(t.p + at);
	CHECK_ERR(test_load(dst.m, t.p, t.len, &err), -EPROTONOSUPPORT, &err,
		  "record type 0x7777 at offset", "is unknown to this reader and not skippable");
	free(t.p);
	free(s.p);
	test_vm_free(&src);
	test_vm_free(&dst);
}

/* Devices whose callbacks do not keep their side of the contract. */
struct bad_dev {
	uint32_t save_words; /* u32s written */
	uint32_t load_words; /* u32s read */
	int save_ret, load_ret;
	bool quiet; /* fail without a message */
};

static int bad_save(void *opaque, struct gw_wbuf *out, struct gw_error *err)
{
	struct bad_dev *d = opaque;

	for (uint32_t i = 0; i < d->save_words; i++)
		gw_put_u32(out, i);
	return d->save_ret ? gw_error_set(err, d->save_ret, "the device is on fire") : 0;
}

static int bad_load(void *opaque, struct gw_rbuf *in, uint32_t version, struct gw_error *err)
{
	struct bad_dev *d = opaque;
	uint32_t v;

	(void)version;
	for (uint32_t i = 0; i < d->load_words; i++)
		gw_get_u32(in, &v);
	if (d->quiet)
		return d->load_ret;
	return d->load_ret ? gw_error_set(err, d->load_ret, "the device exploded") : 0;
}

static struct gw_migration *bad_machine(struct bad_dev *d)
{
	static const struct gw_machine mc = { "t", "1", "bad", 1 };
	struct gw_section s = { .name = "bad", .instance = 3, .version = 1, .min_version = 1,
				.save = bad_save, .load = bad_load, .opaque = d };
	struct gw_error err = { 0 };
	struct gw_migration *m;

	CHECK_OK(gw_migration_new(&mc, &m, &err), &err);
	CHECK_OK(gw_migration_add_section(m, &s, &err), &err);
	return m;
}

static int bad_transfer(struct bad_dev *src_dev, struct bad_dev *dst_dev, struct gw_error *err)
{
	struct gw_migration *src = bad_machine(src_dev), *dst = bad_machine(dst_dev);
	struct test_buf s;
	int ret;

	test_save_sections(src, &s);
	ret = test_load(dst, s.p, s.len, err);
	free(s.p);
	gw_migration_free(src);
	gw_migration_free(dst);
	return ret;
}

static void test_callbacks(void)
{
	struct gw_error err = { 0 };
	struct bad_dev three = { 3, 3, 0, 0 };
	struct bad_dev two = { 2, 2, 0, 0 };
	struct bad_dev four = { 4, 4, 0, 0 };
	struct bad_dev fails = { 3, 3, 0, -EIO };
	struct bad_dev silent = { 3, 3, 0, -EIO, true };

	CHECK_OK(bad_transfer(&three, &three, &err), &err);
	CHECK_ERR(bad_transfer(&three, &two, &err), -EBADMSG, &err,
		  "section 'bad' instance 3 (SECTION_FULL record at offset",
		  "4 of 12 bytes of data left unread (version 1)");
	CHECK_ERR(bad_transfer(&three, &four, &err), -EBADMSG, &err,
		  "section 'bad' instance 3", "read past the end of the 12 bytes of data");
	CHECK_ERR(bad_transfer(&three, &fails, &err), -EIO, &err,
		  "section 'bad' instance 3", "load callback failed: the device exploded");

	/* A callback that fails without a message still gets a useful one. */
	CHECK_ERR(bad_transfer(&three, &silent, &err), -EIO, &err,
		  "section 'bad' instance 3", "load callback failed: Input/output error");

	/* A failing save callback ends the stream: finishing it is refused. */
	struct bad_dev save_fails = { 1, 1, -ENOSPC, 0 };
	struct gw_migration *src = bad_machine(&save_fails);
	struct gw_writer *w;
	int fd = test_memfd(NULL, 0);

	CHECK_OK(gw_writer_new(fd, &w, &err), &err);
	CHECK_OK(gw_save_begin(src, w, &err), &err);
	CHECK_ERR(gw_save_devices(src, w, &err), -ENOSPC, &err,
		  "section 'bad' instance 3 (SECTION_FULL record at offset",
		  "save callback failed: the device is on fire");
	CHECK_ERR(gw_save_finish(src, w, &err), -EINVAL, &err,
		  "gw_save_finish called out of order: no stream has begun");
	gw_writer_free(w);
	close(fd);
	gw_migration_free(src);
}

int main(void)
{
	test_config_mismatch();
	test_section_versions();
	test_sections_present();
	test_record_order();
	test_unknown_records();
	test_callbacks();
	printf("load: all tests passed\n");
	return 0;
}
