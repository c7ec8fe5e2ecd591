/*
 * The file sink: RAM pages at fixed offsets of a mapped-ram file
 * (sink_file.h; the layout is docs/format.md, "Mapped-RAM files").
 *
 * Pages are written by `writers` threads with pwrite(), straight from
 * guest memory (with direct-io through a second, O_DIRECT open of the
 * file: guest pages and their slots are page-aligned, as O_DIRECT wants).
 * Each writer owns every 2 MiB chunk of a block whose number falls to it,
 * and takes its jobs in order, so two copies of one page are always
 * written in the order they were handed over, and two writers never
 * share a word of the present bitmap (2 MiB is 8 words). A copy may be
 * written after the call that handed it over returns: the guest may have
 * changed the page since, but then the dirty log has it for the next
 * round, which overwrites the slot, and the final round runs with the
 * guest paused. A zero page frees its slot (a hole) and clears its bit.
 *
 * put() writes in the caller's thread instead, from guest memory or a
 * copy, for an engine that runs its own writers (a background snapshot,
 * which un-protects pages only once they are written); the bits of the
 * bitmap are set atomically for it.
 *
 * The header at offset 0 says "SAVE" until finish() has synced the
 * pages, the stream, the bitmaps and the hashes; only then does it say
 * "DONE" (and is synced again). A save that fails, is cancelled or is
 * killed before that leaves a file that no loader takes.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <godwit/io.h>
#include <godwit/stream.h>

#include "lib/bitmap.h"
#include "lib/cancel.h"
#include "lib/clock.h"
#include "lib/crc32c.h"
#include "lib/format/mapped.h"
#include "lib/internal.h"
#include "lib/ram/ram_sink.h"
#include "lib/ram/sink_file.h"
#include "lib/transport/direct_io.h"
#include "lib/transport/pio.h"

#define PAGE ((uint64_t)GW_PAGE_SIZE)
#define PAGE_MASK (PAGE - 1)
#define CHUNK_SHIFT 21 /* 2 MiB: what one writer owns */
#define RING 8         /* jobs queued per writer */
#define ZEROS 65536    /* zeros written where a hole cannot be punched */

struct job {
	uint32_t block, n;
	uint64_t entries[GW_PAGES_MAX];
};

struct file_sink;

struct writer {
	struct file_sink *fs;
	pthread_t thread;
	pthread_cond_t work;
	struct job ring[RING];
	uint64_t head, tail; /* under the lock: tail - head jobs queued */
	bool busy;           /* ring[head % RING] is being written */
	bool started;
};

struct fblock {
	uint64_t *present; /* one bit per page: the slot holds the page */
	uint64_t *hashes;  /* per page, meaningful where present */
};

struct file_sink {
	struct gw_ram_sink sink;
	struct gw_migration *m;
	struct gw_writer *w;
	int fd;               /* the caller's, buffered: header, stream, metadata */
	int pfd;              /* page data: fd, or its O_DIRECT twin */
	uint64_t stream_base; /* gw_writer_sent(w) when the stream began */
	struct gw_mapped_hdr *hdr;
	struct fblock *blocks;
	unsigned char *zeros; /* ZEROS bytes, page-aligned */
	uint32_t nr_writers;
	struct writer *writers;
	pthread_mutex_t lock;
	pthread_cond_t space; /* a ring has room, a writer went idle, or failed */
	bool quit;
	bool failed;              /* under the lock; also read without it */
	struct gw_error error;    /* the first failure */
	bool incremental;         /* record this save as the next one's base */
	struct gw_cancel *cancel; /* the engine's, looked at while waiting */
	uint64_t taken;           /* page bytes handed over (atomic) */
	uint64_t written;         /* page bytes written (atomic) */
};

static struct file_sink *of(const struct gw_ram_sink *s)
{
	return (struct file_sink *)((char *)s - offsetof(struct file_sink, sink));
}

static int pwrite_all(int fd, const void *buf, uint64_t len, uint64_t off, const char *what,
		      const char *name, struct gw_error *err)
{
	uint64_t done;
	int ret = gw_pwrite_full(fd, buf, len, off, &done);

	if (ret < 0)
		return gw_error_set(err, ret,
				    "mapped-ram save, %s%s%s: writing 0x%llx bytes at file offset 0x%llx: %s",
				    what, name ? " of RAM block " : "", name ? name : "",
				    (unsigned long long)(len - done),
				    (unsigned long long)(off + done), gw_strerror(-ret));
	return 0;
}

/* The header as fs->hdr has it now, at offset 0. */
static int write_header(struct file_sink *fs, struct gw_error *err)
{
	unsigned char *buf = malloc(fs->hdr->header_length);
	int ret;

	if (!buf)
		return gw_error_set(err, -ENOMEM, "mapped-ram save: out of memory for the header");
	gw_mapped_encode(fs->hdr, buf);
	ret = pwrite_all(fs->fd, buf, fs->hdr->header_length, 0, "the file header", NULL, err);
	free(buf);
	return ret;
}

/* Pages [off, off+len) of block i have data, at src: hash them, write
 * them, mark them. The bits are set atomically: a background snapshot
 * writes pages of one bitmap word from several threads. */
static int put(struct file_sink *fs, uint32_t i, uint64_t off, uint64_t len,
	       const unsigned char *src, struct gw_error *err)
{
	const struct gw_ram_block *b = &fs->m->ram[i];
	struct fblock *fb = &fs->blocks[i];
	uint64_t first = off / PAGE, n = len / PAGE;
	int ret;

	for (uint64_t k = 0; k < n; k++)
		fb->hashes[first + k] = gw_page_hash(src + k * PAGE);
	ret = pwrite_all(fs->pfd, src, len, fs->hdr->blocks[i].pages_offset + off, "pages", b->name,
			 err);
	if (ret < 0)
		return ret;
	for (uint64_t p = first; p < first + n; p++)
		__atomic_fetch_or(&fb->present[p / 64], 1ull << (p % 64), __ATOMIC_RELAXED);
	__atomic_add_fetch(&fs->written, len, __ATOMIC_RELAXED);
	return 0;
}

/* Free the slots of [off, off+len): a hole where the file system can. */
static int clear_slots(struct file_sink *fs, uint32_t i, uint64_t off, uint64_t len,
		       struct gw_error *err)
{
	uint64_t at = fs->hdr->blocks[i].pages_offset + off;

	if (fallocate(fs->pfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)at, (off_t)len) ==
	    0)
		return 0;
	if (errno != EOPNOTSUPP)
		return gw_error_set(err, -errno,
				    "mapped-ram save, RAM block '%s': freeing 0x%llx bytes at file offset 0x%llx: %s",
				    fs->m->ram[i].name, (unsigned long long)len,
				    (unsigned long long)at, gw_strerror(errno));
	for (uint64_t done = 0; done < len; done += ZEROS) {
		uint64_t n = len - done < ZEROS ? len - done : ZEROS;
		int ret = pwrite_all(fs->pfd, fs->zeros, n, at + done, "zero pages",
				     fs->m->ram[i].name, err);
		if (ret < 0)
			return ret;
	}
	return 0;
}

/* Pages [off, off+len) of block i are zero now: free the slots that held data. */
static int drop(struct file_sink *fs, uint32_t i, uint64_t off, uint64_t len, struct gw_error *err)
{
	struct fblock *fb = &fs->blocks[i];
	uint64_t p = off / PAGE, end = (off + len) / PAGE;

	while ((p = gw_bitmap_next_set(fb->present, end, p)) < end) {
		uint64_t q = gw_bitmap_next_clear(fb->present, end, p);
		int ret;

		gw_bitmap_clear(fb->present, p, q - p);
		ret = clear_slots(fs, i, p * PAGE, (q - p) * PAGE, err);
		if (ret < 0)
			return ret;
		p = q;
	}
	return 0;
}

/*
 * n pages of block `block`, data from src (packed, in entry order) or,
 * with src NULL, from guest memory: runs of neighbouring pages are
 * written, runs of zero pages dropped, one call each.
 */
static int write_pages(struct file_sink *fs, uint32_t block, const uint64_t *entries, uint32_t n,
		       const unsigned char *src, struct gw_error *err)
{
	const unsigned char *host = fs->m->ram[block].host;
	uint32_t i = 0;

	while (i < n) {
		bool zero = entries[i] & GW_PAGE_ZERO;
		uint64_t off = entries[i] & ~PAGE_MASK;
		uint32_t k = i + 1;
		int ret;

		while (k < n && !!(entries[k] & GW_PAGE_ZERO) == zero &&
		       (entries[k] & ~PAGE_MASK) == off + (k - i) * PAGE)
			k++;
		if (__atomic_load_n(&fs->failed, __ATOMIC_RELAXED))
			return 0; /* the first failure is the one reported */
		ret = zero ? drop(fs, block, off, (k - i) * PAGE, err) :
			     put(fs, block, off, (k - i) * PAGE, src ? src : host + off, err);
		if (ret < 0)
			return ret;
		if (src && !zero)
			src += (k - i) * PAGE;
		i = k;
	}
	return 0;
}

static int write_job(struct file_sink *fs, const struct job *j, struct gw_error *err)
{
	return write_pages(fs, j->block, j->entries, j->n, NULL, err);
}

static void *writer_thread(void *opaque)
{
	struct writer *wr = opaque;
	struct file_sink *fs = wr->fs;

	pthread_setname_np(pthread_self(), "gw-file-writer");
	pthread_mutex_lock(&fs->lock);
	for (;;) {
		struct gw_error err = {0};
		int ret;

		while (!fs->quit && wr->head == wr->tail)
			pthread_cond_wait(&wr->work, &fs->lock);
		if (wr->head == wr->tail)
			break;
		wr->busy = true;
		pthread_mutex_unlock(&fs->lock);
		ret = write_job(fs, &wr->ring[wr->head % RING], &err);
		pthread_mutex_lock(&fs->lock);
		wr->busy = false;
		wr->head++;
		if (ret < 0 && !fs->failed) {
			fs->error = err;
			__atomic_store_n(&fs->failed, true, __ATOMIC_RELAXED);
		}
		pthread_cond_broadcast(&fs->space);
	}
	pthread_mutex_unlock(&fs->lock);
	return NULL;
}

/* Under the lock: the first failure, as this call's error. */
static int failure(struct file_sink *fs, struct gw_error *err)
{
	if (err)
		*err = fs->error;
	return fs->error.code ? fs->error.code : -EIO;
}

/*
 * Under the lock: wait for a writer to make progress. A disk that stalls
 * must not keep a cancel waiting: every 50 ms the engine's cancel is
 * looked at, and a cancel fails the sink (the writers then skip what is
 * queued).
 */
static void wait_space(struct file_sink *fs)
{
	gw_cond_wait_ms(&fs->space, &fs->lock, 50);
	if (!fs->failed && fs->cancel && gw_cancel_requested(fs->cancel)) {
		gw_error_set(&fs->error, -ECANCELED,
			     "mapped-ram save: cancelled while the file writers were busy");
		__atomic_store_n(&fs->failed, true, __ATOMIC_RELAXED);
	}
}

static uint32_t owner(const struct file_sink *fs, uint32_t block, uint64_t entry)
{
	return (uint32_t)(((entry >> CHUNK_SHIFT) + block) % fs->nr_writers);
}

static int enqueue(struct file_sink *fs, uint32_t w, uint32_t block, const uint64_t *entries,
		   uint32_t n, struct gw_error *err)
{
	struct writer *wr = &fs->writers[w];
	struct job *j;

	pthread_mutex_lock(&fs->lock);
	while (!fs->failed && wr->tail - wr->head == RING)
		wait_space(fs);
	if (fs->failed) {
		int ret = failure(fs, err);
		pthread_mutex_unlock(&fs->lock);
		return ret;
	}
	j = &wr->ring[wr->tail % RING];
	j->block = block;
	j->n = n;
	memcpy(j->entries, entries, n * sizeof(*entries));
	for (uint32_t k = 0; k < n; k++)
		if (!(entries[k] & GW_PAGE_ZERO))
			__atomic_add_fetch(&fs->taken, PAGE, __ATOMIC_RELAXED);
	wr->tail++;
	pthread_cond_signal(&wr->work);
	pthread_mutex_unlock(&fs->lock);
	return 0;
}

static int file_pages(struct gw_ram_sink *s, uint32_t block, const uint64_t *entries, uint32_t n,
		      unsigned flags, struct gw_error *err)
{
	struct file_sink *fs = of(s);
	uint32_t i = 0;

	(void)flags; /* every page is hashed where it is written */
	while (i < n) {
		uint32_t w = owner(fs, block, entries[i]), k = i + 1;
		int ret;

		while (k < n && owner(fs, block, entries[k]) == w)
			k++;
		ret = enqueue(fs, w, block, entries + i, k - i, err);
		if (ret < 0)
			return ret;
		i = k;
	}
	return 0;
}

static bool idle(const struct file_sink *fs)
{
	for (uint32_t w = 0; w < fs->nr_writers; w++)
		if (fs->writers[w].head != fs->writers[w].tail)
			return false;
	return true;
}

static int file_flush(struct gw_ram_sink *s, struct gw_error *err)
{
	struct file_sink *fs = of(s);
	int ret = 0;

	pthread_mutex_lock(&fs->lock);
	while (!fs->failed && !idle(fs))
		wait_space(fs);
	if (fs->failed)
		ret = failure(fs, err);
	pthread_mutex_unlock(&fs->lock);
	return ret;
}

static uint64_t file_sent(const struct gw_ram_sink *s)
{
	const struct file_sink *fs = of(s);

	return __atomic_load_n(&fs->written, __ATOMIC_RELAXED) + gw_writer_sent(fs->w) -
	       fs->stream_base;
}

static uint64_t file_taken(const struct gw_ram_sink *s)
{
	const struct file_sink *fs = of(s);

	return __atomic_load_n(&fs->taken, __ATOMIC_RELAXED) + gw_writer_offset(fs->w) -
	       fs->stream_base;
}

/* In the caller's thread, now; any number of threads at once, for
 * different pages. A failure is the sink's, as a writer's would be. */
static int file_put(struct gw_ram_sink *s, uint32_t block, const uint64_t *entries, uint32_t n,
		    const void *data, unsigned flags, struct gw_error *err)
{
	struct file_sink *fs = of(s);
	int ret;

	(void)flags;
	if (__atomic_load_n(&fs->failed, __ATOMIC_RELAXED)) {
		pthread_mutex_lock(&fs->lock);
		ret = failure(fs, err);
		pthread_mutex_unlock(&fs->lock);
		return ret;
	}
	for (uint32_t k = 0; k < n; k++)
		if (!(entries[k] & GW_PAGE_ZERO))
			__atomic_add_fetch(&fs->taken, PAGE, __ATOMIC_RELAXED);
	ret = write_pages(fs, block, entries, n, data, err);
	if (ret < 0) {
		pthread_mutex_lock(&fs->lock);
		if (!fs->failed) {
			fs->error = *err;
			__atomic_store_n(&fs->failed, true, __ATOMIC_RELAXED);
		}
		pthread_cond_broadcast(&fs->space);
		pthread_mutex_unlock(&fs->lock);
	}
	return ret;
}

static uint32_t file_put_threads(const struct gw_ram_sink *s)
{
	return of(s)->nr_writers;
}

static int sync_file(struct file_sink *fs, const char *after, struct gw_error *err)
{
	if (fdatasync(fs->fd) == 0)
		return 0;
	return gw_error_set(err, -errno, "mapped-ram save: fdatasync after %s: %s", after,
			    gw_strerror(errno));
}

/* The bitmap and the hashes of the present pages of block i, at *off. */
static int write_meta(struct file_sink *fs, uint32_t i, uint64_t *off, struct gw_error *err)
{
	const struct gw_ram_block *b = &fs->m->ram[i];
	struct gw_mapped_block *mb = &fs->hdr->blocks[i];
	uint64_t pages = b->size / PAGE, words = gw_mapped_bitmap_bytes(b->size) / 8, present = 0;
	unsigned char *bm = malloc(words * 8);
	unsigned char *hs = NULL;
	int ret;

	if (!bm)
		return gw_error_set(err, -ENOMEM, "mapped-ram save: out of memory for a bitmap");
	for (uint64_t k = 0; k < words; k++) {
		gw_le64(bm + 8 * k, fs->blocks[i].present[k]);
		present += (uint64_t)__builtin_popcountll(fs->blocks[i].present[k]);
	}
	hs = malloc(present ? present * 8 : 1);
	if (!hs) {
		free(bm);
		return gw_error_set(err, -ENOMEM, "mapped-ram save: out of memory for page hashes");
	}
	for (uint64_t p = 0, k = 0; p < pages; p++)
		if (gw_bitmap_test(fs->blocks[i].present, p))
			gw_le64(hs + 8 * k++, fs->blocks[i].hashes[p]);
	mb->bitmap_offset = *off;
	mb->bitmap_crc = gw_crc32c(0, bm, words * 8);
	mb->nr_present = present;
	mb->hashes_offset = mb->bitmap_offset + words * 8;
	mb->hashes_crc = gw_crc32c(0, hs, present * 8);
	ret = pwrite_all(fs->fd, bm, words * 8, mb->bitmap_offset, "the bitmap", b->name, err);
	if (ret == 0)
		ret = pwrite_all(fs->fd, hs, present * 8, mb->hashes_offset, "the page hashes",
				 b->name, err);
	*off = mb->hashes_offset + present * 8;
	free(bm);
	free(hs);
	return ret;
}

static int file_finish(struct gw_ram_sink *s, struct gw_error *err)
{
	struct file_sink *fs = of(s);
	struct gw_mapped_hdr *h = fs->hdr;
	uint64_t off;
	int ret;

	ret = file_flush(s, err);
	if (ret == 0)
		ret = gw_writer_flush(fs->w, err);
	if (ret < 0)
		return ret;
	h->stream_length = gw_writer_sent(fs->w) - fs->stream_base;
	off = (h->stream_offset + h->stream_length + 7) / 8 * 8;
	for (uint32_t i = 0; ret == 0 && i < h->nr_blocks; i++)
		ret = write_meta(fs, i, &off, err);
	if (ret < 0)
		return ret;
	h->file_size = off;
	if (ftruncate(fs->fd, (off_t)off) < 0)
		return gw_error_set(err, -errno, "mapped-ram save: setting the file's size: %s",
				    gw_strerror(errno));
	/* Everything the header points at is on disk before it says DONE. */
	ret = sync_file(fs, "the pages, the stream and the metadata", err);
	if (ret < 0)
		return ret;
	h->state = GW_MAPPED_STATE_DONE;
	ret = write_header(fs, err);
	if (ret == 0)
		ret = sync_file(fs, "the file header", err);
	if (ret == 0 && fs->incremental) {
		struct stat st;
		if (fstat(fs->fd, &st) == 0) {
			fs->m->incr.dev = (uint64_t)st.st_dev;
			fs->m->incr.ino = (uint64_t)st.st_ino;
			fs->m->incr.generation = h->generation;
			fs->m->incr.valid = true;
		}
	}
	return ret;
}

uint32_t gw_file_sink_generation(const struct gw_ram_sink *s)
{
	return of(s)->hdr->generation;
}

static void file_release(struct gw_ram_sink *s)
{
	struct file_sink *fs = of(s);

	/* What is still queued is skipped: the save is over either way. */
	pthread_mutex_lock(&fs->lock);
	fs->quit = true;
	__atomic_store_n(&fs->failed, true, __ATOMIC_RELAXED);
	for (uint32_t w = 0; w < fs->nr_writers; w++)
		pthread_cond_signal(&fs->writers[w].work);
	pthread_mutex_unlock(&fs->lock);
	for (uint32_t w = 0; w < fs->nr_writers; w++) {
		if (fs->writers[w].started)
			pthread_join(fs->writers[w].thread, NULL);
		pthread_cond_destroy(&fs->writers[w].work);
	}
	for (uint32_t i = 0; fs->blocks && i < fs->m->nr_ram; i++) {
		free(fs->blocks[i].present);
		free(fs->blocks[i].hashes);
	}
	if (fs->pfd >= 0 && fs->pfd != fs->fd)
		close(fs->pfd);
	if (fs->fd >= 0)
		close(fs->fd);
	pthread_cond_destroy(&fs->space);
	pthread_mutex_destroy(&fs->lock);
	free(fs->writers);
	free(fs->blocks);
	free(fs->hdr);
	free(fs->zeros);
	free(fs);
}

static const struct gw_ram_sink_ops file_ops = {
	.pages = file_pages,
	.flush = file_flush,
	.sent = file_sent,
	.taken = file_taken,
	.finish = file_finish,
	.release = file_release,
	.put = file_put,
	.put_threads = file_put_threads,
};

static uint64_t align_up(uint64_t v, uint64_t a)
{
	return (v + a - 1) / a * a;
}

/* The region alignment: 1 MiB, or what O_DIRECT on this file asks for. */
static int open_pages_fd(struct file_sink *fs, const struct gw_file_sink_params *sp,
			 uint32_t *align, struct gw_error *err)
{
	uint32_t mem, off;
	int ret;

	*align = GW_MAPPED_ALIGN_MIN;
	fs->pfd = fs->fd;
	if (!sp->direct_io)
		return 0;
	ret = gw_dio_align(fs->fd, &mem, &off, err);
	if (ret < 0)
		return ret;
	if (mem > GW_PAGE_SIZE || off > GW_MAPPED_ALIGN_MAX)
		return gw_error_set(err, -EOPNOTSUPP,
				    "direct-io: the file system wants buffers aligned to %u and offsets to %u bytes; guest pages are aligned to %u",
				    mem, off, GW_PAGE_SIZE);
	while (*align < off)
		*align *= 2;
	return gw_dio_reopen(fs->fd, O_WRONLY, &fs->pfd, err);
}

static int start_writers(struct file_sink *fs, uint32_t n, struct gw_error *err)
{
	fs->writers = calloc(n, sizeof(*fs->writers));
	if (!fs->writers)
		return gw_error_set(err, -ENOMEM, "mapped-ram save: out of memory for writers");
	fs->nr_writers = n;
	for (uint32_t w = 0; w < n; w++) {
		struct writer *wr = &fs->writers[w];
		int ret;

		wr->fs = fs;
		pthread_cond_init(&wr->work, NULL);
		ret = pthread_create(&wr->thread, NULL, writer_thread, wr);
		if (ret)
			return gw_error_set(err, -ret,
					    "mapped-ram save: cannot start writer %u: %s", w,
					    gw_strerror(ret));
		wr->started = true;
	}
	return 0;
}

/*
 * The new file gets its blocks at once where block i's memory has data
 * (SEEK_DATA on its memfd): a full file system fails the save here, with
 * nothing written, rather than half-way, and the slots lie together.
 * Holes stay holes; memory without an fd is not preallocated.
 */
static int preallocate(struct file_sink *fs, uint32_t i, struct gw_error *err)
{
	const struct gw_ram_block *b = &fs->m->ram[i];
	uint64_t base = b->fd_offset, end = b->fd_offset + b->size, at = base;

	if (b->fd < 0)
		return 0;
	while (at < end) {
		off_t data = lseek(b->fd, (off_t)at, SEEK_DATA);
		if (data < 0 || (uint64_t)data >= end)
			break;
		off_t hole = lseek(b->fd, data, SEEK_HOLE);
		uint64_t stop = hole < 0 || (uint64_t)hole > end ? end : (uint64_t)hole;
		uint64_t len = stop - (uint64_t)data;
		if (fallocate(fs->fd, 0,
			      (off_t)(fs->hdr->blocks[i].pages_offset + (uint64_t)data - base),
			      (off_t)len) < 0) {
			if (errno == EOPNOTSUPP)
				return 0;
			return gw_error_set(err, -errno,
					    "mapped-ram save, RAM block '%s': reserving 0x%llx bytes of the file for its pages: %s",
					    b->name, (unsigned long long)len, gw_strerror(errno));
		}
		at = stop;
	}
	return 0;
}

static int lay_out(struct file_sink *fs, uint32_t align, struct gw_error *err)
{
	struct gw_migration *m = fs->m;
	struct gw_mapped_hdr *h = fs->hdr;
	uint64_t off;
	int ret;

	h->state = GW_MAPPED_STATE_SAVING;
	h->nr_blocks = m->nr_ram;
	h->header_length = gw_mapped_header_length(m->nr_ram);
	h->region_align = align;
	h->generation = 1;
	off = align_up(h->header_length, align);
	for (uint32_t i = 0; i < m->nr_ram; i++) {
		struct gw_mapped_block *mb = &h->blocks[i];
		uint64_t pages = m->ram[i].size / PAGE;

		memcpy(mb->name, m->ram[i].name, strlen(m->ram[i].name) + 1);
		mb->size = m->ram[i].size;
		mb->pages_offset = off;
		off = align_up(off + mb->size, align);
		fs->blocks[i].present = calloc(gw_mapped_bitmap_bytes(mb->size) / 8, 8);
		fs->blocks[i].hashes = calloc(pages, 8);
		if (!fs->blocks[i].present || !fs->blocks[i].hashes)
			return gw_error_set(err, -ENOMEM,
					    "mapped-ram save: out of memory for the bitmap of RAM block '%s'",
					    m->ram[i].name);
	}
	h->stream_offset = off;
	h->file_size = off;
	/* Whatever the file held (a passed fd, a file an incremental save
	 * could not update) goes first, and the SAVE header is on disk before
	 * any page: a crash can leave nothing that looks complete. */
	if (ftruncate(fs->fd, 0) < 0)
		return gw_error_set(err, -errno, "mapped-ram save: emptying the file: %s",
				    gw_strerror(errno));
	ret = write_header(fs, err);
	if (ret < 0)
		return ret;
	if (ftruncate(fs->fd, (off_t)off) < 0 || lseek(fs->fd, (off_t)off, SEEK_SET) < 0)
		return gw_error_set(err, -errno,
				    "mapped-ram save: sizing the file to 0x%llx bytes: %s",
				    (unsigned long long)off, gw_strerror(errno));
	for (uint32_t i = 0; i < m->nr_ram; i++) {
		ret = preallocate(fs, i, err);
		if (ret < 0)
			return ret;
	}
	return sync_file(fs, "the header that says a save runs", err);
}

/* Bitmap and hashes of block i of the file into the sink's arrays: the
 * hash table is compact on disk (present pages only), dense here. */
static bool read_block_meta(struct file_sink *fs, uint32_t i)
{
	const struct gw_mapped_block *mb = &fs->hdr->blocks[i];
	uint64_t pages = mb->size / PAGE, rank = 0, *compact;

	if (gw_mapped_read_meta(fs->fd, mb, &fs->blocks[i].present, &compact, NULL) < 0)
		return false;
	fs->blocks[i].hashes = calloc(pages, 8);
	for (uint64_t p = 0; fs->blocks[i].hashes && p < pages; p++)
		if (gw_bitmap_test(fs->blocks[i].present, p))
			fs->blocks[i].hashes[p] = compact[rank++];
	free(compact);
	return fs->blocks[i].hashes != NULL;
}

/*
 * Is fd the file of m's last incremental save, complete, of this guest,
 * and laid out as this save needs (the region alignment O_DIRECT wants)?
 * Then take its bitmaps and hashes, mark it as being saved into, and
 * return 1: only the pages dirtied since need to be written. 0 if not
 * (nothing in the file changed); <0 if it could not be marked.
 */
static int try_update(struct file_sink *fs, uint32_t align, struct gw_error *err)
{
	struct gw_migration *m = fs->m;
	unsigned char fixed[GW_MAPPED_FIXED_SIZE], *buf;
	struct gw_error ignored = {0};
	struct stat st;
	uint32_t len;
	bool fits;

	if (!m->incr.valid || fstat(fs->fd, &st) < 0 || (uint64_t)st.st_dev != m->incr.dev ||
	    (uint64_t)st.st_ino != m->incr.ino ||
	    gw_pread_full(fs->fd, fixed, sizeof(fixed), 0, NULL) != 0 ||
	    gw_mapped_sniff(fixed, NULL) != 0 || gw_mapped_peek_length(fixed, &len, &ignored) < 0)
		return 0;
	buf = malloc(len);
	fits = buf && gw_pread_full(fs->fd, buf, len, 0, NULL) == 0 &&
	       gw_mapped_decode(buf, len, (uint64_t)st.st_size, fs->hdr, &ignored) == 0 &&
	       fs->hdr->generation == m->incr.generation && fs->hdr->nr_blocks == m->nr_ram &&
	       fs->hdr->region_align % align == 0;
	free(buf);
	for (uint32_t i = 0; fits && i < m->nr_ram; i++)
		fits = !strcmp(fs->hdr->blocks[i].name, m->ram[i].name) &&
		       fs->hdr->blocks[i].size == m->ram[i].size;
	for (uint32_t i = 0; fits && i < m->nr_ram; i++)
		fits = read_block_meta(fs, i);
	if (!fits) {
		for (uint32_t i = 0; i < m->nr_ram; i++) {
			free(fs->blocks[i].present);
			free(fs->blocks[i].hashes);
			fs->blocks[i].present = fs->blocks[i].hashes = NULL;
		}
		memset(fs->hdr, 0, sizeof(*fs->hdr));
		return 0;
	}
	/* From here the file is being saved into: a failure leaves it refused. */
	struct gw_mapped_hdr *h = fs->hdr;
	h->state = GW_MAPPED_STATE_SAVING;
	h->generation++;
	int ret = write_header(fs, err);
	if (ret == 0)
		ret = sync_file(fs, "marking the file as being saved into", err);
	if (ret < 0)
		return ret;
	if (ftruncate(fs->fd, (off_t)h->stream_offset) < 0 ||
	    lseek(fs->fd, (off_t)h->stream_offset, SEEK_SET) < 0)
		return gw_error_set(err, -errno, "mapped-ram save: cutting the old stream off: %s",
				    gw_strerror(errno));
	return 1;
}

int gw_file_sink_open(struct gw_migration *m, int fd, struct gw_writer *w,
		      const struct gw_file_sink_params *sp, struct gw_ram_sink **out, bool *update,
		      struct gw_error *err)
{
	struct file_sink *fs;
	struct stat st;
	uint32_t align;
	int ret;

	if (fstat(fd, &st) < 0)
		return gw_error_set(err, -errno, "mapped-ram: fstat: %s", gw_strerror(errno));
	if (!S_ISREG(st.st_mode))
		return gw_error_set(err, -EINVAL,
				    "mapped-ram needs a regular file (file:PATH or a passed file), not a %s",
				    S_ISFIFO(st.st_mode) ? "pipe" :
				    S_ISSOCK(st.st_mode) ? "socket" :
							   "special file");
	if (sp->writers < 1 || sp->writers > GW_FILE_SINK_MAX_WRITERS)
		return gw_error_set(err, -EINVAL, "mapped-ram: %u writers, expected 1 to %u",
				    sp->writers, GW_FILE_SINK_MAX_WRITERS);
	int fl = fcntl(fd, F_GETFL);
	if (fl >= 0 && (fl & O_APPEND))
		return gw_error_set(err, -EINVAL,
				    "mapped-ram writes at fixed offsets: the file is open with O_APPEND");
	fs = calloc(1, sizeof(*fs));
	if (!fs)
		return gw_error_set(err, -ENOMEM, "mapped-ram: out of memory");
	fs->sink.ops = &file_ops;
	fs->m = m;
	fs->w = w;
	/* A dup of our own: the writers may still be at work when the
	 * engine's channel closes, and must not write into a file that
	 * reuses the number. */
	fs->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
	fs->pfd = -1;
	fs->cancel = sp->cancel;
	fs->stream_base = gw_writer_sent(w);
	if (fs->fd < 0) {
		free(fs);
		return gw_error_set(err, -errno, "mapped-ram: dup of the file: %s",
				    gw_strerror(errno));
	}
	pthread_mutex_init(&fs->lock, NULL);
	pthread_cond_init(&fs->space, NULL);
	fs->hdr = calloc(1, sizeof(*fs->hdr));
	fs->blocks = calloc(m->nr_ram ? m->nr_ram : 1, sizeof(*fs->blocks));
	fs->zeros = aligned_alloc(GW_PAGE_SIZE, ZEROS);
	if (!fs->hdr || !fs->blocks || !fs->zeros) {
		file_release(&fs->sink);
		return gw_error_set(err, -ENOMEM, "mapped-ram: out of memory");
	}
	memset(fs->zeros, 0, ZEROS);
	ret = open_pages_fd(fs, sp, &align, err);
	*update = false;
	if (ret == 0 && sp->incremental) {
		ret = try_update(fs, align, err);
		*update = ret > 0;
		ret = ret > 0 ? 0 : ret;
	}
	fs->incremental = sp->incremental;
	if (ret == 0 && !*update)
		ret = lay_out(fs, align, err);
	if (ret == 0)
		ret = start_writers(fs, sp->writers, err);
	if (ret < 0) {
		file_release(&fs->sink);
		return ret;
	}
	*out = &fs->sink;
	return 0;
}
