#ifndef GW_LIB_FORMAT_MAPPED_LOAD_H
#define GW_LIB_FORMAT_MAPPED_LOAD_H

#include <stdbool.h>
#include <stdint.h>

#include <godwit/error.h>

struct gw_cancel;
struct gw_mapped_block;
struct gw_mapped_hdr;
struct gw_migration;

#define GW_MAPPED_MAX_READERS 64

struct gw_mapped_load_params {
	bool direct_io;   /* read page data with O_DIRECT */
	uint32_t readers; /* threads reading pages, 1..GW_MAPPED_MAX_READERS (0 = 1) */
};

/*
 * Load the mapped-ram file open on fd (lib/format/mapped_load.c) into m:
 * RAM, every page checked against its hash, then the sections. A cancel
 * of c (may be NULL) ends it; *received (may be NULL) counts the bytes
 * read. 0, or -errno with the block, page and file offset in err.
 */
int gw_mapped_load(struct gw_migration *m, int fd, const struct gw_mapped_load_params *params,
		   struct gw_cancel *c, uint64_t *received, struct gw_error *err);

/*
 * The parts a lazy restore shares (lib/format/mapped_lazy.c). Open: read
 * and check the header of the file on fd into *h, and match its blocks
 * against m's registration (map[e]: the index in m's RAM blocks of the
 * header's block e). Read pages: pages [first, first + n) of block mb,
 * all present, the first of them the rank-th present page (the index of
 * its hash in hashes), into dst, each checked against its hash. Both
 * return 0, or -errno with the block, page and file offset in err.
 */
int gw_mapped_open(const struct gw_migration *m, int fd, struct gw_mapped_hdr *h, uint32_t *map,
		   struct gw_error *err);
int gw_mapped_read_pages(int fd, const struct gw_mapped_block *mb, const uint64_t *hashes,
			 uint64_t first, uint64_t n, uint64_t rank, void *dst,
			 struct gw_error *err);

#endif
