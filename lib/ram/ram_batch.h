/*
 * Walking the dirty pages of a RAM block in batches: the part of sending
 * RAM that every sink shares. Each call takes up to `max` pages whose bit
 * is set, clears their bits (a page is handed over once; the dirty
 * tracker sets the bit again if the guest writes it afterwards), and
 * flags the zero pages, which go without data.
 */
#ifndef GW_LIB_RAM_BATCH_H
#define GW_LIB_RAM_BATCH_H

#include <stdbool.h>
#include <stdint.h>

#include <godwit/format.h>

struct gw_ram_block;

struct gw_ram_batch {
	uint32_t block;
	uint32_t n;                     /* entries */
	uint32_t zero;                  /* of them, zero pages */
	uint64_t entries[GW_PAGES_MAX]; /* byte offset | GW_PAGE_ZERO, increasing */
};

struct gw_ram_walk {
	const struct gw_ram_block *b;
	uint32_t block;
	uint64_t *bitmap;
	uint64_t pages;
	uint64_t next; /* first page not looked at */
};

void gw_ram_walk_init(struct gw_ram_walk *w, const struct gw_ram_block *b, uint32_t block,
		      uint64_t *bitmap);
/* The next batch of at most max (1..GW_PAGES_MAX) pages; false when none is left. */
bool gw_ram_walk_next(struct gw_ram_walk *w, uint32_t max, struct gw_ram_batch *out);

#endif
