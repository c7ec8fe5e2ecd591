/*
 * The walker: an analyzer's view of a stream with no devices registered.
 * It sees every record in order with offsets, lengths and CRC verdicts,
 * the parsed CONFIG and section identities, reports a corrupted payload
 * and goes on, and stops only where framing is lost. Which pages a later
 * copy has yet to settle, it says as the loader does.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "lib/crc32c.h"
#include "testvm.h"

struct walked {
	struct gw_record_info info[64];
	char names[64][GW_NAME_MAX + 1];
	size_t n;
	bool hashes_agree[64]; /* RAM_PAGES: nr_mismatch is what the hash arrays say */
	int ret; /* of the call that ended the walk */
	struct gw_error err;
};

/* Zero pages have hash 0, and nr_mismatch counts the pages whose hashes differ. */
static bool hashes_agree(const struct gw_record_info *in)
{
	uint32_t differ = 0;

	for (uint32_t k = 0; k < in->nr_pages; k++) {
		if ((in->entries[k] & GW_PAGE_ZERO) &&
		    (in->hashes_stored[k] != 0 || in->hashes_computed[k] != 0))
			return false;
		differ += in->hashes_stored[k] != in->hashes_computed[k];
	}
	return differ == in->nr_mismatch;
}

static void walk(const struct test_buf *s, struct walked *out, bool check_config)
{
	struct gw_walker *wk;
	struct gw_reader *r;
	int fd = test_memfd(s->p, s->len);

	memset(out, 0, sizeof(*out));
	CHECK_OK(gw_reader_new(fd, &r, &out->err), &out->err);
	CHECK_OK(gw_walker_new(r, &wk, &out->err), &out->err);
	CHECK(gw_walker_config(wk) == NULL);
	while ((out->ret = gw_walker_next(wk, &out->info[out->n], &out->err)) == 1) {
		const struct gw_record_info *in = &out->info[out->n];

		if (in->name)
			strcpy(out->names[out->n], in->name);
		/* The arrays are the walker's, valid until the next record. */
		if (in->type == GW_REC_RAM_PAGES && in->entries)
			out->hashes_agree[out->n] = hashes_agree(in);
		CHECK(++out->n < 64);
	}
	if (check_config) {
		const struct gw_config *cfg = gw_walker_config(wk);

		CHECK(cfg && cfg->page_size == GW_PAGE_SIZE && cfg->nr_vcpus == 2);
		CHECK(strcmp(cfg->vmm_name, "godwit-test") == 0);
		CHECK(strcmp(cfg->vmm_version, "0.0.1") == 0);
		CHECK(strcmp(cfg->machine, "test-machine") == 0);
		CHECK(cfg->nr_ram == 2 && strcmp(cfg->ram[1].name, "vga.vram") == 0);
		CHECK(cfg->ram[0].size == 8 * GW_PAGE_SIZE && cfg->ram[1].gpa == 0x100000000ull);
		CHECK(cfg->nr_sections == 4 && strcmp(cfg->sections[3].name, "live") == 0);
		CHECK(cfg->sections[3].flags == GW_SECF_PROGRESSIVE && cfg->sections[1].instance == 1);
	}
	/* After the end, the walk stays ended. */
	if (out->ret == 0)
		CHECK(gw_walker_next(wk, &out->info[out->n], &out->err) == 0);
	gw_walker_free(wk);
	gw_reader_free(r);
	close(fd);
}

static void test_layout(unsigned flags)
{
	static const uint16_t types[] = {
		GW_REC_CONFIG, GW_REC_SECTION_START, GW_REC_RAM_PAGES, GW_REC_SECTION_PART,
		GW_REC_RAM_PAGES, GW_REC_SECTION_PART, GW_REC_RAM_PAGES, GW_REC_SECTION_END,
		GW_REC_SECTION_FULL, GW_REC_SECTION_FULL, GW_REC_SECTION_FULL, GW_REC_VMDESC,
		GW_REC_EOF,
	};
	static const char *const names[] = {
		"", "live", "", "live", "", "live", "", "live", "uart", "uart", "blob", "", "",
	};
	struct test_vm vm;
	struct test_buf s;
	static struct walked w;
	uint64_t offset = GW_STREAM_HEADER_SIZE;

	test_vm_init(&vm, NULL);
	test_vm_fill(&vm, 3);
	test_save(&vm, flags, &s);
	walk(&s, &w, true);
	CHECK(w.ret == 0);
	CHECK(w.n == sizeof(types) / sizeof(types[0]));
	for (size_t i = 0; i < w.n; i++) {
		const struct gw_record_info *in = &w.info[i];

		CHECK(in->type == types[i]);
		CHECK(in->offset == offset);
		CHECK(strcmp(w.names[i], names[i]) == 0);
		offset += GW_RECORD_HEADER_SIZE + in->length;
		CHECK(in->crc == GW_CRC_OK);
		if (in->type != GW_REC_RAM_PAGES)
			continue;
		/* Every page matches its hash, whether the guest could change it or not. */
		CHECK(in->nr_mismatch == 0 && w.hashes_agree[i]);
	}
	CHECK(offset == s.len);
	/* RAM: block 0 pages 0-3, block 1 pages 0-3, block 0 pages 4-7; every third page zero. */
	CHECK(w.info[2].block_id == 0 && w.info[2].nr_pages == 4 && w.info[2].nr_zero == 1);
	CHECK(w.info[4].block_id == 1 && w.info[4].nr_pages == 4 && w.info[4].nr_zero == 1);
	CHECK(w.info[6].block_id == 0 && w.info[6].nr_pages == 4 && w.info[6].nr_zero == 2);
	CHECK(w.info[9].instance == 1 && w.info[9].version == 2 && w.info[9].section_id == 1);
	CHECK(w.info[3].section_id == 3 && w.info[3].version == 1);
	CHECK(w.info[11].flags == GW_RECF_SKIPPABLE);
	free(s.p);
	test_vm_free(&vm);
}

static void test_corruption(unsigned flags)
{
	struct test_vm vm;
	struct test_buf s;
	static struct walked w, clean;
	size_t off;

	test_vm_init(&vm, NULL);
	test_vm_fill(&vm, 4);
	test_save(&vm, flags, &s);
	walk(&s, &clean, false);

	/* Section data, page data and a page descriptor: reported, the walk goes on.
	 * Page data that fails its hash is bad only if it could not change while
	 * sent (DATA_CRC); otherwise it may be torn, and a later copy decides. */
	const size_t victims[] = { 10, 2, 4 };
	for (size_t v = 0; v < 3; v++) {
		const struct gw_record_info *in = &clean.info[victims[v]];
		enum gw_crc_verdict bad = v == 1 && !(flags & SAVE_DATA_CRC) ? GW_CRC_DESC_ONLY :
					  GW_CRC_BAD;

		off = in->offset + GW_RECORD_HEADER_SIZE + (v == 2 ? 20 : in->length - 1);
		s.p[off] ^= 0x40;
		walk(&s, &w, true);
		s.p[off] ^= 0x40;
		CHECK(w.ret == 0 && w.n == clean.n);
		for (size_t i = 0; i < w.n; i++)
			CHECK(w.info[i].crc == (i == victims[v] ? bad : GW_CRC_OK));
		/* The last page of the record is the one hit. */
		if (v == 1)
			CHECK(w.info[2].nr_mismatch == 1 && w.hashes_agree[2] &&
			      w.info[2].crc_stored == 0 && w.info[2].crc_computed == 0);
	}

	/* A corrupted CONFIG is reported and not parsed. */
	s.p[GW_STREAM_HEADER_SIZE + GW_RECORD_HEADER_SIZE + 3] ^= 1;
	walk(&s, &w, false);
	s.p[GW_STREAM_HEADER_SIZE + GW_RECORD_HEADER_SIZE + 3] ^= 1;
	CHECK(w.ret == 0 && w.info[0].crc == GW_CRC_BAD && w.info[3].name == NULL);

	/* A corrupted header: the length cannot be trusted, the walk ends there. */
	off = clean.info[5].offset + 9;
	s.p[off] ^= 1;
	walk(&s, &w, true);
	s.p[off] ^= 1;
	CHECK(w.ret == -EBADMSG && w.n == 5);
	CHECK(strstr(w.err.msg, "corrupted record header at offset"));

	/* Truncated. */
	s.len -= 3;
	walk(&s, &w, true);
	CHECK(w.ret == -EPIPE && w.n == clean.n - 1);
	s.len += 3;

	/* Not a stream. */
	struct gw_error err = { 0 };
	struct gw_walker *wk;
	struct gw_reader *r;
	int fd = test_memfd("GODWIT??xxxxxxxx", 16);

	CHECK_OK(gw_reader_new(fd, &r, &err), &err);
	CHECK_ERR(gw_walker_new(r, &wk, &err), -EPROTO, &err, "not a godwit stream");
	gw_reader_free(r);
	close(fd);
	free(s.p);
	test_vm_free(&vm);
}

/* Records of a type the walker does not know are listed with their CRC verdict. */
static void test_unknown(void)
{
	static struct walked w;
	unsigned char rec[GW_RECORD_HEADER_SIZE + 3] = { 0x34, 0x12 };
	struct test_vm vm;
	struct test_buf s, t;
	uint64_t len = 3;
	uint32_t crc;
	size_t at;

	test_vm_init(&vm, NULL);
	test_save(&vm, 0, &s);
	walk(&s, &w, false);
	at = w.info[1].offset;
	memcpy(rec + 8, &len, 8);
	memcpy(rec + GW_RECORD_HEADER_SIZE, "abc", 3);
	crc = gw_crc32c(0, "abc", 3);
	memcpy(rec + 16, &crc, 4);
	crc = gw_crc32c(0, rec, 20);
	memcpy(rec + 20, &crc, 4);
	t.len = s.len + sizeof(rec);
	t.p = malloc(t.len);
	memcpy(t.p, s.p, at);
	memcpy(t.p + at, rec, sizeof(rec));
	memcpy(t.p + at + sizeof(rec), s.p + at, s.len - at);
	walk(&t, &w, true);
	CHECK(w.ret == 0 && w.info[1].type == 0x1234 && w.info[1].length == 3);
	CHECK(w.info[1].crc == GW_CRC_OK && w.info[2].type == GW_REC_SECTION_START);
	CHECK(strcmp(gw_record_type_name(0x1234), "unknown") == 0);
	t.p[at + GW_RECORD_HEADER_SIZE] = 'X';
	walk(&t, &w, true);
	CHECK(w.ret == 0 && w.info[1].crc == GW_CRC_BAD);
	free(t.p);
	free(s.p);
	test_vm_free(&vm);
}

/*
 * Which pages are settled. A torn copy of a page (its data does not match
 * its hash) waits for a later copy; the walker must say what the loader
 * says, in the same words: RAM_PAGES records are spliced in from clean
 * and torn copies of a stream, and each stream is both walked and loaded.
 */
struct settled {
	int ret;
	uint64_t record;
	struct gw_error err;
};

static void walk_settled(const struct test_buf *s, struct settled *out)
{
	struct gw_record_info info;
	struct gw_walker *wk;
	struct gw_reader *r;
	int fd = test_memfd(s->p, s->len), ret;

	memset(out, 0, sizeof(*out));
	CHECK_OK(gw_reader_new(fd, &r, &out->err), &out->err);
	CHECK_OK(gw_walker_new(r, &wk, &out->err), &out->err);
	while ((ret = gw_walker_next(wk, &info, &out->err)) == 1)
		;
	CHECK_OK(ret, &out->err);
	out->record = 1; /* not an offset a record can have: must be overwritten or kept */
	out->ret = gw_walker_settled(wk, &out->record, &out->err);
	/* record is optional. */
	struct gw_error err = { 0 };
	CHECK(gw_walker_settled(wk, NULL, &err) == out->ret);
	gw_walker_free(wk);
	gw_reader_free(r);
	close(fd);
}

/* The walker's verdict on s, which the loader must share; returns the
 * offset it names (1 when every page is settled). */
static uint64_t check_settled(const struct test_buf *s, int want)
{
	struct gw_error err = { 0 };
	struct settled w;
	struct test_vm dst;

	walk_settled(s, &w);
	CHECK(w.ret == want);
	test_vm_init(&dst, NULL);
	CHECK(test_load(dst.m, s->p, s->len, &err) == want);
	if (want < 0) {
		CHECK(w.err.code == want);
		CHECK(strstr(err.msg, w.err.msg));
	}
	test_vm_free(&dst);
	return w.record;
}

/* s with the bytes [p, p + len) inserted at offset at. */
static void splice(const struct test_buf *s, size_t at, const void *p, size_t len,
		   struct test_buf *out)
{
	out->len = s->len + len;
	out->p = malloc(out->len);
	CHECK(out->p);
	memcpy(out->p, s->p, at);
	memcpy(out->p + at, p, len);
	memcpy(out->p + at + len, s->p + at, s->len - at);
}

static void test_settled(void)
{
	static struct walked w;
	struct test_vm vm;
	struct test_buf clean, torn, zeroed, t, u;
	struct settled v;

	test_vm_init(&vm, NULL);
	test_vm_fill(&vm, 3);
	test_save(&vm, 0, &clean);
	walk(&clean, &w, true);
	/* Record 2: pages 0-3 of block 0, page 1 zero, so its last bytes are
	 * page 3's. Record 3 follows it. */
	CHECK(w.info[2].type == GW_REC_RAM_PAGES && w.info[2].block_id == 0 &&
	      w.info[2].nr_zero == 1);
	size_t r2 = w.info[2].offset, r2_len = GW_RECORD_HEADER_SIZE + w.info[2].length;
	size_t r3 = w.info[3].offset;
	CHECK(check_settled(&clean, 0) == 1);

	torn.len = clean.len;
	torn.p = malloc(torn.len);
	CHECK(torn.p);
	memcpy(torn.p, clean.p, clean.len);
	torn.p[r2 + r2_len - 1] ^= 0x40;

	/* Torn, never sent again: damaged, and the record is named. */
	CHECK(check_settled(&torn, -EBADMSG) == r2);
	walk_settled(&torn, &v);
	CHECK(strstr(v.err.msg, "page 0x3000 of RAM block 'pc.ram' arrived damaged"));

	/* Torn, then a good copy: settled. */
	splice(&torn, r3, clean.p + r2, r2_len, &t);
	CHECK(check_settled(&t, 0) == 1);
	/* ... then torn again: the latest tear is named. */
	splice(&t, r3 + r2_len, torn.p + r2, r2_len, &u);
	CHECK(check_settled(&u, -EBADMSG) == r3 + r2_len);
	free(u.p);
	free(t.p);
	/* A good copy first and a torn one after it: only the last copy counts. */
	splice(&clean, r3, torn.p + r2, r2_len, &t);
	CHECK(check_settled(&t, -EBADMSG) == r3);
	free(t.p);

	/* Torn, then zero: a ZERO entry settles the page. The same record of a
	 * stream saved once page 3 was zeroed has it as one. */
	memset(vm.ram[0].host + 3 * GW_PAGE_SIZE, 0, GW_PAGE_SIZE);
	test_save(&vm, 0, &zeroed);
	walk(&zeroed, &w, true);
	CHECK(w.info[2].nr_zero == 2 && w.info[2].offset == r2);
	splice(&torn, r3, zeroed.p + w.info[2].offset, GW_RECORD_HEADER_SIZE + w.info[2].length,
	       &t);
	CHECK(check_settled(&t, 0) == 1);
	free(t.p);

	/* Without a good CONFIG nothing can be settled, or tracked. */
	torn.p[GW_STREAM_HEADER_SIZE + GW_RECORD_HEADER_SIZE + 3] ^= 1;
	walk_settled(&torn, &v);
	CHECK(v.ret == 0 && v.record == 1);
	free(zeroed.p);
	free(torn.p);
	free(clean.p);
	test_vm_free(&vm);

	/* Under DATA_CRC the loader refuses the record at once; the walker
	 * lists it as BAD and, at the end, the page as never settled. */
	test_vm_init(&vm, NULL);
	test_vm_fill(&vm, 3);
	test_save(&vm, SAVE_DATA_CRC, &clean);
	walk(&clean, &w, true);
	clean.p[w.info[2].offset + GW_RECORD_HEADER_SIZE + w.info[2].length - 1] ^= 0x40;
	walk_settled(&clean, &v);
	CHECK(v.ret == -EBADMSG && v.record == w.info[2].offset);
	free(clean.p);
	test_vm_free(&vm);
}

int main(void)
{
	test_layout(0);
	test_layout(SAVE_DATA_CRC);
	test_corruption(0);
	test_corruption(SAVE_DATA_CRC);
	test_unknown();
	test_settled();
	printf("walk: all tests passed\n");
	return 0;
}
