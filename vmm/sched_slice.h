#ifndef GODWIT_VMM_SCHED_SLICE_H
#define GODWIT_VMM_SCHED_SLICE_H

#include <stddef.h>

/* Ask the scheduler for its shortest time slice for the calling thread
 * and every thread it creates from now on. Call it after the vCPU threads
 * exist, so they keep the default slice. Returns 0 or -errno with a
 * message; a kernel without per-task slices (before 6.6) accepts and
 * ignores the request. */
int sched_short_slice(char *errmsg, size_t errlen);

#endif
