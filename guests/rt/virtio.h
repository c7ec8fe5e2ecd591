/*
 * A virtio 1.x driver for the MMIO transport (version 2) with a single
 * split virtqueue (queue 0), polled: the guests run with interrupts off,
 * so completions are found by watching the used ring, and the interrupt
 * the device raises anyway is acknowledged after each harvest.
 *
 * Use, in this order (virtio 1.2, 3.1.1):
 *   gw_virtio_probe      identity, reset, ACKNOWLEDGE|DRIVER; the device's features
 *   gw_virtio_negotiate  VIRTIO_F_VERSION_1 plus the caller's features, FEATURES_OK
 *   gw_virtio_start      queue 0 in the caller's memory, DRIVER_OK
 * then gw_virtq_add / gw_virtq_kick / gw_virtq_reap.
 *
 * Memory is the caller's: struct gw_virtio (driver state only, never seen
 * by the device) anywhere, and the rings in memory that nothing else uses
 * (guest-physical = virtual: the identity map). Any answer from the device
 * that the spec does not allow ends the guest with gw_fatal, naming the
 * register and what it read.
 */
#ifndef GW_GUEST_VIRTIO_H
#define GW_GUEST_VIRTIO_H

#include "rt.h"

#define GW_VIRTIO_F_VERSION_1 (1ull << 32)
/* Big enough for 64 requests of 3 descriptors, small enough that the
 * per-head table below stays a few KiB. */
#define GW_VIRTQ_MAX_SIZE 256

/* A device's registers and the driver's view of its queue 0. */
struct gw_virtio {
	uint64_t base;    /* guest-physical address of the registers */
	uint16_t size;    /* queue size (a power of 2) */
	uint16_t nr_free; /* descriptors on the free list */
	uint16_t free_head;
	uint16_t avail_idx;  /* the avail->idx last published */
	uint16_t kicked_idx; /* avail_idx when the device was last notified */
	uint16_t last_used;  /* used->idx up to which chains were reaped */
	uint16_t in_flight;  /* chains added and not reaped */
	struct gw_virtq_desc *desc;
	struct gw_virtq_avail *avail;
	struct gw_virtq_used *used;
	void *token[GW_VIRTQ_MAX_SIZE]; /* per chain head: the caller's token */
};

/* One element of a descriptor chain. */
struct gw_virtq_buf {
	const void *addr;
	uint32_t len;
	bool device_writes; /* device-writable elements come after all readable ones */
};

/* The index-th slot of the config block with this device id, NULL if
 * there is none. */
const struct gw_virtio_slot *gw_virtio_find(const struct gw_guest_config *cfg, uint32_t device_id,
					    unsigned index);

/* Check MagicValue, Version 2 and DeviceID, reset the device, set
 * ACKNOWLEDGE|DRIVER. Returns the features the device offers. */
uint64_t gw_virtio_probe(struct gw_virtio *dev, uint64_t base, uint32_t device_id);
/* Accept VIRTIO_F_VERSION_1 | features, all of which the device must
 * offer, and check that FEATURES_OK stuck. */
void gw_virtio_negotiate(struct gw_virtio *dev, uint64_t features);
/* A 64-bit field of the device-specific config space, read as two 32-bit
 * halves and retried until ConfigGeneration says they belong together. */
uint64_t gw_virtio_config64(const struct gw_virtio *dev, uint32_t offset);

/* Bytes of ring memory a queue of size entries needs (16-byte aligned). */
uint64_t gw_virtq_bytes(unsigned size);
/* Set up queue 0 with at most max_size entries (a power of 2, at most
 * GW_VIRTQ_MAX_SIZE; fewer if QueueNumMax says so) in mem, which holds
 * gw_virtq_bytes(max_size) bytes, then set DRIVER_OK. Returns the size. */
unsigned gw_virtio_start(struct gw_virtio *dev, unsigned max_size, void *mem);

/* Make a chain of n buffers available, token coming back from
 * gw_virtq_reap; false (and nothing done) if too few descriptors are free.
 * The device may see it at once, but is only notified by gw_virtq_kick. */
bool gw_virtq_add(struct gw_virtio *dev, const struct gw_virtq_buf *bufs, unsigned n, void *token);
/* Notify the device of the chains added since the last kick, if any. */
void gw_virtq_kick(struct gw_virtio *dev);
/* Wait until the device has used at least one chain, then take up to max
 * of them, in the order the device used them: their tokens go to tokens[]
 * and their descriptors back to the free list. Returns how many; 0 at once
 * if nothing is in flight. Does not kick. */
unsigned gw_virtq_reap(struct gw_virtio *dev, void **tokens, unsigned max);

#endif
