/*
 * The guests' runtime: what a freestanding 64-bit program needs to run on
 * several vCPUs under godwit-vmm (or any VMM following abi.h) and to tell
 * the host what it saw. There are no interrupts: every vCPU runs with
 * IF = 0 from entry to halt, so nothing here has to be reentrant.
 *
 * A guest defines
 *     int main(unsigned cpu, const struct gw_guest_config *cfg);
 * which every vCPU enters once the runtime has checked cfg. Returning from
 * main ends the whole guest with that status (gw_exit), so a guest whose
 * secondary vCPUs must keep quiet has them call gw_halt() instead.
 *
 * Exit statuses shared by all guests: 0 success, 1 the guest's self-check
 * failed, 2 the guest could not start (bad config or parameters).
 */
#ifndef GW_GUEST_RT_H
#define GW_GUEST_RT_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "abi.h"

#define GW_PAGE_SHIFT 12
#define GW_PAGE_SIZE (1ull << GW_PAGE_SHIFT)
#define GW_PAGE_QWORDS (GW_PAGE_SIZE / sizeof(uint64_t))
#define GW_ALIGN_UP(x, a) (((x) + (a) - 1) & ~((uint64_t)(a) - 1))
#define GW_ALIGN_DOWN(x, a) ((x) & ~((uint64_t)(a) - 1))

enum { GW_EXIT_OK = 0, GW_EXIT_CHECK_FAILED = 1, GW_EXIT_BAD_CONFIG = 2 };

int main(unsigned cpu, const struct gw_guest_config *cfg);

/* --- port I/O and the test device ------------------------------------- */

static inline void gw_outb(uint16_t port, uint8_t v)
{
	__asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

static inline uint8_t gw_inb(uint16_t port)
{
	uint8_t v;

	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

/*
 * The memory clobber matters: a report such as GW_TD_PASS promises that
 * the pass's stores are done, and the host may pause the guest and read
 * its RAM as soon as it sees the report.
 */
static inline void gw_testdev(enum gw_testdev_cmd cmd, uint32_t arg)
{
	__asm__ volatile("outl %0, %1"
			 : : "a"(GW_TESTDEV_CMD(cmd, arg)), "Nd"((uint16_t)GW_TESTDEV_PORT)
			 : "memory");
}

/* Report GW_TD_EXIT(status) and halt; the VMM ends the guest. */
__attribute__((noreturn)) void gw_exit(int status);
/* Stop this vCPU for good (interrupts stay off, so only an NMI wakes it,
 * and then it halts again). */
__attribute__((noreturn)) void gw_halt(void);

/* --- console (COM1) ----------------------------------------------------- */

/*
 * printf for %s %c %d %u %x with an optional '0' flag, a width and l/ll,
 * and %.*s.
 * Each call is formatted first and then written under a lock, so lines
 * from several vCPUs never interleave; output beyond 256 bytes is cut.
 */
__attribute__((format(printf, 1, 2))) void gw_printf(const char *fmt, ...);
/* Print, then gw_exit(GW_EXIT_BAD_CONFIG). */
__attribute__((noreturn, format(printf, 1, 2))) void gw_fatal(const char *fmt, ...);

/* --- the command line (cfg->cmdline: "key=value key=value ...") -------- */

/* The value of the last occurrence of key, not NUL-terminated, its length
 * in *len; NULL if key is absent. A bare "key" has an empty value. */
const char *gw_param(const struct gw_guest_config *cfg, const char *key, size_t *len);
/* A number: decimal or 0x hex, optionally followed by K, M, G or T
 * (powers of 1024). def if key is absent; gw_fatal if malformed. */
uint64_t gw_param_u64(const struct gw_guest_config *cfg, const char *key, uint64_t def);
/* Whether the value (val, len) is exactly word. */
bool gw_param_is(const char *val, size_t len, const char *word);
/* Print a warning for each key not in known (NULL-terminated), so that a
 * typo such as "pass=3" does not silently mean "run forever". */
void gw_param_warn_unknown(const struct gw_guest_config *cfg, const char *const *known);

/* --- memory ------------------------------------------------------------- */

/* The first 2 MiB boundary at or after the loaded image: the default start
 * of the memory a guest writes, clear of the image and everything below. */
uint64_t gw_default_start(const struct gw_guest_config *cfg);
/* Round [*start, *end) inward to whole pages and gw_fatal unless it is
 * non-empty, lies in RAM and does not overlap the image. */
void gw_check_range(const struct gw_guest_config *cfg, uint64_t *start, uint64_t *end);

/* Pages are reached through their identity-mapped address. Volatile: the
 * point of reading a page is to see what is really there, which after a
 * migration (or a test's deliberate corruption) the compiler cannot know. */
static inline volatile uint64_t *gw_page(uint64_t pfn)
{
	return (volatile uint64_t *)(uintptr_t)(pfn << GW_PAGE_SHIFT);
}

static inline void gw_stamp_page(uint64_t pfn, uint64_t pass)
{
	volatile uint64_t *q = gw_page(pfn);
	uint64_t stamp = gw_page_stamp(pass, pfn);

	q[0] = stamp;
	q[GW_PAGE_QWORDS - 1] = ~stamp;
}

/* xorshift64 (13, 7, 17): a cheap generator; the state must not be 0. */
static inline uint64_t gw_xorshift64(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

/* --- synchronisation between vCPUs ---------------------------------------- */

static inline void gw_pause(void)
{
	__builtin_ia32_pause();
}

struct gw_lock {
	uint32_t locked;
};

static inline void gw_lock(struct gw_lock *l)
{
	while (__atomic_exchange_n(&l->locked, 1, __ATOMIC_ACQUIRE))
		while (__atomic_load_n(&l->locked, __ATOMIC_RELAXED))
			gw_pause();
}

static inline void gw_unlock(struct gw_lock *l)
{
	__atomic_store_n(&l->locked, 0, __ATOMIC_RELEASE);
}

/*
 * A reusable barrier: the last of n arrivals resets the count and then
 * bumps the generation the others are spinning on. The count is reset
 * before anyone can leave, so a fast vCPU entering the next round cannot
 * be counted in this one.
 */
struct gw_barrier {
	uint32_t count;
	uint32_t generation;
};

static inline void gw_barrier_wait(struct gw_barrier *b, unsigned n)
{
	uint32_t gen = __atomic_load_n(&b->generation, __ATOMIC_ACQUIRE);

	if (__atomic_add_fetch(&b->count, 1, __ATOMIC_ACQ_REL) == n) {
		__atomic_store_n(&b->count, 0, __ATOMIC_RELAXED);
		__atomic_store_n(&b->generation, gen + 1, __ATOMIC_RELEASE);
		return;
	}
	while (__atomic_load_n(&b->generation, __ATOMIC_ACQUIRE) == gen)
		gw_pause();
}

#endif
