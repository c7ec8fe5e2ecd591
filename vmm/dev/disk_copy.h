/*
 * Copying a disk image live, for a migration whose destination does not
 * see the image (QEMU's block migration: capability `block`, or
 * `migrate`'s `blk`), as the progressive section "virtio-blk-data" of
 * each drive. The device marks the chunks the guest writes, once each
 * write has completed (disk_copy_mark()); the section sends the whole
 * image in chunks interleaved with RAM rounds, then the chunks written
 * since, and at the switchover, the device drained, the last ones. A
 * chunk that is a hole in the image, or reads as zeros, goes as a hole.
 * The pre-copy engine counts what is left with the dirty RAM when it
 * decides to switch over.
 *
 * Records (docs/format.md, "Disk copy"):
 *   START     u8 copied (0: the image is shared, nothing else follows;
 *             2: a local live update, the image stays where it is),
 *             u64 image bytes, u32 chunk bytes
 *   PART/END  u32 n, then n x {u64 chunk, u8 kind (0 zeros, 1 data),
 *             kind 1: the chunk's bytes (the last chunk: what is left)}
 * The destination writes them into its own image (same size, shared=off)
 * and fdatasyncs it after END, before it may say READY.
 */
#ifndef GW_VMM_DISK_COPY_H
#define GW_VMM_DISK_COPY_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include <godwit/migration.h>

struct disk_copy {
	/* The image and how to make its device stop writing (the source's
	 * switchover: hold the device, wait for its requests in flight). */
	int fd;
	uint64_t bytes;
	bool direct; /* O_DIRECT: aligned buffers, offsets and lengths */
	bool shared; /* shared=on: never copied, never written here */
	const char *path;
	void (*hold)(void *dev);
	void *dev;

	pthread_mutex_t lock;
	bool wanted;     /* the next outgoing migration copies (block capability) */
	bool local;      /* ... or is a local live update: the image stays put */
	bool copying;    /* source: a copy runs, writes are marked */
	bool receiving;  /* destination: START said copied */
	uint64_t *dirty; /* one bit per chunk */
	uint64_t *hole;  /* source: a hole of the image at START, not written since */
	uint64_t chunk;  /* bytes: this side's, or the source's (destination) */
	uint64_t nr_chunks, nr_dirty, cursor;
	uint64_t nr_dirty_holes; /* dirty chunks that are holes: 9 bytes each to send */
	uint64_t *take;          /* the chunks of the record being written */
	void *buf;               /* one chunk, aligned for O_DIRECT */
	uint64_t sent, written;  /* bytes of chunks: sent (source), written (destination) */
	uint64_t unsynced;       /* destination: written since its last fdatasync */
};

int disk_copy_init(struct disk_copy *c, int fd, uint64_t bytes, bool direct, bool shared,
		   const char *path, void (*hold)(void *dev), void *dev);
void disk_copy_destroy(struct disk_copy *c);

/* After a write of [offset, offset+len) to the image has completed. */
void disk_copy_mark(struct disk_copy *c, uint64_t offset, uint64_t len);

/* Whether the next outgoing migration copies this image (the VMM's
 * block capability; a shared image is never copied), or is a local live
 * update, whose new process opens this very image (it says so in START,
 * and the new process takes it whether shared or not). */
void disk_copy_want(struct disk_copy *c, bool on, bool local);

/* The progressive section's callbacks (opaque: the struct disk_copy). */
int disk_copy_save(void *opaque, enum gw_phase phase, struct gw_wbuf *out, struct gw_error *err);
int disk_copy_load(void *opaque, enum gw_phase phase, struct gw_rbuf *in, uint32_t version,
		   struct gw_error *err);
uint64_t disk_copy_pending(void *opaque);

#endif
