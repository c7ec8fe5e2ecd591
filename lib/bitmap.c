/*
 * Page bitmaps (bitmap.h). Word-at-a-time: the engines walk bitmaps of
 * whole RAM blocks every round, and a 4 GiB block is 16384 words.
 */
#include <string.h>

#include "lib/bitmap.h"

/* Bits [lo, 64) of a word. */
static uint64_t mask_from(uint64_t lo)
{
	return lo >= 64 ? 0 : ~0ull << lo;
}

void gw_bitmap_fill(uint64_t *bm, uint64_t nbits)
{
	size_t words = gw_bitmap_words(nbits);

	if (!words)
		return;
	memset(bm, 0xff, words * sizeof(*bm));
	gw_bitmap_trim(bm, nbits);
}

void gw_bitmap_set(uint64_t *bm, uint64_t first, uint64_t n)
{
	uint64_t end = first + n;

	while (first < end) {
		uint64_t w = first / 64, lo = first % 64;
		uint64_t hi = end - w * 64 < 64 ? end - w * 64 : 64;

		bm[w] |= mask_from(lo) & ~mask_from(hi);
		first = w * 64 + hi;
	}
}

void gw_bitmap_clear(uint64_t *bm, uint64_t first, uint64_t n)
{
	uint64_t end = first + n;

	while (first < end) {
		uint64_t w = first / 64, lo = first % 64;
		uint64_t hi = end - w * 64 < 64 ? end - w * 64 : 64;

		bm[w] &= ~(mask_from(lo) & ~mask_from(hi));
		first = w * 64 + hi;
	}
}

void gw_bitmap_trim(uint64_t *bm, uint64_t nbits)
{
	if (nbits % 64)
		bm[nbits / 64] &= ~mask_from(nbits % 64);
}

uint64_t gw_bitmap_count(const uint64_t *bm, uint64_t nbits)
{
	uint64_t n = 0;

	for (size_t i = 0; i < gw_bitmap_words(nbits); i++)
		n += (uint64_t)__builtin_popcountll(bm[i]);
	return n;
}

/* The search of both next_* functions; flip inverts every word. */
static uint64_t next_bit(const uint64_t *bm, uint64_t nbits, uint64_t from, uint64_t flip)
{
	size_t words = gw_bitmap_words(nbits);
	size_t w = (size_t)(from / 64);
	uint64_t v;

	if (from >= nbits)
		return nbits;
	v = (bm[w] ^ flip) & mask_from(from % 64);
	while (!v) {
		if (++w >= words)
			return nbits;
		v = bm[w] ^ flip;
	}
	from = (uint64_t)w * 64 + (uint64_t)__builtin_ctzll(v);
	return from < nbits ? from : nbits;
}

uint64_t gw_bitmap_next_set(const uint64_t *bm, uint64_t nbits, uint64_t from)
{
	return next_bit(bm, nbits, from, 0);
}

uint64_t gw_bitmap_next_clear(const uint64_t *bm, uint64_t nbits, uint64_t from)
{
	return next_bit(bm, nbits, from, ~0ull);
}
