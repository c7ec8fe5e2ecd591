/*
 * virtio-blk (virtio 1.2, 5.2) on top of virtio.h: requests with up to
 * `depth` in flight, each its own chain of 3 descriptors (header, data,
 * status; 2 for a FLUSH), so a caller can keep the queue full:
 *
 *   while (work left or blk.in_flight) {
 *           while (work left and blk.in_flight < blk.depth)
 *                   gw_blk_submit(...);
 *           n = gw_blk_reap(&blk, done, max);   (notifies, then waits)
 *           ... look at done[0..n) ...
 *   }
 *
 * The device must offer VIRTIO_BLK_F_FLUSH (a disk whose writes cannot be
 * made stable proves nothing about them) and must not be read-only.
 * A request that completes with a status other than GW_BLK_S_OK is the
 * caller's to report; broken device answers end the guest (gw_fatal).
 */
#ifndef GW_GUEST_VIRTIO_BLK_H
#define GW_GUEST_VIRTIO_BLK_H

#include "virtio.h"

#define GW_VIRTIO_ID_BLOCK 2
#define GW_BLK_SECTOR_SIZE 512
#define GW_BLK_ID_BYTES 20 /* GET_ID: NUL-padded, no NUL if 20 long */
/* Every request may need 3 descriptors at once. */
#define GW_BLK_MAX_DEPTH (GW_VIRTQ_MAX_SIZE / 3)

enum gw_blk_type {
	GW_BLK_T_IN = 0,
	GW_BLK_T_OUT = 1,
	GW_BLK_T_FLUSH = 4,
	GW_BLK_T_GET_ID = 8,
};

enum gw_blk_status {
	GW_BLK_S_OK = 0,
	GW_BLK_S_IOERR = 1,
	GW_BLK_S_UNSUPP = 2,
};

/* Driver-side copy of a request in flight: what the device was asked. */
struct gw_blk_req {
	uint64_t tag;
	uint32_t type;
};

/* A completed request. status is what the device wrote, or 0xff if it
 * wrote nothing there. */
struct gw_blk_done {
	uint64_t tag;
	uint32_t type;
	uint8_t status;
};

struct gw_blk {
	struct gw_virtio dev;
	uint64_t capacity;      /* 512-byte sectors */
	unsigned depth;         /* requests that may be in flight at once */
	unsigned in_flight;     /* read-only for the caller */
	struct gw_blk_hdr *hdr; /* depth of them, in the memory given to gw_blk_start */
	struct gw_blk_req req[GW_BLK_MAX_DEPTH];
	uint8_t free[GW_BLK_MAX_DEPTH]; /* indices of the unused req/hdr, a stack */
};

/* Bytes of memory gw_blk_start needs for depth requests. */
uint64_t gw_blk_mem_bytes(unsigned depth);
/*
 * Bring up the virtio-blk device whose registers are at base, for depth
 * (1..GW_BLK_MAX_DEPTH) requests in flight, its queue and request headers
 * in mem (gw_blk_mem_bytes(depth) bytes, 16-byte aligned, used by nothing
 * else). blk->depth is smaller than asked if the device's queue is.
 */
void gw_blk_start(struct gw_blk *blk, uint64_t base, unsigned depth, void *mem);

/*
 * Queue a request: sector in 512-byte units (0 for FLUSH and GET_ID); buf
 * and len the data (len a multiple of 512 for IN and OUT, 20 for GET_ID, 0
 * for FLUSH). Needs blk->in_flight < blk->depth. The buffer belongs to the
 * device until the request comes back from gw_blk_reap with its tag.
 */
void gw_blk_submit(struct gw_blk *blk, enum gw_blk_type type, uint64_t sector, void *buf,
		   uint32_t len, uint64_t tag);
/* Notify the device of what was submitted, wait until at least one
 * request completes, and return up to max completions in done[]. 0 if
 * nothing is in flight. */
unsigned gw_blk_reap(struct gw_blk *blk, struct gw_blk_done *done, unsigned max);
/* Submit one request and wait for it; nothing else may be in flight.
 * Returns its status. */
uint8_t gw_blk_run(struct gw_blk *blk, enum gw_blk_type type, uint64_t sector, void *buf,
		   uint32_t len);

/* "OK", "IOERR", "UNSUPP", "not written" (0xff) or "unknown". */
const char *gw_blk_status_name(uint8_t status);

#endif
