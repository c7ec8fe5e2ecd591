/*
 * CRC32C: the known check value, and the table and hardware paths against
 * a bit-by-bit CRC for every length and alignment that matters.
 */
#include <stdint.h>
#include <string.h>

#include "check.h"
#include "lib/crc32c.h"

static uint32_t crc_bitwise(const unsigned char *p, size_t n)
{
	uint32_t c = ~0u;

	for (size_t i = 0; i < n; i++) {
		c ^= p[i];
		for (int k = 0; k < 8; k++)
			c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
	}
	return ~c;
}

int main(void)
{
	unsigned char buf[4096 + 16];
	uint32_t s = 1;

	CHECK(gw_crc32c(0, "123456789", 9) == 0xE3069283u);
	CHECK(gw_crc32c_sw(0, "123456789", 9) == 0xE3069283u);
	CHECK(gw_crc32c(0, NULL, 0) == 0);
	for (size_t i = 0; i < sizeof(buf); i++) {
		s = s * 1103515245u + 12345u;
		buf[i] = s >> 16;
	}
	/* Every length up to 64 at every alignment, then page-sized ones. */
	for (size_t align = 0; align < 8; align++)
		for (size_t n = 0; n <= 64; n++) {
			uint32_t want = crc_bitwise(buf + align, n);

			CHECK(gw_crc32c(0, buf + align, n) == want);
			CHECK(gw_crc32c_sw(0, buf + align, n) == want);
		}
	CHECK(gw_crc32c(0, buf + 3, 4096) == crc_bitwise(buf + 3, 4096));
	/* Chaining: the CRC of a then b is the CRC of ab. */
	for (size_t cut = 0; cut <= 100; cut += 7)
		CHECK(gw_crc32c(gw_crc32c(0, buf, cut), buf + cut, 4096 - cut) ==
		      gw_crc32c(0, buf, 4096));
	printf("crc32c: all tests passed\n");
	return 0;
}
