/*
 * A bandwidth limit as a token bucket: sending spends bytes, time refills
 * them at the rate, and a full bucket holds a tenth of a second's worth,
 * so an idle moment does not buy a burst. The rate is passed on every call
 * rather than stored, so a new limit applies to the very next decision.
 */
#ifndef GW_LIB_RATELIMIT_H
#define GW_LIB_RATELIMIT_H

#include <stdint.h>

struct gw_ratelimit {
	uint64_t last_ns; /* when tokens was last brought up to date */
	double tokens;    /* bytes that may be sent now; negative = owed */
};

void gw_ratelimit_init(struct gw_ratelimit *rl, uint64_t now_ns);
/* Spend bytes just sent. */
void gw_ratelimit_spend(struct gw_ratelimit *rl, uint64_t bytes);
/* How long to wait before sending more at rate bytes/s (0 = unlimited): 0 = go on. */
uint64_t gw_ratelimit_delay_ns(struct gw_ratelimit *rl, uint64_t rate, uint64_t now_ns);
/* The largest send that fits a full bucket at rate (0 = unlimited: UINT64_MAX). */
uint64_t gw_ratelimit_burst(uint64_t rate);

#endif
