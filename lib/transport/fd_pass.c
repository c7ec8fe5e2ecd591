/*
 * fd passing over unix stream sockets (fd_pass.h).
 */
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "lib/clock.h"
#include "lib/internal.h"
#include "lib/transport/fd_pass.h"

bool gw_fd_is_unix_socket(int fd)
{
	int domain = 0, type = 0;
	socklen_t len = sizeof(domain);

	if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) < 0)
		return false;
	len = sizeof(type);
	return getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 && domain == AF_UNIX &&
	       type == SOCK_STREAM;
}

/* What is left of a deadline, for poll(); -1 means none. */
static int left_ms(uint64_t deadline_ns)
{
	uint64_t now = gw_now_ns();

	if (!deadline_ns)
		return -1;
	return now >= deadline_ns ? 0 : (int)((deadline_ns - now + 999999) / 1000000);
}

static int wait_for(struct gw_cancel *c, short events, uint64_t deadline_ns, const char *what,
		    struct gw_error *err)
{
	int ret = gw_cancel_poll(c, events, left_ms(deadline_ns));

	if (ret == -ECANCELED)
		return gw_error_set(err, ret, "cancelled while %s", what);
	if (ret == 0)
		return gw_error_set(err, -ETIMEDOUT, "timed out while %s", what);
	return ret < 0 ? gw_error_set(err, ret, "%s: poll: %s", what, strerror(-ret)) : 0;
}

static uint64_t deadline_of(int timeout_ms)
{
	return timeout_ms < 0 ? 0 : gw_now_ns() + (uint64_t)timeout_ms * 1000000;
}

int gw_fds_send(struct gw_cancel *c, int timeout_ms, const void *buf, size_t len, const int *fds,
		unsigned n, struct gw_error *err)
{
	union {
		struct cmsghdr h;
		char space[CMSG_SPACE(sizeof(int) * GW_FDS_MAX)];
	} u;
	uint64_t deadline = deadline_of(timeout_ms);
	const unsigned char *p = buf;
	size_t done = 0;

	if (n > GW_FDS_MAX || !len)
		return gw_error_set(err, -EINVAL, "fd passing: %u fds with %zu bytes", n, len);
	memset(&u, 0, sizeof(u));
	while (done < len) {
		struct iovec iov = {.iov_base = (void *)(p + done), .iov_len = len - done};
		struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
		ssize_t k;
		int ret;

		/* The fds ride on the first byte: only the first sendmsg has them. */
		if (done == 0 && n) {
			msg.msg_control = u.space;
			msg.msg_controllen = CMSG_SPACE(sizeof(int) * n);
			u.h.cmsg_level = SOL_SOCKET;
			u.h.cmsg_type = SCM_RIGHTS;
			u.h.cmsg_len = CMSG_LEN(sizeof(int) * n);
			memcpy(CMSG_DATA(&u.h), fds, sizeof(int) * n);
		}
		ret = wait_for(c, POLLOUT, deadline, "sending fds", err);
		if (ret < 0)
			return ret;
		k = sendmsg(c->fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (k < 0 && (errno == EAGAIN || errno == EINTR))
			continue;
		if (k < 0)
			return gw_error_set(err, -errno, "sending fds: %s", strerror(errno));
		done += (size_t)k;
	}
	return 0;
}

/* Take the fds of one received message into fds while *n < max; close
 * the rest, and return how many that was. */
static unsigned take_fds(struct msghdr *msg, int *fds, unsigned max, unsigned *n)
{
	unsigned closed = 0;

	for (struct cmsghdr *h = CMSG_FIRSTHDR(msg); h; h = CMSG_NXTHDR(msg, h)) {
		size_t k;

		if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS ||
		    h->cmsg_len < CMSG_LEN(0))
			continue;
		k = (h->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < k; i++) {
			int fd;

			memcpy(&fd, CMSG_DATA(h) + i * sizeof(int), sizeof(int));
			if (*n < max) {
				fds[(*n)++] = fd;
			} else {
				close(fd);
				closed++;
			}
		}
	}
	return closed;
}

int gw_fds_recv(struct gw_cancel *c, int timeout_ms, void *buf, size_t len, int *fds, unsigned max,
		unsigned *n, struct gw_error *err)
{
	union {
		struct cmsghdr h;
		char space[CMSG_SPACE(sizeof(int) * GW_FDS_MAX)];
	} u;
	uint64_t deadline = deadline_of(timeout_ms);
	unsigned char *p = buf;
	size_t done = 0;
	int ret;

	*n = 0;
	if (max > GW_FDS_MAX)
		max = GW_FDS_MAX;
	while (done < len) {
		/*
		 * The first byte is received alone. A longer read would go on
		 * past the end of a send without fds into the next send, and
		 * take that one's fds with it (the kernel ends a read after
		 * fds, not before them): fds a sender attached to byte 10
		 * would pass for the first byte's.
		 */
		struct iovec iov = {.iov_base = p + done, .iov_len = done ? len - done : 1};
		struct msghdr msg = {.msg_iov = &iov,
				     .msg_iovlen = 1,
				     .msg_control = u.space,
				     .msg_controllen = sizeof(u.space)};
		unsigned extra;
		ssize_t k;

		ret = wait_for(c, POLLIN, deadline, "receiving fds", err);
		if (ret < 0)
			return ret;
		k = recvmsg(c->fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
		if (k < 0 && (errno == EAGAIN || errno == EINTR))
			continue;
		if (k < 0)
			return gw_error_set(err, -errno, "receiving fds: %s", strerror(errno));
		if (k == 0)
			return gw_error_set(err, -EPIPE,
					    "the peer closed the connection after %zu of %zu bytes",
					    done, len);
		/* Past the first byte there is no room: any fd is closed. */
		extra = take_fds(&msg, fds, done ? *n : max, n);
		if (done && extra)
			return gw_error_set(err, -EBADMSG,
					    "fd passing: %u fds came with bytes %zu to %zu of %zu, not with the first byte",
					    extra, done, done + (size_t)k - 1, len);
		if (extra || (msg.msg_flags & MSG_CTRUNC))
			return gw_error_set(err, -EBADMSG, "fd passing: more than %u fds came",
					    max);
		done += (size_t)k;
	}
	return 0;
}

int gw_fds_peek(struct gw_cancel *c, void *buf, size_t len, struct gw_error *err)
{
	for (;;) {
		int ret = wait_for(c, POLLIN, 0, "waiting for the first message", err);
		ssize_t k;

		if (ret < 0)
			return ret;
		k = recv(c->fd, buf, len, MSG_PEEK | MSG_DONTWAIT);
		if (k < 0 && (errno == EAGAIN || errno == EINTR))
			continue;
		if (k < 0)
			return gw_error_set(err, -errno, "reading the first message: %s",
					    strerror(errno));
		if (k == 0)
			return gw_error_set(err, -EPIPE, "the peer closed the connection at once");
		if ((size_t)k == len)
			return 0;
		/* Fewer bytes than asked: wait for the rest, without spinning. */
		if (gw_cancel_sleep(c, 200000) < 0)
			return gw_error_set(err, -ECANCELED, "cancelled");
	}
}

int gw_peer_pidfd(int sock)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);
	long fd;

	if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
		return -errno;
	if (cred.pid <= 0)
		return -ESRCH;
	fd = syscall(SYS_pidfd_open, cred.pid, 0);
	return fd < 0 ? -errno : (int)fd;
}

bool gw_pidfd_exited(int pidfd, int timeout_ms)
{
	struct pollfd p = {.fd = pidfd, .events = POLLIN};
	int ret;

	do
		ret = poll(&p, 1, timeout_ms);
	while (ret < 0 && errno == EINTR);
	return ret > 0;
}
