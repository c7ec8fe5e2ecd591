/*
 * The destination side: read a whole stream into the registered RAM blocks
 * and sections. The CONFIG record is checked against the registration
 * before anything is written, section records are checked for order
 * against the CONFIG table, and the stream must end with every section
 * complete and no page torn, so a load that returns 0 has loaded
 * everything, and every page as it was sent.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <godwit/stream.h>

#include "lib/bitmap.h"
#include "lib/clock.h"
#include "lib/crc32c.h"
#include "lib/format/postcopy.h"
#include "lib/internal.h"
#include "lib/ram/multifd_rx.h"
#include "lib/format/cpr.h"
#include "lib/format/multifd.h"
#include "lib/format/torn.h"

enum section_progress {
	SEC_NOTHING, /* no record yet */
	SEC_STARTED, /* SECTION_START seen, END not yet */
	SEC_COMPLETE,
};

struct load {
	struct gw_migration *m;
	struct gw_reader *r;
	struct gw_config cfg;
	uint32_t *ram_map;               /* stream block id -> index in m->ram */
	uint32_t *sec_map;               /* stream section id -> index in m->sections */
	enum section_progress *progress; /* per stream section id */
	unsigned char *buf;              /* payload of the current record */
	size_t cap;
	struct gw_pages *pages;
	struct gw_torn torn;
	bool mapped; /* a mapped-ram file's stream: its RAM is elsewhere */
	enum gw_load_cpr cpr;
	bool cpr_stream;   /* GW_HDRF_CPR: no RAM in it, adopted instead */
	uint64_t adopted;  /* cpr-exec: RAM bytes its CPR record adopted */
	uint64_t pause_ns; /* ... and its source's pause */
	/* GW_HDRF_MULTIFD: the pages come on channels that rx reads. */
	struct gw_multifd_rx *rx;
	bool multifd;
	bool multifd_hello; /* its MULTIFD record came */
	uint64_t round;     /* of its last MULTIFD_SYNC */
	/* Post-copy: the caller's bitmaps; the blocks and bitmaps in CONFIG's
	 * order, for the records' checks, and how far they got. */
	struct gw_load_postcopy *pc;
	struct gw_ram_block *pc_ram;
	uint64_t **pc_bits, **pc_early_bits; /* in CONFIG's order */
	struct gw_postcopy_cursor pc_cursor, pc_early_cursor;
};

static int read_payload(struct load *l, const struct gw_rec_hdr *h, struct gw_error *err)
{
	int ret = gw_record_read_payload(l->r, h, &l->buf, &l->cap, err);

	if (ret < 0)
		return ret;
	return gw_record_check_crc(h, gw_crc32c(0, l->buf, h->length), err);
}

/*
 * A local source's pause, on this host's CLOCK_MONOTONIC (the source is
 * this process before its exec, or a process beside it): 0 or a time
 * still to come is no pause. what names the record, for the message.
 */
static int check_pause(uint64_t t, const char *what, uint64_t offset, struct gw_error *err)
{
	uint64_t now = gw_now_ns();

	if (t == 0 || t > now)
		return gw_error_set(err, -EBADMSG,
				    "%s record at offset %llu: its pause time %llu ns is not a past time of this host's CLOCK_MONOTONIC (now %llu ns)",
				    what, (unsigned long long)offset, (unsigned long long)t,
				    (unsigned long long)now);
	return 0;
}

/* The CPR record right after CONFIG of a cpr-exec state: adopt its fds. */
static int load_cpr_record(struct load *l, struct gw_error *err)
{
	struct gw_cpr_table t;
	struct gw_rec_hdr h;
	int ret = gw_record_read_header(l->r, &h, err);

	if (ret < 0)
		return ret;
	if (h.type != GW_REC_CPR)
		return gw_error_set(err, -EPROTO,
				    "a cpr-exec state must have its CPR record after CONFIG (found %s at offset %llu)",
				    gw_record_type_name(h.type), (unsigned long long)h.offset);
	ret = read_payload(l, &h, err);
	if (ret == 0)
		ret = gw_cpr_table_parse(l->buf, h.length, &l->cfg, &t, err);
	if (ret < 0)
		return gw_error_prefix(err, ret,
				       "CPR record at offset %llu: ", (unsigned long long)h.offset);
	ret = check_pause(t.pause_ns, "CPR", h.offset, err);
	if (ret == 0)
		ret = gw_cpr_adopt(l->m, &l->cfg, &t, NULL, 0, &l->adopted, err);
	l->pause_ns = t.pause_ns;
	gw_cpr_table_release(&t);
	return ret;
}

/* A local live update's PAUSE record: when the source paused, on this
 * host's CLOCK_MONOTONIC. Only a figure: a time that cannot be is an
 * error all the same, as any field out of its range. */
static int load_pause(struct load *l, const struct gw_rec_hdr *h, struct gw_error *err)
{
	int ret = h->length == 8 ? read_payload(l, h, err) :
				   gw_error_set(err, -EBADMSG,
						"PAUSE record at offset %llu: %llu bytes, not 8",
						(unsigned long long)h->offset,
						(unsigned long long)h->length);

	if (ret == 0)
		ret = check_pause(gw_get_le64(l->buf), "PAUSE", h->offset, err);
	if (ret == 0)
		l->pause_ns = gw_get_le64(l->buf);
	return ret;
}

static int load_config(struct load *l, struct gw_error *err)
{
	struct gw_rec_hdr h;
	uint32_t n;
	int ret;

	ret = gw_record_read_header(l->r, &h, err);
	if (ret < 0)
		return ret;
	if (h.type != GW_REC_CONFIG)
		return gw_error_set(err, -EPROTO,
				    "stream does not start with a CONFIG record (found %s, type 0x%04x, at offset %llu)",
				    gw_record_type_name(h.type), h.type,
				    (unsigned long long)h.offset);
	ret = read_payload(l, &h, err);
	if (ret == 0)
		ret = gw_config_parse(l->buf, h.length, &l->cfg, err);
	if (ret < 0)
		return ret;
	n = l->cfg.nr_sections;
	l->ram_map = calloc(l->cfg.nr_ram + 1, sizeof(*l->ram_map));
	l->sec_map = calloc(n + 1, sizeof(*l->sec_map));
	l->progress = calloc(n + 1, sizeof(*l->progress));
	l->pages = malloc(sizeof(*l->pages));
	if (!l->ram_map || !l->sec_map || !l->progress || !l->pages)
		return gw_error_set(err, -ENOMEM, "load: out of memory");
	/* A cpr-exec state says which inherited memfds are the RAM: the
	 * machine must fit first, then the RAM is adopted, then matched. */
	if (l->cpr_stream && l->cpr == GW_LOAD_CPR_EXEC) {
		ret = gw_config_match_machine(l->m, &l->cfg, l->sec_map, err);
		if (ret < 0)
			return gw_error_prefix(err, ret, "the stream does not fit this VMM: ");
		ret = load_cpr_record(l, err);
		if (ret < 0)
			return ret;
	}
	ret = gw_config_match(l->m, &l->cfg, l->ram_map, l->sec_map, err);
	if (ret < 0)
		return gw_error_prefix(err, ret, "the stream does not fit this VMM: ");
	return gw_torn_init(&l->torn, l->m, err);
}

/* Is a record of this type for this section allowed now? Then record that it came. */
static int advance_section(struct load *l, const struct gw_rec_hdr *h, uint32_t id,
			   struct gw_error *err)
{
	bool progressive = l->cfg.sections[id].flags & GW_SECF_PROGRESSIVE;
	enum section_progress *p = &l->progress[id];
	const char *problem = NULL;

	switch (h->type) {
	case GW_REC_SECTION_FULL:
		if (progressive)
			problem = "a progressive section cannot have a SECTION_FULL record";
		else if (*p != SEC_NOTHING)
			problem = "its state was already loaded";
		*p = SEC_COMPLETE;
		break;
	case GW_REC_SECTION_START:
		if (!progressive)
			problem = "a one-shot section cannot have a SECTION_START record";
		else if (*p != SEC_NOTHING)
			problem = "it was already started";
		*p = SEC_STARTED;
		break;
	default: /* PART, END */
		if (!progressive)
			problem = "a one-shot section cannot have SECTION_PART/END records";
		else if (*p != SEC_STARTED)
			problem = *p == SEC_NOTHING ? "it has not been started" :
						      "it has already ended";
		else if (h->type == GW_REC_SECTION_END)
			*p = SEC_COMPLETE;
		break;
	}
	if (problem)
		return gw_error_set(err, -EPROTO, "%s record out of order: %s",
				    gw_record_type_name(h->type), problem);
	return 0;
}

static int load_section(struct load *l, const struct gw_rec_hdr *h, struct gw_error *err)
{
	const struct gw_config_section *cs;
	const struct gw_section_reg *sec;
	struct gw_section_hdr sh;
	struct gw_rbuf b, data;
	int ret;

	ret = read_payload(l, h, err);
	if (ret < 0)
		return ret;
	gw_rbuf_init(&b, l->buf, h->length);
	if (gw_section_get_hdr(&b, h->type, &sh) < 0)
		return gw_error_set(err, -EBADMSG,
				    "%s record at offset %llu: malformed section header",
				    gw_record_type_name(h->type), (unsigned long long)h->offset);
	if (sh.id >= l->cfg.nr_sections)
		return gw_error_set(err, -EBADMSG,
				    "%s record at offset %llu: section id %u is not in the CONFIG table (%u sections)",
				    gw_record_type_name(h->type), (unsigned long long)h->offset,
				    sh.id, l->cfg.nr_sections);
	cs = &l->cfg.sections[sh.id];
	if ((h->type == GW_REC_SECTION_START || h->type == GW_REC_SECTION_FULL) &&
	    (strcmp(sh.name, cs->name) != 0 || sh.instance != cs->instance ||
	     sh.version != cs->version))
		return gw_error_set(err, -EBADMSG,
				    "%s record at offset %llu: section '%s' instance %u version %u does not match its CONFIG entry %u ('%s' instance %u version %u)",
				    gw_record_type_name(h->type), (unsigned long long)h->offset,
				    sh.name, sh.instance, sh.version, sh.id, cs->name, cs->instance,
				    cs->version);
	sec = &l->m->sections[l->sec_map[sh.id]];
	ret = advance_section(l, h, sh.id, err);
	if (ret == 0) {
		gw_rbuf_init(&data, b.data + b.pos, b.len - b.pos);
		ret = gw_section_load(sec, h->type, cs->version, &data, err);
	}
	if (ret < 0)
		return gw_error_prefix(err, ret,
				       "section '%s' instance %u (%s record at offset %llu): ",
				       cs->name, cs->instance, gw_record_type_name(h->type),
				       (unsigned long long)h->offset);
	return 0;
}

static int load_pages(struct load *l, const struct gw_rec_hdr *h, struct gw_error *err)
{
	uint32_t crc;
	int ret;

	ret = gw_pages_read_desc(l->r, h, l->pages, &crc, err);
	if (ret == 0)
		ret = gw_record_check_crc(h, crc, err);
	if (ret == 0)
		ret = gw_pages_check_desc(h, l->pages, err);
	if (ret < 0)
		return ret;
	if (l->pages->block_id >= l->cfg.nr_ram)
		return gw_error_set(err, -EBADMSG,
				    "RAM_PAGES record at offset %llu: block id %u is not in the CONFIG table (%u blocks)",
				    (unsigned long long)h->offset, l->pages->block_id,
				    l->cfg.nr_ram);
	return gw_pages_load(l->m, l->ram_map[l->pages->block_id], &l->torn, l->r, h, l->pages,
			     err);
}

/* The main stream's MULTIFD record: once, before any MULTIFD_SYNC. */
static int load_multifd(struct load *l, const struct gw_rec_hdr *h, struct gw_error *err)
{
	struct gw_multifd_hello hello;
	int ret;

	if (!l->multifd || l->multifd_hello)
		return gw_error_set(err, -EPROTO, "MULTIFD record at offset %llu: %s",
				    (unsigned long long)h->offset,
				    !l->multifd ? "the stream header does not say multifd" :
						  "a second one");
	ret = read_payload(l, h, err);
	if (ret == 0)
		ret = gw_multifd_parse_hello(l->buf, h->length, &hello, "main stream", h->offset,
					     err);
	if (ret == 0 && hello.index != GW_MULTIFD_MAIN)
		ret = gw_error_set(err, -EBADMSG,
				   "MULTIFD record at offset %llu: the main stream says it is channel %u",
				   (unsigned long long)h->offset, hello.index);
	if (ret < 0)
		return ret;
	l->multifd_hello = true;
	return gw_multifd_rx_setup(l->rx, &hello, l->ram_map, l->cfg.nr_ram, err);
}

static int load_multifd_sync(struct load *l, const struct gw_rec_hdr *h, struct gw_error *err)
{
	int ret;

	if (!l->multifd_hello)
		return gw_error_set(err, -EPROTO,
				    "MULTIFD_SYNC record at offset %llu in a stream without multifd",
				    (unsigned long long)h->offset);
	ret = h->length == 8 ?
		      read_payload(l, h, err) :
		      gw_error_set(err, -EBADMSG,
				   "MULTIFD_SYNC record at offset %llu: %llu bytes, not 8",
				   (unsigned long long)h->offset, (unsigned long long)h->length);
	if (ret == 0 && gw_get_le64(l->buf) != l->round + 1)
		ret = gw_error_set(err, -EBADMSG,
				   "MULTIFD_SYNC record at offset %llu: round %llu after round %llu",
				   (unsigned long long)h->offset,
				   (unsigned long long)gw_get_le64(l->buf),
				   (unsigned long long)l->round);
	if (ret < 0)
		return ret;
	l->round++;
	return gw_multifd_rx_sync(l->rx, l->round, err);
}

/* A POSTCOPY record: the pages this destination must fetch. */
static int load_postcopy(struct load *l, const struct gw_rec_hdr *h, struct gw_error *err)
{
	struct gw_load_postcopy *pc = l->pc;
	int ret;

	if (!pc || l->multifd || l->cpr_stream || l->mapped)
		return gw_error_set(err, -EPROTONOSUPPORT,
				    "POSTCOPY record at offset %llu: the source switched to post-copy, which needs the postcopy-ram capability on this side too",
				    (unsigned long long)h->offset);
	ret = read_payload(l, h, err);
	if (ret < 0)
		return ret;
	if (!pc->active) {
		l->pc_ram = calloc(l->cfg.nr_ram + 1, sizeof(*l->pc_ram));
		l->pc_bits = calloc(l->cfg.nr_ram + 1, sizeof(*l->pc_bits));
		l->pc_early_bits = calloc(l->cfg.nr_ram + 1, sizeof(*l->pc_early_bits));
		if (!l->pc_ram || !l->pc_bits || !l->pc_early_bits)
			return gw_error_set(err, -ENOMEM, "post-copy: out of memory");
		for (uint32_t id = 0; id < l->cfg.nr_ram; id++) {
			l->pc_ram[id] = l->m->ram[l->ram_map[id]];
			l->pc_bits[id] = pc->stale[l->ram_map[id]];
			l->pc_early_bits[id] = pc->early[l->ram_map[id]];
			pc->stream_id[l->ram_map[id]] = id;
		}
		pc->active = true;
	}
	/* The EARLY set comes whole before the stale set begins. */
	bool early = h->length >= GW_POSTCOPY_HEAD_SIZE &&
		     gw_get_le32(l->buf + 4) == GW_POSTCOPY_EARLY && l->pc_cursor.block == 0 &&
		     l->pc_cursor.next == 0;
	if (!early)
		return gw_postcopy_accept(&l->pc_cursor, l->buf, h->length, l->pc_ram,
					  l->cfg.nr_ram, l->pc_bits, 0, h->offset, err);
	ret = gw_postcopy_accept(&l->pc_early_cursor, l->buf, h->length, l->pc_ram, l->cfg.nr_ram,
				 l->pc_early_bits, GW_POSTCOPY_EARLY, h->offset, err);
	if (ret == 0 &&
	    gw_postcopy_complete(&l->pc_early_cursor, l->pc_ram, l->cfg.nr_ram, NULL) == 0)
		ret = pc->early_done(pc->opaque, err);
	return ret;
}

/*
 * Post-copy, at EOF: a page torn in a pre-copy round was being written,
 * so it is in the set the POSTCOPY records named, and its copy here is
 * dropped and fetched again: it is no damage.
 */
static void forgive_stale(struct load *l)
{
	for (uint32_t i = 0; l->torn.count && i < l->m->nr_ram; i++) {
		uint64_t pages = l->m->ram[i].size / GW_PAGE_SIZE;

		for (uint64_t p = gw_bitmap_next_set(l->pc->stale[i], pages, 0); p < pages;
		     p = gw_bitmap_next_set(l->pc->stale[i], pages, p + 1))
			gw_torn_clear(&l->torn, i, p);
	}
}

/* At EOF: every page and every section of the stream must have arrived whole. */
static int check_complete(const struct load *l, const struct gw_rec_hdr *h, struct gw_error *err)
{
	int ret = gw_torn_check(&l->torn, h->offset, err);

	if (ret == 0 && l->multifd && !l->multifd_hello)
		ret = gw_error_set(err, -EPROTO,
				   "EOF at offset %llu of a multifd stream that had no MULTIFD record",
				   (unsigned long long)h->offset);
	if (ret == 0 && l->multifd)
		ret = gw_multifd_rx_finish(l->rx, l->round, err);
	if (ret == 0 && l->pc && l->pc->active)
		ret = gw_postcopy_complete(&l->pc_cursor, l->pc_ram, l->cfg.nr_ram, err);
	if (ret < 0)
		return ret;
	for (uint32_t i = 0; i < l->cfg.nr_sections; i++) {
		const struct gw_config_section *cs = &l->cfg.sections[i];

		if (l->progress[i] != SEC_COMPLETE)
			return gw_error_set(err, -EPROTO,
					    "incomplete stream: EOF at offset %llu but section '%s' instance %u %s",
					    (unsigned long long)h->offset, cs->name, cs->instance,
					    l->progress[i] == SEC_STARTED ?
						    "was not ended" :
						    "has no state in the stream");
	}
	return 0;
}

static int skip_record(struct load *l, const struct gw_rec_hdr *h, struct gw_error *err)
{
	uint32_t crc;
	int ret;

	if (h->type != GW_REC_VMDESC && !(h->flags & GW_RECF_SKIPPABLE))
		return gw_error_set(err, -EPROTONOSUPPORT,
				    "record type 0x%04x at offset %llu is unknown to this reader and not skippable",
				    h->type, (unsigned long long)h->offset);
	ret = gw_record_drain(l->r, h, h->length, &crc, err);
	if (ret < 0)
		return ret;
	return gw_record_check_crc(h, crc, err);
}

/* One record after CONFIG; *eof is set at the EOF record. */
static int load_record(struct load *l, bool *eof, struct gw_error *err)
{
	struct gw_rec_hdr h;
	int ret = gw_record_read_header(l->r, &h, err);

	if (ret < 0)
		return ret;
	switch (h.type) {
	case GW_REC_CONFIG:
		return gw_error_set(err, -EPROTO, "a second CONFIG record at offset %llu",
				    (unsigned long long)h.offset);
	case GW_REC_SECTION_START:
	case GW_REC_SECTION_PART:
	case GW_REC_SECTION_END:
	case GW_REC_SECTION_FULL:
		return load_section(l, &h, err);
	case GW_REC_CPR:
		return gw_error_set(err, -EPROTO,
				    "a CPR record at offset %llu, not right after CONFIG of a cpr-exec state",
				    (unsigned long long)h.offset);
	case GW_REC_RAM_PAGES:
		if (l->pc && l->pc->active)
			return gw_error_set(err, -EBADMSG,
					    "RAM_PAGES record at offset %llu after the post-copy bitmap: the pages come when asked for",
					    (unsigned long long)h.offset);
		if (l->cpr_stream)
			return gw_error_set(err, -EBADMSG,
					    "RAM_PAGES record at offset %llu in a local live update, whose RAM was adopted",
					    (unsigned long long)h.offset);
		if (l->mapped)
			return gw_error_set(err, -EBADMSG,
					    "RAM_PAGES record at offset %llu in a mapped-ram file, whose pages are at fixed offsets",
					    (unsigned long long)h.offset);
		if (l->multifd)
			return gw_error_set(err, -EBADMSG,
					    "RAM_PAGES record at offset %llu in the main stream of a multifd migration, whose pages come on its channels",
					    (unsigned long long)h.offset);
		return load_pages(l, &h, err);
	case GW_REC_MULTIFD:
		return load_multifd(l, &h, err);
	case GW_REC_MULTIFD_SYNC:
		return load_multifd_sync(l, &h, err);
	case GW_REC_POSTCOPY:
		return load_postcopy(l, &h, err);
	case GW_REC_EOF:
		*eof = true;
		if (l->pc && l->pc->active)
			forgive_stale(l);
		return check_complete(l, &h, err);
	case GW_REC_PAUSE:
		if (l->cpr_stream)
			return load_pause(l, &h, err);
		break;
	}
	return skip_record(l, &h, err);
}

int gw_load(struct gw_migration *m, struct gw_reader *r, struct gw_error *err)
{
	return gw_load_flags(m, r, NULL, err);
}

/*
 * Read a whole stream. A mapped-ram file's embedded stream (ram != NULL)
 * must say MAPPED_RAM and carry no RAM_PAGES: its RAM is loaded by ram()
 * once CONFIG has matched, before the sections.
 */
static int load_stream(struct gw_migration *m, struct gw_reader *r, uint32_t *hdr_flags,
		       int (*ram)(void *opaque, struct gw_error *err), void *opaque,
		       struct load *out, struct gw_error *err)
{
	struct load l = {.m = m,
			 .r = r,
			 .mapped = ram != NULL,
			 .cpr = out ? out->cpr : 0,
			 .rx = out ? out->rx : NULL,
			 .pc = out ? out->pc : NULL};
	bool eof = false;
	uint32_t flags;
	int ret;

	ret = gw_stream_get_header(r, &flags, err);
	/* Loading a live migration's stream as if it were a file would run the
	 * guest without the source's GO: only the incoming engine may. */
	if (ret == 0 && !hdr_flags && !ram && (flags & GW_HDRF_COMMIT))
		ret = gw_error_set(err, -EPROTO,
				   "this stream is a live migration that needs the switchover handshake; load it with gw_incoming_start()");
	if (ret == 0 && !ram && (flags & GW_HDRF_MAPPED_RAM))
		ret = gw_error_set(err, -EPROTO,
				   "this is a mapped-ram file, which is read by page offset: restore it from file:PATH, not as a stream");
	if (ret == 0 && ram && (flags & ~GW_HDRF_SNAPSHOT) != GW_HDRF_MAPPED_RAM)
		ret = gw_error_set(err, -EBADMSG,
				   "mapped-ram file: the embedded stream's header flags are 0x%x, expected 0x%x (0x%x for a background snapshot)",
				   flags, GW_HDRF_MAPPED_RAM,
				   GW_HDRF_MAPPED_RAM | GW_HDRF_SNAPSHOT);
	l.cpr_stream = flags & GW_HDRF_CPR;
	if (ret == 0 && l.cpr_stream && l.cpr == GW_LOAD_CPR_REFUSE)
		ret = gw_error_set(err, -EPROTO,
				   "this stream is a local live update (cpr-transfer or cpr-exec): it holds no RAM, only a process that adopted the source's memfds can load it");
	if (ret == 0 && l.cpr_stream && l.cpr == GW_LOAD_CPR_NO_HELLO)
		ret = gw_error_set(err, -EPROTO,
				   "a local live update's stream from a peer that sent no hello first: a peer hands its memfds over in a hello (cpr-transfer); a cpr-exec state, whose CPR record names fds this process inherited, is read from a file");
	/* The source of a hello still holds its guest: only GO may hand it over. */
	if (ret == 0 && l.cpr == GW_LOAD_CPR_ADOPTED && !(flags & GW_HDRF_COMMIT))
		ret = gw_error_set(err, -EPROTO,
				   "the source handed its memfds over, but its stream does not ask for the switchover handshake (no COMMIT flag): the guest will not run here");
	if (ret == 0 && !l.cpr_stream && l.cpr == GW_LOAD_CPR_ADOPTED)
		ret = gw_error_set(err, -EPROTO,
				   "the source handed its memfds over, but its stream is not a local live update (no CPR flag)");
	if (ret == 0 && l.cpr_stream && (ram || (flags & GW_HDRF_MAPPED_RAM)))
		ret = gw_error_set(err, -EBADMSG, "a local live update in a mapped-ram file");
	if (ret == 0 && (flags & GW_HDRF_CHANNEL))
		ret = gw_error_set(err, -EPROTO,
				   "this is a multifd channel, not the main stream of a migration: the source connects the main stream first");
	l.multifd = flags & GW_HDRF_MULTIFD;
	if (ret == 0 && l.multifd && (ram || l.cpr_stream || (flags & GW_HDRF_MAPPED_RAM)))
		ret = gw_error_set(err, -EBADMSG,
				   "stream header flags 0x%x: multifd with a mapped-ram file or a local live update",
				   flags);
	if (ret == 0 && l.multifd && !l.rx)
		ret = gw_error_set(err, -EPROTO,
				   "the source sends its pages on multifd channels: turn on the multifd capability on this side too (migrate-set-capabilities), with the same multifd-channels");
	if (ret == 0 && hdr_flags)
		*hdr_flags = flags;
	if (ret == 0)
		ret = load_config(&l, err);
	if (ret == 0 && ram)
		ret = ram(opaque, err);
	while (ret == 0 && !eof)
		ret = load_record(&l, &eof, err);
	gw_torn_release(&l.torn);
	gw_config_release(&l.cfg);
	free(l.ram_map);
	free(l.sec_map);
	free(l.progress);
	free(l.buf);
	free(l.pages);
	free(l.pc_ram);
	free(l.pc_bits);
	free(l.pc_early_bits);
	if (out) {
		out->adopted = l.adopted;
		out->pause_ns = l.pause_ns;
	}
	return ret;
}

int gw_load_flags(struct gw_migration *m, struct gw_reader *r, uint32_t *hdr_flags,
		  struct gw_error *err)
{
	return load_stream(m, r, hdr_flags, NULL, NULL, NULL, err);
}

int gw_load_cpr(struct gw_migration *m, struct gw_reader *r, enum gw_load_cpr cpr,
		struct gw_multifd_rx *rx, struct gw_load_postcopy *pc, uint32_t *hdr_flags,
		uint64_t *adopted, uint64_t *pause_ns, struct gw_error *err)
{
	struct load l = {.cpr = cpr, .rx = rx, .pc = pc};
	int ret = load_stream(m, r, hdr_flags, NULL, NULL, &l, err);

	*adopted = l.adopted;
	*pause_ns = l.pause_ns;
	return ret;
}

int gw_load_mapped_stream(struct gw_migration *m, struct gw_reader *r,
			  int (*ram)(void *opaque, struct gw_error *err), void *opaque,
			  struct gw_error *err)
{
	return load_stream(m, r, NULL, ram, opaque, NULL, err);
}

int gw_load_probe(struct gw_migration *m, struct gw_reader *r, struct gw_error *err)
{
	struct load l = {.m = m, .r = r};
	struct gw_rec_hdr h;
	uint32_t *sec_map = NULL;
	uint32_t flags;
	int ret = gw_stream_get_header(r, &flags, err);

	if (ret == 0 && !(flags & GW_HDRF_CPR))
		ret = gw_error_set(err, -EPROTO,
				   "not the probe of a local live update (flags 0x%x)", flags);
	if (ret == 0)
		ret = gw_record_read_header(r, &h, err);
	if (ret == 0 && h.type != GW_REC_CONFIG)
		ret = gw_error_set(err, -EPROTO, "the probe has %s where CONFIG belongs",
				   gw_record_type_name(h.type));
	if (ret == 0)
		ret = read_payload(&l, &h, err);
	if (ret == 0)
		ret = gw_config_parse(l.buf, h.length, &l.cfg, err);
	if (ret == 0 && !(sec_map = calloc(l.cfg.nr_sections + 1, sizeof(*sec_map))))
		ret = gw_error_set(err, -ENOMEM, "out of memory");
	if (ret == 0 && (ret = gw_config_match_machine(m, &l.cfg, sec_map, err)) < 0)
		gw_error_prefix(err, ret, "the state does not fit this VMM: ");
	free(sec_map);
	gw_config_release(&l.cfg);
	free(l.buf);
	return ret;
}
