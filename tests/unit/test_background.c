/*
 * Background snapshots (lib/engine/background.c) end to end inside one
 * process: a source "guest" whose vCPUs are threads writing all over
 * memfd-backed RAM from user mode, as a vCPU's stores would, and a
 * destination with fresh RAM that loads what the snapshot wrote.
 *
 * The reference is the guest at its instant: vm_pause copies the whole
 * RAM (by pread, which leaves holes alone) once the writers are parked,
 * and whatever the writers do after the resume must not reach the
 * snapshot. Ends other than completion (cancels, a reader that goes away)
 * must leave the guest running with no page write-protected, which the
 * kernel itself says: bit 57 of /proc/self/pagemap (PM_UFFD_WP).
 *
 * Each test asserts outcomes only (status, memory, who was paused or
 * resumed, messages), never durations: the machine is shared and noisy.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <godwit/godwit.h>
#include <godwit/precopy.h>

#include "check.h"
#include "testvm.h"

#define PAGE GW_PAGE_SIZE
#define RAM0_SIZE (32ull << 20) /* 8192 pages */
#define RAM1_SIZE (1ull << 20)  /* 256 pages */
#define WRITERS 2
/* Upper bound for any wait: only a hang reaches it. */
#define WAIT_MAX_MS 60000
/* PM_UFFD_WP: "pte is uffd-wp write-protected" (Documentation/admin-guide/mm/pagemap.rst). */
#define PM_UFFD_WP (1ull << 57)

/*
 * Block 0's layout at the instant (pages):
 *   [0, 2048)      data, every page (a dense run: 4 chunks of 2 MiB)
 *   [2048, 4096)   data on every third page, holes between
 *   [4096, 4160)   populated, all zero
 *   6000, 6001, 7500: data, islands among holes
 *   everything else in [4160, 8192): never touched, but for [4400, 4656)
 *   that the vCPUs may fill before the instant
 * Before the instant the vCPUs write the dense run, block 1's data and
 * those few holes; after it, anywhere (holes included).
 * Block 1: data in [0, 128), [128, 256) never touched.
 */
#define DENSE_END 2048u
#define SPARSE_END 4096u
#define ZERO_END 4160u
#define B1_DATA 128u
/* Holes the vCPUs may fill before the instant (after it, they write anywhere). */
#define EARLY_FIRST 4400u
#define EARLY_PAGES 256u
/* Holes of the instant from here on (but for the islands). */
#define STORM_FIRST (EARLY_FIRST + EARLY_PAGES)
/* The page the VMM itself writes in vm_resume (populated at the instant). */
#define VMM_PAGE 5u
#define VMM_STAMP 0xfeedfacecafef00dull

struct cpu_state {
	uint64_t counter; /* writes of all vCPUs */
	uint32_t regs[4];
};

static const struct gw_field cpu_fields[] = {
	GW_FIELD(U64, struct cpu_state, counter),
	GW_FIELD(U32, struct cpu_state, regs),
};
static const struct gw_vmstate cpu_vmstate = GW_VMSTATE(struct cpu_state, cpu_fields);

enum cancel_at { CANCEL_NONE, CANCEL_IN_PAUSE, CANCEL_IN_RESUME };

struct guest;

struct writer {
	struct guest *g;
	pthread_t thread;
	uint64_t seed;
	unsigned id;
	uint64_t filled; /* fill_holes: holes written so far */
};

struct guest {
	struct gw_migration *m;
	struct test_ram ram[2];
	struct cpu_state cpu;

	struct writer writers[WRITERS];
	unsigned nr_writers;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool pause_req, stop;
	bool instant_past; /* atomic: the vCPUs write everywhere from now on */
	bool fill_holes;   /* after the instant, the vCPUs fill the holes from STORM_FIRST on */
	uint64_t resume_writes; /* writes done when vm_resume let the vCPUs go */
	unsigned parked;
	uint64_t writes; /* atomic: writes done, for progress */

	/* What the engines did to this guest. */
	unsigned pauses, resumes;

	/* The instant, taken in vm_pause. */
	bool take_ref;
	unsigned char *ref[2];
	bool *ref_pop[2]; /* populated at the instant, as the kernel says */
	struct cpu_state ref_cpu;
	uint64_t ref_normal, ref_zero; /* populated pages with data / all zero */

	/* Hooks of individual tests. */
	bool check_protected; /* vm_resume: every populated page is protected */
	uint64_t protected_seen;
	bool vmm_write;       /* vm_resume: the VMM writes VMM_PAGE */
	bool vmm_landed;      /* ... and its write was in the memfd right after */
	unsigned wait_writes; /* vm_resume: let the vCPUs write this much first */
	enum cancel_at cancel_at;
	struct gw_precopy *handle; /* atomic: published once gw_precopy_start returns */

	/* Status callbacks seen. */
	enum gw_mig_status statuses[16];
	unsigned nr_statuses;
};

static void wait_until(bool (*cond)(void *), void *arg, const char *what)
{
	for (int ms = 0; !cond(arg); ms++) {
		if (ms > WAIT_MAX_MS)
			FAIL("timed out waiting for %s", what);
		test_sleep_ms(1);
	}
}

/* ---- the guest ------------------------------------------------------- */

static void put_stamp(unsigned char *p, uint64_t stamp)
{
	memcpy(p, &stamp, sizeof(stamp));
}

/* One vCPU: stores all over block 0 (and now and then block 1). */
static void *writer_main(void *opaque)
{
	struct writer *w = opaque;
	struct guest *g = w->g;
	const uint64_t pages0 = RAM0_SIZE / PAGE;

	for (;;) {
		if (__atomic_load_n(&g->pause_req, __ATOMIC_ACQUIRE) ||
		    __atomic_load_n(&g->stop, __ATOMIC_ACQUIRE)) {
			pthread_mutex_lock(&g->lock);
			g->parked++;
			pthread_cond_broadcast(&g->cond);
			while (g->pause_req && !g->stop)
				pthread_cond_wait(&g->cond, &g->lock);
			g->parked--;
			if (g->stop) {
				pthread_mutex_unlock(&g->lock);
				return NULL;
			}
			pthread_mutex_unlock(&g->lock);
		}
		uint64_t n = __atomic_add_fetch(&g->cpu.counter, 1, __ATOMIC_SEQ_CST);
		uint64_t stamp = n << 8 | (uint64_t)w->id << 1 | 1; /* never zero */
		uint64_t r = test_rnd(&w->seed), page, len;
		unsigned char *b0 = g->ram[0].host;

		if (g->fill_holes && __atomic_load_n(&g->instant_past, __ATOMIC_ACQUIRE)) {
			/* Each write fills a hole of the instant: a missing fault. */
			page = STORM_FIRST +
			       (w->filled++ * WRITERS + w->id) % (pages0 - STORM_FIRST);
			put_stamp(b0 + page * PAGE + 8 * w->id, stamp);
		} else if (!__atomic_load_n(&g->instant_past, __ATOMIC_ACQUIRE)) {
			/* Before the instant: keep most holes holes for it. */
			switch (r % 16) {
			case 10: /* a whole page rewritten */
				memset(b0 + ((r >> 8) % DENSE_END) * PAGE, (int)(stamp | 1) & 0xff,
				       PAGE);
				break;
			case 11: /* a page cleared: zero at the instant */
				memset(b0 + ((r >> 8) % DENSE_END) * PAGE, 0, PAGE);
				break;
			case 12:
			case 13: /* a hole filled while the engine arms */
				page = EARLY_FIRST + (r >> 8) % EARLY_PAGES;
				put_stamp(b0 + page * PAGE + ((r >> 32) % (PAGE / 8)) * 8, stamp);
				break;
			case 14:
				page = (r >> 8) % B1_DATA;
				put_stamp(g->ram[1].host + page * PAGE +
						  ((r >> 32) % (PAGE / 8)) * 8,
					  stamp);
				break;
			default:
				page = (r >> 8) % DENSE_END;
				put_stamp(b0 + page * PAGE + ((r >> 32) % (PAGE / 8)) * 8, stamp);
				break;
			}
		} else {
			switch (r % 16) {
			case 8:
			case 9: /* a run of pages anywhere, a word in each */
				page = (r >> 8) % pages0;
				len = 1 + (r >> 24) % 48;
				for (uint64_t i = page; i < page + len && i < pages0; i++)
					put_stamp(b0 + i * PAGE + (i % 64) * 64, stamp);
				break;
			case 10: /* a whole page rewritten, in the dense run */
				memset(b0 + ((r >> 8) % DENSE_END) * PAGE, (int)(stamp | 1) & 0xff,
				       PAGE);
				break;
			case 11: /* a page cleared */
				memset(b0 + ((r >> 8) % SPARSE_END) * PAGE, 0, PAGE);
				break;
			case 12:
			case 13: /* a page that was never touched (or an island) */
				page = ZERO_END + (r >> 8) % (pages0 - ZERO_END);
				put_stamp(b0 + page * PAGE + ((r >> 32) % (PAGE / 8)) * 8, stamp);
				break;
			case 14: /* block 1 */
				page = (r >> 8) % (RAM1_SIZE / PAGE);
				put_stamp(g->ram[1].host + page * PAGE +
						  ((r >> 32) % (PAGE / 8)) * 8,
					  stamp);
				break;
			case 15: /* a run across a 2 MiB chunk's end */
				page = 500 + (r >> 8) % 20;
				for (uint64_t i = page; i < page + 16; i++)
					put_stamp(b0 + i * PAGE + 8 * w->id, stamp);
				break;
			default: /* a word of a random page */
				page = (r >> 8) % pages0;
				put_stamp(b0 + page * PAGE + ((r >> 32) % (PAGE / 8)) * 8, stamp);
				break;
			}
		}
		__atomic_store_n(&g->cpu.regs[n % 4], (uint32_t)n, __ATOMIC_RELAXED);
		__atomic_add_fetch(&g->writes, 1, __ATOMIC_RELEASE);
		if (n % 64 == 0)
			test_sleep_ms(0);
	}
}

static void read_ram(int fd, unsigned char *buf, uint64_t size)
{
	for (uint64_t done = 0; done < size;) {
		ssize_t n = pread(fd, buf + done, size - done, (off_t)done);

		CHECK(n > 0);
		done += (uint64_t)n;
	}
}

/* The guest at its instant; the writers are parked. */
static void take_reference(struct guest *g)
{
	g->ref_normal = g->ref_zero = 0;
	for (int b = 0; b < 2; b++) {
		uint64_t pages = g->ram[b].size / PAGE;

		if (!g->ref[b])
			CHECK((g->ref[b] = malloc(g->ram[b].size)));
		free(g->ref_pop[b]);
		read_ram(g->ram[b].fd, g->ref[b], g->ram[b].size);
		g->ref_pop[b] = test_populated(g->ram[b].fd, g->ram[b].size);
		for (uint64_t i = 0; i < pages; i++) {
			if (!g->ref_pop[b][i])
				continue;
			if (test_page_zero(g->ref[b] + i * PAGE))
				g->ref_zero++;
			else
				g->ref_normal++;
		}
	}
	g->ref_cpu = g->cpu;
}

/* The pagemap entries of a block's pages. */
static uint64_t *pagemap(struct guest *g, int b)
{
	uint64_t pages = g->ram[b].size / PAGE;
	uint64_t *e = malloc(pages * sizeof(*e));
	off_t at = (off_t)((uintptr_t)g->ram[b].host / PAGE * sizeof(*e));
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);

	CHECK(e && fd >= 0);
	CHECK(pread(fd, e, pages * sizeof(*e), at) == (ssize_t)(pages * sizeof(*e)));
	close(fd);
	return e;
}

/* No page of the guest's RAM is write-protected any more. */
static void check_nothing_protected(struct guest *g)
{
	for (int b = 0; b < 2; b++) {
		uint64_t pages = g->ram[b].size / PAGE;
		uint64_t *e = pagemap(g, b);

		for (uint64_t i = 0; i < pages; i++)
			if (e[i] & PM_UFFD_WP)
				FAIL("block %d page %llu is still write-protected (pagemap %#llx)",
				     b, (unsigned long long)i, (unsigned long long)e[i]);
		free(e);
	}
}

/* vm_resume of the instant: every page populated at the instant is protected. */
static void check_all_protected(struct guest *g)
{
	g->protected_seen = 0;
	for (int b = 0; b < 2; b++) {
		uint64_t pages = g->ram[b].size / PAGE;
		uint64_t *e = pagemap(g, b);

		for (uint64_t i = 0; i < pages; i++) {
			if (!g->ref_pop[b][i])
				continue;
			if (!(e[i] & PM_UFFD_WP))
				FAIL("block %d page %llu: populated at the instant, not protected at the resume (pagemap %#llx)",
				     b, (unsigned long long)i, (unsigned long long)e[i]);
			g->protected_seen++;
		}
		free(e);
	}
}

static bool handle_published(void *opaque)
{
	struct guest *g = opaque;

	return __atomic_load_n(&g->handle, __ATOMIC_ACQUIRE) != NULL;
}

static void cancel_now(struct guest *g)
{
	wait_until(handle_published, g, "gw_precopy_start to return");
	CHECK(gw_precopy_cancel(__atomic_load_n(&g->handle, __ATOMIC_ACQUIRE)));
}

static int vm_pause(void *opaque, struct gw_error *err)
{
	struct guest *g = opaque;

	(void)err;
	pthread_mutex_lock(&g->lock);
	g->pauses++;
	__atomic_store_n(&g->pause_req, true, __ATOMIC_RELEASE);
	/* A vCPU stuck on a page nobody un-protects never parks. */
	while (g->parked < g->nr_writers) {
		struct timespec until;

		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_sec += WAIT_MAX_MS / 1000;
		if (pthread_cond_timedwait(&g->cond, &g->lock, &until) == ETIMEDOUT)
			FAIL("timed out waiting for the vCPUs to park");
	}
	pthread_mutex_unlock(&g->lock);
	if (g->take_ref)
		take_reference(g);
	if (g->cancel_at == CANCEL_IN_PAUSE)
		cancel_now(g);
	return 0;
}

struct progress {
	struct guest *g;
	uint64_t target;
};

static bool writes_reached(void *opaque)
{
	struct progress *p = opaque;

	return __atomic_load_n(&p->g->writes, __ATOMIC_ACQUIRE) >= p->target;
}

static int vm_resume(void *opaque, struct gw_error *err)
{
	struct guest *g = opaque;
	struct progress p = {g, 0};

	(void)err;
	if (g->check_protected)
		check_all_protected(g);
	/* A device model writing guest memory: the VMM faults like a vCPU. */
	if (g->vmm_write) {
		uint64_t back = 0;

		put_stamp(g->ram[0].host + VMM_PAGE * PAGE + 8, VMM_STAMP);
		/* Landed in the memfd (read through the fd, not the mapping),
		 * before any vCPU runs again and may rewrite the page. */
		CHECK(pread(g->ram[0].fd, &back, sizeof(back), VMM_PAGE * PAGE + 8) ==
		      (ssize_t)sizeof(back));
		g->vmm_landed = back == VMM_STAMP;
	}
	pthread_mutex_lock(&g->lock);
	g->resumes++;
	__atomic_store_n(&g->instant_past, true, __ATOMIC_RELEASE);
	__atomic_store_n(&g->pause_req, false, __ATOMIC_RELEASE);
	pthread_cond_broadcast(&g->cond);
	g->resume_writes = __atomic_load_n(&g->writes, __ATOMIC_ACQUIRE);
	p.target = g->resume_writes + g->wait_writes;
	pthread_mutex_unlock(&g->lock);
	/* The vCPUs run into protected pages before the bulk starts. Each
	 * fault takes one of the engine's 256 copy slots, which only the bulk
	 * frees: a few writes (runs of up to 48 pages each, one more per
	 * vCPU under way) stay below that, so no fault waits for a slot. */
	if (g->wait_writes)
		wait_until(writes_reached, &p, "the vCPUs to write after the resume");
	if (g->cancel_at == CANCEL_IN_RESUME)
		cancel_now(g);
	return 0;
}

static const struct gw_vm_ops vm_ops = {vm_pause, vm_resume};

static void on_status(void *opaque, enum gw_mig_status s)
{
	struct guest *g = opaque;

	pthread_mutex_lock(&g->lock);
	CHECK(g->nr_statuses < 16);
	g->statuses[g->nr_statuses++] = s;
	pthread_mutex_unlock(&g->lock);
}

static void fill_page(unsigned char *p, int b, uint64_t page)
{
	uint64_t s = 0x9e3779b97f4a7c15ull ^ ((uint64_t)b << 40 | page);

	for (unsigned i = 0; i < PAGE; i += 8) {
		uint64_t v = test_rnd(&s);

		memcpy(p + i, &v, 8);
	}
}

static void guest_init(struct guest *g, bool source)
{
	const struct gw_machine mach = {"godwit-test", "1", "test-machine", 1};
	static const char *const names[2] = {"pc.ram", "vga.vram"};
	struct gw_error err = {0};

	memset(g, 0, sizeof(*g));
	pthread_mutex_init(&g->lock, NULL);
	pthread_cond_init(&g->cond, NULL);
	CHECK_OK(gw_migration_new(&mach, &g->m, &err), &err);
	for (int b = 0; b < 2; b++) {
		struct gw_ram r = {names[b], NULL, b ? RAM1_SIZE : RAM0_SIZE, -1, 0, GW_GPA_NONE};

		test_ram_create(&g->ram[b], r.size);
		r.host = g->ram[b].host;
		r.fd = g->ram[b].fd;
		CHECK_OK(gw_migration_add_ram(g->m, &r, &err), &err);
	}
	CHECK_OK(gw_migration_add_section(g->m,
					  &(struct gw_section){.name = "cpu",
							       .version = 1,
							       .min_version = 1,
							       .vmstate = &cpu_vmstate,
							       .opaque = &g->cpu},
					  &err),
		 &err);
	CHECK_OK(gw_migration_set_vm_ops(g->m, &vm_ops, g, &err), &err);
	if (!source)
		return;

	unsigned char *b0 = g->ram[0].host;

	for (uint64_t i = 0; i < DENSE_END; i++)
		fill_page(b0 + i * PAGE, 0, i);
	for (uint64_t i = DENSE_END; i < SPARSE_END; i += 3)
		fill_page(b0 + i * PAGE, 0, i);
	for (uint64_t i = SPARSE_END; i < ZERO_END; i++)
		b0[i * PAGE] = 0; /* a write fault: populated, zero */
	fill_page(b0 + 6000 * PAGE, 0, 6000);
	fill_page(b0 + 6001 * PAGE, 0, 6001);
	fill_page(b0 + 7500 * PAGE, 0, 7500);
	for (uint64_t i = 0; i < B1_DATA; i++)
		fill_page(g->ram[1].host + i * PAGE, 1, i);
	g->cpu.regs[0] = 0xc0ffee;
	g->nr_writers = WRITERS;
	for (unsigned i = 0; i < WRITERS; i++) {
		g->writers[i] =
			(struct writer){.g = g, .seed = 0x2545f4914f6cdd1dull * (i + 1), .id = i};
		CHECK(pthread_create(&g->writers[i].thread, NULL, writer_main, &g->writers[i]) ==
		      0);
	}
}

static void guest_free(struct guest *g)
{
	pthread_mutex_lock(&g->lock);
	__atomic_store_n(&g->stop, true, __ATOMIC_RELEASE);
	pthread_cond_broadcast(&g->cond);
	pthread_mutex_unlock(&g->lock);
	for (unsigned i = 0; i < g->nr_writers; i++)
		pthread_join(g->writers[i].thread, NULL);
	gw_migration_free(g->m);
	for (int b = 0; b < 2; b++) {
		munmap(g->ram[b].host, g->ram[b].size);
		close(g->ram[b].fd);
		free(g->ref[b]);
		free(g->ref_pop[b]);
	}
	pthread_cond_destroy(&g->cond);
	pthread_mutex_destroy(&g->lock);
}

/* The vCPUs run (never paused, or resumed as often as paused). */
static bool guest_running(struct guest *g)
{
	bool r;

	pthread_mutex_lock(&g->lock);
	r = !g->pause_req && g->pauses == g->resumes;
	pthread_mutex_unlock(&g->lock);
	return r;
}

/* The vCPUs get on with their writes: none is stuck on a protected page. */
static void check_progress(struct guest *g)
{
	struct progress p = {g, __atomic_load_n(&g->writes, __ATOMIC_ACQUIRE) + 5000};

	CHECK(guest_running(g));
	wait_until(writes_reached, &p, "the vCPUs to make progress");
}

static void check_statuses(struct guest *g, const enum gw_mig_status *want, unsigned n)
{
	pthread_mutex_lock(&g->lock);
	for (unsigned i = 0; i < n || i < g->nr_statuses; i++)
		if (i >= n || i >= g->nr_statuses || g->statuses[i] != want[i])
			FAIL("status callback %u: got %s, expected %s", i,
			     i < g->nr_statuses ? gw_mig_status_name(g->statuses[i]) : "nothing",
			     i < n ? gw_mig_status_name(want[i]) : "nothing");
	pthread_mutex_unlock(&g->lock);
}

/* ---- the engines ------------------------------------------------------- */

static void snapshot_params(struct gw_precopy_params *pp)
{
	gw_precopy_params_default(pp);
	pp->max_bandwidth = 0;
	pp->background_snapshot = true;
}

static struct gw_precopy *snapshot_start(struct guest *g, int fd,
					 const struct gw_precopy_params *pp)
{
	struct gw_precopy_callbacks cb = {on_status, NULL, NULL, g};
	struct gw_channel ch = test_channel_of(fd);
	struct gw_error err = {0};
	struct gw_precopy *out = NULL;

	CHECK_OK(gw_precopy_start(g->m, &ch, 1, pp, &cb, &out, &err), &err);
	CHECK(ch.fd == -1);
	__atomic_store_n(&g->handle, out, __ATOMIC_RELEASE);
	return out;
}

static bool snapshot_done(void *opaque)
{
	return gw_precopy_done(opaque);
}

static bool snapshot_active(void *opaque)
{
	struct gw_precopy_stats st;

	gw_precopy_stats(opaque, &st);
	return (st.status == GW_MIG_ACTIVE && st.transferred >= (1u << 20)) ||
	       gw_precopy_done(opaque);
}

static void snapshot_wait(struct gw_precopy *p, struct gw_precopy_stats *st)
{
	wait_until(snapshot_done, p, "the snapshot to end");
	gw_precopy_stats(p, st);
}

static bool incoming_done(void *opaque)
{
	return gw_incoming_done(opaque);
}

/* Load what fd holds into dst; the outcome in *st. */
static void load(struct guest *dst, int fd, const struct gw_incoming_params *ip,
		 struct gw_incoming_stats *st)
{
	struct gw_incoming_callbacks cb = {on_status, dst};
	struct gw_channel ch = test_channel_of(fd);
	struct gw_error err = {0};
	struct gw_incoming *in = NULL;

	CHECK_OK(gw_incoming_start(dst->m, &ch, ip, &cb, &in, &err), &err);
	wait_until(incoming_done, in, "the load to end");
	gw_incoming_stats(in, st);
	gw_incoming_free(in);
}

/* dst holds exactly the source at its instant. */
static void check_instant(struct guest *src, struct guest *dst)
{
	for (int b = 0; b < 2; b++) {
		uint64_t size = dst->ram[b].size;
		unsigned char *d = malloc(size);

		CHECK(d);
		read_ram(dst->ram[b].fd, d, size);
		if (memcmp(d, src->ref[b], size) != 0)
			for (uint64_t i = 0; i < size / PAGE; i++) {
				const unsigned char *dp = d + i * PAGE,
						    *rp = src->ref[b] + i * PAGE;
				unsigned o = 0;

				if (memcmp(dp, rp, PAGE) == 0)
					continue;
				while (dp[o] == rp[o])
					o++;
				FAIL("block %d page %llu (%s at the instant) differs at byte %u: %#x, instant %#x",
				     b, (unsigned long long)i,
				     src->ref_pop[b][i] ? "populated" : "a hole", o, dp[o], rp[o]);
			}
		free(d);
	}
	CHECK(dst->cpu.counter == src->ref_cpu.counter);
	CHECK(memcmp(dst->cpu.regs, src->ref_cpu.regs, sizeof(dst->cpu.regs)) == 0);
}

/* The writers changed the source after the instant (so the equality of
 * the snapshot and the instant says something). */
static void check_changed(struct guest *src)
{
	unsigned char *now = malloc(RAM0_SIZE);

	CHECK(now);
	read_ram(src->ram[0].fd, now, RAM0_SIZE);
	CHECK(memcmp(now, src->ref[0], RAM0_SIZE) != 0);
	/* Not a comparison of VMM_PAGE now with the instant: a vCPU may since
	 * have rewritten it with exactly what it held then. */
	CHECK(src->vmm_landed);
	free(now);
	CHECK(src->cpu.counter > src->ref_cpu.counter);
}

static int temp_file(const char *dir, char *path, size_t size)
{
	int fd;

	snprintf(path, size, "%s/godwit-test-bg-XXXXXX", dir);
	fd = mkostemp(path, O_CLOEXEC);
	CHECK(fd >= 0);
	return fd;
}

/* ---- 1. the instant ---------------------------------------------------- */

enum target { TO_STREAM, TO_MAPPED, TO_MAPPED_DIRECT };

static const char *const target_names[] = {"stream into a memfd", "mapped-ram file",
					   "mapped-ram file with direct-io"};

static void test_instant(enum target target)
{
	static const enum gw_mig_status want[] = {GW_MIG_SETUP, GW_MIG_ACTIVE, GW_MIG_COMPLETED};
	static const enum gw_mig_status dst_want[] = {GW_MIG_COMPLETED};
	struct gw_incoming_params ip = {0};
	struct gw_precopy_params pp;
	struct gw_precopy_stats st;
	struct gw_incoming_stats in;
	struct guest src, dst;
	char path[64] = "";
	int fd;

	if (target == TO_STREAM) {
		fd = memfd_create("snapshot", MFD_CLOEXEC);
		CHECK(fd >= 0);
	} else {
		fd = temp_file(target == TO_MAPPED_DIRECT ? "/var/tmp" : "/tmp", path,
			       sizeof(path));
		if (target == TO_MAPPED_DIRECT) {
			char proc[64];
			int dfd;

			snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
			dfd = open(proc, O_RDWR | O_DIRECT | O_CLOEXEC);
			if (dfd < 0) {
				printf("instant, %s: skipped, O_DIRECT on /var/tmp: %s\n",
				       target_names[target], strerror(errno));
				close(fd);
				unlink(path);
				return;
			}
			close(dfd);
		}
	}
	guest_init(&src, true);
	guest_init(&dst, false);
	src.take_ref = true;
	src.check_protected = true;
	src.vmm_write = true;
	src.wait_writes = 2;
	test_sleep_ms(10); /* the vCPUs write before the instant too */
	snapshot_params(&pp);
	if (target != TO_STREAM) {
		pp.mapped_ram = true;
		pp.multifd_channels = 2;
		pp.direct_io = target == TO_MAPPED_DIRECT;
		ip.multifd_channels = 2;
		ip.direct_io = pp.direct_io;
	}
	struct gw_precopy *p = snapshot_start(&src, fd, &pp);

	snapshot_wait(p, &st);
	printf("instant, %s: %llu normal + %llu zero pages (%llu + %llu populated at the instant, %llu protected), %llu faults, %llu bytes, pause %llu us\n",
	       target_names[target], (unsigned long long)st.normal,
	       (unsigned long long)st.duplicate, (unsigned long long)src.ref_normal,
	       (unsigned long long)src.ref_zero, (unsigned long long)src.protected_seen,
	       (unsigned long long)st.wp_faults, (unsigned long long)st.transferred,
	       (unsigned long long)st.pause_us);
	if (st.status != GW_MIG_COMPLETED)
		FAIL("snapshot %s: %s", gw_mig_status_name(st.status), st.error);
	check_statuses(&src, want, 3);
	CHECK(st.error[0] == '\0');
	CHECK(src.pauses == 1 && src.resumes == 1);
	CHECK(guest_running(&src));
	CHECK(st.wp_faults > 0);
	CHECK(src.protected_seen == src.ref_normal + src.ref_zero);
	/* Every page with data at the instant was written once, with its
	 * data; zero pages and holes the vCPUs filled since count as zero. */
	CHECK(st.normal == src.ref_normal);
	CHECK(st.duplicate >= src.ref_zero);
	CHECK(st.normal + st.duplicate <= (RAM0_SIZE + RAM1_SIZE) / PAGE);
	CHECK(st.normal_bytes == st.normal * PAGE);
	CHECK(st.remaining == 0 && st.total == RAM0_SIZE + RAM1_SIZE && st.page_size == PAGE);
	CHECK(st.transferred > st.normal_bytes);
	check_nothing_protected(&src);
	check_progress(&src);
	check_changed(&src);
	gw_precopy_free(p);

	if (target == TO_STREAM)
		CHECK(lseek(fd, 0, SEEK_SET) == 0);
	load(&dst, fd, &ip, &in);
	if (in.status != GW_MIG_COMPLETED)
		FAIL("load %s: %s", gw_mig_status_name(in.status), in.error);
	/* Restored from a file, not arriving live: the copy runs. */
	CHECK(!in.held && dst.resumes == 1 && dst.pauses == 0);
	check_statuses(&dst, dst_want, 1);
	if (target == TO_STREAM)
		CHECK(in.received == st.transferred);
	check_instant(&src, &dst);

	guest_free(&src);
	guest_free(&dst);
	close(fd);
	if (path[0])
		unlink(path);
}

/* ---- 2. cancel --------------------------------------------------------- */

enum cancel_point {
	CANCEL_AFTER_START,
	CANCEL_PAUSED,
	CANCEL_RESUMING,
	CANCEL_ACTIVE_STREAM,
	CANCEL_ACTIVE_MAPPED,
	CANCEL_ACTIVE_PIPE,
};

static const char *const cancel_names[] = {
	"right after start",    "in vm_pause",        "in vm_resume",
	"active, memfd stream", "active, mapped-ram", "active, slow pipe reader",
};

/* A reader that takes 4 KiB a millisecond at most, until the end. */
struct slow_reader {
	int fd;
	uint64_t got;
	size_t close_after; /* 0: read to the end; else close the pipe after this */
	pthread_t thread;
};

static void *slow_reader_main(void *opaque)
{
	struct slow_reader *r = opaque;
	char buf[4096];
	ssize_t n;

	while ((n = read(r->fd, buf, sizeof(buf))) > 0) {
		__atomic_add_fetch(&r->got, (uint64_t)n, __ATOMIC_RELAXED);
		if (r->close_after && r->got >= r->close_after)
			break;
		if (!r->close_after)
			test_sleep_ms(1);
	}
	close(r->fd);
	return NULL;
}

/* A pipe read by r (close_after as r says); returns its write end. */
static int start_slow_reader(struct slow_reader *r)
{
	int p[2];

	CHECK(pipe2(p, O_CLOEXEC) == 0);
	r->fd = p[0];
	CHECK(pthread_create(&r->thread, NULL, slow_reader_main, r) == 0);
	return p[1];
}

static void test_cancel(enum cancel_point at)
{
	struct gw_precopy_params pp;
	struct gw_precopy_stats st;
	struct slow_reader reader = {0};
	char path[64] = "";
	struct guest src;
	int fd;

	guest_init(&src, true);
	snapshot_params(&pp);
	if (at == CANCEL_ACTIVE_PIPE) {
		fd = start_slow_reader(&reader);
	} else if (at == CANCEL_ACTIVE_MAPPED) {
		fd = temp_file("/tmp", path, sizeof(path));
		pp.mapped_ram = true;
		pp.multifd_channels = 2;
	} else {
		fd = memfd_create("snapshot", MFD_CLOEXEC);
		CHECK(fd >= 0);
	}
	/* Slow enough to be still running (over 11 MiB to write, 5 s at
	 * least): the cancel, not the end, stops it. */
	if (at != CANCEL_ACTIVE_PIPE)
		pp.max_bandwidth = 2 << 20;
	src.cancel_at = at == CANCEL_PAUSED   ? CANCEL_IN_PAUSE :
			at == CANCEL_RESUMING ? CANCEL_IN_RESUME :
						CANCEL_NONE;
	src.vmm_write = true;

	struct gw_precopy *p = snapshot_start(&src, fd, &pp);

	if (at == CANCEL_ACTIVE_PIPE) {
		close(fd); /* the engine has its own dup; the reader sees the end */
		fd = -1;
	}
	if (at == CANCEL_AFTER_START)
		CHECK(gw_precopy_cancel(p));
	else if (at >= CANCEL_ACTIVE_STREAM) {
		wait_until(snapshot_active, p, "the snapshot to write 1 MiB");
		CHECK(gw_precopy_cancel(p));
	}
	snapshot_wait(p, &st);
	printf("cancel %s: %s after %llu bytes, %llu faults, %u pauses (%s)\n", cancel_names[at],
	       gw_mig_status_name(st.status), (unsigned long long)st.transferred,
	       (unsigned long long)st.wp_faults, src.pauses, st.error);
	if (st.status != GW_MIG_CANCELLED)
		FAIL("cancel %s: status %s (%s)", cancel_names[at], gw_mig_status_name(st.status),
		     st.error);
	pthread_mutex_lock(&src.lock);
	/* A cancel before the thread got going leaves out even SETUP. */
	CHECK(src.nr_statuses >= 2);
	if (at != CANCEL_AFTER_START)
		CHECK(src.nr_statuses >= 3 && src.statuses[0] == GW_MIG_SETUP);
	CHECK(src.statuses[src.nr_statuses - 2] == GW_MIG_CANCELLING);
	CHECK(src.statuses[src.nr_statuses - 1] == GW_MIG_CANCELLED);
	pthread_mutex_unlock(&src.lock);
	CHECK(src.resumes == src.pauses && src.pauses <= 1);
	if (at != CANCEL_AFTER_START)
		CHECK(src.pauses == 1);
	if (at >= CANCEL_RESUMING)
		CHECK(st.remaining > 0);
	CHECK(guest_running(&src));
	check_nothing_protected(&src);
	check_progress(&src);
	gw_precopy_free(p);
	if (at == CANCEL_ACTIVE_PIPE)
		pthread_join(reader.thread, NULL);
	guest_free(&src);
	if (fd >= 0)
		close(fd);
	if (path[0])
		unlink(path);
}

/*
 * Cancel while the vCPUs fill holes of the instant: every write is a
 * missing fault, which the engine fills protected. The end unregisters
 * guest RAM while fills may still be under way, and no page may stay
 * protected after it, however the two interleave (which is up to the
 * scheduler: hence the rounds).
 */
static bool filled_some(void *opaque)
{
	struct guest *g = opaque;
	uint64_t since;

	pthread_mutex_lock(&g->lock);
	since = g->resumes ? g->resume_writes : UINT64_MAX;
	pthread_mutex_unlock(&g->lock);
	return since != UINT64_MAX && __atomic_load_n(&g->writes, __ATOMIC_ACQUIRE) >= since + 300;
}

static void test_cancel_filling(unsigned rounds)
{
	for (unsigned round = 0; round < rounds; round++) {
		struct gw_precopy_params pp;
		struct gw_precopy_stats st;
		struct slow_reader reader = {0};
		struct guest src;

		guest_init(&src, true);
		src.fill_holes = true;
		snapshot_params(&pp);

		int w = start_slow_reader(&reader);
		struct gw_precopy *h = snapshot_start(&src, w, &pp);

		close(w);
		wait_until(filled_some, &src, "the vCPUs to fill holes");
		CHECK(gw_precopy_cancel(h));
		snapshot_wait(h, &st);
		if (st.status != GW_MIG_CANCELLED)
			FAIL("cancel while filling holes, round %u: status %s (%s)", round,
			     gw_mig_status_name(st.status), st.error);
		CHECK(src.pauses == 1 && src.resumes == 1);
		CHECK(guest_running(&src));
		check_nothing_protected(&src);
		check_progress(&src);
		gw_precopy_free(h);
		pthread_join(reader.thread, NULL);
		guest_free(&src);
	}
	printf("cancel while the vCPUs fill holes: %u rounds\n", rounds);
}

/* ---- 3. the reader goes away -------------------------------------------- */

static void test_reader_closes(size_t after)
{
	struct gw_precopy_params pp;
	struct gw_precopy_stats st;
	struct slow_reader reader = {0};
	struct guest src;

	guest_init(&src, true);
	snapshot_params(&pp);
	reader.close_after = after;

	int w = start_slow_reader(&reader);
	struct gw_precopy *h = snapshot_start(&src, w, &pp);

	close(w);
	snapshot_wait(h, &st);
	pthread_join(reader.thread, NULL);
	printf("reader closes after %zu KiB: %s after %llu bytes, %u pauses: %s\n", after >> 10,
	       gw_mig_status_name(st.status), (unsigned long long)st.transferred, src.pauses,
	       st.error);
	if (st.status != GW_MIG_FAILED)
		FAIL("status %s, expected failed", gw_mig_status_name(st.status));
	CHECK(st.error_code < 0);
	if (!strstr(st.error, "background snapshot"))
		FAIL("error \"%s\" lacks \"background snapshot\"", st.error);
	pthread_mutex_lock(&src.lock);
	CHECK(src.statuses[src.nr_statuses - 1] == GW_MIG_FAILED);
	pthread_mutex_unlock(&src.lock);
	CHECK(src.pauses == 1 && src.resumes == 1);
	CHECK(guest_running(&src));
	check_nothing_protected(&src);
	check_progress(&src);
	gw_precopy_free(h);
	guest_free(&src);
}

/* ---- 4. cut and corrupted snapshots ------------------------------------ */

/* A completed snapshot of a running guest, its bytes in *len. */
static unsigned char *snapshot_bytes(bool mapped, size_t *len)
{
	struct gw_precopy_params pp;
	struct gw_precopy_stats st;
	char path[64] = "";
	struct guest src;
	unsigned char *buf;
	struct stat sb;
	int fd;

	guest_init(&src, true);
	snapshot_params(&pp);
	if (mapped) {
		fd = temp_file("/tmp", path, sizeof(path));
		pp.mapped_ram = true;
	} else {
		fd = memfd_create("snapshot", MFD_CLOEXEC);
		CHECK(fd >= 0);
	}
	struct gw_precopy *p = snapshot_start(&src, fd, &pp);

	snapshot_wait(p, &st);
	if (st.status != GW_MIG_COMPLETED)
		FAIL("snapshot %s: %s", gw_mig_status_name(st.status), st.error);
	gw_precopy_free(p);
	guest_free(&src);
	CHECK(fstat(fd, &sb) == 0 && sb.st_size > 0);
	*len = (size_t)sb.st_size;
	CHECK((buf = malloc(*len)));
	read_ram(fd, buf, *len);
	close(fd);
	if (path[0])
		unlink(path);
	return buf;
}

/* Load len bytes of buf (a file of that size); true if the load completed. */
static bool load_bytes(const unsigned char *buf, size_t len, bool mapped, const char *what)
{
	struct gw_incoming_stats in;
	char path[64] = "";
	struct guest dst;
	int fd;

	if (mapped)
		fd = temp_file("/tmp", path, sizeof(path));
	else
		CHECK((fd = memfd_create("cut", MFD_CLOEXEC)) >= 0);
	for (size_t done = 0; done < len;) {
		ssize_t n = write(fd, buf + done, len - done);

		CHECK(n > 0);
		done += (size_t)n;
	}
	CHECK(lseek(fd, 0, SEEK_SET) == 0);
	guest_init(&dst, false);
	load(&dst, fd, NULL, &in);
	printf("%s %s (%zu bytes): %s%s%s\n", mapped ? "mapped-ram file" : "stream", what, len,
	       gw_mig_status_name(in.status), in.error[0] ? ": " : "", in.error);
	if (in.status == GW_MIG_COMPLETED) {
		CHECK(dst.resumes == 1);
	} else {
		CHECK(in.status == GW_MIG_FAILED && in.error[0]);
		/* Half-loaded: it must never run. */
		CHECK(dst.resumes == 0 && dst.pauses == 0);
	}
	guest_free(&dst);
	close(fd);
	if (path[0])
		unlink(path);
	return in.status == GW_MIG_COMPLETED;
}

static void test_cut(bool mapped)
{
	size_t len;
	unsigned char *buf = snapshot_bytes(mapped, &len);
	const struct {
		size_t len;
		const char *what;
	} cuts[] = {
		/* A mapped-ram file's header is a page or more. */
		{mapped ? 100 : GW_STREAM_HEADER_SIZE / 2, "cut in the header"},
		{len / 2, "cut in the middle"},
		{len - 1, "cut one byte before its end"},
	};

	CHECK(load_bytes(buf, len, mapped, "whole"));
	for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++)
		if (load_bytes(buf, cuts[i].len, mapped, cuts[i].what))
			FAIL("%s %s: loaded", mapped ? "mapped-ram file" : "stream", cuts[i].what);
	if (!mapped) {
		/* Hostile bytes: a flipped bit in RAM, and one in the EOF record. */
		const size_t flips[] = {len / 2, len - 5};

		for (size_t i = 0; i < 2; i++) {
			buf[flips[i]] ^= 0x04;
			if (load_bytes(buf, len, mapped,
				       i ? "bit flipped in EOF" : "bit flipped in the middle"))
				FAIL("stream with a flipped bit at %zu: loaded", flips[i]);
			buf[flips[i]] ^= 0x04;
		}
	}
	free(buf);
}

int main(void)
{
	/* Writes to a pipe whose reader is gone must fail, not kill the test. */
	signal(SIGPIPE, SIG_IGN);
	test_instant(TO_STREAM);
	test_instant(TO_MAPPED);
	test_instant(TO_MAPPED_DIRECT);
	test_cancel(CANCEL_AFTER_START);
	test_cancel(CANCEL_PAUSED);
	test_cancel(CANCEL_RESUMING);
	test_cancel(CANCEL_ACTIVE_STREAM);
	test_cancel(CANCEL_ACTIVE_MAPPED);
	test_cancel(CANCEL_ACTIVE_PIPE);
	test_cancel_filling(10);
	test_reader_closes(8 << 10);
	test_reader_closes(1 << 20);
	test_cut(false);
	test_cut(true);
	return 0;
}
