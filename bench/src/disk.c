/*
 * O_DIRECT throughput of the file system that holds snapshot files:
 * write a fresh file in aligned blocks, fsync, read it back. With several
 * threads each one takes every Nth block (parallel pwrite/pread at fixed
 * offsets, as a mapped-ram save and restore do).
 *
 *   gw-bench-disk --dir DIR [--size 1G] [--block 1M] [--threads N]
 */
#include "common.h"

#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <stdbool.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_THREADS 32

struct worker {
	int fd;
	bool write;
	unsigned index, nr;
	uint64_t size, block;
	char *buf;
};

static void *run_worker(void *arg)
{
	struct worker *w = arg;
	for (uint64_t off = w->index * w->block; off < w->size; off += w->nr * w->block) {
		ssize_t n = w->write ? pwrite(w->fd, w->buf, w->block, (off_t)off)
				     : pread(w->fd, w->buf, w->block, (off_t)off);
		if (n != (ssize_t)w->block)
			die("%s at %llu: %s", w->write ? "pwrite" : "pread",
			    (unsigned long long)off, n < 0 ? strerror(errno) : "short transfer");
	}
	return NULL;
}

/* Run one pass over the file with every thread; returns seconds. */
static double pass(int fd, bool write, unsigned nr, uint64_t size, uint64_t block, char **bufs)
{
	struct worker w[MAX_THREADS];
	pthread_t th[MAX_THREADS];
	double t0 = now_s();
	for (unsigned i = 0; i < nr; i++) {
		w[i] = (struct worker){fd, write, i, nr, size, block, bufs[i]};
		if (pthread_create(&th[i], NULL, run_worker, &w[i]))
			die("pthread_create failed");
	}
	for (unsigned i = 0; i < nr; i++)
		pthread_join(th[i], NULL);
	if (write && fsync(fd))
		die("fsync: %s", strerror(errno));
	return now_s() - t0;
}

int main(int argc, char **argv)
{
	const char *dir = NULL;
	uint64_t size = 1ull << 30, block = 1ull << 20;
	unsigned threads = 1;
	static const struct option opts[] = {
		{"dir", required_argument, NULL, 'd'},
		{"size", required_argument, NULL, 's'},
		{"block", required_argument, NULL, 'b'},
		{"threads", required_argument, NULL, 'n'},
		{0},
	};
	int c;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'd': dir = optarg; break;
		case 's': size = parse_size(optarg); break;
		case 'b': block = parse_size(optarg); break;
		case 'n': threads = (unsigned)atoi(optarg); break;
		default: return 2;
		}
	}
	if (!dir || threads < 1 || threads > MAX_THREADS || !block || block % 4096 ||
	    size % block)
		die("usage: gw-bench-disk --dir DIR [--size S] [--block B (4 KiB multiple, "
		    "divides S)] [--threads 1..%d]", MAX_THREADS);

	char path[4096];
	snprintf(path, sizeof(path), "%s/gw-bench-disk.%d", dir, (int)getpid());
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_DIRECT, 0600);
	if (fd < 0)
		die("open %s with O_DIRECT: %s", path, strerror(errno));
	unlink(path); /* nothing is left behind, whatever happens */

	char *bufs[MAX_THREADS];
	for (unsigned i = 0; i < threads; i++) {
		if (posix_memalign((void **)&bufs[i], 4096, block))
			die("out of memory");
		/* Non-zero, so no layer can shortcut zero blocks. */
		memset(bufs[i], 0xa5 ^ (int)i, block);
	}
	double tw = pass(fd, true, threads, size, block, bufs);
	double tr = pass(fd, false, threads, size, block, bufs);
	close(fd);

	printf("{\"limit\":\"disk\",\"dir\":\"%s\",\"bytes\":%llu,\"block_bytes\":%llu,"
	       "\"threads\":%u,\"write_seconds\":%.6f,\"read_seconds\":%.6f,"
	       "\"write_gbps\":%.3f,\"read_gbps\":%.3f}\n",
	       dir, (unsigned long long)size, (unsigned long long)block, threads, tw, tr,
	       (double)size / tw / 1e9, (double)size / tr / 1e9);
	return 0;
}
