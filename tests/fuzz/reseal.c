#include <stdint.h>
#include <xxhash.h>

#include <godwit/format.h>

#include "lib/crc32c.h"
#include "reseal.h"

static uint64_t get_le(const unsigned char *p, int n)
{
	uint64_t v = 0;

	for (int i = n - 1; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static void put_le32(unsigned char *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = v >> (8 * i);
}

static void put_le64(unsigned char *p, uint64_t v)
{
	put_le32(p, v);
	put_le32(p + 4, v >> 32);
}

/* The page hash of every data page of a RAM_PAGES payload that has one.
 * Hashes of ZERO entries stay as mutated, for the check that they are 0. */
static void reseal_page_hashes(unsigned char *payload, uint64_t pages, uint64_t len)
{
	uint64_t data = GW_PAGES_DESC_SIZE(pages);

	for (uint64_t i = 0; i < pages && data + GW_PAGE_SIZE <= len; i++) {
		if (get_le(payload + 16 + 8 * i, 8) & GW_PAGE_ZERO)
			continue;
		put_le64(payload + 16 + 8 * pages + 8 * i, XXH3_64bits(payload + data, GW_PAGE_SIZE));
		data += GW_PAGE_SIZE;
	}
}

void reseal(unsigned char *p, size_t n)
{
	size_t off = GW_STREAM_HEADER_SIZE;

	while (off + GW_RECORD_HEADER_SIZE <= n) {
		unsigned char *h = p + off, *payload = h + GW_RECORD_HEADER_SIZE;
		uint64_t len = get_le(h + 8, 8), covered = len;

		if (len > n - off - GW_RECORD_HEADER_SIZE)
			break;
		if (get_le(h, 2) == GW_REC_RAM_PAGES && len >= 16) {
			uint64_t pages = get_le(payload + 4, 4);

			if (pages <= GW_PAGES_MAX && GW_PAGES_DESC_SIZE(pages) <= len) {
				covered = GW_PAGES_DESC_SIZE(pages);
				reseal_page_hashes(payload, pages, len);
			}
		}
		put_le32(h + 16, gw_crc32c(0, payload, covered));
		put_le32(h + 20, gw_crc32c(0, h, 20));
		off += GW_RECORD_HEADER_SIZE + len;
	}
}
