/*
 * What it costs to give a destination VMM memory to receive pages into:
 * the first write to each 4 KiB page of a fresh memfd (a page fault that
 * allocates and zeroes the page), the same after fallocate() reserved the
 * range, the same with MADV_POPULATE_WRITE doing the faults in bulk, and
 * plain anonymous memory (what QEMU backs RAM with by default).
 *
 *   gw-bench-fault [--size 1G]
 */
#include "common.h"

#include <fcntl.h>
#include <getopt.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#define PAGE 4096

enum kind { MEMFD, MEMFD_FALLOCATE, MEMFD_POPULATE, ANON };

/* µs per page to make [size] bytes of fresh memory of this kind writable
 * and written once; *prep_s gets the time of any bulk step before it. */
static double touch_cost(enum kind k, uint64_t size, double *prep_s)
{
	int fd = -1;
	char *p;
	*prep_s = 0;
	if (k == ANON) {
		p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	} else {
		fd = memfd_create("gw-bench-fault", MFD_CLOEXEC);
		if (fd < 0 || ftruncate(fd, (off_t)size))
			die("memfd: %s", strerror(errno));
		p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	}
	if (p == MAP_FAILED)
		die("mmap: %s", strerror(errno));

	double t0 = now_s();
	if (k == MEMFD_FALLOCATE && fallocate(fd, 0, 0, (off_t)size))
		die("fallocate: %s", strerror(errno));
	if (k == MEMFD_POPULATE && madvise(p, size, MADV_POPULATE_WRITE))
		die("madvise(MADV_POPULATE_WRITE): %s", strerror(errno));
	double t1 = now_s();
	for (uint64_t off = 0; off < size; off += PAGE)
		p[off] = 1;
	double t2 = now_s();

	*prep_s = t1 - t0;
	munmap(p, size);
	if (fd >= 0)
		close(fd);
	return (t2 - t1) * 1e6 / (double)(size / PAGE);
}

int main(int argc, char **argv)
{
	uint64_t size = 1ull << 30;
	static const struct option opts[] = {{"size", required_argument, NULL, 's'}, {0}};
	int c;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (c == 's')
			size = parse_size(optarg);
		else
			return 2;
	}
	size &= ~(uint64_t)(PAGE - 1);
	double pages = (double)(size / PAGE);
	double prep_fa, prep_pop, prep_none;
	double first = touch_cost(MEMFD, size, &prep_none);
	double after_fa = touch_cost(MEMFD_FALLOCATE, size, &prep_fa);
	double after_pop = touch_cost(MEMFD_POPULATE, size, &prep_pop);
	double anon = touch_cost(ANON, size, &prep_none);
	printf("{\"limit\":\"fault\",\"bytes\":%llu,"
	       "\"memfd_first_touch_us\":%.3f,"
	       "\"memfd_fallocate_us\":%.3f,\"memfd_after_fallocate_touch_us\":%.3f,"
	       "\"memfd_populate_write_us\":%.3f,\"memfd_after_populate_touch_us\":%.3f,"
	       "\"anon_first_touch_us\":%.3f}\n",
	       (unsigned long long)size, first, prep_fa * 1e6 / pages, after_fa,
	       prep_pop * 1e6 / pages, after_pop, anon);
	return 0;
}
