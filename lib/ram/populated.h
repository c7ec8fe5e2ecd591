/*
 * Which pages of a RAM block the kernel holds. Guest RAM that was never
 * touched is a hole in its memfd: it reads as zero, and reading it would
 * allocate it (a shmem read fault populates the page), so the engines ask
 * the kernel where the holes are instead of looking.
 */
#ifndef GW_LIB_POPULATED_H
#define GW_LIB_POPULATED_H

#include <stdint.h>

#include <godwit/error.h>

#include "lib/internal.h"

/*
 * Clear the bits of bm (a page bitmap of b, bitmap.h) whose pages are
 * holes in b's memfd. Memory without an fd is all populated. Pages in
 * swap count as populated (SEEK_DATA sees them; mincore() would not).
 * Cost: two lseek() per data extent that a run of set bits meets, so a
 * sparse round in a big populated block costs nearly nothing. The lseek()
 * moves the fd's file offset: RAM memfds are used through their mapping,
 * and nobody may rely on that offset.
 */
int gw_populated_filter(const struct gw_ram_block *b, uint64_t *bm, struct gw_error *err);

#endif
