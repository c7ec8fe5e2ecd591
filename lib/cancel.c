/*
 * Cancellation of an engine thread (cancel.h).
 */
#include <errno.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/cancel.h"
#include "lib/clock.h"
#include "lib/internal.h"

int gw_cancel_init(struct gw_cancel *c, int fd, struct gw_error *err)
{
	struct stat st;

	if (fstat(fd, &st) < 0)
		return gw_error_set(err, -errno, "stream fd %d: %s", fd, gw_strerror(errno));
	c->fd = fd;
	c->is_socket = S_ISSOCK(st.st_mode);
	c->requested = false;
	c->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (c->efd < 0)
		return gw_error_set(err, -errno, "cannot create an eventfd: %s",
				    gw_strerror(errno));
	return 0;
}

void gw_cancel_fini(struct gw_cancel *c)
{
	close(c->efd);
}

void gw_cancel_wake(struct gw_cancel *c)
{
	uint64_t one = 1;
	ssize_t n;

	__atomic_store_n(&c->requested, true, __ATOMIC_SEQ_CST);
	/* It fails only with EAGAIN, when the counter is non-zero: already awake. */
	n = write(c->efd, &one, sizeof(one));
	(void)n;
}

bool gw_cancel_requested(struct gw_cancel *c)
{
	return __atomic_load_n(&c->requested, __ATOMIC_SEQ_CST);
}

void gw_cancel_shutdown(struct gw_cancel *c)
{
	if (c->is_socket)
		shutdown(c->fd, SHUT_RDWR);
}

/* Poll the eventfd and, if events, the stream; the time limit in ns. */
static int wait_for(struct gw_cancel *c, short events, int64_t timeout_ns)
{
	struct pollfd p[2] = {
		{.fd = c->efd, .events = POLLIN},
		{.fd = c->fd, .events = events},
	};
	uint64_t deadline = timeout_ns >= 0 ? gw_now_ns() + (uint64_t)timeout_ns : 0;
	struct timespec ts, *tp = NULL;
	int n;

	for (;;) {
		if (timeout_ns >= 0) {
			uint64_t now = gw_now_ns(), left = now < deadline ? deadline - now : 0;

			ts.tv_sec = (time_t)(left / 1000000000);
			ts.tv_nsec = (long)(left % 1000000000);
			tp = &ts;
		}
		n = ppoll(p, events ? 2 : 1, tp, NULL);
		/* A signal is not the end of the wait: only the time is. */
		if (n >= 0 || errno != EINTR)
			break;
	}
	if (n < 0)
		return -errno;
	if (p[0].revents)
		return -ECANCELED;
	return n > 0;
}

int gw_cancel_sleep(struct gw_cancel *c, uint64_t ns)
{
	int ret = wait_for(c, 0, (int64_t)ns);

	return ret < 0 ? ret : 0;
}

int gw_cancel_poll(struct gw_cancel *c, short events, int timeout_ms)
{
	return wait_for(c, events, timeout_ms < 0 ? -1 : (int64_t)timeout_ms * 1000000);
}
