#include "units.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

/* Three significant digits: 1.23, 12.3, 123. */
static const char *three_digits(char buf[UNITS_BUF], double v, const char *unit)
{
	const char *fmt = v < 9.995 ? "%.2f %s" : v < 99.95 ? "%.1f %s" : "%.0f %s";
	snprintf(buf, UNITS_BUF, fmt, v, unit);
	return buf;
}

const char *fmt_bytes(char buf[UNITS_BUF], uint64_t bytes)
{
	static const char *const units[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
	if (bytes < 1024) {
		snprintf(buf, UNITS_BUF, "%u B", (unsigned)bytes);
		return buf;
	}
	double v = (double)bytes / 1024;
	size_t u = 0;
	/* 1023.9 KiB would print as "1024 KiB": move up before rounding does. */
	while (v >= 999.5 && u + 1 < sizeof(units) / sizeof(units[0])) {
		v /= 1024;
		u++;
	}
	return three_digits(buf, v, units[u]);
}

const char *fmt_rate(char buf[UNITS_BUF], double bytes_per_second)
{
	static const char *const units[] = {"kB/s", "MB/s", "GB/s", "TB/s"};
	if (!(bytes_per_second >= 1000)) { /* also NaN */
		snprintf(buf, UNITS_BUF, "%.0f B/s", bytes_per_second > 0 ? bytes_per_second : 0.0);
		return buf;
	}
	double v = bytes_per_second / 1000;
	size_t u = 0;
	while (v >= 999.5 && u + 1 < sizeof(units) / sizeof(units[0])) {
		v /= 1000;
		u++;
	}
	return three_digits(buf, v, units[u]);
}

const char *fmt_duration(char buf[UNITS_BUF], uint64_t ms)
{
	if (ms < 1000)
		snprintf(buf, UNITS_BUF, "%u ms", (unsigned)ms);
	else if (ms < 60000)
		snprintf(buf, UNITS_BUF, "%.2f s", (double)ms / 1000);
	else
		snprintf(buf, UNITS_BUF, "%llu min %02u s", (unsigned long long)(ms / 60000),
			 (unsigned)(ms / 1000 % 60));
	return buf;
}

int parse_size(const char *s, uint64_t *out)
{
	if (*s < '0' || *s > '9')
		return -1;
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno)
		return -1;
	unsigned shift = 0;
	switch (*end) {
	case '\0':
		break;
	case 'k':
	case 'K':
		shift = 10;
		break;
	case 'm':
	case 'M':
		shift = 20;
		break;
	case 'g':
	case 'G':
		shift = 30;
		break;
	case 't':
	case 'T':
		shift = 40;
		break;
	default:
		return -1;
	}
	if (*end && end[1])
		return -1;
	if (v > (UINT64_MAX >> 1) >> shift)
		return -1;
	*out = (uint64_t)v << shift;
	return 0;
}
