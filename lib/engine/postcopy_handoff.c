/*
 * A new connection handed to a paused post-copy (postcopy_handoff.h).
 */
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "lib/engine/postcopy_handoff.h"
#include "lib/internal.h"

int gw_pc_handoff_open(struct gw_pc_handoff *h, struct gw_job *j, struct gw_error *err)
{
	int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);

	if (efd < 0)
		return gw_error_set(err, -errno, "post-copy: cannot create an eventfd: %s",
				    gw_strerror(errno));
	pthread_mutex_lock(&j->lock);
	h->efd = efd;
	h->pending = false;
	pthread_mutex_unlock(&j->lock);
	return 0;
}

void gw_pc_handoff_shut(struct gw_pc_handoff *h, struct gw_job *j)
{
	pthread_mutex_lock(&j->lock);
	int efd = h->efd;

	h->efd = -1;
	if (h->pending)
		gw_channel_close(&h->ch, NULL);
	h->pending = false;
	pthread_mutex_unlock(&j->lock);
	if (efd >= 0)
		close(efd);
}

int gw_pc_handoff_give(struct gw_pc_handoff *h, struct gw_job *j, struct gw_channel *ch,
		       struct gw_error *err)
{
	uint64_t one = 1;

	if (!ch->bidirectional)
		return gw_error_set(err, -EINVAL,
				    "post-copy resumes over a connection that answers (tcp:, unix:, a socket fd:), not %s",
				    ch->desc);
	if (j->status != GW_MIG_POSTCOPY_PAUSED || h->efd < 0)
		return gw_error_set(err, -EINVAL,
				    "only a post-copy in postcopy-paused takes a new connection (status %s)",
				    gw_mig_status_name(j->status));
	if (h->pending)
		return gw_error_set(err, -EBUSY, "a new connection is already waiting to be taken");
	if (write(h->efd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		return gw_error_set(err, -errno, "eventfd: %s", gw_strerror(errno));
	h->ch = *ch;
	h->pending = true;
	*ch = (struct gw_channel){.fd = -1};
	return 0;
}

int gw_pc_handoff_take(struct gw_pc_handoff *h, struct gw_job *j, struct gw_channel *ch,
		       struct gw_error *err)
{
	struct pollfd p[2] = {{.fd = j->cancel.efd, .events = POLLIN},
			      {.fd = h->efd, .events = POLLIN}};
	uint64_t n;

	for (;;) {
		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			return gw_error_set(err, -errno, "poll: %s", gw_strerror(errno));
		}
		if (p[0].revents)
			return gw_error_set(err, -ECANCELED, "stopped in postcopy-paused");
		if (read(h->efd, &n, sizeof(n)) < 0 && errno != EAGAIN)
			return gw_error_set(err, -errno, "eventfd: %s", gw_strerror(errno));
		pthread_mutex_lock(&j->lock);
		bool got = h->pending;

		*ch = h->ch;
		h->pending = false;
		pthread_mutex_unlock(&j->lock);
		if (got)
			return 0;
	}
}
