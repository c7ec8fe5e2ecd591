/*
 * A log a guest can drive (unclaimed accesses, broken virtio rings,
 * failed requests) must not flood the host's log nor slow the vCPU that
 * drives it: at most so many lines per second, and then a count of those
 * left out.
 */
#ifndef GW_VMM_RATELOG_H
#define GW_VMM_RATELOG_H

#include <stdbool.h>
#include <stdint.h>

struct ratelog {
	uint64_t window; /* the second the count is for */
	unsigned count;
	uint64_t dropped;
};

/* Whether one more line may be logged now; when a new second starts,
 * first says how many lines of `what` the last one left out. Racy across
 * threads by design: it only bounds a log. */
bool ratelog_allow(struct ratelog *r, unsigned per_sec, const char *what);

#endif
