/*
 * godwit analyze: check and describe a godwit stream with nothing but
 * the library's walker (godwit/walk.h) - no device code, no migration
 * object. It reads front to back and never seeks, so a pipe works
 * (`ssh host cat guest.gw | godwit analyze -`).
 *
 * Pages: every page copy carries a hash. A copy that does not match was
 * torn - the guest wrote the page while it was sent, and a later copy
 * replaces it - or damaged. Which one only the rest of the stream tells:
 * a page whose last copy does not match is damaged, and the stream with
 * it (unless the record had DATA_CRC, when any mismatch is damage). The
 * walker keeps that account, the loader's own (gw_walker_settled()), so
 * analyze and a load agree on which pages arrived damaged.
 *
 * Memory stays bounded whatever the stream's length: page data is
 * discarded as it is walked (the walker hashes it), per-page bookkeeping
 * is a bit per page of guest RAM here (sent yet?) and one in the walker
 * (settled?), the records are printed (also under --json) as they are
 * walked, and device state is kept only up to MAX_KEPT_STATE bytes until
 * the VMDESC at the end can explain it.
 */
#include "analyze.h"
#include "cli.h"
#include "units.h"

#include <errno.h>
#include <fcntl.h>
#include <godwit/format.h>
#include <godwit/io.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_KEPT_STATE (64u << 20)

struct block_stats {
	uint64_t records, zero, normal, resent, unique, torn;
	uint64_t nr_pages; /* of the block, from CONFIG */
	uint64_t *seen;    /* one bit per page; NULL if it could not be had */
};

/* Consecutive RAM_PAGES records of one block with the same flags, shown
 * as one line unless --records. */
struct run {
	uint64_t nr; /* records; 0: no run open */
	uint64_t first, end, length;
	uint32_t block;
	uint16_t flags;
	uint64_t pages, zero;
};

enum verdict { INTACT, CORRUPTED, TRUNCATED, MALFORMED, UNREADABLE };

/* clang-format off */
static const char *const verdict_names[] = {
	[INTACT] = "intact", [CORRUPTED] = "corrupted", [TRUNCATED] = "truncated",
	[MALFORMED] = "malformed", [UNREADABLE] = "unreadable",
};
/* clang-format on */

struct analysis {
	const struct opts *o;
	const char *path;
	struct gw_walker *wk;
	const struct gw_config *cfg; /* NULL until a good CONFIG is walked */
	struct block_stats *blocks;
	struct section_stats *sections;
	struct run run;
	bool table_started; /* human: the records table has its heading */
	bool json_first;    /* JSON: no record printed yet */
	uint64_t nr_records, bad_records, first_bad;
	uint64_t end;  /* offset after the last record walked */
	uint64_t last; /* offset of the last record walked, 0: none */
	uint16_t last_type;
	uint64_t kept; /* bytes of device state kept */
	char *vmdesc;
	size_t vmdesc_len;
	enum verdict verdict;
	char why[GW_ERROR_MSG_MAX + 128];     /* what is wrong, unless INTACT */
	uint64_t why_offset;                  /* where, for --json */
	char stopped[GW_ERROR_MSG_MAX + 128]; /* why the walk ended before EOF, or "" */
};

static void problem(struct analysis *a, enum verdict v, uint64_t offset, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* Remember the first thing wrong with the stream: it decides the verdict. */
static void problem(struct analysis *a, enum verdict v, uint64_t offset, const char *fmt, ...)
{
	if (a->verdict != INTACT)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(a->why, sizeof(a->why), fmt, ap);
	va_end(ap);
	a->verdict = v;
	a->why_offset = offset;
}

static const char *check_name(const struct gw_record_info *in)
{
	return in->crc == GW_CRC_OK ? "ok" : in->crc == GW_CRC_DESC_ONLY ? "torn" : "BAD";
}

static const char *flags_name(uint16_t flags)
{
	switch (flags) {
	case 0:
		return "-";
	case GW_RECF_SKIPPABLE:
		return "skippable";
	case GW_RECF_DATA_CRC:
		return "data-crc";
	default:
		return "skippable,data-crc";
	}
}

static const char *block_name(const struct analysis *a, uint32_t id)
{
	return a->cfg && id < a->cfg->nr_ram ? a->cfg->ram[id].name : NULL;
}

static bool is_section(uint16_t type)
{
	return type >= GW_REC_SECTION_START && type <= GW_REC_SECTION_FULL;
}

/* ---- the configuration ------------------------------------------------- */

static void take_config(struct analysis *a, const struct gw_config *cfg)
{
	a->cfg = cfg;
	a->blocks = calloc(cfg->nr_ram ? cfg->nr_ram : 1, sizeof(*a->blocks));
	a->sections = calloc(cfg->nr_sections ? cfg->nr_sections : 1, sizeof(*a->sections));
	if (!a->blocks || !a->sections) {
		fprintf(stderr, "godwit: analyze: out of memory\n");
		exit(EXIT_FAILURE);
	}
	for (uint32_t i = 0; i < cfg->nr_ram; i++) {
		struct block_stats *b = &a->blocks[i];
		b->nr_pages = cfg->ram[i].size / cfg->page_size;
		/* Without it only re-sent and unique pages go unreported. */
		b->seen = calloc((b->nr_pages + 63) / 64, sizeof(uint64_t));
	}
}

static void print_config(const struct gw_config *cfg)
{
	char size[UNITS_BUF];
	printf("\nCONFIG: %s %s, machine %s, %u vCPU%s, pages of %u bytes\n", cfg->vmm_name,
	       cfg->vmm_version, cfg->machine, cfg->nr_vcpus, cfg->nr_vcpus == 1 ? "" : "s",
	       cfg->page_size);
	printf("  RAM blocks:\n");
	for (uint32_t i = 0; i < cfg->nr_ram; i++) {
		const struct gw_config_ram *r = &cfg->ram[i];
		printf("    %-16s %10s (%" PRIu64 " bytes)", r->name, fmt_bytes(size, r->size),
		       r->size);
		if (r->gpa != GW_GPA_NONE)
			printf(" at guest address 0x%" PRIx64, r->gpa);
		putchar('\n');
	}
	printf("  sections:\n");
	for (uint32_t i = 0; i < cfg->nr_sections; i++) {
		const struct gw_config_section *s = &cfg->sections[i];
		char name[GW_NAME_MAX + 16];
		snprintf(name, sizeof(name), "%s %u", s->name, s->instance);
		printf("    %-16s version %u%s\n", name, s->version,
		       s->flags & GW_SECF_PROGRESSIVE ? ", progressive" : "");
	}
}

static json_t *config_json(const struct gw_config *cfg)
{
	json_t *ram = json_array(), *sections = json_array();
	for (uint32_t i = 0; i < cfg->nr_ram; i++) {
		const struct gw_config_ram *r = &cfg->ram[i];
		json_t *b = json_pack("{s:s,s:I}", "name", r->name, "size", (json_int_t)r->size);
		json_object_set_new(b, "gpa",
				    r->gpa == GW_GPA_NONE ? json_null() :
							    json_integer((json_int_t)r->gpa));
		json_array_append_new(ram, b);
	}
	for (uint32_t i = 0; i < cfg->nr_sections; i++) {
		const struct gw_config_section *s = &cfg->sections[i];
		json_array_append_new(sections,
				      json_pack("{s:s,s:I,s:I,s:b}", "name", s->name, "instance",
						(json_int_t)s->instance, "version",
						(json_int_t)s->version, "progressive",
						(s->flags & GW_SECF_PROGRESSIVE) != 0));
	}
	return json_pack("{s:s,s:s,s:s,s:I,s:I,s:o,s:o}", "vmm_name", cfg->vmm_name, "vmm_version",
			 cfg->vmm_version, "machine", cfg->machine, "vcpus",
			 (json_int_t)cfg->nr_vcpus, "page_size", (json_int_t)cfg->page_size, "ram",
			 ram, "sections", sections);
}

/* ---- the records --------------------------------------------------------- */

static void json_record_out(struct analysis *a, json_t *rec)
{
	printf("%s", a->json_first ? "\n" : ",\n");
	json_dumpf(rec, stdout, JSON_COMPACT);
	json_decref(rec);
	a->json_first = false;
}

static void table_heading(struct analysis *a)
{
	if (a->table_started)
		return;
	printf("\nrecords:\n%12s  %-13s %-9s %12s  %-5s  %s\n", "offset", "type", "flags", "length",
	       "check", "contents");
	a->table_started = true;
}

static void flush_run(struct analysis *a)
{
	struct run *r = &a->run;
	char what[GW_NAME_MAX + 128];
	if (!r->nr)
		return;
	int n = 0;
	if (r->nr > 1)
		n = snprintf(what, sizeof(what), "%" PRIu64 " records to offset %" PRIu64 ", ",
			     r->nr, r->end);
	snprintf(what + n, sizeof(what) - n, "%s: %" PRIu64 " page%s (%" PRIu64 " zero)",
		 block_name(a, r->block), r->pages, r->pages == 1 ? "" : "s", r->zero);
	if (a->o->json) {
		json_t *rec = json_pack("{s:I,s:s,s:i,s:s,s:I,s:s,s:I,s:s,s:I,s:I}", "offset",
					(json_int_t)r->first, "type", "RAM_PAGES", "type_code",
					GW_REC_RAM_PAGES, "flags", flags_name(r->flags), "length",
					(json_int_t)r->length, "check", "ok", "block_id",
					(json_int_t)r->block, "block", block_name(a, r->block),
					"pages", (json_int_t)r->pages, "zero", (json_int_t)r->zero);
		if (r->nr > 1) {
			json_object_set_new(rec, "records", json_integer((json_int_t)r->nr));
			json_object_set_new(rec, "end", json_integer((json_int_t)r->end));
		}
		json_object_set_new(rec, "contents", json_string(what));
		json_record_out(a, rec);
	} else {
		table_heading(a);
		printf("%12" PRIu64 "  %-13s %-9s %12" PRIu64 "  %-5s  %s\n", r->first, "RAM_PAGES",
		       flags_name(r->flags), r->length, "ok", what);
	}
	r->nr = 0;
}

/* A RAM_PAGES record of a known block, every page intact: join the open
 * run or start one. */
static void add_to_run(struct analysis *a, const struct gw_record_info *in)
{
	struct run *r = &a->run;
	if (r->nr && (r->block != in->block_id || r->flags != in->flags))
		flush_run(a);
	if (!r->nr)
		*r = (struct run){.first = in->offset, .block = in->block_id, .flags = in->flags};
	r->nr++;
	r->end = in->offset + GW_RECORD_HEADER_SIZE + in->length;
	r->length += in->length;
	r->pages += in->nr_pages;
	r->zero += in->nr_zero;
}

/* What a record holds, in words, for the table. */
static uint32_t le32(const unsigned char *p)
{
	return p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void describe(const struct analysis *a, const struct gw_record_info *in, char *buf,
		     size_t len)
{
	const char *block = block_name(a, in->block_id);
	size_t data_len;
	const unsigned char *data = gw_walker_data(a->wk, &data_len);
	buf[0] = '\0';
	switch (in->type) {
	case GW_REC_CONFIG:
		if (a->cfg)
			snprintf(buf, len, "%u RAM block%s, %u section%s", a->cfg->nr_ram,
				 a->cfg->nr_ram == 1 ? "" : "s", a->cfg->nr_sections,
				 a->cfg->nr_sections == 1 ? "" : "s");
		break;
	case GW_REC_RAM_PAGES:
		if (!in->entries)
			snprintf(buf, len, "descriptor unreadable");
		else if (block)
			snprintf(buf, len, "%s: %u page%s (%u zero)", block, in->nr_pages,
				 in->nr_pages == 1 ? "" : "s", in->nr_zero);
		else
			snprintf(buf, len, "block id %u (not in CONFIG): %u page%s (%u zero)",
				 in->block_id, in->nr_pages, in->nr_pages == 1 ? "" : "s",
				 in->nr_zero);
		break;
	case GW_REC_VMDESC:
		snprintf(buf, len, "device description, %zu bytes of JSON", data_len);
		break;
	case GW_REC_CPR:
		snprintf(buf, len, "which inherited memfd holds each RAM block (cpr-exec)");
		break;
	case GW_REC_PAUSE:
		snprintf(buf, len, "when the source paused (a local live update)");
		break;
	case GW_REC_MULTIFD:
		if (data_len == GW_MULTIFD_SIZE && data)
			snprintf(buf, len, "multifd: %u channels; this stream is %s", le32(data),
				 le32(data + 4) == GW_MULTIFD_MAIN ? "the main one" : "a channel");
		else
			snprintf(buf, len, "multifd, %zu bytes", data_len);
		break;
	case GW_REC_MULTIFD_SYNC:
		if (data_len == 8 && data)
			snprintf(buf, len, "multifd: end of round %llu on every channel",
				 (unsigned long long)(le32(data) | (uint64_t)le32(data + 4) << 32));
		else
			snprintf(buf, len, "multifd round, %zu bytes", data_len);
		break;
	case GW_REC_POSTCOPY:
		if (data_len >= GW_POSTCOPY_HEAD_SIZE && data)
			snprintf(buf, len,
				 "post-copy: pages to fetch of block %u, %llu bits from page %llu",
				 le32(data),
				 (unsigned long long)(le32(data + 16) | (uint64_t)le32(data + 20)
										<< 32),
				 (unsigned long long)(le32(data + 8) | (uint64_t)le32(data + 12)
									       << 32));
		else
			snprintf(buf, len, "post-copy bitmap, %zu bytes", data_len);
		break;
	case GW_REC_EOF:
		snprintf(buf, len, "end of stream");
		break;
	default:
		if (is_section(in->type) && in->name)
			snprintf(buf, len, "%s %u version %u, %zu bytes of data", in->name,
				 in->instance, in->version, data_len);
		else if (is_section(in->type))
			snprintf(buf, len, "section id %u (not in CONFIG), %zu bytes of data",
				 in->section_id, data_len);
		else
			snprintf(buf, len, "unknown record type 0x%04x, skipped", in->type);
	}
}

/* The first page of a RAM_PAGES record that does not match its hash. */
static uint32_t first_mismatch(const struct gw_record_info *in)
{
	uint32_t i = 0;
	while (i < in->nr_pages && in->hashes_stored[i] == in->hashes_computed[i])
		i++;
	return i;
}

/* Why the check of a record is not ok, in words; "" if it is. */
static void check_failure(const struct gw_record_info *in, char *buf, size_t len)
{
	buf[0] = '\0';
	if (in->crc == GW_CRC_OK)
		return;
	if (in->type == GW_REC_RAM_PAGES && in->entries) {
		uint32_t i = first_mismatch(in);
		snprintf(buf, len,
			 "%u page%s not match %s hash; %s at block offset 0x%" PRIx64
			 ": stored 0x%016" PRIx64 ", computed 0x%016" PRIx64,
			 in->nr_mismatch, in->nr_mismatch == 1 ? " does" : "s do",
			 in->nr_mismatch == 1 ? "its" : "their",
			 in->nr_mismatch == 1 ? "the page" : "the first,",
			 in->entries[i] & ~(uint64_t)GW_PAGE_FLAGS_MASK, in->hashes_stored[i],
			 in->hashes_computed[i]);
		return;
	}
	snprintf(buf, len, "CRC of the %s: stored 0x%08x, computed 0x%08x",
		 in->type == GW_REC_RAM_PAGES ? "descriptor" : "payload", in->crc_stored,
		 in->crc_computed);
}

static json_t *check_json(const struct gw_record_info *in)
{
	char stored[24], computed[24];
	if (in->type == GW_REC_RAM_PAGES && in->entries) {
		uint32_t i = first_mismatch(in);
		snprintf(stored, sizeof(stored), "0x%016" PRIx64, in->hashes_stored[i]);
		snprintf(computed, sizeof(computed), "0x%016" PRIx64, in->hashes_computed[i]);
		return json_pack("{s:I,s:I,s:s,s:s}", "pages", (json_int_t)in->nr_mismatch,
				 "first_page",
				 (json_int_t)(in->entries[i] & ~(uint64_t)GW_PAGE_FLAGS_MASK),
				 "stored_hash", stored, "computed_hash", computed);
	}
	return json_pack("{s:s,s:I,s:I}", "part",
			 in->type == GW_REC_RAM_PAGES ? "descriptor" : "payload", "stored_crc",
			 (json_int_t)in->crc_stored, "computed_crc", (json_int_t)in->crc_computed);
}

static void print_record(struct analysis *a, const struct gw_record_info *in)
{
	char what[GW_NAME_MAX + 128], why[256];
	describe(a, in, what, sizeof(what));
	check_failure(in, why, sizeof(why));
	if (a->o->json) {
		json_t *rec = json_pack("{s:I,s:s,s:I,s:s,s:I,s:s}", "offset",
					(json_int_t)in->offset, "type",
					gw_record_type_name(in->type), "type_code",
					(json_int_t)in->type, "flags", flags_name(in->flags),
					"length", (json_int_t)in->length, "check",
					in->crc == GW_CRC_OK        ? "ok" :
					in->crc == GW_CRC_DESC_ONLY ? "torn" :
								      "bad");
		if (in->crc != GW_CRC_OK)
			json_object_set_new(rec, "mismatch", check_json(in));
		if (is_section(in->type) && in->name)
			json_object_set_new(rec, "section",
					    json_pack("{s:I,s:s,s:I,s:I}", "id",
						      (json_int_t)in->section_id, "name", in->name,
						      "instance", (json_int_t)in->instance,
						      "version", (json_int_t)in->version));
		if (in->type == GW_REC_RAM_PAGES && in->entries) {
			const char *block = block_name(a, in->block_id);
			json_object_set_new(rec, "block_id", json_integer(in->block_id));
			json_object_set_new(rec, "block", block ? json_string(block) : json_null());
			json_object_set_new(rec, "pages", json_integer(in->nr_pages));
			json_object_set_new(rec, "zero", json_integer(in->nr_zero));
		}
		json_object_set_new(rec, "contents", json_string(what));
		json_record_out(a, rec);
		return;
	}
	table_heading(a);
	printf("%12" PRIu64 "  %-13s %-9s %12" PRIu64 "  %-5s  %s%s%s\n", in->offset,
	       gw_record_type_name(in->type), flags_name(in->flags), in->length, check_name(in),
	       what, what[0] && why[0] ? "; " : "", why);
}

/* ---- totals ------------------------------------------------------------- */

/* One copy of a page: torn or not, re-sent or new. */
static void count_copy(struct block_stats *b, const struct gw_record_info *in, uint32_t i,
		       uint64_t page)
{
	b->torn += in->hashes_stored[i] != in->hashes_computed[i];
	if (!b->seen)
		return;
	uint64_t bit = 1ull << (page % 64), *seen = &b->seen[page / 64];
	if (*seen & bit) {
		b->resent++;
	} else {
		*seen |= bit;
		b->unique++;
	}
}

static void count_pages(struct analysis *a, const struct gw_record_info *in)
{
	if (!a->cfg || in->block_id >= a->cfg->nr_ram) {
		problem(a, MALFORMED, in->offset,
			"RAM_PAGES record at offset %" PRIu64 " names RAM block id %u, which "
			"the CONFIG record does not list",
			in->offset, in->block_id);
		return;
	}
	struct block_stats *b = &a->blocks[in->block_id];
	b->records++;
	b->zero += in->nr_zero;
	b->normal += in->nr_pages - in->nr_zero;
	for (uint32_t i = 0; i < in->nr_pages; i++) {
		uint64_t page = (in->entries[i] & ~(uint64_t)GW_PAGE_FLAGS_MASK) /
				a->cfg->page_size;
		if (page >= b->nr_pages) {
			problem(a, MALFORMED, in->offset,
				"RAM_PAGES record at offset %" PRIu64 ": page offset 0x%" PRIx64
				" lies beyond the %" PRIu64 "-byte RAM block '%s'",
				in->offset, page * a->cfg->page_size,
				a->cfg->ram[in->block_id].size, a->cfg->ram[in->block_id].name);
			continue;
		}
		count_copy(b, in, i, page);
	}
}

/* At the end of a complete stream: pages whose last copy did not match. */
static void find_damaged(struct analysis *a)
{
	struct gw_error err = {0};
	uint64_t record = 0;
	if (gw_walker_settled(a->wk, &record, &err) < 0)
		problem(a, CORRUPTED, record, "%s", err.msg);
}

static void count_section(struct analysis *a, const struct gw_record_info *in)
{
	if (!a->cfg || in->section_id >= a->cfg->nr_sections) {
		if (in->crc != GW_CRC_BAD)
			problem(a, MALFORMED, in->offset,
				"%s record at offset %" PRIu64 " names section id %u, which the "
				"CONFIG record does not list",
				gw_record_type_name(in->type), in->offset, in->section_id);
		return;
	}
	struct section_stats *s = &a->sections[in->section_id];
	size_t len;
	const void *data = gw_walker_data(a->wk, &len);
	s->records[in->type - GW_REC_SECTION_START]++;
	s->bytes += len;
	if (in->type != GW_REC_SECTION_FULL)
		return;
	free(s->state);
	a->kept -= s->state_len;
	s->state = NULL;
	s->state_len = 0;
	s->state_bad = in->crc == GW_CRC_BAD;
	s->state_dropped = !s->state_bad && a->kept + len > MAX_KEPT_STATE;
	if (s->state_bad || s->state_dropped)
		return;
	s->state = malloc(len ? len : 1);
	if (!s->state) {
		s->state_dropped = true;
		return;
	}
	memcpy(s->state, data, len);
	s->state_len = len;
	a->kept += len;
}

static void keep_vmdesc(struct analysis *a, const struct gw_record_info *in)
{
	size_t len;
	const void *data = gw_walker_data(a->wk, &len);
	if (in->crc == GW_CRC_BAD)
		return;
	free(a->vmdesc);
	a->vmdesc = malloc(len ? len : 1);
	a->vmdesc_len = a->vmdesc ? len : 0;
	if (a->vmdesc)
		memcpy(a->vmdesc, data, len);
}

static void take_record(struct analysis *a, const struct gw_record_info *in)
{
	a->nr_records++;
	a->last = in->offset;
	a->last_type = in->type;
	a->end = in->offset + GW_RECORD_HEADER_SIZE + in->length;
	if (in->crc == GW_CRC_BAD) {
		char why[256];
		check_failure(in, why, sizeof(why));
		if (!a->bad_records++)
			a->first_bad = in->offset;
		problem(a, CORRUPTED, in->offset,
			"the %s record at offset %" PRIu64 " is corrupted: %s",
			gw_record_type_name(in->type), in->offset, why);
	}
	if (in->type == GW_REC_CONFIG && !a->cfg && gw_walker_config(a->wk)) {
		take_config(a, gw_walker_config(a->wk));
		if (!a->o->json)
			print_config(a->cfg);
	}
	if (in->type == GW_REC_RAM_PAGES && in->entries)
		count_pages(a, in);
	else if (is_section(in->type))
		count_section(a, in);
	else if (in->type == GW_REC_VMDESC)
		keep_vmdesc(a, in);

	if (in->type == GW_REC_RAM_PAGES && in->crc == GW_CRC_OK && block_name(a, in->block_id) &&
	    !(a->o->given & OPT_RECORDS)) {
		add_to_run(a, in);
	} else {
		flush_run(a);
		print_record(a, in);
	}
}

/* ---- where the walk stopped ---------------------------------------------- */

static enum verdict verdict_of(int code)
{
	switch (code) {
	case -EPIPE:
		return TRUNCATED;
	case -EBADMSG:
		return CORRUPTED;
	case -EPROTO:
	case -EPROTONOSUPPORT:
		return MALFORMED;
	default:
		return UNREADABLE;
	}
}

/*
 * Where a truncation is, in the stream's terms. The reader's message
 * (godwit/io.h) gives the offset where the bytes ran out; the record that
 * was being read starts at a->end, and in->type is 0 if even its header
 * could not be read.
 */
static void describe_truncation(const struct analysis *a, const struct gw_record_info *in,
				const struct gw_error *err, char *buf, size_t len)
{
	unsigned long long at;
	const char *t = strstr(err->msg, "truncated stream at offset ");
	if (!t || sscanf(t, "truncated stream at offset %llu", &at) != 1)
		snprintf(buf, len, "%s", err->msg);
	else if (at == a->end && a->last)
		snprintf(buf, len,
			 "truncated at offset %llu: the stream ends after the %s record at offset %" PRIu64
			 ", without an EOF record",
			 at, gw_record_type_name(a->last_type), a->last);
	else if (at == a->end)
		snprintf(buf, len,
			 "truncated at offset %llu: the stream ends after its header, without records",
			 at);
	else if (in->type == 0)
		snprintf(buf, len,
			 "truncated at offset %llu inside the record header at offset %" PRIu64, at,
			 a->end);
	else
		snprintf(buf, len,
			 "truncated at offset %llu inside the %s record at offset %" PRIu64
			 ", %" PRIu64 " bytes before its end",
			 at, gw_record_type_name(in->type), in->offset,
			 in->offset + GW_RECORD_HEADER_SIZE + in->length - (uint64_t)at);
}

/* The walker stopped with an error: nothing after this point can be found. */
static void walk_failed(struct analysis *a, const struct gw_record_info *in,
			const struct gw_error *err)
{
	uint64_t where = in->type ? in->offset : a->end;
	if (err->code == -EPIPE)
		describe_truncation(a, in, err, a->stopped, sizeof(a->stopped));
	else
		snprintf(a->stopped, sizeof(a->stopped), "%s", err->msg);
	problem(a, verdict_of(err->code), where, "%s", a->stopped);
}

/* ---- the report -------------------------------------------------------- */

static void print_totals(const struct analysis *a)
{
	const struct gw_config *cfg = a->cfg;
	char size[UNITS_BUF];
	printf("\nRAM, in pages of %u bytes:\n", cfg->page_size);
	printf("  %-16s %10s %8s %10s %10s %10s %10s %10s %8s %10s\n", "block", "size", "records",
	       "sent", "zero", "normal", "re-sent", "unique", "torn", "in block");
	for (uint32_t i = 0; i < cfg->nr_ram; i++) {
		const struct block_stats *b = &a->blocks[i];
		printf("  %-16s %10s %8" PRIu64 " %10" PRIu64 " %10" PRIu64 " %10" PRIu64,
		       cfg->ram[i].name, fmt_bytes(size, cfg->ram[i].size), b->records,
		       b->zero + b->normal, b->zero, b->normal);
		if (b->seen)
			printf(" %10" PRIu64 " %10" PRIu64, b->resent, b->unique);
		else
			printf(" %10s %10s", "?", "?");
		printf(" %8" PRIu64 " %10" PRIu64 "\n", b->torn, b->nr_pages);
	}
	printf("\nsections:\n");
	for (uint32_t i = 0; i < cfg->nr_sections; i++) {
		static const char *const kinds[] = {"START", "PART", "END", "FULL"};
		const struct section_stats *s = &a->sections[i];
		char name[GW_NAME_MAX + 16];
		snprintf(name, sizeof(name), "%s %u", cfg->sections[i].name,
			 cfg->sections[i].instance);
		printf("  %-16s version %-3u %10" PRIu64 " bytes  ", name, cfg->sections[i].version,
		       s->bytes);
		const char *sep = "";
		for (int k = 0; k < 4; k++) {
			if (!s->records[k])
				continue;
			printf("%s%" PRIu64 " %s", sep, s->records[k], kinds[k]);
			sep = ", ";
		}
		printf("%s\n", *sep ? "" : "no records");
	}
}

static json_t *totals_json(const struct analysis *a, json_t **sections_out)
{
	const struct gw_config *cfg = a->cfg;
	json_t *ram = json_array(), *sections = json_array();
	for (uint32_t i = 0; i < cfg->nr_ram; i++) {
		const struct block_stats *b = &a->blocks[i];
		json_t *o = json_pack("{s:s,s:I,s:I,s:I,s:I,s:I}", "block", cfg->ram[i].name,
				      "block_pages", (json_int_t)b->nr_pages, "records",
				      (json_int_t)b->records, "pages",
				      (json_int_t)(b->zero + b->normal), "zero",
				      (json_int_t)b->zero, "normal", (json_int_t)b->normal);
		json_object_set_new(o, "resent",
				    b->seen ? json_integer((json_int_t)b->resent) : json_null());
		json_object_set_new(o, "unique",
				    b->seen ? json_integer((json_int_t)b->unique) : json_null());
		json_object_set_new(o, "torn", json_integer((json_int_t)b->torn));
		json_array_append_new(ram, o);
	}
	for (uint32_t i = 0; i < cfg->nr_sections; i++) {
		const struct section_stats *s = &a->sections[i];
		json_array_append_new(sections,
				      json_pack("{s:s,s:I,s:I,s:I,s:{s:I,s:I,s:I,s:I}}", "name",
						cfg->sections[i].name, "instance",
						(json_int_t)cfg->sections[i].instance, "version",
						(json_int_t)cfg->sections[i].version, "bytes",
						(json_int_t)s->bytes, "records", "start",
						(json_int_t)s->records[0], "part",
						(json_int_t)s->records[1], "end",
						(json_int_t)s->records[2], "full",
						(json_int_t)s->records[3]));
	}
	*sections_out = sections;
	return ram;
}

static void print_verdict(const struct analysis *a)
{
	if (a->verdict == INTACT) {
		printf("\nstream intact: %" PRIu64 " records, %" PRIu64
		       " bytes, ending with its EOF record\n",
		       a->nr_records, a->end);
		return;
	}
	printf("%sstream %s: %s\n", a->wk ? "\n" : "", verdict_names[a->verdict], a->why);
	if (a->bad_records > 1)
		printf("%" PRIu64 " records are corrupted, the first at offset %" PRIu64 "\n",
		       a->bad_records, a->first_bad);
	if (a->stopped[0] && strcmp(a->stopped, a->why))
		printf("and the walk stopped early: %s\n", a->stopped);
}

static void finish_json(const struct analysis *a)
{
	json_t *doc = json_object(), *sections = NULL;
	json_object_set_new(doc, "config", a->cfg ? config_json(a->cfg) : json_null());
	if (a->cfg) {
		json_object_set_new(doc, "ram", totals_json(a, &sections));
		json_t *state = state_json(a->cfg, a->sections, a->vmdesc, a->vmdesc_len,
					   !(a->o->given & OPT_NO_DECODE));
		/* Each section's totals and state in one object. */
		size_t i;
		json_t *s;
		json_array_foreach(sections, i, s)
			json_object_update(s, json_array_get(state, i));
		json_decref(state);
	}
	json_object_set_new(doc, "sections", sections ? sections : json_array());
	json_t *vmdesc = a->vmdesc ? json_loadb(a->vmdesc, a->vmdesc_len, 0, NULL) : NULL;
	json_object_set_new(doc, "vmdesc", vmdesc ? vmdesc : json_null());
	json_t *result = json_pack("{s:b,s:s,s:I,s:I,s:I}", "intact", a->verdict == INTACT,
				   "verdict", verdict_names[a->verdict], "records",
				   (json_int_t)a->nr_records, "bad_records",
				   (json_int_t)a->bad_records, "bytes", (json_int_t)a->end);
	if (a->verdict != INTACT) {
		json_object_set_new(result, "error", json_string(a->why));
		json_object_set_new(result, "offset", json_integer((json_int_t)a->why_offset));
	}
	if (a->stopped[0])
		json_object_set_new(result, "stopped", json_string(a->stopped));
	json_object_set_new(doc, "result", result);

	/* The rest of the document that "records" opened. */
	const char *key;
	json_t *v;
	printf("%s]", a->json_first ? "" : "\n");
	json_object_foreach(doc, key, v) {
		char *text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
		printf(",\n\"%s\": %s", key, text ? text : "null");
		free(text);
	}
	printf("}\n");
	json_decref(doc);
}

/* ---- the command -------------------------------------------------------- */

static void walk(struct analysis *a)
{
	for (;;) {
		struct gw_record_info in;
		struct gw_error err = {0};
		int rc = gw_walker_next(a->wk, &in, &err);
		if (rc == 1) {
			take_record(a, &in);
			continue;
		}
		flush_run(a);
		if (rc < 0)
			walk_failed(a, &in, &err);
		else if (a->cfg)
			find_damaged(a);
		return;
	}
}

static int open_input(const char *path)
{
	if (!strcmp(path, "-"))
		return STDIN_FILENO;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		fprintf(stderr, "godwit: analyze: cannot open %s: %s\n", path, strerror(errno));
	return fd;
}

static void release(struct analysis *a)
{
	for (uint32_t i = 0; a->cfg && i < a->cfg->nr_ram; i++)
		free(a->blocks[i].seen);
	for (uint32_t i = 0; a->cfg && i < a->cfg->nr_sections; i++)
		free(a->sections[i].state);
	free(a->blocks);
	free(a->sections);
	free(a->vmdesc);
	gw_walker_free(a->wk);
}

int run_analyze(const struct opts *o, char **argv)
{
	struct analysis a = {.o = o,
			     .path = argv[0],
			     .json_first = true,
			     .end = GW_STREAM_HEADER_SIZE};
	struct gw_error err = {0};
	struct gw_reader *r;
	int fd = open_input(a.path);
	if (fd < 0)
		return EXIT_FAILURE;
	/* A mapped-ram file: its header, blocks and pages first, then the
	 * stream inside it, walked as any stream (analyze_mapped.c). */
	json_t *mapped = NULL;
	uint64_t stream_at = 0;
	char mapped_why[GW_ERROR_MSG_MAX] = "";
	int mapped_ret = 1;
	if (fd != STDIN_FILENO && mapped_sniff(fd)) {
		mapped_ret = mapped_analyze(fd, a.path, o->json, &mapped, &stream_at, mapped_why,
					    sizeof(mapped_why));
		if (stream_at && lseek(fd, (off_t)stream_at, SEEK_SET) < 0)
			stream_at = 0;
		if (mapped_ret < 0)
			problem(&a, CORRUPTED, 0, "%s", mapped_why);
	}
	if (gw_reader_new(fd, &r, &err) < 0) {
		fprintf(stderr, "godwit: analyze: %s\n", err.msg);
		return EXIT_FAILURE;
	}
	int ret = gw_walker_new(r, &a.wk, &err);
	if (o->json) {
		json_t *head = json_pack("{s:s,s:o}", "file", a.path, "format_version",
					 ret < 0 ? json_null() : json_integer(GW_FORMAT_VERSION));
		if (mapped)
			json_object_update(head, mapped);
		char *text = json_dumps(head, JSON_COMPACT);
		/* Open the object and its "records" array, which follow as walked. */
		printf("%.*s, \"records\": [", text ? (int)strlen(text) - 1 : 0, text ? text : "");
		free(text);
		json_decref(head);
	} else if (ret == 0) {
		printf("%s: godwit stream, format version %u%s\n",
		       strcmp(a.path, "-") ? a.path : "standard input", GW_FORMAT_VERSION,
		       gw_walker_stream_flags(a.wk) & GW_HDRF_COMMIT ?
			       " (live migration: the source asked for the switchover handshake)" :
		       gw_walker_stream_flags(a.wk) & GW_HDRF_SNAPSHOT ?
			       " (background snapshot: the guest at one instant, device state first)" :
		       gw_walker_stream_flags(a.wk) & GW_HDRF_CPR ?
			       " (local live update: device state only, the RAM stayed in its memfds)" :
			       "");
	}
	json_decref(mapped);
	if (mapped_ret < 0 && !stream_at) {
		/* The header itself is bad: there is no stream to find. */
		if (ret == 0)
			gw_walker_free(a.wk);
		a.wk = NULL;
	} else if (ret < 0) {
		a.wk = NULL;
		problem(&a, verdict_of(err.code), 0, "%s", err.msg);
	} else {
		walk(&a);
	}
	if (o->json) {
		finish_json(&a);
	} else {
		if (a.cfg) {
			print_totals(&a);
			state_print(a.cfg, a.sections, a.vmdesc, a.vmdesc_len,
				    !(o->given & OPT_NO_DECODE));
		}
		print_verdict(&a);
	}
	if (a.verdict != INTACT)
		fprintf(stderr, "godwit: analyze: %s: stream %s: %s\n",
			strcmp(a.path, "-") ? a.path : "standard input", verdict_names[a.verdict],
			a.why);
	release(&a);
	gw_reader_free(r);
	if (fd != STDIN_FILENO)
		close(fd);
	return a.verdict == INTACT ? EXIT_SUCCESS : EXIT_FAILURE;
}
