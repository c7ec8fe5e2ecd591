/*
 * The token bucket of ratelimit.h.
 */
#include "lib/ratelimit.h"

/* A full bucket: a tenth of a second at the rate. */
#define BURST_DIVISOR 10

void gw_ratelimit_init(struct gw_ratelimit *rl, uint64_t now_ns)
{
	rl->last_ns = now_ns;
	rl->tokens = 0;
}

void gw_ratelimit_spend(struct gw_ratelimit *rl, uint64_t bytes)
{
	rl->tokens -= (double)bytes;
}

uint64_t gw_ratelimit_burst(uint64_t rate)
{
	return rate ? rate / BURST_DIVISOR : UINT64_MAX;
}

uint64_t gw_ratelimit_delay_ns(struct gw_ratelimit *rl, uint64_t rate, uint64_t now_ns)
{
	double full = (double)gw_ratelimit_burst(rate);

	if (rate == 0) {
		/* Unlimited forgives any debt: a limit set later starts afresh. */
		rl->tokens = 0;
		rl->last_ns = now_ns;
		return 0;
	}
	rl->tokens += (double)rate * (double)(now_ns - rl->last_ns) / 1e9;
	rl->last_ns = now_ns;
	if (rl->tokens > full)
		rl->tokens = full;
	if (rl->tokens >= 0)
		return 0;
	return (uint64_t)(-rl->tokens * 1e9 / (double)rate) + 1;
}
