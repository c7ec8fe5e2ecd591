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
 *
 * The register map and the ring layout are here too, for a guest that
 * writes registers and rings by hand (blkevil.c, which breaks the rules on
 * purpose).
 */
#ifndef GW_GUEST_VIRTIO_H
#define GW_GUEST_VIRTIO_H

#include "rt.h"

#define GW_VIRTIO_F_VERSION_1 (1ull << 32)

/* The MMIO registers (4.2.2), offsets from the device's base, all 32 bits
 * wide; the device-specific config space starts at GW_VIRTIO_REG_CONFIG. */
enum {
	GW_VIRTIO_REG_MAGIC = 0x000,
	GW_VIRTIO_REG_VERSION = 0x004,
	GW_VIRTIO_REG_DEVICE_ID = 0x008,
	GW_VIRTIO_REG_DEVICE_FEATURES = 0x010,
	GW_VIRTIO_REG_DEVICE_FEATURES_SEL = 0x014,
	GW_VIRTIO_REG_DRIVER_FEATURES = 0x020,
	GW_VIRTIO_REG_DRIVER_FEATURES_SEL = 0x024,
	GW_VIRTIO_REG_QUEUE_SEL = 0x030,
	GW_VIRTIO_REG_QUEUE_NUM_MAX = 0x034,
	GW_VIRTIO_REG_QUEUE_NUM = 0x038,
	GW_VIRTIO_REG_QUEUE_READY = 0x044,
	GW_VIRTIO_REG_QUEUE_NOTIFY = 0x050,
	GW_VIRTIO_REG_INTERRUPT_STATUS = 0x060,
	GW_VIRTIO_REG_INTERRUPT_ACK = 0x064,
	GW_VIRTIO_REG_STATUS = 0x070,
	GW_VIRTIO_REG_QUEUE_DESC_LOW = 0x080,
	GW_VIRTIO_REG_QUEUE_DESC_HIGH = 0x084,
	GW_VIRTIO_REG_QUEUE_DRIVER_LOW = 0x090,
	GW_VIRTIO_REG_QUEUE_DRIVER_HIGH = 0x094,
	GW_VIRTIO_REG_QUEUE_DEVICE_LOW = 0x0a0,
	GW_VIRTIO_REG_QUEUE_DEVICE_HIGH = 0x0a4,
	GW_VIRTIO_REG_CONFIG_GENERATION = 0x0fc,
	GW_VIRTIO_REG_CONFIG = 0x100,
};

/* Device status bits (2.1). */
enum {
	GW_VIRTIO_STATUS_ACKNOWLEDGE = 1,
	GW_VIRTIO_STATUS_DRIVER = 2,
	GW_VIRTIO_STATUS_DRIVER_OK = 4,
	GW_VIRTIO_STATUS_FEATURES_OK = 8,
	GW_VIRTIO_STATUS_NEEDS_RESET = 64,
};

/* What Status holds after each step of the calling sequence below. */
#define GW_VIRTIO_STATUS_PROBED (GW_VIRTIO_STATUS_ACKNOWLEDGE | GW_VIRTIO_STATUS_DRIVER)
#define GW_VIRTIO_STATUS_NEGOTIATED (GW_VIRTIO_STATUS_PROBED | GW_VIRTIO_STATUS_FEATURES_OK)
#define GW_VIRTIO_STATUS_RUNNING (GW_VIRTIO_STATUS_NEGOTIATED | GW_VIRTIO_STATUS_DRIVER_OK)

/* InterruptStatus bits; the others are undefined and must be ignored. */
#define GW_VIRTIO_INT_USED 1
#define GW_VIRTIO_INT_CONFIG 2

/* The split virtqueue (2.7): little-endian, as is x86. */
struct gw_virtq_desc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags;
	uint16_t next;
};

#define GW_VIRTQ_DESC_F_NEXT 1
#define GW_VIRTQ_DESC_F_WRITE 2
#define GW_VIRTQ_DESC_F_INDIRECT 4 /* never offered to this driver */

struct gw_virtq_avail {
	uint16_t flags;
	uint16_t idx;
	uint16_t ring[]; /* then used_event, unused without VIRTIO_F_EVENT_IDX */
};

struct gw_virtq_used_elem {
	uint32_t id; /* head of the chain */
	uint32_t len;
};

struct gw_virtq_used {
	uint16_t flags;
	uint16_t idx;
	struct gw_virtq_used_elem ring[];
};
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
