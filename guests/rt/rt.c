/*
 * Start-up, exit and the memory-range rules every guest shares.
 */
#include "rt.h"

#define TWO_MIB (2ull << 20)

__attribute__((noreturn)) void gw_rt_main(unsigned cpu, const struct gw_guest_config *cfg);

/*
 * A VMM that disagrees about the config layout would hand the guest
 * garbage sizes; refuse to run instead. Only vCPU 0 says so (and ends
 * the guest), so the message appears once.
 */
static bool config_ok(unsigned cpu, const struct gw_guest_config *cfg)
{
	const char *why = NULL;

	if (cfg->magic != GW_CONFIG_MAGIC)
		why = "bad magic";
	else if (cfg->version != GW_CONFIG_VERSION)
		why = "unknown version";
	else if (cfg->nr_vcpus == 0 || cfg->nr_vcpus > GW_MAX_VCPUS || cpu >= cfg->nr_vcpus)
		why = "bad vCPU count";
	if (!why)
		return true;
	if (cpu == 0)
		gw_fatal("guest: config at 0x%lx: %s (magic 0x%lx version %u, vcpus %u)\n",
			 (uint64_t)(uintptr_t)cfg, why, cfg->magic, cfg->version, cfg->nr_vcpus);
	return false;
}

void gw_rt_main(unsigned cpu, const struct gw_guest_config *cfg)
{
	if (!config_ok(cpu, cfg))
		gw_halt();
	gw_exit(main(cpu, cfg));
}

void gw_halt(void)
{
	for (;;)
		__asm__ volatile("cli; hlt" : : : "memory");
}

void gw_exit(int status)
{
	gw_testdev(GW_TD_EXIT, (uint32_t)status & 0xff);
	gw_halt();
}

uint64_t gw_default_start(const struct gw_guest_config *cfg)
{
	return GW_ALIGN_UP(cfg->kernel_end, TWO_MIB);
}

void gw_check_range(const struct gw_guest_config *cfg, uint64_t *start, uint64_t *end)
{
	uint64_t s = GW_ALIGN_UP(*start, GW_PAGE_SIZE);
	uint64_t e = GW_ALIGN_DOWN(*end, GW_PAGE_SIZE);

	if (s < *start || s < cfg->kernel_end)
		gw_fatal("guest: start=0x%lx overlaps the image (which ends at 0x%lx)\n",
			 *start, cfg->kernel_end);
	if (e > cfg->ram_size)
		gw_fatal("guest: end=0x%lx is beyond RAM (0x%lx bytes)\n", *end, cfg->ram_size);
	if (s >= e)
		gw_fatal("guest: range 0x%lx-0x%lx holds no whole page\n", *start, *end);
	*start = s;
	*end = e;
}
