/* The engines' clock: monotonic nanoseconds, immune to wall-clock jumps. */
#ifndef GW_LIB_CLOCK_H
#define GW_LIB_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline uint64_t gw_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

#endif
