#include "vmm/ratelog.h"

#include <stdio.h>
#include <time.h>

bool ratelog_allow(struct ratelog *r, unsigned per_sec, const char *what)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	uint64_t now = (uint64_t)ts.tv_sec;
	if (now != r->window) {
		if (r->dropped)
			fprintf(stderr, "godwit-vmm: %llu more %s not logged\n",
				(unsigned long long)r->dropped, what);
		r->window = now;
		r->count = 0;
		r->dropped = 0;
	}
	if (r->count++ < per_sec)
		return true;
	r->dropped++;
	return false;
}
