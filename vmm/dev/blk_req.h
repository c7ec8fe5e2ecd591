/*
 * A virtio-blk request between the ring and the image. The device
 * (virtio_blk.c) takes requests from the ring and queues them; an I/O
 * engine takes them from the queue, starts each, does the image I/O it
 * asks for and ends it: the thread pool in virtio_blk.c (aio=threads) or
 * one io_uring (blk_uring.c, aio=io_uring).
 */
#ifndef GW_VMM_BLK_REQ_H
#define GW_VMM_BLK_REQ_H

#include "vmm/dev/virtqueue.h"

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

struct virtio_blk;

enum blk_op {
	BLK_OP_ANSWERED, /* no I/O: status and written are set */
	BLK_OP_READ,     /* preadv of iov at off */
	BLK_OP_WRITE,    /* pwritev of iov at off */
	BLK_OP_SYNC,     /* fdatasync of the image */
};

struct blk_req {
	struct blk_req *next;
	bool internal; /* an early flush, no chain */
	uint16_t head;
	uint32_t type;
	uint64_t sector;
	uint64_t status_gpa;
	unsigned nr_data;
	uint64_t data_bytes;
	struct vq_buf data[VQ_MAX_CHAIN];

	/* From blk_req_start(): the image I/O. */
	enum blk_op op;
	struct iovec iov[VQ_MAX_CHAIN];
	int nr_iov;
	off_t off;
	void *bounce; /* O_DIRECT and guest buffers it cannot take */
	/* A request answered without I/O. */
	uint8_t status;
	uint32_t written;
};

/* The next request queued; NULL if there is none (wait: once the device
 * stops, after waiting for one). *stopping: the device is going away. */
struct blk_req *blk_req_take(struct virtio_blk *b, bool wait, bool *stopping);
/* Check r and say what it needs of the image (b->fd). */
enum blk_op blk_req_start(struct virtio_blk *b, struct blk_req *r);
/* The I/O of op ended with ret (0: all of it, or -errno): answer the
 * guest and give r back. */
void blk_req_end(struct virtio_blk *b, struct blk_req *r, enum blk_op op, int ret);

#endif
