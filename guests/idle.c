/*
 * idle: writes a known stamp into a block of memory once, then every vCPU
 * halts for good. The guest that a migration with almost nothing to
 * re-send should move: its RAM can be verified page by page afterwards,
 * and nothing in it changes while the copy runs.
 */
#include "rt/rt.h"

int main(unsigned cpu, const struct gw_guest_config *cfg)
{
	static const char *const known[] = { "start", "touch", NULL };
	uint64_t start, touch, end;

	if (cpu != 0)
		gw_halt();
	gw_param_warn_unknown(cfg, known);
	start = gw_param_u64(cfg, "start", gw_default_start(cfg));
	touch = gw_param_u64(cfg, "touch", 16ull << 20);
	if (start >= cfg->ram_size)
		gw_fatal("idle: start=0x%lx is beyond RAM (0x%lx bytes)\n", start, cfg->ram_size);
	/* The default must fit a small guest too: touch what there is. */
	end = touch < cfg->ram_size - start ? start + touch : cfg->ram_size;
	gw_check_range(cfg, &start, &end);

	for (uint64_t pfn = start >> GW_PAGE_SHIFT; pfn < end >> GW_PAGE_SHIFT; pfn++)
		gw_stamp_page(pfn, 1);
	gw_testdev(GW_TD_PAGES, (uint32_t)((end - start) >> GW_PAGE_SHIFT));
	gw_printf("idle: stamped 0x%lx-0x%lx (%lu pages) with pass 1, halting\n",
		  start, end, (end - start) >> GW_PAGE_SHIFT);
	gw_testdev(GW_TD_READY, 0);
	gw_halt();
}
