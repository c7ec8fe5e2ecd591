/*
 * Shared by the machine-limit probes in bench/limits/: a monotonic clock,
 * size parsing and a fatal-error helper. Each probe prints exactly one
 * JSON line on stdout, so the harness never has to parse prose.
 */
#ifndef GW_BENCH_COMMON_H
#define GW_BENCH_COMMON_H

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static inline double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

/* "1G", "256M", "64K" or a plain byte count; powers of 1024. A digit
 * first: strtoull() would skip blanks and take a sign. */
static inline uint64_t parse_size(const char *s)
{
	char *end;
	if (*s < '0' || *s > '9')
		die("not a size: '%s'", s);
	errno = 0;
	unsigned long long v = strtoull(s, &end, 0);
	if (errno || end == s)
		die("not a size: '%s'", s);
	switch (*end) {
	case 'k': case 'K': v <<= 10; end++; break;
	case 'm': case 'M': v <<= 20; end++; break;
	case 'g': case 'G': v <<= 30; end++; break;
	default: break;
	}
	if (*end)
		die("not a size: '%s'", s);
	return v;
}

#endif
