/*
 * Socket throughput the way a migration sends RAM: writev() of 256 KiB
 * (64 page-sized iovecs) walking a large, populated memory region, so the
 * sender pays for reading memory that is not in the cache. The receiver
 * reads into one buffer and discards it: the cost of placing pages in
 * destination memory is measured separately (gw-bench-fault).
 *
 *   gw-bench-net --serve   tcp:HOST:PORT|unix:PATH [--streams N] [--rtt]
 *   gw-bench-net --connect tcp:HOST:PORT|unix:PATH [--streams N]
 *                [--seconds S] [--region SIZE]
 *   gw-bench-net --connect ADDR --rtt N    (median of N one-byte round trips)
 *
 * The two sides are separate processes (as two VMMs are), and may run
 * in different network namespaces. The client prints the JSON line; a
 * stream counts only the bytes the server confirms it received.
 */
#include "common.h"

#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdbool.h>
#include <arpa/inet.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#define PAGE 4096
#define IOVS 64 /* 64 x 4 KiB = 256 KiB per writev */
#define MAX_STREAMS 16

struct addr {
	struct sockaddr_storage ss;
	socklen_t len;
	int family;
	const char *kind; /* "tcp" or "unix" */
};

static void parse_addr(const char *uri, struct addr *a)
{
	memset(a, 0, sizeof(*a));
	if (!strncmp(uri, "unix:", 5)) {
		struct sockaddr_un *un = (struct sockaddr_un *)&a->ss;
		un->sun_family = AF_UNIX;
		if (strlen(uri + 5) >= sizeof(un->sun_path))
			die("unix path too long: %s", uri + 5);
		strcpy(un->sun_path, uri + 5);
		a->len = sizeof(*un);
		a->family = AF_UNIX;
		a->kind = "unix";
		return;
	}
	if (strncmp(uri, "tcp:", 4))
		die("address must be tcp:HOST:PORT or unix:PATH: %s", uri);
	char host[64];
	const char *colon = strrchr(uri + 4, ':');
	if (!colon || (size_t)(colon - (uri + 4)) >= sizeof(host))
		die("bad tcp address: %s", uri);
	memcpy(host, uri + 4, colon - (uri + 4));
	host[colon - (uri + 4)] = '\0';
	struct sockaddr_in *in = (struct sockaddr_in *)&a->ss;
	in->sin_family = AF_INET;
	in->sin_port = htons((uint16_t)atoi(colon + 1));
	if (inet_pton(AF_INET, host, &in->sin_addr) != 1)
		die("bad IPv4 address: %s", host);
	a->len = sizeof(*in);
	a->family = AF_INET;
	a->kind = "tcp";
}

static int full_write(int fd, const void *buf, size_t len)
{
	const char *p = buf;
	while (len) {
		ssize_t n = write(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int full_read(int fd, void *buf, size_t len)
{
	char *p = buf;
	while (len) {
		ssize_t n = read(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* ---- server ---- */

static void *serve_stream(void *arg)
{
	int fd = (int)(intptr_t)arg;
	static __thread char buf[IOVS * PAGE];
	uint64_t total = 0;
	for (;;) {
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			die("server read: %s", strerror(errno));
		if (n == 0)
			break;
		total += (uint64_t)n;
	}
	if (full_write(fd, &total, sizeof(total)))
		die("server: cannot confirm the byte count: %s", strerror(errno));
	close(fd);
	return NULL;
}

/* --rtt: echo every byte back until the client closes. */
static void *echo_stream(void *arg)
{
	int fd = (int)(intptr_t)arg;
	char b[64];
	ssize_t n;
	while ((n = read(fd, b, sizeof(b))) > 0)
		if (full_write(fd, b, (size_t)n))
			break;
	close(fd);
	return NULL;
}

static int serve(const struct addr *a, int streams, bool echo)
{
	int ls = socket(a->family, SOCK_STREAM, 0);
	if (ls < 0)
		die("socket: %s", strerror(errno));
	int one = 1;
	setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (a->family == AF_UNIX)
		unlink(((const struct sockaddr_un *)&a->ss)->sun_path);
	if (bind(ls, (const struct sockaddr *)&a->ss, a->len) || listen(ls, streams))
		die("bind/listen: %s", strerror(errno));
	pthread_t th[MAX_STREAMS];
	for (int i = 0; i < streams; i++) {
		int fd = accept(ls, NULL, NULL);
		if (fd < 0)
			die("accept: %s", strerror(errno));
		if (pthread_create(&th[i], NULL, echo ? echo_stream : serve_stream,
				   (void *)(intptr_t)fd))
			die("pthread_create failed");
	}
	for (int i = 0; i < streams; i++)
		pthread_join(th[i], NULL);
	close(ls);
	if (a->family == AF_UNIX)
		unlink(((const struct sockaddr_un *)&a->ss)->sun_path);
	return 0;
}

/* ---- client ---- */

struct stream {
	int fd;
	char *base;    /* this stream's slice of the region */
	uint64_t size;
	double seconds;
	pthread_barrier_t *start;
	uint64_t sent, confirmed;
	double t_start, t_end;
};

static int connect_retry(const struct addr *a)
{
	/* The server is started just before us: give it a moment to listen. */
	double deadline = now_s() + 10.0;
	for (;;) {
		int fd = socket(a->family, SOCK_STREAM, 0);
		if (fd < 0)
			die("socket: %s", strerror(errno));
		if (!connect(fd, (const struct sockaddr *)&a->ss, a->len))
			return fd;
		int e = errno;
		close(fd);
		if ((e != ECONNREFUSED && e != ENOENT) || now_s() > deadline)
			die("connect: %s", strerror(e));
		usleep(20000);
	}
}

static void *send_stream(void *arg)
{
	struct stream *s = arg;
	struct iovec iov[IOVS];
	uint64_t off = 0;
	pthread_barrier_wait(s->start);
	s->t_start = now_s();
	for (;;) {
		for (int i = 0; i < IOVS; i++) {
			iov[i].iov_base = s->base + off;
			iov[i].iov_len = PAGE;
			off = (off + PAGE) % s->size;
		}
		/* A short writev is fine: count what went out, the next
		 * writev starts from the next chunk (the bytes are not
		 * checked, only counted). */
		ssize_t n = writev(s->fd, iov, IOVS);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			die("writev: %s", strerror(errno));
		s->sent += (uint64_t)n;
		if (now_s() - s->t_start >= s->seconds)
			break;
	}
	shutdown(s->fd, SHUT_WR);
	if (full_read(s->fd, &s->confirmed, sizeof(s->confirmed)))
		die("the server did not confirm the byte count");
	s->t_end = now_s();
	close(s->fd);
	return NULL;
}

static int client(const struct addr *a, int streams, double seconds, uint64_t region)
{
	char *mem = mmap(NULL, region, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		die("mmap: %s", strerror(errno));
	for (uint64_t i = 0; i < region; i += PAGE)
		memset(mem + i, (int)(i >> 12) | 1, PAGE);

	pthread_barrier_t start;
	pthread_barrier_init(&start, NULL, (unsigned)streams);
	struct stream st[MAX_STREAMS];
	pthread_t th[MAX_STREAMS];
	uint64_t slice = region / (uint64_t)streams / (IOVS * PAGE) * (IOVS * PAGE);
	for (int i = 0; i < streams; i++) {
		st[i] = (struct stream){
			.fd = connect_retry(a), .base = mem + slice * (uint64_t)i, .size = slice,
			.seconds = seconds, .start = &start,
		};
	}
	for (int i = 0; i < streams; i++)
		if (pthread_create(&th[i], NULL, send_stream, &st[i]))
			die("pthread_create failed");
	uint64_t bytes = 0;
	double t0 = 1e300, t1 = 0;
	for (int i = 0; i < streams; i++) {
		pthread_join(th[i], NULL);
		if (st[i].confirmed != st[i].sent)
			die("stream %d: sent %llu bytes, the server received %llu", i,
			    (unsigned long long)st[i].sent, (unsigned long long)st[i].confirmed);
		bytes += st[i].confirmed;
		t0 = st[i].t_start < t0 ? st[i].t_start : t0;
		t1 = st[i].t_end > t1 ? st[i].t_end : t1;
	}
	printf("{\"limit\":\"%s\",\"streams\":%d,\"chunk_bytes\":%d,\"region_bytes\":%llu,"
	       "\"bytes\":%llu,\"seconds\":%.6f,\"gbps\":%.3f}\n",
	       a->kind, streams, IOVS * PAGE, (unsigned long long)region,
	       (unsigned long long)bytes, t1 - t0, (double)bytes / (t1 - t0) / 1e9);
	return 0;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static int rtt_client(const struct addr *a, int rounds)
{
	int fd = connect_retry(a);
	int one = 1;
	if (a->family == AF_INET)
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	double *us = calloc((size_t)rounds, sizeof(*us));
	if (!us)
		die("out of memory");
	char b = 'x';
	for (int i = 0; i < rounds; i++) {
		double t = now_s();
		if (full_write(fd, &b, 1) || full_read(fd, &b, 1))
			die("round trip %d failed", i);
		us[i] = (now_s() - t) * 1e6;
	}
	close(fd);
	qsort(us, (size_t)rounds, sizeof(*us), cmp_double);
	printf("{\"limit\":\"%s-rtt\",\"rounds\":%d,\"median_us\":%.1f,\"min_us\":%.1f}\n",
	       a->kind, rounds, us[rounds / 2], us[0]);
	free(us);
	return 0;
}

int main(int argc, char **argv)
{
	const char *serve_uri = NULL, *connect_uri = NULL;
	int streams = 1;
	double seconds = 2.0;
	uint64_t region = 1ull << 30;
	int rtt = 0;
	static const struct option opts[] = {
		{"serve", required_argument, NULL, 'S'},
		{"connect", required_argument, NULL, 'C'},
		{"streams", required_argument, NULL, 'n'},
		{"seconds", required_argument, NULL, 't'},
		{"region", required_argument, NULL, 'r'},
		{"rtt", optional_argument, NULL, 'R'},
		{0},
	};
	int c;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'S': serve_uri = optarg; break;
		case 'C': connect_uri = optarg; break;
		case 'n': streams = atoi(optarg); break;
		case 't': seconds = atof(optarg); break;
		case 'r': region = parse_size(optarg); break;
		case 'R': rtt = optarg ? atoi(optarg) : 1; break;
		default: return 2;
		}
	}
	if (!serve_uri == !connect_uri || streams < 1 || streams > MAX_STREAMS)
		die("usage: gw-bench-net (--serve|--connect) tcp:HOST:PORT|unix:PATH "
		    "[--streams 1..%d] [--seconds S] [--region SIZE]", MAX_STREAMS);
	struct addr a;
	parse_addr(serve_uri ? serve_uri : connect_uri, &a);
	if (serve_uri)
		return serve(&a, streams, rtt > 0);
	return rtt > 0 ? rtt_client(&a, rtt) : client(&a, streams, seconds, region);
}
