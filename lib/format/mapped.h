/*
 * The header of a mapped-ram file (docs/format.md, "Mapped-RAM files"):
 * where each RAM block's pages, bitmap and hashes are, and where the
 * embedded stream (CONFIG, sections, EOF) is. The file sink writes it
 * (lib/ram/sink_file.c), the mapped loader and `godwit analyze` read it
 * (lib/format/mapped_load.c, tools/analyze.c).
 */
#ifndef GW_LIB_FORMAT_MAPPED_H
#define GW_LIB_FORMAT_MAPPED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <godwit/error.h>
#include <godwit/format.h>

struct gw_mapped_block {
	char name[GW_NAME_MAX + 1];
	uint64_t size;          /* bytes, a multiple of the page size */
	uint64_t pages_offset;  /* page i at pages_offset + i * 4096 */
	uint64_t bitmap_offset; /* ceil(pages / 64) little-endian u64 words */
	uint64_t nr_present;    /* bits set in the bitmap */
	uint64_t hashes_offset; /* nr_present u64 page hashes, in page order */
	uint32_t bitmap_crc;    /* CRC32C of the bitmap's bytes */
	uint32_t hashes_crc;    /* CRC32C of the hash table's bytes */
};

struct gw_mapped_hdr {
	uint32_t state; /* GW_MAPPED_STATE_* */
	uint32_t nr_blocks;
	uint32_t header_length; /* bytes, a multiple of 4096 */
	uint32_t region_align;
	uint64_t stream_offset; /* the embedded stream, from its header to EOF */
	uint64_t stream_length;
	uint64_t file_size;  /* the file is at least this long */
	uint32_t generation; /* saves into this file, 1 for the first */
	struct gw_mapped_block blocks[GW_MAX_RAM_BLOCKS];
};

/* Bytes of the header of a file of n blocks: a whole number of pages. */
uint32_t gw_mapped_header_length(uint32_t nr_blocks);
/* Bytes of a bitmap of the pages of size bytes. */
uint64_t gw_mapped_bitmap_bytes(uint64_t size);

/* Encode h into buf (h->header_length bytes, zeroed first), CRC included. */
void gw_mapped_encode(const struct gw_mapped_hdr *h, unsigned char *buf);

/* The first 16 bytes: is this a mapped-ram file? 0 = yes; -ENOMSG = no
 * (a stream, or not godwit's: the stream reader says which); another
 * error, with err: a mapped-ram header with flags this reader does not
 * know. */
int gw_mapped_sniff(const unsigned char *first16, struct gw_error *err);
/* Length of the header the first 64 bytes announce (checked), or -errno. */
int gw_mapped_peek_length(const unsigned char *fixed, uint32_t *len, struct gw_error *err);
/*
 * Decode and check a complete header of len bytes (from
 * gw_mapped_peek_length) read from a file of file_bytes: the CRC, every
 * range, that regions, bitmaps, hashes and the stream lie inside the file
 * and do not overlap, and that the save finished. Every number is hostile
 * until this returns 0.
 */
int gw_mapped_decode(const unsigned char *buf, uint32_t len, uint64_t file_bytes,
		     struct gw_mapped_hdr *h, struct gw_error *err);

/*
 * Read block b's bitmap and hash table from fd and check them: both
 * CRCs, no bit past the block, as many bits set as nr_present. *bitmap
 * gets the words in host order (gw_mapped_bitmap_bytes(b->size) / 8 of
 * them), *hashes the nr_present page hashes in page order; the caller
 * frees both. 0, or -errno with the block and the part in err.
 */
int gw_mapped_read_meta(int fd, const struct gw_mapped_block *b, uint64_t **bitmap,
			uint64_t **hashes, struct gw_error *err);
/* Its two halves: the bitmap, checked as above; the hash table, checked
 * against its CRC. */
int gw_mapped_read_bitmap(int fd, const struct gw_mapped_block *b, uint64_t **bitmap,
			  struct gw_error *err);
int gw_mapped_read_hashes(int fd, const struct gw_mapped_block *b, uint64_t **hashes,
			  struct gw_error *err);
/*
 * Entries [first, first + n) of the hash table into hashes (n words), for
 * a reader that checks pages before it has read the whole table: no CRC
 * covers a slice, so a damaged entry shows as its page failing the
 * check, and the table's CRC is still to be checked by the caller.
 */
int gw_mapped_read_hash_slice(int fd, const struct gw_mapped_block *b, uint64_t first, uint64_t n,
			      uint64_t *hashes, struct gw_error *err);

#endif
