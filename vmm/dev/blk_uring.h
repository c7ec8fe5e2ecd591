/*
 * aio=io_uring for a virtio-blk drive: one thread and one ring. The
 * thread takes what the device queued, submits it (readv, writev,
 * fdatasync) without waiting for the I/O, and answers each request as
 * its completion arrives; an eventfd read kept in the ring wakes it for
 * new requests. Up to a queue's worth of requests are in the kernel at
 * once, so with cache=none the drive reaches the depth the guest keeps.
 */
#ifndef GW_VMM_BLK_URING_H
#define GW_VMM_BLK_URING_H

#include <stddef.h>

struct virtio_blk;
struct blk_uring;

/* A ring of `entries` requests at most, and its thread. */
int blk_uring_start(struct virtio_blk *b, unsigned entries, struct blk_uring **out, char *errmsg,
		    size_t errlen);
/* New requests are queued (any thread). */
void blk_uring_kick(struct blk_uring *u);
/* The device stops (b->stopping set): end the thread once every
 * request submitted has completed, and free the ring. */
void blk_uring_stop(struct blk_uring *u);

#endif
