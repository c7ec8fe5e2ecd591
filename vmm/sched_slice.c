/* Why the VMM's control threads ask for a short slice.
 *
 * A vCPU thread never sleeps while its guest runs, so when there are as
 * many vCPUs as cores every core is held by one. A control thread that
 * wakes up then (the main loop on a QMP `stop`, the migration thread
 * after a full socket drains, the return path's GO) would wait for the
 * running vCPU's slice to end: up to a timer tick, 4 ms here, measured as
 * a 4 ms `stop` with two vCPUs on two cores against 0.4 ms with one. The
 * kick that takes a vCPU out of KVM_RUN is not the slow part (30-110 us
 * from the signal to every vCPU parked); getting the kicker onto a core
 * is. EEVDF (Linux 6.6+) lets a task ask for a shorter slice through
 * sched_attr.sched_runtime (clamped to 0.1-100 ms); a waking task with
 * an earlier virtual deadline preempts the running one, so the control
 * threads run when they wake while their share of the CPU, which only
 * their weight sets, stays what it was. No privilege is needed, unlike a
 * nice value below 0 or a real-time policy, which would also let a
 * runaway control thread starve the guest. */
#include "vmm/sched_slice.h"

#include <errno.h>
/* The kernel's definitions, not glibc's <sched.h>: Debian's glibc has no
 * sched_attr, and its struct sched_param clashes with the uapi one. */
#include <linux/sched.h>
#include <linux/sched/types.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define SHORT_SLICE_NS 100000ull /* the kernel's lower clamp */

int sched_short_slice(char *errmsg, size_t errlen)
{
	struct sched_attr attr = {
		.size = sizeof(attr),
		.sched_policy = SCHED_NORMAL,
		.sched_runtime = SHORT_SLICE_NS,
	};
	/* A thread someone already gave a real-time or batch policy keeps
	 * it: that was a decision, this is only a default. */
	if (syscall(SYS_sched_getscheduler, 0) != SCHED_NORMAL)
		return 0;
	/* The calling thread's nice value is kept: sched_setattr takes it
	 * from the struct, so read it first. */
	errno = 0;
	int nice_now = nice(0);
	if (nice_now == -1 && errno) {
		snprintf(errmsg, errlen, "reading the nice value: %s", strerror(errno));
		return -errno;
	}
	attr.sched_nice = nice_now;
	if (syscall(SYS_sched_setattr, 0, &attr, 0) < 0) {
		snprintf(errmsg, errlen, "sched_setattr (a %llu us slice): %s",
			 SHORT_SLICE_NS / 1000, strerror(errno));
		return -errno;
	}
	return 0;
}
