/*
 * pause-before-switchover (outgoing.h): the source stops where QEMU's
 * does, guest paused and the final pages and device state not yet sent,
 * so a manager can do what must happen between the two hosts' copies
 * (libvirt moves disks and networks here) before the destination may
 * take over. The wait is before the switchover handshake's commit point:
 * a cancel during it resumes the source guest, and the destination,
 * which never gets GO, never runs its copy.
 */
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <godwit/precopy.h>

#include "lib/engine/outgoing.h"
#include "lib/internal.h"

/* A failure report is all a destination may send before READY. */
#define REPORT_TIMEOUT_MS 1000

static int wait_for_word(struct gw_precopy *h, int efd, bool return_path)
{
	struct pollfd p[3] = {
		{.fd = h->job.cancel.efd, .events = POLLIN},
		{.fd = efd, .events = POLLIN},
		{.fd = h->job.cancel.fd, .events = POLLIN},
	};

	for (;;) {
		/* No time limit: the manager decides how long this takes. */
		int n = poll(p, return_path ? 3 : 2, -1);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (p[0].revents)
			return -ECANCELED;
		if (p[1].revents)
			return 0;
		return 1; /* the destination said something, or hung up */
	}
}

int gw_outgoing_pre_switchover(struct gw_precopy *h, struct gw_handover *ho, bool return_path,
			       struct gw_error *err)
{
	int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK), ret;

	if (efd < 0)
		return gw_error_set(err, -errno,
				    "pause-before-switchover: cannot create an eventfd: %s",
				    gw_strerror(errno));
	pthread_mutex_lock(&h->job.lock);
	h->continue_efd = efd;
	h->pre_switchover_waiting = true;
	pthread_mutex_unlock(&h->job.lock);
	gw_job_set_status(&h->job, GW_MIG_PRE_SWITCHOVER);
	ret = wait_for_word(h, efd, return_path);
	pthread_mutex_lock(&h->job.lock);
	h->pre_switchover_waiting = false;
	pthread_mutex_unlock(&h->job.lock);
	close(efd);
	if (ret == -ECANCELED)
		return gw_error_set(err, ret, "cancelled");
	if (ret < 0)
		return gw_error_set(err, ret, "pause-before-switchover: poll: %s",
				    gw_strerror(ret));
	if (ret == 1)
		return gw_outgoing_expect(h, ho, REPORT_TIMEOUT_MS, GW_REPORT_FAILED,
					  "the destination's report", err);
	return 0;
}

int gw_precopy_continue(struct gw_precopy *p, struct gw_error *err)
{
	uint64_t one = 1;
	bool waiting;

	pthread_mutex_lock(&p->job.lock);
	waiting = p->pre_switchover_waiting && p->job.status == GW_MIG_PRE_SWITCHOVER;
	if (waiting && write(p->continue_efd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		waiting = false;
	pthread_mutex_unlock(&p->job.lock);
	if (!waiting)
		return gw_error_set(err, -EINVAL,
				    "the migration is not waiting at the switchover (pre-switchover)");
	return 0;
}
