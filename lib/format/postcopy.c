/*
 * The POSTCOPY record and the page request check (postcopy.h).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* XXH3_state_t on the stack. */
#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

#include <godwit/stream.h>

#include "lib/bitmap.h"
#include "lib/format/postcopy.h"
#include "lib/internal.h"
#include "lib/transport/return_path.h"

#define PAGE ((uint64_t)GW_PAGE_SIZE)

uint64_t gw_postcopy_encode(uint32_t block, uint64_t first, uint64_t count, const uint64_t *bits,
			    uint32_t flags, unsigned char *buf)
{
	uint64_t words = (count + 63) / 64;

	gw_le32(buf, block);
	gw_le32(buf + 4, flags);
	gw_le64(buf + 8, first);
	gw_le64(buf + 16, count);
	for (uint64_t i = 0; i < words; i++) {
		uint64_t w = bits[first / 64 + i];

		/* The last word of a piece that ends mid-word carries only
		 * its own bits: the reader refuses any other. */
		if (i == words - 1 && count % 64)
			w &= (1ull << (count % 64)) - 1;
		gw_le64(buf + GW_POSTCOPY_HEAD_SIZE + i * 8, w);
	}
	return gw_postcopy_len(count);
}

int gw_postcopy_put(struct gw_writer *w, const struct gw_ram_block *ram, uint32_t nr,
		    uint64_t *const *bits, uint64_t piece_bits, uint32_t flags,
		    struct gw_error *err)
{
	uint64_t piece = piece_bits ? piece_bits : GW_POSTCOPY_BITS_MAX;
	unsigned char *buf;
	int ret = 0;

	if (piece % 64 || piece > GW_POSTCOPY_BITS_MAX)
		return gw_error_set(err, -EINVAL,
				    "post-copy: pieces of %llu bits: not a multiple of 64 up to %u",
				    (unsigned long long)piece, GW_POSTCOPY_BITS_MAX);
	buf = malloc(gw_postcopy_len(piece));
	if (!buf)
		return gw_error_set(err, -ENOMEM, "post-copy: out of memory for the bitmap");
	for (uint32_t i = 0; ret == 0 && i < nr; i++) {
		uint64_t pages = ram[i].size / PAGE;

		for (uint64_t first = 0; ret == 0 && first < pages; first += piece) {
			uint64_t count = pages - first < piece ? pages - first : piece;
			uint64_t len = gw_postcopy_encode(i, first, count, bits[i], flags, buf);

			ret = gw_record_write(w, GW_REC_POSTCOPY, 0, buf, len, err);
		}
	}
	free(buf);
	return ret < 0 ? gw_error_prefix(err, ret, "post-copy: the stale-page bitmap: ") : 0;
}

uint64_t gw_postcopy_fingerprint(const struct gw_ram_block *ram, uint32_t nr,
				 const uint64_t *const *bits)
{
	XXH3_state_t st;

	XXH3_64bits_reset(&st);
	for (uint32_t i = 0; i < nr; i++) {
		uint64_t pages = ram[i].size / PAGE;
		unsigned char le[8];

		gw_le64(le, pages);
		XXH3_64bits_update(&st, le, sizeof(le));
		/* Word by word in little-endian, as the records carry them. */
		for (uint64_t k = 0; k < gw_bitmap_words(pages); k++) {
			gw_le64(le, bits[i][k]);
			XXH3_64bits_update(&st, le, sizeof(le));
		}
	}
	return XXH3_64bits_digest(&st);
}

static int bad(struct gw_error *err, uint64_t offset, const char *what, unsigned long long a,
	       unsigned long long b)
{
	return gw_error_set(err, -EBADMSG, "POSTCOPY record at offset %llu: %s (%llu, %llu)",
			    (unsigned long long)offset, what, a, b);
}

int gw_postcopy_accept(struct gw_postcopy_cursor *c, const unsigned char *p, uint64_t len,
		       const struct gw_ram_block *ram, uint32_t nr, uint64_t *const *bits,
		       uint32_t want_flags, uint64_t offset, struct gw_error *err)
{
	uint32_t block, flags;
	uint64_t first, count, pages, words;

	if (len < GW_POSTCOPY_HEAD_SIZE)
		return bad(err, offset, "shorter than its head (bytes, head)",
			   (unsigned long long)len, GW_POSTCOPY_HEAD_SIZE);
	block = gw_get_le32(p);
	flags = gw_get_le32(p + 4);
	first = gw_get_le64(p + 8);
	count = gw_get_le64(p + 16);
	if (flags != want_flags)
		return bad(err, offset,
			   "flags not those of the set it belongs to (flags, expected)", flags,
			   want_flags);
	if (block >= nr)
		return bad(err, offset, "block index past CONFIG's blocks (index, blocks)", block,
			   nr);
	pages = ram[block].size / PAGE;
	/* In order: a skipped block or piece would leave stale pages valid. */
	if (block != c->block || first != c->next)
		return gw_error_set(err, -EBADMSG,
				    "POSTCOPY record at offset %llu: block %u page %llu, expected block %u page %llu (the records tile every block in order)",
				    (unsigned long long)offset, block, (unsigned long long)first,
				    c->block, (unsigned long long)c->next);
	if (count == 0 || count > GW_POSTCOPY_BITS_MAX || count > pages - first)
		return bad(err, offset, "bit count out of range (count, pages left in the block)",
			   (unsigned long long)count, (unsigned long long)(pages - first));
	if (first + count < pages && count % 64)
		return bad(err, offset,
			   "a piece that does not end the block ends mid-word (count, 64)",
			   (unsigned long long)count, 64);
	words = (count + 63) / 64;
	if (len != gw_postcopy_len(count))
		return bad(err, offset, "length does not match its bit count (bytes, expected)",
			   (unsigned long long)len, (unsigned long long)gw_postcopy_len(count));
	for (uint64_t i = 0; i < words; i++) {
		uint64_t w = gw_get_le64(p + GW_POSTCOPY_HEAD_SIZE + i * 8);

		if (i == words - 1 && count % 64 && w >> (count % 64))
			return bad(err, offset, "bits set past the block's last page (word, bits)",
				   (unsigned long long)i, (unsigned long long)(count % 64));
		bits[block][first / 64 + i] = w;
	}
	c->next = first + count;
	if (c->next == pages) {
		c->block++;
		c->next = 0;
	}
	return 0;
}

int gw_postcopy_complete(const struct gw_postcopy_cursor *c, const struct gw_ram_block *ram,
			 uint32_t nr, struct gw_error *err)
{
	if (c->block >= nr)
		return 0;
	return gw_error_set(err, -EBADMSG,
			    "post-copy: the stale-page bitmap of RAM block '%s' stops at page %llu of %llu",
			    ram[c->block].name, (unsigned long long)c->next,
			    (unsigned long long)(ram[c->block].size / PAGE));
}

int gw_page_request_check(const struct gw_page_request *rq, const struct gw_ram_block *ram,
			  uint32_t nr, struct gw_error *err)
{
	uint64_t pages;

	if (rq->block >= nr)
		return gw_error_set(err, -EBADMSG,
				    "post-copy: the destination asked for block %u, and there are %u",
				    rq->block, nr);
	pages = ram[rq->block].size / PAGE;
	if (rq->count == 0 || rq->count > GW_PAGES_MAX || rq->first >= pages ||
	    rq->count > pages - rq->first)
		return gw_error_set(err, -EBADMSG,
				    "post-copy: the destination asked for %u pages from page %llu of RAM block '%s', which has %llu",
				    rq->count, (unsigned long long)rq->first, ram[rq->block].name,
				    (unsigned long long)pages);
	return 0;
}

int gw_postcopy_answer(struct gw_migration *m, struct gw_writer *w,
		       const struct gw_page_request *rq, struct gw_error *err)
{
	uint64_t entries[GW_PAGES_MAX];
	const struct gw_ram_block *b;
	int ret = gw_page_request_check(rq, m->ram, m->nr_ram, err);

	if (ret < 0)
		return ret;
	b = &m->ram[rq->block];
	for (uint32_t i = 0; i < rq->count; i++) {
		uint64_t off = (rq->first + i) * PAGE;

		entries[i] = off | (gw_page_is_zero(b->host + off) ? GW_PAGE_ZERO : 0);
	}
	return gw_pages_put(m, w, rq->block, entries, rq->count, NULL, GW_SAVE_DATA_CRC, err);
}

int gw_postcopy_discard(struct gw_ram_block *b, const uint64_t *bits, struct gw_error *err)
{
	uint64_t pages = b->size / PAGE;

	if (b->fd < 0)
		return gw_error_set(err, -EINVAL,
				    "post-copy: RAM block '%s' has no memfd for the page server to fill",
				    b->name);
	for (uint64_t p = gw_bitmap_next_set(bits, pages, 0); p < pages;) {
		uint64_t e = gw_bitmap_next_clear(bits, pages, p);

		if (madvise(b->host + p * PAGE, (e - p) * PAGE, MADV_DONTNEED) < 0)
			return gw_error_set(err, -errno,
					    "post-copy: unmapping the stale pages at 0x%llx of RAM block '%s': %s",
					    (unsigned long long)(p * PAGE), b->name,
					    gw_strerror(errno));
		p = gw_bitmap_next_set(bits, pages, e);
	}
	return 0;
}
