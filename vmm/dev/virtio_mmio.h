/*
 * The virtio-mmio transport, version 2 (virtio 1.2, 4.2.2): the register
 * page of one device, feature negotiation, queue set-up, notifications
 * and the interrupt line (a level on an in-kernel IOAPIC pin, high while
 * InterruptStatus is not zero). A device (virtio_blk.c) brings its id,
 * features, config space and what to do when a queue is notified; the
 * transport's registers are part of the device's saved State.
 *
 * Locking: t->lock covers the registers and the queues; the device's
 * callbacks are called with it held, and the device takes it to give
 * chains back (virtio_mmio_lock()).
 */
#ifndef GW_VMM_VIRTIO_MMIO_H
#define GW_VMM_VIRTIO_MMIO_H

#include "vmm/dev/virtqueue.h"
#include "vmm/ratelog.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

struct io_bus;
struct kvm;
struct guest_ram;

#define VIRTIO_MMIO_QUEUES 1

#define VIRTIO_STATUS_ACKNOWLEDGE 1
#define VIRTIO_STATUS_DRIVER 2
#define VIRTIO_STATUS_DRIVER_OK 4
#define VIRTIO_STATUS_FEATURES_OK 8
#define VIRTIO_STATUS_NEEDS_RESET 64
#define VIRTIO_STATUS_FAILED 128
#define VIRTIO_STATUS_BITS 0xcf

#define VIRTIO_F_VERSION_1 (1ull << 32)

#define VIRTIO_INT_USED 1
#define VIRTIO_INT_CONFIG 2

/* The registers that are state (saved, loaded, range-checked). */
struct virtio_mmio_state {
	uint32_t status;
	uint32_t device_features_sel;
	uint32_t driver_features_sel;
	uint32_t queue_sel;
	uint64_t driver_features;
	uint32_t interrupt_status;
	uint32_t config_generation;
	struct vq_state vq[VIRTIO_MMIO_QUEUES];
};

struct virtio_dev_ops {
	uint32_t device_id;
	uint64_t features; /* offered, VIRTIO_F_VERSION_1 included */
	unsigned queue_max;
	/* Config space read (offset from 0x100, len 1, 2, 4 or 8). */
	void (*read_config)(void *dev, uint64_t offset, uint8_t *data, unsigned len);
	/* The driver notified queue q, or the device must look at it again
	 * (virtio_mmio_kick()). Take chains with virtio_mmio_pop(). */
	void (*notify)(void *dev, unsigned q);
	/* Status 0 was written: forget every request (the device waits for
	 * those in flight first: their buffers may be reused at once). */
	void (*reset)(void *dev);
};

struct virtio_mmio {
	pthread_mutex_t lock;
	struct virtio_mmio_state st;
	const struct virtio_dev_ops *ops;
	void *dev;
	struct kvm *kvm;
	struct guest_ram *ram;
	unsigned slot, irq;
	int irq_level;
	char name[32]; /* "virtio-blk 0", for messages */
	struct ratelog log;
};

int virtio_mmio_init(struct virtio_mmio *t, struct io_bus *mmio, struct kvm *kvm,
		     struct guest_ram *ram, unsigned slot, const struct virtio_dev_ops *ops,
		     void *dev, const char *name);
void virtio_mmio_destroy(struct virtio_mmio *t);

void virtio_mmio_lock(struct virtio_mmio *t);
void virtio_mmio_unlock(struct virtio_mmio *t);

/* With the lock held: the next chain of queue q (1), none (0), or the
 * ring is broken (-EBADMSG: the device now needs a reset, as the driver
 * is told; nothing more is taken from it). */
int virtio_mmio_pop(struct virtio_mmio *t, unsigned q, struct vq_chain *c);
/* With the lock held: give a chain back and interrupt if the driver wants. */
void virtio_mmio_push(struct virtio_mmio *t, unsigned q, uint16_t head, uint32_t written);
/* With the lock held: the device cannot go on (a broken ring). */
void virtio_mmio_needs_reset(struct virtio_mmio *t, const char *why);
/* Look at every ready queue again, as after a notification. */
void virtio_mmio_kick(struct virtio_mmio *t);
/* Drive the interrupt line from InterruptStatus (after a load). */
void virtio_mmio_sync_irq(struct virtio_mmio *t);

/* A loaded transport state that this device and this RAM (NULL: without
 * the queues' addresses) can run; if not, -EBADMSG and why. */
int virtio_mmio_check_state(const struct virtio_mmio_state *st, const struct virtio_dev_ops *ops,
			    const struct guest_ram *ram, char *why, size_t len);

#endif
