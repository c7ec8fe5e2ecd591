/*
 * dirtier: every vCPU keeps rewriting its share of a memory range and
 * checks each page just before overwriting it. That is how a live-migrated
 * guest proves its memory arrived intact: a page write lost on the way is
 * caught by the next pass over that page. Parameters, memory layout and
 * reports are described in README.md.
 *
 * The page loop is as small as it can be (two reads, a compare, two
 * writes), because the guest may run emulated at a few µs per page.
 */
#include "rt/rt.h"

/* Beyond this many bad pages a vCPU only counts them: a wholly corrupt
 * range would otherwise flood a console where every byte is a VM exit. */
#define MAX_REPORTED_FAILURES 8
/* After pass 1, vCPU 0 prints a pass line at most once per this many pages
 * written, so that the short passes of hot mode do not become console
 * traffic. */
#define PAGES_PER_LINE 4096
/* Random mode keeps one uint32 per page at the start of each share. */
#define TABLE_ENTRIES_PER_PAGE (GW_PAGE_SIZE / sizeof(uint32_t))

enum mode { MODE_SEQ, MODE_HOT, MODE_RANDOM };
static const char *const mode_names[] = { "seq", "hot", "random" };

/* Set by vCPU 0 before the first barrier, read-only after it. */
static struct {
	uint64_t start, end; /* the range, page-aligned */
	enum mode mode;
	uint64_t hot, writes, seed, passes;
	bool verbose;
	unsigned nr_vcpus;
} opt;

static struct gw_barrier barrier;
static uint64_t bad_pages; /* found by all vCPUs; atomic */

/* One vCPU's contiguous part of the range. */
struct share {
	unsigned cpu;
	uint64_t first_pfn;  /* first page that carries stamps */
	uint64_t nr_pages;   /* pages that carry stamps */
	uint64_t per_pass;   /* pages written by each pass */
	uint32_t *last_pass; /* random mode: the pass that last wrote each page, 0 = none */
	uint64_t rng;        /* random mode: xorshift64 state */
	uint64_t failures;
};

static void parse_options(const struct gw_guest_config *cfg)
{
	static const char *const known[] = {
		"start", "end", "mode", "hot", "writes", "seed", "passes", "verbose", NULL,
	};
	uint64_t pages;
	const char *mode;
	size_t len;

	gw_param_warn_unknown(cfg, known);
	opt.start = gw_param_u64(cfg, "start", gw_default_start(cfg));
	opt.end = gw_param_u64(cfg, "end", cfg->ram_size);
	gw_check_range(cfg, &opt.start, &opt.end);
	opt.nr_vcpus = cfg->nr_vcpus;
	pages = (opt.end - opt.start) >> GW_PAGE_SHIFT;
	/* Two pages, so that even a random-mode share has a page besides its table. */
	if (pages < 2ull * opt.nr_vcpus)
		gw_fatal("dirtier: %lu pages are too few for %u vCPUs (2 each at least)\n",
			 pages, opt.nr_vcpus);

	opt.mode = MODE_SEQ;
	mode = gw_param(cfg, "mode", &len);
	if (mode) {
		while (opt.mode <= MODE_RANDOM && !gw_param_is(mode, len, mode_names[opt.mode]))
			opt.mode++;
		if (opt.mode > MODE_RANDOM)
			gw_fatal("dirtier: mode=%.*s: expected seq, hot or random\n", (int)len, mode);
	}
	opt.hot = gw_param_u64(cfg, "hot", 256);
	if (!opt.hot)
		gw_fatal("dirtier: hot=0: hot mode needs at least one page\n");
	opt.writes = gw_param_u64(cfg, "writes", 0);
	opt.seed = gw_param_u64(cfg, "seed", 1);
	opt.passes = gw_param_u64(cfg, "passes", 0);
	opt.verbose = gw_param_u64(cfg, "verbose", 1) != 0;
}

/* splitmix64: spreads seed + cpu so neighbouring vCPUs get unrelated
 * sequences (xorshift64 from nearby seeds starts out correlated). */
static uint64_t mix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

static void setup_share(struct share *sh, unsigned cpu)
{
	uint64_t pages = (opt.end - opt.start) >> GW_PAGE_SHIFT;
	uint64_t lo = pages * cpu / opt.nr_vcpus, hi = pages * (cpu + 1) / opt.nr_vcpus;

	sh->cpu = cpu;
	sh->first_pfn = (opt.start >> GW_PAGE_SHIFT) + lo;
	sh->nr_pages = hi - lo;
	sh->last_pass = NULL;
	sh->failures = 0;
	switch (opt.mode) {
	case MODE_SEQ:
		sh->per_pass = sh->nr_pages;
		break;
	case MODE_HOT:
		sh->per_pass = opt.hot < sh->nr_pages ? opt.hot : sh->nr_pages;
		break;
	case MODE_RANDOM: {
		/* A little more table than needed (it also counts its own pages). */
		uint64_t table_pages = GW_ALIGN_UP(sh->nr_pages, TABLE_ENTRIES_PER_PAGE) /
				       TABLE_ENTRIES_PER_PAGE;

		sh->last_pass = (uint32_t *)(uintptr_t)(sh->first_pfn << GW_PAGE_SHIFT);
		sh->first_pfn += table_pages;
		sh->nr_pages -= table_pages;
		/* Cleared rather than assumed fresh: a stale table would make
		 * the first checks compare against passes that never ran. */
		for (uint64_t i = 0; i < sh->nr_pages; i++)
			sh->last_pass[i] = 0;
		sh->per_pass = opt.writes ? opt.writes : sh->nr_pages;
		sh->rng = mix(opt.seed + cpu) | 1; /* xorshift64 must not start at 0 */
		break;
	}
	}
}

__attribute__((cold, noinline))
static void report_bad_page(struct share *sh, uint64_t pfn, uint64_t pass,
			    uint64_t first, uint64_t last)
{
	uint64_t want = gw_page_stamp(pass, pfn);
	/* What the page holds, read as a stamp of this page: tells a stale
	 * page (an older pass) from a torn, misplaced or garbage one. */
	uint64_t held = first ^ gw_page_stamp(0, pfn);

	__atomic_add_fetch(&bad_pages, 1, __ATOMIC_RELAXED);
	if (++sh->failures > MAX_REPORTED_FAILURES)
		return;
	gw_testdev(GW_TD_CHECK_FAIL, (uint32_t)pfn);
	if ((uint32_t)held == 0 && last == ~first)
		gw_printf("dirtier: cpu %u: bad page at 0x%lx: expected the stamp of pass %lu, "
			  "found that of pass %lu\n",
			  sh->cpu, pfn << GW_PAGE_SHIFT, pass, held >> 32);
	else
		gw_printf("dirtier: cpu %u: bad page at 0x%lx: expected %016lx/%016lx (pass %lu), "
			  "found %016lx/%016lx\n",
			  sh->cpu, pfn << GW_PAGE_SHIFT, want, ~want, pass, first, last);
	if (sh->failures == MAX_REPORTED_FAILURES)
		gw_printf("dirtier: cpu %u: counting further bad pages without showing them\n",
			  sh->cpu);
}

/* Whether page pfn still holds the stamp that pass wrote. */
static inline void check_page(struct share *sh, uint64_t pfn, uint64_t pass)
{
	volatile uint64_t *q = gw_page(pfn);
	uint64_t want = gw_page_stamp(pass, pfn);
	uint64_t first = q[0], last = q[GW_PAGE_QWORDS - 1];

	if (first != want || last != ~want)
		report_bad_page(sh, pfn, pass, first, last);
}

/* seq and hot: the first per_pass pages, each written by the previous pass. */
static void linear_pass(struct share *sh, uint64_t pass)
{
	uint64_t end = sh->first_pfn + sh->per_pass;

	for (uint64_t pfn = sh->first_pfn; pfn < end; pfn++) {
		if (pass > 1)
			check_page(sh, pfn, pass - 1);
		gw_stamp_page(pfn, pass);
	}
}

static void random_pass(struct share *sh, uint64_t pass)
{
	for (uint64_t n = 0; n < sh->per_pass; n++) {
		uint64_t i = gw_xorshift64(&sh->rng) % sh->nr_pages;

		if (sh->last_pass[i])
			check_page(sh, sh->first_pfn + i, sh->last_pass[i]);
		gw_stamp_page(sh->first_pfn + i, pass);
		sh->last_pass[i] = (uint32_t)pass;
	}
}

/* The pass that last wrote page i of the share once passes are done, 0 if none. */
static uint64_t last_written(const struct share *sh, uint64_t i, uint64_t passes)
{
	if (opt.mode == MODE_RANDOM)
		return sh->last_pass[i];
	return i < sh->per_pass ? passes : 0;
}

static void verify_share(struct share *sh, uint64_t passes)
{
	for (uint64_t i = 0; i < sh->nr_pages; i++) {
		uint64_t pass = last_written(sh, i, passes);

		if (pass)
			check_page(sh, sh->first_pfn + i, pass);
	}
}

/* Runs opt.passes passes, or forever if that is 0. */
static void run(struct share *sh)
{
	uint64_t since_line = 0;

	for (uint64_t pass = 1; !opt.passes || pass <= opt.passes; pass++) {
		if (opt.mode == MODE_RANDOM)
			random_pass(sh, pass);
		else
			linear_pass(sh, pass);
		gw_testdev(GW_TD_PASS, (uint32_t)pass);
		since_line += sh->per_pass;
		if (sh->cpu == 0 && opt.verbose &&
		    (pass == 1 || since_line >= PAGES_PER_LINE || pass == opt.passes)) {
			gw_printf("dirtier: pass %lu done, %lu bad pages\n",
				  pass, __atomic_load_n(&bad_pages, __ATOMIC_RELAXED));
			since_line = 0;
		}
	}
}

int main(unsigned cpu, const struct gw_guest_config *cfg)
{
	struct share sh;
	uint64_t bad;

	if (cpu == 0) {
		parse_options(cfg);
		gw_printf("dirtier: mode=%s range 0x%lx-0x%lx (%lu pages), %u vCPUs, passes=%lu\n",
			  mode_names[opt.mode], opt.start, opt.end,
			  (opt.end - opt.start) >> GW_PAGE_SHIFT, opt.nr_vcpus, opt.passes);
	}
	gw_barrier_wait(&barrier, cfg->nr_vcpus);
	setup_share(&sh, cpu);
	gw_testdev(GW_TD_PAGES, (uint32_t)sh.per_pass);
	/* READY once every vCPU has reported its pages, so a host that waits
	 * for READY sees them all. */
	gw_barrier_wait(&barrier, cfg->nr_vcpus);
	if (cpu == 0)
		gw_testdev(GW_TD_READY, 0);

	run(&sh);

	verify_share(&sh, opt.passes);
	if (!sh.failures)
		gw_testdev(GW_TD_CHECK_OK, (uint32_t)opt.passes);
	gw_barrier_wait(&barrier, cfg->nr_vcpus);
	if (cpu != 0)
		gw_halt();
	bad = __atomic_load_n(&bad_pages, __ATOMIC_RELAXED);
	gw_printf("dirtier: %lu passes, final check %s, %lu bad pages\n",
		  opt.passes, bad ? "FAILED" : "ok", bad);
	return bad ? GW_EXIT_CHECK_FAILED : GW_EXIT_OK;
}
