#ifndef GW_LIB_FORMAT_MAPPED_LOAD_H
#define GW_LIB_FORMAT_MAPPED_LOAD_H

#include <stdbool.h>
#include <stdint.h>

#include <godwit/error.h>

struct gw_cancel;
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

#endif
