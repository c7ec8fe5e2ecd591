/*
 * CRC32C (Castagnoli), the checksum of every godwit record.
 *
 * gw_crc32c(0, p, n) is the CRC of p[0..n); passing a previous result as
 * crc continues it, so gw_crc32c(gw_crc32c(0, a, na), b, nb) is the CRC
 * of a followed by b (the zlib crc32() convention).
 */
#ifndef GW_LIB_CRC32C_H
#define GW_LIB_CRC32C_H

#include <stddef.h>
#include <stdint.h>

uint32_t gw_crc32c(uint32_t crc, const void *p, size_t n);

/* The portable implementation, exposed so tests can compare it with the
 * hardware one on the same input. */
uint32_t gw_crc32c_sw(uint32_t crc, const void *p, size_t n);

#endif
