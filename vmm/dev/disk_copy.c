/*
 * Copying a disk image live (disk_copy.h).
 */
#include "vmm/dev/disk_copy.h"
#include "vmm/dev/image_io.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <godwit/error.h>
#include <godwit/payload.h>

/* 64 KiB: a bitmap of 2 KiB per GiB, and a chunk re-sent for a 4 KiB
 * write costs 16 times the write, which a guest rewriting the same
 * blocks (a journal) pays once per round, not per write. */
#define CHUNK (64u << 10)
/* A record: at most 2 MiB of data (a few milliseconds of the link), and
 * holes, 9 bytes each, up to a number that keeps it small too. */
#define DATA_PER_RECORD 32
#define ENTRIES_PER_RECORD 4096
#define ENTRY_BYTES 9
#define CHUNK_MIN 4096u
#define CHUNK_MAX (16u << 20)
/* The destination syncs its image as the chunks come, every this many
 * bytes, so the fdatasync after END (in the pause) has only the last. */
#define SYNC_EVERY (64ull << 20)

static uint64_t chunk_len(uint64_t bytes, uint64_t chunk, uint64_t i)
{
	uint64_t off = i * chunk;
	return bytes - off < chunk ? bytes - off : chunk;
}

int disk_copy_init(struct disk_copy *c, int fd, uint64_t bytes, bool direct, bool shared,
		   const char *path, void (*hold)(void *dev), void *dev)
{
	memset(c, 0, sizeof(*c));
	c->fd = fd;
	c->bytes = bytes;
	c->direct = direct;
	c->shared = shared;
	c->path = path;
	c->hold = hold;
	c->dev = dev;
	pthread_mutex_init(&c->lock, NULL);
	c->chunk = CHUNK;
	c->nr_chunks = (bytes + CHUNK - 1) / CHUNK;
	c->dirty = calloc((c->nr_chunks + 63) / 64, sizeof(uint64_t));
	c->hole = calloc((c->nr_chunks + 63) / 64, sizeof(uint64_t));
	c->take = calloc(ENTRIES_PER_RECORD, sizeof(uint64_t));
	if (!c->dirty || !c->hole || !c->take || posix_memalign(&c->buf, 4096, CHUNK))
		return -ENOMEM;
	return 0;
}

void disk_copy_destroy(struct disk_copy *c)
{
	free(c->dirty);
	free(c->hole);
	free(c->take);
	free(c->buf);
	pthread_mutex_destroy(&c->lock);
	memset(c, 0, sizeof(*c));
}

/* START's first byte. */
enum { NOT_COPIED, COPIED, SAME_IMAGE };

void disk_copy_want(struct disk_copy *c, bool on, bool local)
{
	pthread_mutex_lock(&c->lock);
	c->wanted = on && !c->shared && !local;
	c->local = local;
	pthread_mutex_unlock(&c->lock);
}

static bool test_and_set(uint64_t *bits, uint64_t i)
{
	bool was = bits[i / 64] & (1ull << (i % 64));
	bits[i / 64] |= 1ull << (i % 64);
	return was;
}

static bool test_and_clear(uint64_t *bits, uint64_t i)
{
	bool was = bits[i / 64] & (1ull << (i % 64));
	bits[i / 64] &= ~(1ull << (i % 64));
	return was;
}

void disk_copy_mark(struct disk_copy *c, uint64_t offset, uint64_t len)
{
	if (!len)
		return;
	pthread_mutex_lock(&c->lock);
	for (uint64_t i = offset / CHUNK;
	     c->copying && i <= (offset + len - 1) / CHUNK && i < c->nr_chunks; i++) {
		/* Written: a hole no more (if it was one, it may be dirty as one). */
		bool was_dirty = test_and_set(c->dirty, i);
		if (test_and_clear(c->hole, i) && was_dirty)
			c->nr_dirty_holes--;
		c->nr_dirty += !was_dirty;
	}
	pthread_mutex_unlock(&c->lock);
}

uint64_t disk_copy_pending(void *opaque)
{
	struct disk_copy *c = opaque;
	pthread_mutex_lock(&c->lock);
	uint64_t data = c->nr_dirty - c->nr_dirty_holes;
	uint64_t bytes = c->copying ? data * CHUNK + c->nr_dirty_holes * ENTRY_BYTES : 0;
	pthread_mutex_unlock(&c->lock);
	return bytes;
}

/* ---- source --------------------------------------------------------------- */

/* The dirty chunks of one record from the cursor on, into c->take, their
 * bits cleared: a write that completes from now on marks its chunk again,
 * so the copy read below is sent again if it missed the write. A chunk
 * known as a hole is taken with TAKE_HOLE set. */
#define TAKE_HOLE (1ull << 63)

static unsigned take_dirty(struct disk_copy *c)
{
	unsigned n = 0, data = 0;
	pthread_mutex_lock(&c->lock);
	for (uint64_t seen = 0;
	     n < ENTRIES_PER_RECORD && data < DATA_PER_RECORD && c->nr_dirty && seen < c->nr_chunks;
	     seen++) {
		uint64_t i = c->cursor;
		c->cursor = (c->cursor + 1) % c->nr_chunks;
		if (!test_and_clear(c->dirty, i))
			continue;
		c->nr_dirty--;
		bool hole = c->hole[i / 64] & (1ull << (i % 64));
		c->nr_dirty_holes -= hole;
		data += !hole;
		c->take[n++] = i | (hole ? TAKE_HOLE : 0);
	}
	pthread_mutex_unlock(&c->lock);
	return n;
}

/* Which chunks lie wholly in holes of the image (the last one: up to the
 * end), asked of the file system once, not read. */
static void find_holes(struct disk_copy *c)
{
	memset(c->hole, 0, (c->nr_chunks + 63) / 64 * sizeof(uint64_t));
	c->nr_dirty_holes = 0;
	for (uint64_t pos = 0; pos < c->bytes;) {
		off_t h = lseek(c->fd, (off_t)pos, SEEK_HOLE);
		if (h < 0 || (uint64_t)h >= c->bytes)
			break;
		off_t d = lseek(c->fd, h, SEEK_DATA);
		uint64_t end = d < 0 ? c->bytes : (uint64_t)d;
		for (uint64_t i = ((uint64_t)h + CHUNK - 1) / CHUNK;
		     i < c->nr_chunks && i * CHUNK + chunk_len(c->bytes, CHUNK, i) <= end; i++)
			if (!test_and_set(c->hole, i))
				c->nr_dirty_holes++;
		pos = end;
	}
}

/* A hole of the image, asked of the file system, not read. */
static bool is_hole(const struct disk_copy *c, uint64_t off, uint64_t len)
{
	off_t data = lseek(c->fd, (off_t)off, SEEK_DATA);
	return (data < 0 && errno == ENXIO) || (data >= 0 && (uint64_t)data >= off + len);
}

static bool all_zero(const void *p, uint64_t len)
{
	const uint64_t *q = p;
	for (uint64_t i = 0; i < len / 8; i++)
		if (q[i])
			return false;
	return true;
}

/* One buffer of an image, whole (image_io.h). */
static int full_io(int fd, bool write, void *buf, uint64_t len, uint64_t off)
{
	struct iovec iov = {buf, len};
	return image_io(fd, write, &iov, 1, (off_t)off);
}

static int put_chunk(struct disk_copy *c, uint64_t taken, struct gw_wbuf *out, struct gw_error *err)
{
	uint64_t i = taken & ~TAKE_HOLE;
	uint64_t off = i * CHUNK, len = chunk_len(c->bytes, CHUNK, i);
	bool zero = (taken & TAKE_HOLE) || is_hole(c, off, len);
	if (!zero) {
		int ret = full_io(c->fd, false, c->buf, len, off);
		if (ret)
			return gw_error_set(err, ret, "reading chunk %llu (offset %llu) of %s: %s",
					    (unsigned long long)i, (unsigned long long)off, c->path,
					    strerror(-ret));
		zero = all_zero(c->buf, len);
	}
	gw_put_u64(out, i);
	gw_put_u8(out, zero ? 0 : 1);
	if (!zero)
		gw_put_bytes(out, c->buf, len);
	c->sent += len;
	return 0;
}

int disk_copy_save(void *opaque, enum gw_phase phase, struct gw_wbuf *out, struct gw_error *err)
{
	struct disk_copy *c = opaque;
	if (phase == GW_PHASE_START) {
		pthread_mutex_lock(&c->lock);
		c->copying = c->wanted;
		/* Every chunk, once; the guest's writes from now on, again. */
		memset(c->dirty, 0, (c->nr_chunks + 63) / 64 * sizeof(uint64_t));
		for (uint64_t i = 0; c->copying && i < c->nr_chunks; i++)
			test_and_set(c->dirty, i);
		c->nr_dirty = c->copying ? c->nr_chunks : 0;
		c->nr_dirty_holes = 0;
		if (c->copying)
			find_holes(c);
		c->cursor = 0;
		c->sent = 0;
		uint8_t copied = c->copying ? COPIED : c->local ? SAME_IMAGE : NOT_COPIED;
		pthread_mutex_unlock(&c->lock);
		gw_put_u8(out, copied);
		gw_put_u64(out, c->bytes);
		gw_put_u32(out, CHUNK);
		return 0;
	}
	/* The last chunks with no request in flight: the device takes none
	 * until the guest runs again, here or there. */
	if (phase == GW_PHASE_END && c->copying)
		c->hold(c->dev);
	unsigned n = c->copying ? take_dirty(c) : 0;
	gw_put_u32(out, n);
	for (unsigned k = 0; k < n; k++) {
		int ret = put_chunk(c, c->take[k], out, err);
		if (ret)
			return ret;
	}
	return disk_copy_pending(c) ? GW_LIVE_MORE : 0;
}

/* ---- destination ------------------------------------------------------ */

/* Zeros as a hole where the file system can, written where it cannot. */
static int write_zeros(struct disk_copy *c, uint64_t off, uint64_t len)
{
	if (fallocate(c->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) ==
	    0)
		return 0;
	if (errno != EOPNOTSUPP)
		return -errno;
	memset(c->buf, 0, len);
	return full_io(c->fd, true, c->buf, len, off);
}

static int load_start(struct disk_copy *c, struct gw_rbuf *in, struct gw_error *err)
{
	uint8_t copied;
	uint64_t bytes;
	uint32_t chunk;
	if (gw_get_u8(in, &copied) || gw_get_u64(in, &bytes) || gw_get_u32(in, &chunk))
		return gw_error_set(err, -EBADMSG, "START record too short");
	if (copied > SAME_IMAGE || chunk < CHUNK_MIN || chunk > CHUNK_MAX || (chunk & (chunk - 1)))
		return gw_error_set(err, -EBADMSG, "START: copied %u, chunk %u bytes", copied,
				    chunk);
	if (bytes != c->bytes)
		return gw_error_set(err, -EBADMSG,
				    "the source's disk has %llu bytes, this drive's image %s %llu",
				    (unsigned long long)bytes, c->path,
				    (unsigned long long)c->bytes);
	if (copied == COPIED && c->shared)
		return gw_error_set(err, -EBADMSG,
				    "the source copies its disk, but this drive's image %s is shared=on (the source's own image, which a copy would overwrite): give a drive of its own, shared=off",
				    c->path);
	if (copied == NOT_COPIED && !c->shared)
		return gw_error_set(err, -EBADMSG,
				    "the source does not copy its disk (its image is shared there, or block migration is off), but this drive's image %s is shared=off",
				    c->path);
	free(c->buf);
	c->buf = NULL;
	if (copied == COPIED && posix_memalign(&c->buf, 4096, chunk))
		return gw_error_set(err, -ENOMEM, "out of memory for a %u-byte chunk", chunk);
	pthread_mutex_lock(&c->lock);
	c->receiving = copied == COPIED;
	c->chunk = chunk;
	c->nr_chunks = (bytes + chunk - 1) / chunk;
	c->written = 0;
	pthread_mutex_unlock(&c->lock);
	return 0;
}

/* A run of zero chunks, made a hole in one call when it ends: the source
 * sends a hole's chunks in a row, and one fallocate for thousands of them
 * keeps this side from falling behind the stream. */
struct zero_run {
	uint64_t off, len;
};

static int flush_zeros(struct disk_copy *c, struct zero_run *z, struct gw_error *err)
{
	if (!z->len)
		return 0;
	int ret = write_zeros(c, z->off, z->len);
	if (ret)
		return gw_error_set(err, ret, "making %llu bytes at offset %llu of %s zero: %s",
				    (unsigned long long)z->len, (unsigned long long)z->off, c->path,
				    strerror(-ret));
	z->len = 0;
	return 0;
}

static int load_chunk(struct disk_copy *c, struct gw_rbuf *in, struct zero_run *z,
		      struct gw_error *err)
{
	uint64_t chunk = c->chunk, i;
	uint8_t kind;
	if (gw_get_u64(in, &i) || gw_get_u8(in, &kind))
		return gw_error_set(err, -EBADMSG, "chunk entry cut short");
	if (i >= c->nr_chunks || kind > 1)
		return gw_error_set(err, -EBADMSG, "chunk %llu of %llu, kind %u",
				    (unsigned long long)i, (unsigned long long)c->nr_chunks, kind);
	uint64_t off = i * chunk, len = chunk_len(c->bytes, chunk, i);
	c->written += len;
	c->unsynced += len;
	if (kind == 0 && z->len && z->off + z->len == off) {
		z->len += len;
		return 0;
	}
	int ret = flush_zeros(c, z, err);
	if (ret)
		return ret;
	if (kind == 0) {
		*z = (struct zero_run){off, len};
		return 0;
	}
	if (gw_get_bytes(in, c->buf, len))
		return gw_error_set(err, -EBADMSG, "chunk %llu: its %llu bytes are cut short",
				    (unsigned long long)i, (unsigned long long)len);
	ret = full_io(c->fd, true, c->buf, len, off);
	if (ret)
		return gw_error_set(err, ret, "writing chunk %llu (offset %llu) into %s: %s",
				    (unsigned long long)i, (unsigned long long)off, c->path,
				    strerror(-ret));
	return 0;
}

int disk_copy_load(void *opaque, enum gw_phase phase, struct gw_rbuf *in, uint32_t version,
		   struct gw_error *err)
{
	struct disk_copy *c = opaque;
	uint32_t n;
	(void)version;
	if (phase == GW_PHASE_START)
		return load_start(c, in, err);
	if (gw_get_u32(in, &n))
		return gw_error_set(err, -EBADMSG, "record too short for its count");
	if (n && !c->receiving)
		return gw_error_set(err, -EBADMSG,
				    "%u chunks of a disk its START said is not copied", n);
	/* Each entry is at least 9 bytes: a count beyond that is a lie. */
	if (n > gw_rbuf_remaining(in) / 9)
		return gw_error_set(err, -EBADMSG, "%u chunks announced in %zu bytes", n,
				    gw_rbuf_remaining(in));
	struct zero_run z = {0, 0};
	for (uint32_t k = 0; k < n; k++) {
		int ret = load_chunk(c, in, &z, err);
		if (ret)
			return ret;
	}
	int ret = flush_zeros(c, &z, err);
	if (ret)
		return ret;
	/* Durable before the source may let go of the guest (READY comes
	 * after the stream): then there is always a whole copy somewhere. */
	bool sync = phase == GW_PHASE_END ? c->receiving : c->unsynced >= SYNC_EVERY;
	if (sync && fdatasync(c->fd) < 0)
		return gw_error_set(err, -errno, "fdatasync of %s: %s", c->path, strerror(errno));
	if (sync)
		c->unsynced = 0;
	return 0;
}
