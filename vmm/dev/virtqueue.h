/*
 * The device side of a virtio split virtqueue (virtio 1.2, 2.7): take the
 * chains the driver made available, give them back as used. Everything in
 * the rings and descriptors is the guest's to write at any time, so every
 * index, address and length is checked where it is read, and a ring that
 * breaks the rules is reported, never followed (the transport then sets
 * DEVICE_NEEDS_RESET). No indirect descriptors and no event index: the
 * transport does not offer them.
 */
#ifndef GW_VMM_VIRTQUEUE_H
#define GW_VMM_VIRTQUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct guest_ram;

/* Queue sizes are powers of two up to this; a chain is at most VQ_MAX_CHAIN
 * descriptors and VQ_MAX_BYTES bytes (a request larger than any driver
 * makes is a broken ring, not a big request). */
#define VQ_MAX_SIZE 256
#define VQ_MAX_CHAIN 128
#define VQ_MAX_BYTES (16u << 20)

/* What a queue is: the part of a device's saved State. */
struct vq_state {
	uint32_t num;               /* queue size the driver chose */
	uint32_t ready;             /* 0 or 1 */
	uint64_t desc, avail, used; /* guest-physical addresses of the three parts */
	uint16_t last_avail;        /* next avail ring entry to take */
	uint16_t used_idx;          /* what used->idx says (this device wrote it) */
	uint32_t pad;
};

struct vq_buf {
	uint64_t gpa;
	uint32_t len;
};

/* One chain: its readable buffers, then its writable ones. */
struct vq_chain {
	uint16_t head;
	unsigned nr_in, nr_out; /* readable (driver to device), writable */
	uint64_t in_bytes, out_bytes;
	struct vq_buf in[VQ_MAX_CHAIN], out[VQ_MAX_CHAIN];
};

/* Whether q's size and addresses are usable in ram (NULL: only what needs
 * no RAM); if not, why. */
bool vq_check(const struct vq_state *q, const struct guest_ram *ram, unsigned max_size, char *why,
	      size_t len);

/* The next available chain: 1 and *c filled, 0 if none, -EBADMSG with
 * why if the ring or the chain breaks the rules (nothing taken then). */
int vq_pop(struct vq_state *q, const struct guest_ram *ram, struct vq_chain *c, char *why,
	   size_t len);

/* Give chain head back with written bytes; -EFAULT if the used ring left
 * RAM. Whether to interrupt is vq_wants_interrupt(). */
int vq_push(struct vq_state *q, struct guest_ram *ram, uint16_t head, uint32_t written);

/* The driver did not ask to be spared interrupts (VRING_AVAIL_F_NO_INTERRUPT). */
bool vq_wants_interrupt(const struct vq_state *q, const struct guest_ram *ram);

/* Available entries not taken yet (0 for a queue that is not ready). */
unsigned vq_pending(const struct vq_state *q, const struct guest_ram *ram);

#endif
