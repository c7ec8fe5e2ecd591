/*
 * Walking a stream without device code: the analyzer's reader. It shares
 * framing and descriptor decoding with the loader but reports a payload
 * that fails its CRC instead of stopping, since the header CRC already
 * vouches for the length and the walk can go on. Which pages are torn it
 * keeps in the loader's own account (torn.h), so the two cannot disagree
 * about a stream.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <godwit/walk.h>

#include "lib/crc32c.h"
#include "lib/internal.h"
#include "lib/format/torn.h"

struct gw_walker {
	struct gw_reader *r;
	uint32_t stream_flags;
	struct gw_config cfg;
	bool have_cfg;
	struct gw_torn torn; /* of the blocks in cfg, once have_cfg */
	bool done;
	uint64_t eof; /* offset of the EOF record, once done */
	unsigned char *buf;
	size_t cap;
	const unsigned char *data;
	size_t data_len;
	char name[GW_NAME_MAX + 1]; /* of the current START/FULL record */
	struct gw_pages pages;
	uint64_t hashes[GW_PAGES_MAX]; /* computed from the page data read */
	unsigned char page[GW_PAGE_SIZE];
};

int gw_walker_new(struct gw_reader *r, struct gw_walker **out, struct gw_error *err)
{
	struct gw_walker *wk;
	int ret;

	wk = calloc(1, sizeof(*wk));
	if (!wk)
		return gw_error_set(err, -ENOMEM, "walker: out of memory");
	wk->r = r;
	ret = gw_stream_get_header(r, &wk->stream_flags, err);
	if (ret < 0) {
		free(wk);
		return ret;
	}
	*out = wk;
	return 0;
}

void gw_walker_free(struct gw_walker *wk)
{
	if (!wk)
		return;
	gw_torn_release(&wk->torn);
	gw_config_release(&wk->cfg);
	free(wk->buf);
	free(wk);
}

uint32_t gw_walker_stream_flags(const struct gw_walker *wk)
{
	return wk->stream_flags;
}

const struct gw_config *gw_walker_config(const struct gw_walker *wk)
{
	return wk->have_cfg ? &wk->cfg : NULL;
}

const void *gw_walker_data(const struct gw_walker *wk, size_t *len)
{
	*len = wk->data_len;
	return wk->data;
}

static void set_bad(struct gw_record_info *info, uint32_t stored, uint32_t computed)
{
	info->crc = GW_CRC_BAD;
	info->crc_stored = stored;
	info->crc_computed = computed;
}

/* Read the page data of a checked descriptor, hashing each page. */
static int hash_pages(struct gw_walker *wk, const struct gw_rec_hdr *h, struct gw_record_info *info,
		      struct gw_error *err)
{
	for (uint32_t i = 0; i < wk->pages.nr_pages; i++) {
		int ret;

		wk->hashes[i] = 0;
		if (wk->pages.entries[i] & GW_PAGE_ZERO)
			continue;
		ret = gw_reader_read(wk->r, wk->page, GW_PAGE_SIZE, err);
		if (ret < 0)
			return gw_error_prefix(err, ret, "RAM_PAGES record at offset %llu: ",
					       (unsigned long long)h->offset);
		wk->hashes[i] = gw_page_hash(wk->page);
		info->nr_mismatch += wk->hashes[i] != wk->pages.hashes[i];
	}
	return 0;
}

/*
 * Settle or tear each page of a record whose descriptor checked, as the
 * loader does: a copy that matches its hash (a ZERO entry always does)
 * settles the page, one that does not leaves it torn until a later copy.
 * A block the CONFIG does not list, or a page past its end, is the
 * caller's to report; there is nothing to settle.
 */
static int settle_pages(struct gw_walker *wk, const struct gw_rec_hdr *h, struct gw_error *err)
{
	const struct gw_pages *p = &wk->pages;

	if (!wk->have_cfg || p->block_id >= wk->torn.nr_blocks)
		return 0;
	for (uint32_t i = 0; i < p->nr_pages; i++) {
		uint64_t page = (p->entries[i] & ~(uint64_t)GW_PAGE_FLAGS_MASK) / GW_PAGE_SIZE;

		if (page >= wk->torn.blocks[p->block_id].pages)
			continue;
		if (wk->hashes[i] == p->hashes[i]) {
			gw_torn_clear(&wk->torn, p->block_id, page);
		} else {
			int ret = gw_torn_mark(&wk->torn, p->block_id, page, h->offset, err);

			if (ret < 0)
				return ret;
		}
	}
	return 0;
}

static int walk_pages(struct gw_walker *wk, const struct gw_rec_hdr *h, struct gw_record_info *info,
		      struct gw_error *err)
{
	uint64_t body = h->offset + GW_RECORD_HEADER_SIZE;
	uint32_t crc = 0;
	int ret;

	ret = gw_pages_read_desc(wk->r, h, &wk->pages, &crc, err);
	if (ret == -EBADMSG || (ret == 0 && crc != h->payload_crc)) {
		/* A descriptor we cannot trust: skip the record by its (trusted) length. */
		set_bad(info, h->payload_crc, ret == 0 ? crc : 0);
		return gw_record_drain(wk->r, h, h->length - (gw_reader_offset(wk->r) - body), &crc,
				       err);
	}
	if (ret == 0)
		ret = gw_pages_check_desc(h, &wk->pages, err);
	if (ret < 0)
		return ret;
	info->block_id = wk->pages.block_id;
	info->nr_pages = wk->pages.nr_pages;
	info->nr_zero = wk->pages.nr_pages - wk->pages.nr_data;
	info->entries = wk->pages.entries;
	info->hashes_stored = wk->pages.hashes;
	info->hashes_computed = wk->hashes;
	ret = hash_pages(wk, h, info, err);
	if (ret == 0)
		ret = settle_pages(wk, h, err);
	if (ret < 0)
		return ret;
	/* Without DATA_CRC a mismatch may be a page the guest tore while it
	 * was sent, which a later copy replaces: not bad by itself. */
	if (info->nr_mismatch)
		info->crc = h->flags & GW_RECF_DATA_CRC ? GW_CRC_BAD : GW_CRC_DESC_ONLY;
	return 0;
}

static int walk_section(struct gw_walker *wk, const struct gw_rec_hdr *h,
			struct gw_record_info *info, struct gw_error *err)
{
	struct gw_section_hdr sh;
	struct gw_rbuf b;

	gw_rbuf_init(&b, wk->buf, h->length);
	if (gw_section_get_hdr(&b, h->type, &sh) < 0) {
		if (info->crc == GW_CRC_BAD)
			return 0; /* nothing to trust; the verdict says why */
		return gw_error_set(err, -EBADMSG,
				    "%s record at offset %llu: malformed section header",
				    gw_record_type_name(h->type), (unsigned long long)h->offset);
	}
	info->section_id = sh.id;
	wk->data = b.data + b.pos;
	wk->data_len = b.len - b.pos;
	if (wk->have_cfg && sh.id < wk->cfg.nr_sections) {
		const struct gw_config_section *cs = &wk->cfg.sections[sh.id];

		info->name = cs->name;
		info->instance = cs->instance;
		info->version = cs->version;
	}
	if (h->type == GW_REC_SECTION_START || h->type == GW_REC_SECTION_FULL) {
		/* These records name themselves: report what the bytes say. */
		memcpy(wk->name, sh.name, sizeof(wk->name));
		info->name = wk->name;
		info->instance = sh.instance;
		info->version = sh.version;
	}
	return 0;
}

int gw_walker_next(struct gw_walker *wk, struct gw_record_info *info, struct gw_error *err)
{
	struct gw_rec_hdr h;
	uint32_t crc;
	int ret;

	memset(info, 0, sizeof(*info));
	wk->data = NULL;
	wk->data_len = 0;
	if (wk->done)
		return 0;
	ret = gw_record_read_header(wk->r, &h, err);
	if (ret < 0)
		return ret;
	info->offset = h.offset;
	info->type = h.type;
	info->flags = h.flags;
	info->length = h.length;
	info->crc = GW_CRC_OK;

	if (h.type == GW_REC_RAM_PAGES) {
		ret = walk_pages(wk, &h, info, err);
		return ret < 0 ? ret : 1;
	}
	if (gw_record_max(h.type) == GW_RECORD_MAX_UNKNOWN) {
		/* Unknown type: nothing to decode, but the CRC can still be checked. */
		ret = gw_record_drain(wk->r, &h, h.length, &crc, err);
		if (ret < 0)
			return ret;
		if (crc != h.payload_crc)
			set_bad(info, h.payload_crc, crc);
		return 1;
	}
	ret = gw_record_read_payload(wk->r, &h, &wk->buf, &wk->cap, err);
	if (ret < 0)
		return ret;
	crc = gw_crc32c(0, wk->buf, h.length);
	if (crc != h.payload_crc)
		set_bad(info, h.payload_crc, crc);
	switch (h.type) {
	case GW_REC_CONFIG:
		if (info->crc == GW_CRC_OK && !wk->have_cfg) {
			ret = gw_config_parse(wk->buf, h.length, &wk->cfg, err);
			if (ret < 0)
				return ret;
			ret = gw_torn_init_config(&wk->torn, &wk->cfg, err);
			if (ret < 0) {
				gw_config_release(&wk->cfg);
				return ret;
			}
			wk->have_cfg = true;
		}
		break;
	case GW_REC_VMDESC:
	case GW_REC_PAUSE:
	case GW_REC_MULTIFD:
	case GW_REC_MULTIFD_SYNC:
	case GW_REC_POSTCOPY:
	case GW_REC_CPR: /* which memfd is which block: for the analyzer to show */
		wk->data = wk->buf;
		wk->data_len = h.length;
		break;
	case GW_REC_EOF:
		wk->done = true;
		wk->eof = h.offset;
		break;
	default:
		ret = walk_section(wk, &h, info, err);
		if (ret < 0)
			return ret;
	}
	return 1;
}

int gw_walker_settled(const struct gw_walker *wk, uint64_t *record, struct gw_error *err)
{
	uint64_t eof = wk->done ? wk->eof : gw_reader_offset(wk->r);
	struct gw_torn_note first;

	if (!wk->have_cfg || !gw_torn_first(&wk->torn, &first))
		return 0;
	if (record)
		*record = first.offset ? first.offset : eof;
	return gw_torn_check(&wk->torn, eof, err);
}
