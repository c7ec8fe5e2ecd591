/*
 * memcpy throughput on buffers far larger than the caches: the ceiling
 * for anything that copies guest RAM (a socket send copies it once, a
 * receive once more).
 *
 *   gw-bench-memcpy [--size 512M] [--seconds 1]
 */
#include "common.h"

#include <getopt.h>
#include <sys/mman.h>

int main(int argc, char **argv)
{
	uint64_t size = 512ull << 20;
	double seconds = 1.0;
	static const struct option opts[] = {
		{"size", required_argument, NULL, 's'},
		{"seconds", required_argument, NULL, 't'},
		{0},
	};
	int c;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (c == 's')
			size = parse_size(optarg);
		else if (c == 't')
			seconds = atof(optarg);
		else
			return 2;
	}

	char *src = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *dst = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (src == MAP_FAILED || dst == MAP_FAILED)
		die("mmap: %s", strerror(errno));
	/* Populate both first: page faults are measured by gw-bench-fault. */
	memset(src, 0x5a, size);
	memset(dst, 0, size);

	uint64_t copied = 0;
	double t0 = now_s(), t;
	do {
		memcpy(dst, src, size);
		copied += size;
		t = now_s();
	} while (t - t0 < seconds);
	if (dst[size - 1] != 0x5a) /* keeps the copy from being optimised away */
		die("copy check failed");

	printf("{\"limit\":\"memcpy\",\"buffer_bytes\":%llu,\"bytes\":%llu,\"seconds\":%.6f,"
	       "\"gbps\":%.3f}\n",
	       (unsigned long long)size, (unsigned long long)copied, t - t0,
	       (double)copied / (t - t0) / 1e9);
	return 0;
}
