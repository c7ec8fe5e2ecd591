#ifndef GODWIT_LIB_RAM_LAND_H
#define GODWIT_LIB_RAM_LAND_H

#include "lib/internal.h"

struct gw_torn;

/* After a record's data pages are in place in block number `block`:
 * check each against its hash (a mismatch is corruption when the record
 * has DATA_CRC, else a torn page for a later copy to settle) and turn its
 * zero pages into holes. 0 or -errno with err set. */
int gw_land_settle(struct gw_migration *m, uint32_t block, struct gw_torn *torn,
		   const struct gw_rec_hdr *h, const struct gw_pages *p, struct gw_error *err);

/* Make [off, off+len) of b read as zeroes, freeing memory where it can. */
int gw_land_zero(struct gw_ram_block *b, uint64_t off, uint64_t len, struct gw_error *err);

/* Does any page of b hold data now? A fresh memfd holds none, and
 * zeroing it would walk its whole range for nothing. */
bool gw_land_has_data(const struct gw_ram_block *b);

#endif
