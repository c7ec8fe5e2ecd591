/*
 * The mapped-ram file header: encoding, and the checks that make its
 * numbers safe to use. docs/format.md, "Mapped-RAM files", is the spec.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/crc32c.h"
#include "lib/format/mapped.h"
#include "lib/internal.h"
#include "lib/transport/pio.h"

#define PAGE ((uint64_t)GW_PAGE_SIZE)

uint32_t gw_mapped_header_length(uint32_t nr_blocks)
{
	uint64_t n = GW_MAPPED_FIXED_SIZE + (uint64_t)GW_MAPPED_ENTRY_SIZE * nr_blocks;

	return (uint32_t)((n + PAGE - 1) / PAGE * PAGE);
}

uint64_t gw_mapped_bitmap_bytes(uint64_t size)
{
	return (size / PAGE + 63) / 64 * 8;
}

static uint32_t header_crc(const unsigned char *buf, uint32_t nr_blocks)
{
	static const unsigned char zero[4];
	uint32_t crc = gw_crc32c(0, buf, 60);

	crc = gw_crc32c(crc, zero, 4);
	return gw_crc32c(crc, buf + 64, (size_t)GW_MAPPED_ENTRY_SIZE * nr_blocks);
}

void gw_mapped_encode(const struct gw_mapped_hdr *h, unsigned char *buf)
{
	memset(buf, 0, h->header_length);
	memcpy(buf, GW_STREAM_MAGIC, GW_STREAM_MAGIC_LEN);
	gw_le32(buf + 8, GW_FORMAT_VERSION);
	gw_le32(buf + 12, GW_HDRF_MAPPED_RAM);
	gw_le32(buf + 16, h->state);
	gw_le32(buf + 20, h->nr_blocks);
	gw_le32(buf + 24, h->header_length);
	gw_le32(buf + 28, h->region_align);
	gw_le64(buf + 32, h->stream_offset);
	gw_le64(buf + 40, h->stream_length);
	gw_le64(buf + 48, h->file_size);
	gw_le32(buf + 56, h->generation);
	for (uint32_t i = 0; i < h->nr_blocks; i++) {
		const struct gw_mapped_block *b = &h->blocks[i];
		unsigned char *e = buf + GW_MAPPED_FIXED_SIZE + (size_t)GW_MAPPED_ENTRY_SIZE * i;
		size_t len = strlen(b->name);

		gw_le64(e, b->size);
		gw_le32(e + 8, GW_PAGE_SIZE);
		gw_le32(e + 12, (uint32_t)len);
		gw_le64(e + 16, b->pages_offset);
		gw_le64(e + 24, b->bitmap_offset);
		gw_le64(e + 32, b->nr_present);
		gw_le64(e + 40, b->hashes_offset);
		gw_le32(e + 48, b->bitmap_crc);
		gw_le32(e + 52, b->hashes_crc);
		memcpy(e + 64, b->name, len);
	}
	gw_le32(buf + 60, header_crc(buf, h->nr_blocks));
}

int gw_mapped_sniff(const unsigned char *h, struct gw_error *err)
{
	uint32_t flags = gw_get_le32(h + 12);

	/* Anything else is for the stream reader, which says what it is not. */
	if (memcmp(h, GW_STREAM_MAGIC, GW_STREAM_MAGIC_LEN) != 0 ||
	    gw_get_le32(h + 8) != GW_FORMAT_VERSION || !(flags & GW_HDRF_MAPPED_RAM))
		return -ENOMSG;
	if (flags != GW_HDRF_MAPPED_RAM)
		return gw_error_set(err, -EPROTONOSUPPORT,
				    "mapped-ram file header: flags 0x%x, expected 0x%x", flags,
				    GW_HDRF_MAPPED_RAM);
	return 0;
}

int gw_mapped_peek_length(const unsigned char *fixed, uint32_t *len, struct gw_error *err)
{
	uint32_t n = gw_get_le32(fixed + 20), hl = gw_get_le32(fixed + 24);

	if (n < 1 || n > GW_MAX_RAM_BLOCKS)
		return gw_error_set(err, -EBADMSG,
				    "mapped-ram file header: %u RAM blocks, expected 1 to %u (corrupted)",
				    n, GW_MAX_RAM_BLOCKS);
	if (hl != gw_mapped_header_length(n))
		return gw_error_set(err, -EBADMSG,
				    "mapped-ram file header: length %u does not match its %u blocks (expected %u; corrupted)",
				    hl, n, gw_mapped_header_length(n));
	*len = hl;
	return 0;
}

/* [off, off+len) inside [lo, hi)? Without overflow. */
static bool inside(uint64_t off, uint64_t len, uint64_t lo, uint64_t hi)
{
	return off >= lo && off <= hi && len <= hi - off;
}

static int bad(struct gw_error *err, const struct gw_mapped_block *b, const char *what,
	       unsigned long long v)
{
	return gw_error_set(err, -EBADMSG, "mapped-ram file header, RAM block '%s': %s (0x%llx)",
			    b->name, what, v);
}

static int decode_block(const unsigned char *e, uint32_t i, const struct gw_mapped_hdr *h,
			uint64_t *tail, struct gw_mapped_block *b, struct gw_error *err)
{
	uint32_t page_size = gw_get_le32(e + 8), name_len = gw_get_le32(e + 12);
	uint64_t pages;

	if (name_len < 1 || name_len > GW_NAME_MAX)
		return gw_error_set(err, -EBADMSG,
				    "mapped-ram file header, block entry %u: name length %u (corrupted)",
				    i, name_len);
	memcpy(b->name, e + 64, name_len);
	b->name[name_len] = '\0';
	for (uint32_t k = name_len; k < GW_MAPPED_ENTRY_SIZE - 64; k++)
		if (e[64 + k])
			return gw_error_set(err, -EBADMSG,
					    "mapped-ram file header, block entry %u: bytes after the name are not zero",
					    i);
	int ret = gw_check_name("mapped-ram RAM block", b->name, err);
	if (ret < 0)
		return ret;
	b->size = gw_get_le64(e);
	b->pages_offset = gw_get_le64(e + 16);
	b->bitmap_offset = gw_get_le64(e + 24);
	b->nr_present = gw_get_le64(e + 32);
	b->hashes_offset = gw_get_le64(e + 40);
	b->bitmap_crc = gw_get_le32(e + 48);
	b->hashes_crc = gw_get_le32(e + 52);
	if (gw_get_le64(e + 56))
		return bad(err, b, "reserved field is not zero", gw_get_le64(e + 56));
	if (page_size != GW_PAGE_SIZE)
		return bad(err, b, "page size is not 4096", page_size);
	if (b->size == 0 || b->size % PAGE)
		return bad(err, b, "size is not a non-zero multiple of 4096", b->size);
	pages = b->size / PAGE;
	if (b->pages_offset % h->region_align)
		return bad(err, b, "page region is not aligned to the file's region alignment",
			   b->pages_offset);
	/* Regions in block order, after the header and before the stream. */
	if (!inside(b->pages_offset, b->size, *tail, h->stream_offset))
		return bad(err, b,
			   "page region overlaps another part of the file or lies outside it",
			   b->pages_offset);
	*tail = b->pages_offset + b->size;
	if (b->nr_present > pages)
		return bad(err, b, "more pages present than the block has", b->nr_present);
	if (b->bitmap_offset % 8 || b->hashes_offset % 8)
		return bad(err, b, "bitmap or hash table is not 8-byte aligned",
			   b->bitmap_offset % 8 ? b->bitmap_offset : b->hashes_offset);
	return 0;
}

int gw_mapped_decode(const unsigned char *buf, uint32_t len, uint64_t file_bytes,
		     struct gw_mapped_hdr *h, struct gw_error *err)
{
	uint32_t want_crc, crc;
	uint64_t tail, meta;
	int ret;

	memset(h, 0, sizeof(*h));
	h->state = gw_get_le32(buf + 16);
	h->nr_blocks = gw_get_le32(buf + 20);
	h->header_length = gw_get_le32(buf + 24);
	h->region_align = gw_get_le32(buf + 28);
	h->stream_offset = gw_get_le64(buf + 32);
	h->stream_length = gw_get_le64(buf + 40);
	h->file_size = gw_get_le64(buf + 48);
	h->generation = gw_get_le32(buf + 56);
	/* The caller peeked at these in an earlier read; the file may have
	 * changed since, so they are checked again on the bytes decoded. */
	if (h->nr_blocks < 1 || h->nr_blocks > GW_MAX_RAM_BLOCKS ||
	    len != gw_mapped_header_length(h->nr_blocks) || h->header_length != len)
		return gw_error_set(err, -EBADMSG,
				    "mapped-ram file header: %u RAM blocks in %u bytes, in a header read as %u bytes (corrupted, or changed while read)",
				    h->nr_blocks, h->header_length, len);
	want_crc = gw_get_le32(buf + 60);
	crc = header_crc(buf, h->nr_blocks);
	if (crc != want_crc)
		return gw_error_set(err, -EBADMSG,
				    "mapped-ram file header is corrupted: CRC32C 0x%08x, computed 0x%08x",
				    want_crc, crc);
	if (h->state == GW_MAPPED_STATE_SAVING)
		return gw_error_set(err, -EPROTO,
				    "the save into this file did not finish (it was stopped, killed or failed midway): the file holds no complete guest");
	if (h->state != GW_MAPPED_STATE_DONE)
		return gw_error_set(err, -EBADMSG, "mapped-ram file header: unknown state 0x%08x",
				    h->state);
	if (h->region_align < GW_MAPPED_ALIGN_MIN || h->region_align > GW_MAPPED_ALIGN_MAX ||
	    (h->region_align & (h->region_align - 1)))
		return gw_error_set(err, -EBADMSG,
				    "mapped-ram file header: region alignment %u is not a power of two from 1 MiB to 1 GiB",
				    h->region_align);
	if (file_bytes < h->file_size)
		return gw_error_set(err, -EBADMSG,
				    "the file is truncated: %llu bytes, but its save wrote %llu",
				    (unsigned long long)file_bytes,
				    (unsigned long long)h->file_size);
	if (h->stream_offset % PAGE || h->stream_length < GW_STREAM_HEADER_SIZE ||
	    !inside(h->stream_offset, h->stream_length, len, h->file_size))
		return gw_error_set(err, -EBADMSG,
				    "mapped-ram file header: the embedded stream (0x%llx+0x%llx) lies outside the file's %llu bytes or is misaligned",
				    (unsigned long long)h->stream_offset,
				    (unsigned long long)h->stream_length,
				    (unsigned long long)h->file_size);
	tail = len;
	for (uint32_t i = 0; i < h->nr_blocks; i++) {
		ret = decode_block(buf + GW_MAPPED_FIXED_SIZE + (size_t)GW_MAPPED_ENTRY_SIZE * i, i,
				   h, &tail, &h->blocks[i], err);
		if (ret < 0)
			return ret;
		for (uint32_t k = 0; k < i; k++)
			if (strcmp(h->blocks[k].name, h->blocks[i].name) == 0)
				return bad(err, &h->blocks[i], "block named twice", i);
	}
	/* After the stream: bitmap and hash table of each block, in order. */
	meta = h->stream_offset + h->stream_length;
	for (uint32_t i = 0; i < h->nr_blocks; i++) {
		const struct gw_mapped_block *b = &h->blocks[i];
		uint64_t bm = gw_mapped_bitmap_bytes(b->size);

		if (!inside(b->bitmap_offset, bm, meta, h->file_size))
			return bad(err, b,
				   "bitmap overlaps another part of the file or lies outside it",
				   b->bitmap_offset);
		meta = b->bitmap_offset + bm;
		if (!inside(b->hashes_offset, 8 * b->nr_present, meta, h->file_size))
			return bad(err, b,
				   "hash table overlaps another part of the file or lies outside it",
				   b->hashes_offset);
		meta = b->hashes_offset + 8 * b->nr_present;
	}
	return 0;
}

static int read_part(int fd, uint64_t off, uint64_t len, void *buf, const char *what,
		     const char *name, struct gw_error *err)
{
	uint64_t got;
	int ret = gw_pread_full(fd, buf, len, off, &got);

	if (ret == -ENODATA)
		return gw_error_set(err, -EBADMSG,
				    "mapped-ram file, RAM block '%s': %s at 0x%llx is cut short after %llu of %llu bytes (truncated file)",
				    name, what, (unsigned long long)off, (unsigned long long)got,
				    (unsigned long long)len);
	if (ret < 0)
		return gw_error_set(err, ret,
				    "mapped-ram file, RAM block '%s': reading %s at 0x%llx: %s",
				    name, what, (unsigned long long)off, gw_strerror(-ret));
	return 0;
}

int gw_mapped_read_bitmap(int fd, const struct gw_mapped_block *b, uint64_t **bitmap,
			  struct gw_error *err)
{
	uint64_t pages = b->size / PAGE, words = gw_mapped_bitmap_bytes(b->size) / 8, count = 0;
	unsigned char *raw = malloc(words ? words * 8 : 1);
	uint64_t *bm = calloc(words ? words : 1, 8);
	uint32_t crc;
	int ret = 0;

	if (!raw || !bm)
		ret = gw_error_set(err, -ENOMEM,
				   "mapped-ram file: out of memory for RAM block '%s'", b->name);
	if (ret == 0)
		ret = read_part(fd, b->bitmap_offset, words * 8, raw, "the bitmap", b->name, err);
	if (ret == 0 && (crc = gw_crc32c(0, raw, words * 8)) != b->bitmap_crc)
		ret = gw_error_set(err, -EBADMSG,
				   "mapped-ram file, RAM block '%s': the bitmap at 0x%llx is corrupted (CRC32C 0x%08x, computed 0x%08x)",
				   b->name, (unsigned long long)b->bitmap_offset, b->bitmap_crc,
				   crc);
	for (uint64_t k = 0; ret == 0 && k < words; k++) {
		bm[k] = gw_get_le64(raw + 8 * k);
		count += (uint64_t)__builtin_popcountll(bm[k]);
	}
	if (ret == 0 && pages % 64 && (bm[words - 1] >> (pages % 64)))
		ret = gw_error_set(err, -EBADMSG,
				   "mapped-ram file, RAM block '%s': the bitmap has bits past the block's %llu pages",
				   b->name, (unsigned long long)pages);
	if (ret == 0 && count != b->nr_present)
		ret = gw_error_set(err, -EBADMSG,
				   "mapped-ram file, RAM block '%s': the bitmap has %llu pages, the header says %llu",
				   b->name, (unsigned long long)count,
				   (unsigned long long)b->nr_present);
	free(raw);
	if (ret < 0) {
		free(bm);
		return ret;
	}
	*bitmap = bm;
	return 0;
}

/* Entries [first, first + n) of the hash table, decoded into hs. */
static int read_hashes(int fd, const struct gw_mapped_block *b, uint64_t first, uint64_t n,
		       uint64_t *hs, uint32_t *crc, struct gw_error *err)
{
	unsigned char *raw = (unsigned char *)hs;
	int ret = read_part(fd, b->hashes_offset + 8 * first, 8 * n, raw, "the hash table", b->name,
			    err);

	if (ret == 0 && crc)
		*crc = gw_crc32c(0, raw, 8 * n);
	/* In place: each word is read before it is written. */
	for (uint64_t k = 0; ret == 0 && k < n; k++)
		hs[k] = gw_get_le64(raw + 8 * k);
	return ret;
}

int gw_mapped_read_hashes(int fd, const struct gw_mapped_block *b, uint64_t **hashes,
			  struct gw_error *err)
{
	uint64_t *hs = malloc(8 * b->nr_present + 8);
	uint32_t crc = 0;
	int ret = hs ? read_hashes(fd, b, 0, b->nr_present, hs, &crc, err) :
		       gw_error_set(err, -ENOMEM,
				    "mapped-ram file: out of memory for RAM block '%s'", b->name);

	if (ret == 0 && crc != b->hashes_crc)
		ret = gw_error_set(err, -EBADMSG,
				   "mapped-ram file, RAM block '%s': the hash table at 0x%llx is corrupted (CRC32C 0x%08x, computed 0x%08x)",
				   b->name, (unsigned long long)b->hashes_offset, b->hashes_crc,
				   crc);
	if (ret < 0) {
		free(hs);
		return ret;
	}
	*hashes = hs;
	return 0;
}

int gw_mapped_read_hash_slice(int fd, const struct gw_mapped_block *b, uint64_t first, uint64_t n,
			      uint64_t *hashes, struct gw_error *err)
{
	if (first > b->nr_present || n > b->nr_present - first)
		return gw_error_set(err, -EINVAL,
				    "mapped-ram file, RAM block '%s': hashes %llu..%llu of %llu",
				    b->name, (unsigned long long)first,
				    (unsigned long long)(first + n),
				    (unsigned long long)b->nr_present);
	return read_hashes(fd, b, first, n, hashes, NULL, err);
}

int gw_mapped_read_meta(int fd, const struct gw_mapped_block *b, uint64_t **bitmap,
			uint64_t **hashes, struct gw_error *err)
{
	int ret = gw_mapped_read_bitmap(fd, b, bitmap, err);

	if (ret == 0 && (ret = gw_mapped_read_hashes(fd, b, hashes, err)) < 0) {
		free(*bitmap);
		*bitmap = NULL;
	}
	return ret;
}
