/*
 * A userfaultfd page server for destination memory: the guest runs on
 * RAM that is not there yet, and each page arrives either because
 * something touched it (a fault, served at once from the source) or
 * because a background thread got to it first (everything else, pulled
 * in large contiguous runs). Every page the source has is filled exactly
 * once, whichever comes first: a per-page state (empty, filling, done),
 * changed atomically, decides who fills it; a fault on a page the
 * background is filling waits for that fill instead of making a second.
 *
 * Two ways to fill (enum gw_ps_mode), both from a buffer the source
 * writes into and checks. MINOR: the buffer is written into the block's
 * memfd (its page cache, outside the registered mapping), and
 * UFFDIO_CONTINUE maps the pages into the guest mapping, one call per
 * contiguous run; minor faults are what post-copy needs to fill pages
 * ahead of the guest without a userfaultfd call per run. MISSING: the
 * buffer is copied in with UFFDIO_COPY. In both modes a page the source
 * lacks reads as zeros once touched, unless its block says such pages
 * are valid already (valid_outside): then only a hole reads as zeros.
 *
 * The userfaultfd handles kernel-mode faults too (wp.h): KVM's own
 * accesses to guest memory wait for their page like a vCPU's.
 *
 * A page that fails to arrive (the source's read fails, its check fails)
 * is never mapped: its bytes are dropped from the memfd, it stays
 * "filling", whoever waits on it keeps waiting, and the first failure is
 * kept for gw_page_server_wait(). The owner then stops whatever runs on
 * the memory (vCPUs) before gw_page_server_free(), which wakes the
 * waiters on memory that may now read as zeros.
 *
 * The page source is the one thing the server does not own: a file read
 * by offset today (lazy restore, lib/format/mapped_lazy.c), a socket
 * later (post-copy). It is called from the fault thread and from the
 * background thread at once, for disjoint pages.
 */
#ifndef GW_LIB_RAM_PAGE_SERVER_H
#define GW_LIB_RAM_PAGE_SERVER_H

#include <stdbool.h>
#include <stdint.h>

#include <godwit/error.h>

enum gw_ps_mode {
	GW_PS_MINOR,   /* fill the memfd's page cache, map with UFFDIO_CONTINUE */
	GW_PS_MISSING, /* fill from a buffer with UFFDIO_COPY */
};

struct gw_page_source {
	/*
	 * Write pages [first, first + n) of block `block` (its index in the
	 * server's blocks), all of which the source has, into dst, checked.
	 * urgent: for a fault (something waits on it), else the background's.
	 * 0, or -errno with what failed (block, page, where from) in err.
	 */
	int (*read)(void *opaque, uint32_t block, uint64_t first, uint64_t n, bool urgent,
		    void *dst, struct gw_error *err);
	void *opaque;
};

struct gw_ps_block {
	const char *name;    /* for messages */
	unsigned char *host; /* the guest's mapping, MAP_SHARED of fd; registered */
	uint64_t size;       /* bytes, a multiple of the page size */
	int fd;              /* the memfd (MINOR needs it) */
	uint64_t fd_offset;
	/* One bit per page the source has (borrowed until free); the others
	 * are zeros. None of those pages may be mapped in the guest mapping
	 * (else the guest reads it without a fault): unmapped (MINOR, which
	 * writes the source's copy over whatever the memfd holds there), or
	 * a hole in the memfd (MISSING: UFFDIO_COPY fills holes only). */
	const uint64_t *present;
	/*
	 * False: the memfd range holds no data at all, every page outside
	 * present reads as zeros (lazy restore). True: a page outside
	 * present is already valid where the memfd holds it (post-copy: the
	 * pre-copy rounds put it there) and is mapped as it is, never
	 * zero-filled; one that is a hole there reads as zeros.
	 */
	bool valid_outside;
};

struct gw_ps_params {
	enum gw_ps_mode mode;
	uint64_t rate;      /* bytes per second of the background, 0 = unlimited */
	uint64_t run_pages; /* pages per background run; 0 = 512 (2 MiB) */
};

struct gw_ps_stats {
	uint64_t faulted;    /* pages the source has, filled for a fault */
	uint64_t zero;       /* pages it lacks, filled with zeros for a fault */
	uint64_t kept;       /* pages it lacks, valid already (valid_outside), mapped for a fault */
	uint64_t background; /* pages filled by the background */
	uint64_t remaining;  /* pages the source has that are not filled yet */
	uint64_t waited;     /* faults on a page the background was filling */
	uint64_t faults;     /* faults resolved: the count of the latencies */
	uint64_t fault_ns;   /* their latencies added up */
	uint64_t fault_max_ns;
};

/* Faults by the thread that took them (userfaultfd's thread id): a
 * vCPU's, or a VMM thread's reading guest memory. */
#define GW_PS_THREADS_MAX 64
struct gw_ps_thread_stats {
	int32_t tid;
	uint64_t faults;
	uint64_t fault_ns;
	uint64_t fault_max_ns;
};

struct gw_page_server;

/*
 * Register the n blocks (their guest mappings) and start the fault and
 * background threads; src and the present bitmaps are borrowed until
 * gw_page_server_free(). The error says what the kernel refused.
 */
int gw_page_server_start(const struct gw_ps_block *blocks, uint32_t n,
			 const struct gw_ps_params *params, const struct gw_page_source *src,
			 struct gw_page_server **out, struct gw_error *err);

/*
 * Wait until every page the source has is in: 0; the first failure
 * (-errno, err says which page); -ECANCELED as soon as cancel_efd (an
 * eventfd, -1 for none) is readable; or 1 when wake_efd (likewise) is
 * and neither of the others: the caller's own news (the page source
 * broke), read by the caller.
 */
int gw_page_server_wait(struct gw_page_server *ps, int cancel_efd, int wake_efd,
			struct gw_error *err);

/* A new rate for the background (bytes per second, 0 = no limit), from
 * any thread: it applies within PACE_MAX_SLEEP_MS (50 ms). */
void gw_page_server_set_rate(struct gw_page_server *ps, uint64_t rate);

/* From any thread, at any time. */
void gw_page_server_stats(struct gw_page_server *ps, struct gw_ps_stats *out);
/* The same by faulting thread, the first GW_PS_THREADS_MAX threads that
 * faulted (the others count in gw_ps_stats only): how many are in out. */
unsigned gw_page_server_thread_stats(struct gw_page_server *ps,
				     struct gw_ps_thread_stats out[GW_PS_THREADS_MAX]);

/*
 * Stop both threads, unregister the ranges (which wakes every waiter:
 * a page never filled then reads as zeros, so stop whatever must not
 * see that first), unmap, close. NULL is fine.
 */
void gw_page_server_free(struct gw_page_server *ps);

#endif
