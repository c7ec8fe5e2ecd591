/*
 * Numbers for people: byte counts and rates as short text, and sizes with
 * K/M/G/T suffixes read from the command line.
 *
 * Sizes use binary units (KiB = 1024 bytes, as memory is sized); rates
 * use decimal units (MB/s = 10^6 bytes per second, as links are rated).
 */
#ifndef GW_TOOLS_UNITS_H
#define GW_TOOLS_UNITS_H

#include <stddef.h>
#include <stdint.h>

/* Longest text the formatters produce, with its NUL. */
#define UNITS_BUF 32

/* "512 B", "1.50 KiB", "64.0 MiB", "1.02 GiB": three significant digits. */
const char *fmt_bytes(char buf[UNITS_BUF], uint64_t bytes);
/* "0 B/s", "812 kB/s", "45.3 MB/s", "4.51 GB/s". */
const char *fmt_rate(char buf[UNITS_BUF], double bytes_per_second);
/* "850 ms", "2.41 s", "3 min 05 s". */
const char *fmt_duration(char buf[UNITS_BUF], uint64_t ms);

/*
 * A byte count: decimal digits, optionally followed by one of K, M, G, T
 * (either case, powers of 1024). 0 on success, -1 if s is not such a
 * number or does not fit in 63 bits (QMP integers are signed).
 */
int parse_size(const char *s, uint64_t *out);

#endif
