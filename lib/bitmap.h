/*
 * Page bitmaps: bit i stands for page i of a RAM block, 64 pages per
 * word, bit 0 of word 0 first (the layout of struct gw_dirty_ops and of
 * KVM's dirty log). Bits past the last page of the block are always
 * clear, so counting and searching need no special case at the end.
 */
#ifndef GW_LIB_BITMAP_H
#define GW_LIB_BITMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

static inline size_t gw_bitmap_words(uint64_t nbits)
{
	return (size_t)((nbits + 63) / 64);
}

static inline bool gw_bitmap_test(const uint64_t *bm, uint64_t i)
{
	return bm[i / 64] >> (i % 64) & 1;
}

/* Set bits [0, nbits). */
void gw_bitmap_fill(uint64_t *bm, uint64_t nbits);
/* Set (clear) bits [first, first + n). */
void gw_bitmap_set(uint64_t *bm, uint64_t first, uint64_t n);
void gw_bitmap_clear(uint64_t *bm, uint64_t first, uint64_t n);
/* Clear the bits past nbits in the last word (a sync that set too many). */
void gw_bitmap_trim(uint64_t *bm, uint64_t nbits);
uint64_t gw_bitmap_count(const uint64_t *bm, uint64_t nbits);
/* The first set (clear) bit at or after from, or nbits if there is none. */
uint64_t gw_bitmap_next_set(const uint64_t *bm, uint64_t nbits, uint64_t from);
uint64_t gw_bitmap_next_clear(const uint64_t *bm, uint64_t nbits, uint64_t from);

#endif
