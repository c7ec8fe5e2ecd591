/*
 * Buffered byte I/O over a file descriptor, with zero-copy paths for
 * page data. Both directions share one idea: the internal buffer is just
 * one more iovec of the same system call. A writer sends its buffered
 * bytes and the caller's large pieces in one writev(); a reader fills the
 * caller's pieces and reads ahead into its buffer in one readv().
 */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <godwit/io.h>

#include "lib/clock.h"
#include "lib/internal.h"

/* Big enough that small records cost no system call of their own, small
 * enough to stay in L2. */
#define IO_BUF_SIZE (256u << 10)
/* Pieces at least this big are sent from the caller's memory, not copied. */
#define IO_COPY_MAX (32u << 10)
/* iovecs per system call; IOV_MAX is 1024 on Linux. */
#define IO_BATCH 256

/*
 * How an object waits for its fd. Unbound, it blocks in the system call
 * as any program would. Bound to a cancel eventfd (gw_*_bind), it never
 * sleeps inside read or write: sockets get MSG_DONTWAIT and pipes
 * RWF_NOWAIT, and the wait is a poll() on the fd and the eventfd, with a
 * deadline if one is set, so a cancel or a deadline ends any wait — a
 * peer that stops reading cannot hold the thread.
 */
struct io_wait {
	int cancel_fd;        /* -1: unbound */
	uint64_t deadline_ns; /* CLOCK_MONOTONIC; 0: none */
	bool is_socket;
	bool is_fifo; /* RWF_NOWAIT until the kernel says it cannot */
};

struct gw_writer {
	int fd;
	struct io_wait wait;
	int error;
	uint64_t offset;
	uint64_t sent; /* bytes the fd accepted */
	size_t used;
	unsigned char *buf;
};

struct gw_reader {
	int fd;
	struct io_wait wait;
	int error;
	uint64_t offset;
	size_t start; /* buffered bytes are buf[start..end) */
	size_t end;
	unsigned char *buf;
	uint64_t *counter; /* gw_reader_count_into(), or NULL */
};

/* A position in an iovec array, with an optional piece in front (the buffer). */
struct iov_cursor {
	const unsigned char *head;
	size_t head_len;
	const struct iovec *iov;
	int iovcnt;
	int i;
	size_t off;
};

/* Put up to max pieces starting at the cursor into v; returns how many,
 * and their byte count in *bytes. */
static int cursor_fill(const struct iov_cursor *c, struct iovec *v, int max, size_t *bytes)
{
	int k = 0;

	*bytes = 0;
	if (c->head_len) {
		v[k++] = (struct iovec){(void *)c->head, c->head_len};
		*bytes += c->head_len;
	}
	for (int i = c->i; i < c->iovcnt && k < max; i++) {
		size_t off = i == c->i ? c->off : 0;

		if (c->iov[i].iov_len == off)
			continue;
		v[k++] = (struct iovec){(char *)c->iov[i].iov_base + off, c->iov[i].iov_len - off};
		*bytes += c->iov[i].iov_len - off;
	}
	return k;
}

static void cursor_advance(struct iov_cursor *c, size_t n)
{
	size_t take = n < c->head_len ? n : c->head_len;

	/* A reader's cursor has no head: NULL + 0 is undefined too. */
	if (take) {
		c->head += take;
		c->head_len -= take;
		n -= take;
	}
	while (n && c->i < c->iovcnt) {
		size_t left = c->iov[c->i].iov_len - c->off;

		if (n < left) {
			c->off += n;
			return;
		}
		n -= left;
		c->i++;
		c->off = 0;
	}
	/* Skip empty iovecs so cursor_done() sees the end. */
	while (c->i < c->iovcnt && c->iov[c->i].iov_len == c->off) {
		c->i++;
		c->off = 0;
	}
}

static bool cursor_done(const struct iov_cursor *c)
{
	return c->head_len == 0 && c->i >= c->iovcnt;
}

static size_t iov_total(const struct iovec *iov, int iovcnt)
{
	size_t total = 0;

	for (int i = 0; i < iovcnt; i++)
		total += iov[i].iov_len;
	return total;
}

static int wait_init(struct io_wait *wt, int fd, const char *who, struct gw_error *err)
{
	struct stat st;

	if (fd < 0)
		return gw_error_set(err, -EBADF, "stream %s: invalid fd %d", who, fd);
	if (fstat(fd, &st) < 0)
		return gw_error_set(err, -errno, "stream %s: fstat of fd %d: %s", who, fd,
				    gw_strerror(errno));
	*wt = (struct io_wait){.cancel_fd = -1,
			       .is_socket = S_ISSOCK(st.st_mode),
			       .is_fifo = S_ISFIFO(st.st_mode)};
	return 0;
}

int gw_wait_fd(int fd, short events, int cancel_fd, uint64_t deadline_ns)
{
	struct pollfd p[2] = {
		{.fd = fd, .events = events},
		{.fd = cancel_fd, .events = POLLIN},
	};

	for (;;) {
		int timeout = -1, n;

		if (deadline_ns) {
			uint64_t now = gw_now_ns();

			if (now >= deadline_ns)
				return -ETIMEDOUT;
			timeout = (int)((deadline_ns - now + 999999) / 1000000);
		}
		n = poll(p, cancel_fd >= 0 ? 2 : 1, timeout);
		if (n < 0 && errno != EINTR)
			return -errno;
		if (n > 0 && p[1].revents)
			return -ECANCELED;
		if (n > 0)
			return 0;
	}
}

/* Wait until fd is ready after EAGAIN: 0, -ECANCELED, -ETIMEDOUT or -errno. */
static int wait_fd(const struct io_wait *wt, int fd, short events)
{
	return gw_wait_fd(fd, events, wt->cancel_fd, wt->deadline_ns);
}

/* Bound objects never block in the call itself (struct io_wait). */
static bool nowait(const struct io_wait *wt)
{
	return wt->cancel_fd >= 0;
}

/* A pipe or FIFO that refuses RWF_NOWAIT is used blocking from then on. */
static bool nowait_unsupported(struct io_wait *wt, ssize_t n)
{
	if (n >= 0 || errno != EOPNOTSUPP || !wt->is_fifo)
		return false;
	wt->is_fifo = false;
	return true;
}

int gw_writer_new(int fd, struct gw_writer **out, struct gw_error *err)
{
	struct io_wait wt;
	struct gw_writer *w;
	int ret = wait_init(&wt, fd, "writer", err);

	if (ret < 0)
		return ret;
	w = calloc(1, sizeof(*w));
	if (w)
		w->buf = malloc(IO_BUF_SIZE);
	if (!w || !w->buf) {
		free(w);
		return gw_error_set(err, -ENOMEM, "stream writer: out of memory");
	}
	w->fd = fd;
	w->wait = wt;
	*out = w;
	return 0;
}

void gw_writer_free(struct gw_writer *w)
{
	if (!w)
		return;
	free(w->buf);
	free(w);
}

static int writer_failed(struct gw_writer *w, struct gw_error *err)
{
	return gw_error_set(err, w->error,
			    "stream writer already failed (%s); bytes after offset %llu were lost",
			    gw_strerror(w->error), (unsigned long long)w->offset);
}

/* Sockets always get MSG_NOSIGNAL: a dead peer is an error, not a signal. */
static ssize_t write_iov(struct gw_writer *w, const struct iovec *v, int n)
{
	ssize_t ret;

	if (w->wait.is_socket) {
		struct msghdr msg = {.msg_iov = (struct iovec *)v, .msg_iovlen = n};

		return sendmsg(w->fd, &msg, MSG_NOSIGNAL | (nowait(&w->wait) ? MSG_DONTWAIT : 0));
	}
	if (nowait(&w->wait) && w->wait.is_fifo) {
		ret = pwritev2(w->fd, v, n, -1, RWF_NOWAIT);
		if (!nowait_unsupported(&w->wait, ret))
			return ret;
	}
	return writev(w->fd, v, n);
}

/*
 * Write the buffered bytes, then iov, completely. The stream offset of the
 * first byte of the buffer is w->offset - w->used - iov total.
 */
static int writer_send(struct gw_writer *w, const struct iovec *iov, int iovcnt,
		       struct gw_error *err)
{
	struct iov_cursor c = {w->buf, w->used, iov, iovcnt, 0, 0};
	uint64_t at = w->offset - w->used - iov_total(iov, iovcnt);

	cursor_advance(&c, 0);
	while (!cursor_done(&c)) {
		struct iovec v[IO_BATCH];
		size_t bytes;
		ssize_t n = write_iov(w, v, cursor_fill(&c, v, IO_BATCH, &bytes));

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			int ret = wait_fd(&w->wait, w->fd, POLLOUT);

			if (ret == 0)
				continue;
			errno = -ret;
		}
		if (n <= 0) {
			w->error = n < 0 ? -errno : -EIO;
			return gw_error_set(err, w->error,
					    "write to stream failed at offset %llu (%llu bytes written): %s",
					    (unsigned long long)at, (unsigned long long)w->sent,
					    w->error == -ETIMEDOUT ?
						    "no progress before the deadline" :
					    w->error == -ECANCELED ? "cancelled" :
								     gw_strerror(w->error));
		}
		cursor_advance(&c, n);
		at += n;
		w->sent += n;
	}
	w->used = 0;
	return 0;
}

int gw_writer_writev(struct gw_writer *w, const struct iovec *iov, int iovcnt, struct gw_error *err)
{
	size_t total = iov_total(iov, iovcnt);

	if (w->error)
		return writer_failed(w, err);
	if (total < IO_COPY_MAX && total <= IO_BUF_SIZE - w->used) {
		for (int i = 0; i < iovcnt; i++) {
			if (iov[i].iov_len)
				memcpy(w->buf + w->used, iov[i].iov_base, iov[i].iov_len);
			w->used += iov[i].iov_len;
		}
		w->offset += total;
		return 0;
	}
	w->offset += total;
	return writer_send(w, iov, iovcnt, err);
}

int gw_writer_write(struct gw_writer *w, const void *buf, size_t len, struct gw_error *err)
{
	struct iovec v = {(void *)buf, len};

	return gw_writer_writev(w, &v, 1, err);
}

int gw_writer_flush(struct gw_writer *w, struct gw_error *err)
{
	if (w->error)
		return writer_failed(w, err);
	return writer_send(w, NULL, 0, err);
}

uint64_t gw_writer_offset(const struct gw_writer *w)
{
	return w->offset;
}

uint64_t gw_writer_sent(const struct gw_writer *w)
{
	return w->sent;
}

void gw_writer_bind(struct gw_writer *w, int cancel_fd)
{
	w->wait.cancel_fd = cancel_fd;
}

void gw_writer_set_deadline(struct gw_writer *w, uint64_t deadline_ns)
{
	w->wait.deadline_ns = deadline_ns;
}

int gw_reader_new(int fd, struct gw_reader **out, struct gw_error *err)
{
	struct io_wait wt;
	struct gw_reader *r;
	int ret = wait_init(&wt, fd, "reader", err);

	if (ret < 0)
		return ret;
	r = calloc(1, sizeof(*r));
	if (r)
		r->buf = malloc(IO_BUF_SIZE);
	if (!r || !r->buf) {
		free(r);
		return gw_error_set(err, -ENOMEM, "stream reader: out of memory");
	}
	r->fd = fd;
	r->wait = wt;
	*out = r;
	return 0;
}

void gw_reader_free(struct gw_reader *r)
{
	if (!r)
		return;
	free(r->buf);
	free(r);
}

static int reader_failed(struct gw_reader *r, struct gw_error *err)
{
	return gw_error_set(err, r->error, "stream reader already failed (%s) at offset %llu",
			    gw_strerror(r->error), (unsigned long long)r->offset);
}

/* Copy buffered bytes into the cursor's pieces. */
static void reader_drain(struct gw_reader *r, struct iov_cursor *c)
{
	while (r->start < r->end && !cursor_done(c)) {
		const struct iovec *v = &c->iov[c->i];
		size_t n = v->iov_len - c->off;

		if (n > r->end - r->start)
			n = r->end - r->start;
		memcpy((char *)v->iov_base + c->off, r->buf + r->start, n);
		r->start += n;
		cursor_advance(c, n);
	}
}

static ssize_t read_iov(struct gw_reader *r, const struct iovec *v, int n)
{
	ssize_t ret;

	if (nowait(&r->wait) && r->wait.is_socket) {
		struct msghdr msg = {.msg_iov = (struct iovec *)v, .msg_iovlen = n};

		return recvmsg(r->fd, &msg, MSG_DONTWAIT);
	}
	if (nowait(&r->wait) && r->wait.is_fifo) {
		ret = preadv2(r->fd, v, n, -1, RWF_NOWAIT);
		if (!nowait_unsupported(&r->wait, ret))
			return ret;
	}
	return readv(r->fd, v, n);
}

int gw_reader_readv(struct gw_reader *r, const struct iovec *iov, int iovcnt, struct gw_error *err)
{
	struct iov_cursor c = {NULL, 0, iov, iovcnt, 0, 0};
	size_t total = iov_total(iov, iovcnt);
	size_t got = 0;

	if (r->error)
		return reader_failed(r, err);
	cursor_advance(&c, 0);
	for (;;) {
		struct iovec v[IO_BATCH + 1];
		size_t buffered = r->end - r->start;
		size_t want;
		ssize_t n;
		int k;

		/* Read-ahead from an earlier call, or from the last round when the
		 * pieces did not fit one system call. */
		reader_drain(r, &c);
		got += buffered - (r->end - r->start);
		if (cursor_done(&c))
			break;
		/* The buffer is empty here: read ahead into it in the same call. */
		k = cursor_fill(&c, v, IO_BATCH, &want);
		v[k++] = (struct iovec){r->buf, IO_BUF_SIZE};
		n = read_iov(r, v, k);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			int ret = wait_fd(&r->wait, r->fd, POLLIN);

			if (ret == 0)
				continue;
			errno = -ret;
		}
		if (n < 0) {
			r->error = -errno;
			return gw_error_set(err, r->error,
					    "read from stream failed at offset %llu: %s",
					    (unsigned long long)(r->offset + got),
					    gw_strerror(r->error));
		}
		if (n == 0) {
			r->error = -EPIPE;
			return gw_error_set(err, -EPIPE,
					    "truncated stream at offset %llu (need %zu more bytes)",
					    (unsigned long long)(r->offset + got), total - got);
		}
		if (r->counter)
			__atomic_fetch_add(r->counter, (uint64_t)n, __ATOMIC_RELAXED);
		if ((size_t)n > want) {
			r->start = 0;
			r->end = n - want;
			n = want;
		}
		cursor_advance(&c, n);
		got += n;
	}
	r->offset += total;
	return 0;
}

int gw_reader_read(struct gw_reader *r, void *buf, size_t len, struct gw_error *err)
{
	struct iovec v = {buf, len};

	return gw_reader_readv(r, &v, 1, err);
}

int gw_reader_skip(struct gw_reader *r, uint64_t len, struct gw_error *err)
{
	unsigned char scratch[4096];

	while (len) {
		size_t n = len < sizeof(scratch) ? len : sizeof(scratch);
		int ret;

		/* Buffered bytes can be dropped without copying. */
		if (r->start < r->end && !r->error) {
			n = r->end - r->start;
			if (n > len)
				n = len;
			r->start += n;
			r->offset += n;
			len -= n;
			continue;
		}
		ret = gw_reader_read(r, scratch, n, err);
		if (ret < 0)
			return ret;
		len -= n;
	}
	return 0;
}

uint64_t gw_reader_offset(const struct gw_reader *r)
{
	return r->offset;
}

void gw_reader_count_into(struct gw_reader *r, uint64_t *counter)
{
	r->counter = counter;
}

void gw_reader_bind(struct gw_reader *r, int cancel_fd)
{
	r->wait.cancel_fd = cancel_fd;
}

size_t gw_reader_buffered(const struct gw_reader *r)
{
	return r->end - r->start;
}
