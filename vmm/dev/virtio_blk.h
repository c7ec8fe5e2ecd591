/*
 * virtio-blk over virtio-mmio: a raw image file as the guest's disk
 * (--drive file=PATH[,format=raw][,cache=none|writeback][,shared=on|off]
 *  [,aio=threads|io_uring]).
 *
 * Requests are taken on the vCPU thread that notifies and run off it, so
 * a vCPU never waits for the disk: by a small pool of I/O threads, one
 * request each at a time (aio=threads), or submitted to one io_uring
 * (aio=io_uring, blk_uring.h). IN, OUT,
 * FLUSH and GET_ID; cache=none opens the image with O_DIRECT (buffers
 * that are not sector-aligned go through a bounce buffer).
 *
 * Migration: the device's State is its transport registers and queues
 * plus the image's size. At the switchover (the section's pre_save, with
 * the vCPUs paused) the device stops taking requests, waits for those in
 * flight and fdatasyncs the image, so that the state it saves has no
 * request half done and the image holds every write the guest was told
 * is complete; requests still in the avail ring are taken by whichever
 * side runs the guest next, when it resumes (virtio_blk_resume()). A
 * flush while the guest still runs (virtio_blk_flush_early(), at each
 * pass) leaves the pause only the last writes to sync.
 */
#ifndef GW_VMM_VIRTIO_BLK_H
#define GW_VMM_VIRTIO_BLK_H

#include "vmm/dev/disk_copy.h"
#include "vmm/dev/virtio_mmio.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#define VIRTIO_BLK_MAX_DRIVES 4
#define VIRTIO_BLK_WORKERS 8

struct vmm;
struct blk_req;
struct blk_uring;

/* QEMU's -drive aio= names; without one, io_uring where the kernel lets
 * this process have a ring, else threads (docs/benchmarks.md, "Disk
 * throughput": the same requests per second for less CPU per request). */
enum drive_aio {
	DRIVE_AIO_DEFAULT,
	DRIVE_AIO_THREADS,
	DRIVE_AIO_IO_URING,
};

/* What is migrated. */
struct virtio_blk_state {
	struct virtio_mmio_state t;
	uint64_t capacity; /* 512-byte sectors: the other side's image must match */
};

struct drive_options {
	char path[4096];
	bool direct; /* cache=none */
	bool shared; /* both hosts see this image (shared=on, the default) */
	enum drive_aio aio;
};

struct virtio_blk {
	struct virtio_mmio t; /* t.lock covers everything below too */
	struct drive_options opt;
	unsigned index;
	int fd;
	uint64_t capacity; /* sectors */
	char serial[20];   /* GET_ID: not NUL-terminated when 20 long */

	pthread_t workers[VIRTIO_BLK_WORKERS]; /* aio=threads */
	unsigned nr_workers;
	struct blk_uring *uring; /* aio=io_uring */
	pthread_cond_t work, idle;
	struct blk_req *queue, *queue_tail, *free_reqs;
	unsigned in_flight; /* taken from the ring, not given back yet */
	bool held;          /* take no request (switchover): they wait in the ring */
	bool flush_queued;  /* an early flush is waiting for a worker */
	bool stopping;
	uint64_t last_sync_us; /* the switchover's fdatasync, for the logs */
	struct ratelog log;    /* failed requests */
	struct disk_copy copy; /* block migration: the image, sent live */

	struct virtio_blk_state mig;
};

/* Parse one --drive value; errors name the option. */
int drive_parse(const char *spec, struct drive_options *out, char *errmsg, size_t errlen);

/* Open the image and claim MMIO slot `slot`. */
int virtio_blk_init(struct virtio_blk *b, struct vmm *vm, unsigned index, unsigned slot,
		    const struct drive_options *opt, char *errmsg, size_t errlen);
void virtio_blk_destroy(struct virtio_blk *b);

/* The guest runs: take requests again (and those that waited in the ring). */
void virtio_blk_resume(struct virtio_blk *b);
/* The guest stops: take no more requests, and wait for those taken (they
 * wait in the ring). A drive starts held. */
void virtio_blk_hold(struct virtio_blk *b);
/* While the guest runs: ask an I/O thread to fdatasync the image. */
void virtio_blk_flush_early(struct virtio_blk *b);
/* Whether the next outgoing migration copies the image (block migration:
 * shared=off drives only), or is a local live update (disk_copy.h). */
void virtio_blk_copy(struct virtio_blk *b, bool on, bool local);
/* The bytes of the image the latest outgoing migration copies (0: none). */
uint64_t virtio_blk_copy_bytes(struct virtio_blk *b);
/* How long the latest switchover's fdatasync took. */
uint64_t virtio_blk_last_sync_us(struct virtio_blk *b);

#endif
