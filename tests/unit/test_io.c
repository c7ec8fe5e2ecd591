/*
 * Buffered fd I/O: byte-exact round trips through memfds, pipes and
 * sockets (blocking and not), the zero-copy paths, many-iovec calls,
 * offsets, truncation messages and sticky errors.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "check.h"
#include "testvm.h"

#define BIG (24u << 20)

static unsigned char *pattern(size_t n, uint32_t seed)
{
	unsigned char *p = malloc(n);

	CHECK(p);
	for (size_t i = 0; i < n; i++) {
		seed = seed * 1103515245u + 12345u;
		p[i] = seed >> 16;
	}
	return p;
}

/*
 * The traffic both sides agree on: small writes, a writev mixing small and
 * large pieces, many small iovecs, then a big zero-copy tail.
 */
struct traffic {
	int fd;
	unsigned char *src;
	uint64_t end_offset;
};

#define NSMALL 1000

static void *send_traffic(void *arg)
{
	struct traffic *t = arg;
	struct gw_error err = { 0 };
	struct iovec iov[NSMALL];
	struct gw_writer *w;
	size_t pos = 0;

	CHECK_OK(gw_writer_new(t->fd, &w, &err), &err);
	CHECK_OK(gw_writer_write(w, t->src, 7, &err), &err);
	CHECK_OK(gw_writer_write(w, t->src + 7, 0, &err), &err);
	pos = 7;
	iov[0] = (struct iovec){ t->src + pos, 24 };
	iov[1] = (struct iovec){ t->src + pos + 24, 100000 };
	iov[2] = (struct iovec){ t->src + pos + 100024, 0 };
	iov[3] = (struct iovec){ t->src + pos + 100024, 16 };
	CHECK_OK(gw_writer_writev(w, iov, 4, &err), &err);
	pos += 100040;
	for (int i = 0; i < NSMALL; i++)
		iov[i] = (struct iovec){ t->src + pos + 100 * i, 100 };
	CHECK_OK(gw_writer_writev(w, iov, NSMALL, &err), &err);
	pos += 100 * NSMALL;
	for (int i = 0; i < NSMALL; i++)
		iov[i] = (struct iovec){ t->src + pos + 4096 * i, 4096 };
	CHECK_OK(gw_writer_writev(w, iov, NSMALL, &err), &err);
	pos += 4096 * NSMALL;
	CHECK_OK(gw_writer_write(w, t->src + pos, BIG - pos, &err), &err);
	CHECK(gw_writer_offset(w) == BIG);
	CHECK_OK(gw_writer_flush(w, &err), &err);
	gw_writer_free(w);
	return NULL;
}

static void receive_traffic(int fd, const unsigned char *src)
{
	struct gw_error err = { 0 };
	struct iovec iov[NSMALL];
	struct gw_reader *r;
	unsigned char *dst = malloc(BIG);
	size_t pos;

	CHECK(dst);
	memset(dst, 0xee, BIG);
	CHECK_OK(gw_reader_new(fd, &r, &err), &err);
	CHECK_OK(gw_reader_read(r, dst, 3, &err), &err);
	CHECK_OK(gw_reader_skip(r, 10, &err), &err); /* 3..12 dropped */
	CHECK(gw_reader_offset(r) == 13);
	memcpy(dst + 3, src + 3, 10);
	pos = 13;
	for (int i = 0; i < NSMALL; i++)
		iov[i] = (struct iovec){ dst + pos + 37 * i, 37 };
	CHECK_OK(gw_reader_readv(r, iov, NSMALL, &err), &err);
	pos += 37 * NSMALL;
	CHECK_OK(gw_reader_read(r, dst + pos, 5 << 20, &err), &err);
	pos += 5 << 20;
	CHECK_OK(gw_reader_skip(r, 3 << 20, &err), &err);
	memcpy(dst + pos, src + pos, 3 << 20);
	pos += 3 << 20;
	CHECK_OK(gw_reader_read(r, dst + pos, BIG - pos, &err), &err);
	CHECK(gw_reader_offset(r) == BIG);
	CHECK(memcmp(src, dst, BIG) == 0);
	/* The writer closed its end: the next read is a truncation at BIG. */
	CHECK_ERR(gw_reader_read(r, dst, 1, &err), -EPIPE, &err,
		  "truncated stream at offset 25165824 (need 1 more bytes)");
	CHECK_ERR(gw_reader_read(r, dst, 1, &err), -EPIPE, &err, "stream reader already failed");
	gw_reader_free(r);
	free(dst);
}

/* The sender closes its end when done: that is the receiver's end of file. */
static void *closer(void *arg)
{
	struct traffic *t = arg;

	send_traffic(t);
	close(t->fd);
	return NULL;
}

static void roundtrip(int rfd, int wfd, bool nonblock, const char *what)
{
	struct traffic t = { .fd = wfd, .src = pattern(BIG, 42) };
	pthread_t th;

	if (nonblock) {
		CHECK(fcntl(rfd, F_SETFL, O_NONBLOCK) == 0);
		CHECK(fcntl(wfd, F_SETFL, O_NONBLOCK) == 0);
	}
	CHECK(pthread_create(&th, NULL, closer, &t) == 0);
	receive_traffic(rfd, t.src);
	CHECK(pthread_join(th, NULL) == 0);
	close(rfd);
	free(t.src);
	printf("io: %s%s round trip ok\n", what, nonblock ? " (non-blocking)" : "");
}

static void test_file(void)
{
	struct traffic t = { .fd = test_memfd(NULL, 0), .src = pattern(BIG, 42) };

	send_traffic(&t);
	CHECK(lseek(t.fd, 0, SEEK_SET) == 0);
	receive_traffic(t.fd, t.src);
	close(t.fd);
	free(t.src);
}

static void test_truncation(void)
{
	struct gw_error err = { 0 };
	struct gw_reader *r;
	char buf[32];
	int fd = test_memfd("0123456789", 10);

	CHECK_OK(gw_reader_new(fd, &r, &err), &err);
	CHECK_OK(gw_reader_read(r, buf, 4, &err), &err);
	CHECK_ERR(gw_reader_read(r, buf, 10, &err), -EPIPE, &err,
		  "truncated stream at offset 10 (need 4 more bytes)");
	CHECK(gw_reader_offset(r) == 4);
	gw_reader_free(r);
	CHECK(lseek(fd, 0, SEEK_SET) == 0);
	CHECK_OK(gw_reader_new(fd, &r, &err), &err);
	CHECK_ERR(gw_reader_skip(r, 11, &err), -EPIPE, &err, "truncated stream at offset 10");
	gw_reader_free(r);
	close(fd);

	CHECK_ERR(gw_reader_new(-1, &r, &err), -EBADF, &err, "invalid fd -1");
	struct gw_writer *w;
	CHECK_ERR(gw_writer_new(-3, &w, &err), -EBADF, &err, "invalid fd -3");
	CHECK_ERR(gw_writer_new(1000000, &w, &err), -EBADF, &err, "fstat of fd 1000000");
}

/* A dead peer is an error, not a SIGPIPE that kills the VMM. */
static void test_dead_peer(void)
{
	struct gw_error err = { 0 };
	struct gw_writer *w;
	unsigned char *big = pattern(1 << 20, 1);
	int sv[2];

	CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
	close(sv[1]);
	CHECK_OK(gw_writer_new(sv[0], &w, &err), &err);
	CHECK_OK(gw_writer_write(w, big, 100, &err), &err); /* only buffered so far */
	CHECK_ERR(gw_writer_write(w, big, 1 << 20, &err), -EPIPE, &err,
		  "write to stream failed at offset 0 (0 bytes written): Broken pipe");
	CHECK_ERR(gw_writer_flush(w, &err), -EPIPE, &err, "stream writer already failed");
	gw_writer_free(w);
	close(sv[0]);
	free(big);
}

/* More pieces than one system call takes, on a reader with nothing buffered. */
static void test_many_pieces(void)
{
	unsigned char *src = pattern(1 << 20, 9), *dst = calloc(1, 1 << 20);
	struct gw_error err = { 0 };
	struct iovec iov[3000];
	struct gw_reader *r;
	int fd = test_memfd(src, 1 << 20);

	for (int i = 0; i < 3000; i++)
		iov[i] = (struct iovec){ dst + 300 * i, i % 7 ? 300 : 0 };
	CHECK_OK(gw_reader_new(fd, &r, &err), &err);
	CHECK_OK(gw_reader_readv(r, iov, 3000, &err), &err);
	for (int i = 0, off = 0; i < 3000; i++) {
		if (iov[i].iov_len)
			CHECK(memcmp(dst + 300 * i, src + off, 300) == 0);
		off += iov[i].iov_len;
	}
	gw_reader_free(r);
	close(fd);
	free(src);
	free(dst);
}

int main(void)
{
	int sv[2], p[2];

	test_many_pieces();
	test_truncation();
	test_dead_peer();
	test_file();
	CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
	roundtrip(sv[0], sv[1], false, "unix socket");
	CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
	roundtrip(sv[0], sv[1], true, "unix socket");
	CHECK(pipe(p) == 0);
	CHECK(fcntl(p[1], F_SETPIPE_SZ, 4096) >= 0); /* many short writes */
	roundtrip(p[0], p[1], false, "pipe");
	CHECK(pipe(p) == 0);
	roundtrip(p[0], p[1], true, "pipe");
	printf("io: all tests passed\n");
	return 0;
}
