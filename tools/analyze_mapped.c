/*
 * godwit analyze of a mapped-ram file (docs/format.md, "Mapped-RAM
 * files"): the header, and per RAM block its pages present and the
 * verdicts of its bitmap, its hash table and every present page's hash.
 * The device state is in the embedded stream, which analyze.c then walks
 * as any stream.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/crc32c.h"
#include "lib/format/mapped.h"
#include "lib/internal.h"
#include "lib/transport/pio.h"
#include "tools/analyze.h"

#define PAGE ((uint64_t)GW_PAGE_SIZE)

bool mapped_sniff(int fd)
{
	unsigned char h[GW_STREAM_HEADER_SIZE];
	struct stat st;

	return fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
	       pread(fd, h, sizeof(h), 0) == (ssize_t)sizeof(h) &&
	       gw_mapped_sniff(h, NULL) != -ENOMSG;
}

static bool read_at(int fd, void *buf, uint64_t len, uint64_t off)
{
	return gw_pread_full(fd, buf, len, off, NULL) == 0;
}

struct block_report {
	uint64_t present, bad_pages, first_bad;
	const char *bitmap, *hashes; /* "ok", or what is wrong */
};

/* Check one block's bitmap, hashes and pages; false if anything is wrong. */
static bool check_block(int fd, const struct gw_mapped_block *b, struct block_report *r)
{
	uint64_t pages = b->size / PAGE, words = gw_mapped_bitmap_bytes(b->size) / 8;
	unsigned char *bm = malloc(words * 8), *hs = malloc(8 * b->nr_present + 8);
	unsigned char *page = malloc(PAGE);
	uint64_t count = 0, rank = 0;

	*r = (struct block_report){.first_bad = UINT64_MAX, .bitmap = "ok", .hashes = "ok"};
	if (!bm || !hs || !page) {
		r->bitmap = r->hashes = "not checked: out of memory";
		goto out;
	}
	if (!read_at(fd, bm, words * 8, b->bitmap_offset))
		r->bitmap = "cannot be read";
	else if (gw_crc32c(0, bm, words * 8) != b->bitmap_crc)
		r->bitmap = "corrupted (CRC32C)";
	for (uint64_t k = 0; k < words; k++)
		count += (uint64_t)__builtin_popcountll(gw_get_le64(bm + 8 * k));
	if (!strcmp(r->bitmap, "ok") && count != b->nr_present)
		r->bitmap = "corrupted (count differs from the header)";
	if (!read_at(fd, hs, 8 * b->nr_present, b->hashes_offset))
		r->hashes = "cannot be read";
	else if (gw_crc32c(0, hs, 8 * b->nr_present) != b->hashes_crc)
		r->hashes = "corrupted (CRC32C)";
	r->present = count;
	if (strcmp(r->bitmap, "ok") || strcmp(r->hashes, "ok"))
		goto out;
	for (uint64_t p = 0; p < pages; p++) {
		if (!(bm[p / 8] >> (p % 8) & 1))
			continue;
		if (!read_at(fd, page, PAGE, b->pages_offset + p * PAGE) ||
		    gw_page_hash(page) != gw_get_le64(hs + 8 * rank)) {
			if (!r->bad_pages++)
				r->first_bad = p;
		}
		rank++;
	}
out:
	free(bm);
	free(hs);
	free(page);
	return !strcmp(r->bitmap, "ok") && !strcmp(r->hashes, "ok") && !r->bad_pages;
}

int mapped_analyze(int fd, const char *path, bool json, json_t **out, uint64_t *stream_offset,
		   char *why, size_t why_len)
{
	unsigned char fixed[GW_MAPPED_FIXED_SIZE], *buf = NULL;
	struct gw_mapped_hdr *h = calloc(1, sizeof(*h));
	struct gw_error err = {0};
	struct stat st;
	uint32_t len;
	bool intact = true;
	int ret = -EBADMSG;

	*out = json ? json_object() : NULL;
	if (!h || fstat(fd, &st) < 0 || !read_at(fd, fixed, sizeof(fixed), 0)) {
		snprintf(why, why_len, "mapped-ram file: cannot read the header");
		goto out;
	}
	if (gw_mapped_peek_length(fixed, &len, &err) < 0 || !(buf = malloc(len)) ||
	    !read_at(fd, buf, len, 0) ||
	    gw_mapped_decode(buf, len, (uint64_t)st.st_size, h, &err) < 0) {
		snprintf(why, why_len, "%s", err.msg[0] ? err.msg : "mapped-ram file: bad header");
		goto out;
	}
	if (!json)
		printf("%s: godwit mapped-ram file, format version %u, save %u, %llu bytes (%llu allocated)\n",
		       path, GW_FORMAT_VERSION, h->generation, (unsigned long long)h->file_size,
		       (unsigned long long)st.st_blocks * 512);
	json_t *blocks = json_array();
	for (uint32_t i = 0; i < h->nr_blocks; i++) {
		const struct gw_mapped_block *b = &h->blocks[i];
		struct block_report r;
		bool ok = check_block(fd, b, &r);

		if (!ok && intact) {
			intact = false;
			if (r.bad_pages)
				snprintf(why, why_len,
					 "RAM block '%s': %llu pages do not match their hash, the first at 0x%llx (file offset 0x%llx)",
					 b->name, (unsigned long long)r.bad_pages,
					 (unsigned long long)(r.first_bad * PAGE),
					 (unsigned long long)(b->pages_offset +
							      r.first_bad * PAGE));
			else
				snprintf(why, why_len, "RAM block '%s': bitmap %s, hash table %s",
					 b->name, r.bitmap, r.hashes);
		}
		if (json)
			json_array_append_new(blocks,
					      json_pack("{s:s,s:I,s:I,s:I,s:I,s:s,s:s,s:I}", "name",
							b->name, "size", (json_int_t)b->size,
							"pages_offset", (json_int_t)b->pages_offset,
							"pages_present", (json_int_t)r.present,
							"pages_bad", (json_int_t)r.bad_pages,
							"bitmap", r.bitmap, "hashes", r.hashes,
							"hashes_checked",
							(json_int_t)(r.present - r.bad_pages)));
		else
			printf("  RAM block %-12s %8llu KiB, %llu pages present at 0x%llx: bitmap %s, hash table %s, %llu page hashes ok, %llu bad\n",
			       b->name, (unsigned long long)(b->size >> 10),
			       (unsigned long long)r.present, (unsigned long long)b->pages_offset,
			       r.bitmap, r.hashes, (unsigned long long)(r.present - r.bad_pages),
			       (unsigned long long)r.bad_pages);
	}
	if (json)
		json_object_set_new(*out, "mapped_ram",
				    json_pack("{s:I,s:I,s:I,s:I,s:o}", "generation",
					      (json_int_t)h->generation, "file_size",
					      (json_int_t)h->file_size, "stream_offset",
					      (json_int_t)h->stream_offset, "stream_length",
					      (json_int_t)h->stream_length, "blocks", blocks));
	else
		json_decref(blocks);
	*stream_offset = h->stream_offset;
	ret = intact ? 0 : -EBADMSG;
	if (!json)
		printf("embedded stream at 0x%llx, %llu bytes:\n",
		       (unsigned long long)h->stream_offset, (unsigned long long)h->stream_length);
out:
	free(buf);
	free(h);
	return ret;
}
