/*
 * Restoring a mapped-ram file (docs/format.md, "Mapped-RAM files"): the
 * header is checked whole, the embedded stream's CONFIG is matched
 * against the registration, and only then is RAM read: each block's
 * bitmap and hash table (CRC-checked), then every run of present pages
 * with one large pread() straight into guest memory, by `readers`
 * threads in parallel, each page checked against its hash before the
 * next run. Absent pages are never read: they are made zero (holes
 * punched in the memfd, where it has any data at all). The sections
 * follow. Any failure leaves the load failed, and the guest never runs.
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
#include "lib/crc32c.h"
#include "lib/format/mapped.h"
#include "lib/format/mapped_load.h"
#include "lib/internal.h"
#include "lib/ram/ram_land.h"
#include "lib/transport/direct_io.h"
#include "lib/transport/pio.h"

#define PAGE ((uint64_t)GW_PAGE_SIZE)
#define RUN_MAX (8ull << 20) /* bytes one pread() takes at most */

struct run {
	uint32_t block; /* index in m->ram */
	uint32_t entry; /* index in the header's blocks */
	uint64_t first; /* page */
	uint64_t pages;
	uint64_t hash; /* index of the first page's hash */
};

struct mload {
	struct gw_migration *m;
	int fd, pfd;
	const struct gw_mapped_load_params *params;
	struct gw_cancel *cancel;
	struct gw_mapped_hdr *h;
	uint32_t map[GW_MAX_RAM_BLOCKS]; /* header block -> index in m->ram */
	uint64_t *bitmap[GW_MAX_RAM_BLOCKS];
	uint64_t *hashes[GW_MAX_RAM_BLOCKS];
	struct run *runs;
	size_t nr_runs, cap_runs;
	size_t next; /* atomic: the next run to read */
	bool failed; /* atomic */
	pthread_mutex_t lock;
	struct gw_error error; /* the first failure */
	uint64_t *received;    /* atomic, may be NULL */
};

static int add_run(struct mload *l, const struct run *r, struct gw_error *err)
{
	if (l->nr_runs == l->cap_runs) {
		size_t cap = l->cap_runs ? 2 * l->cap_runs : 64;
		struct run *n = realloc(l->runs, cap * sizeof(*n));

		if (!n)
			return gw_error_set(err, -ENOMEM,
					    "mapped-ram load: out of memory for the run list");
		l->runs = n;
		l->cap_runs = cap;
	}
	l->runs[l->nr_runs++] = *r;
	return 0;
}

/* Bitmap and hashes of header block e, checked; its runs, listed; the
 * pages it lacks, zeroed. */
static int prepare_block(struct mload *l, uint32_t e, struct gw_error *err)
{
	const struct gw_mapped_block *mb = &l->h->blocks[e];
	struct gw_ram_block *b = &l->m->ram[l->map[e]];
	uint64_t pages = mb->size / PAGE, p = 0, rank = 0;
	bool dirty = gw_land_has_data(b);
	int ret = gw_mapped_read_meta(l->fd, mb, &l->bitmap[e], &l->hashes[e], err);

	/* Runs of present pages, cut at RUN_MAX; the gaps, zeroed. */
	while (ret == 0 && p < pages) {
		uint64_t s = gw_bitmap_next_set(l->bitmap[e], pages, p);
		uint64_t t = gw_bitmap_next_clear(l->bitmap[e], pages, s);

		if (dirty && s > p)
			ret = gw_land_zero(b, p * PAGE, (s - p) * PAGE, err);
		for (uint64_t q = s; ret == 0 && q < t; q += RUN_MAX / PAGE) {
			uint64_t n = t - q < RUN_MAX / PAGE ? t - q : RUN_MAX / PAGE;
			const struct run r = {l->map[e], e, q, n, rank};

			ret = add_run(l, &r, err);
			rank += n;
		}
		p = t;
	}
	return ret;
}

static void fail(struct mload *l, const struct gw_error *e)
{
	pthread_mutex_lock(&l->lock);
	if (!l->failed) {
		l->error = *e;
		__atomic_store_n(&l->failed, true, __ATOMIC_RELAXED);
	}
	pthread_mutex_unlock(&l->lock);
}

int gw_mapped_read_pages(int fd, const struct gw_mapped_block *mb, const uint64_t *hashes,
			 uint64_t first, uint64_t n, uint64_t rank, void *dst, struct gw_error *err)
{
	uint64_t off = first * PAGE, len = n * PAGE, at = mb->pages_offset + off, got;
	unsigned char *to = dst;
	int ret = gw_pread_full(fd, to, len, at, &got);

	if (ret == -ENODATA)
		return gw_error_set(err, -EBADMSG,
				    "mapped-ram file, RAM block '%s': the file ends inside the page region (page at 0x%llx, file offset 0x%llx; truncated)",
				    mb->name, (unsigned long long)(off + got),
				    (unsigned long long)(at + got));
	if (ret < 0)
		return gw_error_set(err, ret,
				    "mapped-ram file, RAM block '%s': reading 0x%llx bytes at file offset 0x%llx (pages from 0x%llx): %s",
				    mb->name, (unsigned long long)len, (unsigned long long)at,
				    (unsigned long long)off, gw_strerror(-ret));
	for (uint64_t k = 0; k < n; k++) {
		uint64_t want = hashes[rank + k];
		uint64_t got_hash = gw_page_hash(to + k * PAGE);

		if (got_hash != want)
			return gw_error_set(err, -EBADMSG,
					    "mapped-ram file, RAM block '%s': the page at 0x%llx (file offset 0x%llx) is corrupted: page hash 0x%016llx in the file, computed 0x%016llx",
					    mb->name, (unsigned long long)(off + k * PAGE),
					    (unsigned long long)(at + k * PAGE),
					    (unsigned long long)want, (unsigned long long)got_hash);
	}
	return 0;
}

static int read_run(struct mload *l, const struct run *r, struct gw_error *err)
{
	const struct gw_ram_block *b = &l->m->ram[r->block];
	int ret = gw_mapped_read_pages(l->pfd, &l->h->blocks[r->entry], l->hashes[r->entry],
				       r->first, r->pages, r->hash, b->host + r->first * PAGE, err);

	if (ret == 0 && l->received)
		__atomic_add_fetch(l->received, r->pages * PAGE, __ATOMIC_RELAXED);
	return ret;
}

static void *reader_thread(void *opaque)
{
	struct mload *l = opaque;

	pthread_setname_np(pthread_self(), "gw-file-reader");
	for (;;) {
		size_t i = __atomic_fetch_add(&l->next, 1, __ATOMIC_RELAXED);
		struct gw_error e = {0};

		if (i >= l->nr_runs || __atomic_load_n(&l->failed, __ATOMIC_RELAXED))
			break;
		if (l->cancel && gw_cancel_requested(l->cancel)) {
			gw_error_set(&e, -ECANCELED, "mapped-ram load: cancelled");
			fail(l, &e);
			break;
		}
		if (read_run(l, &l->runs[i], &e) < 0) {
			fail(l, &e);
			break;
		}
	}
	return NULL;
}

/* Between CONFIG and the sections (gw_load_mapped_stream). */
static int load_ram(void *opaque, struct gw_error *err)
{
	struct mload *l = opaque;
	uint32_t n = l->params->readers ? l->params->readers : 1;
	pthread_t threads[GW_MAPPED_MAX_READERS];
	uint32_t started = 0;
	int ret = 0;

	if (n > GW_MAPPED_MAX_READERS)
		return gw_error_set(err, -EINVAL, "mapped-ram load: %u readers, at most %u", n,
				    GW_MAPPED_MAX_READERS);
	for (uint32_t e = 0; ret == 0 && e < l->h->nr_blocks; e++)
		ret = prepare_block(l, e, err);
	if (ret < 0)
		return ret;
	/* The calling thread is one of the readers. */
	while (started + 1 < n && pthread_create(&threads[started], NULL, reader_thread, l) == 0)
		started++;
	reader_thread(l);
	for (uint32_t t = 0; t < started; t++)
		pthread_join(threads[t], NULL);
	if (l->failed) {
		*err = l->error;
		return l->error.code ? l->error.code : -EIO;
	}
	return 0;
}

/* Every block of the registration is in the file with the same size. */
static int match_blocks(const struct gw_migration *m, const struct gw_mapped_hdr *h, uint32_t *map,
			struct gw_error *err)
{
	if (h->nr_blocks != m->nr_ram)
		return gw_error_set(err, -EINVAL,
				    "the file is of another guest: %u RAM blocks in the file, %u here",
				    h->nr_blocks, m->nr_ram);
	for (uint32_t e = 0; e < h->nr_blocks; e++) {
		const struct gw_mapped_block *mb = &h->blocks[e];
		uint32_t j = 0;

		while (j < m->nr_ram && strcmp(m->ram[j].name, mb->name))
			j++;
		if (j == m->nr_ram)
			return gw_error_set(err, -EINVAL,
					    "the file is of another guest: its RAM block '%s' is not in this VMM",
					    mb->name);
		if (m->ram[j].size != mb->size)
			return gw_error_set(err, -EINVAL,
					    "the file is of another guest: RAM block '%s' is %llu bytes in the file, %llu here",
					    mb->name, (unsigned long long)mb->size,
					    (unsigned long long)m->ram[j].size);
		map[e] = j;
	}
	return 0;
}

static int read_header(int fd, struct gw_mapped_hdr *h, struct gw_error *err)
{
	unsigned char fixed[GW_MAPPED_FIXED_SIZE], *buf;
	uint32_t len;
	uint64_t got;
	struct stat st;
	int ret;

	ret = gw_pread_full(fd, fixed, sizeof(fixed), 0, &got);
	if (ret < 0)
		return gw_error_set(err, ret == -ENODATA ? -EBADMSG : ret,
				    "mapped-ram file: the header: %s",
				    ret == -ENODATA ? "the file is shorter than its header" :
						      gw_strerror(-ret));
	ret = gw_mapped_sniff(fixed, err);
	if (ret == -ENOMSG)
		ret = gw_error_set(err, -EPROTO, "not a mapped-ram file");
	if (ret == 0)
		ret = gw_mapped_peek_length(fixed, &len, err);
	if (ret < 0)
		return ret;
	if (fstat(fd, &st) < 0)
		return gw_error_set(err, -errno, "mapped-ram file: fstat: %s", gw_strerror(errno));
	buf = malloc(len);
	if (!buf)
		return gw_error_set(err, -ENOMEM, "mapped-ram load: out of memory for the header");
	ret = gw_pread_full(fd, buf, len, 0, &got);
	if (ret < 0)
		ret = gw_error_set(err, ret == -ENODATA ? -EBADMSG : ret,
				   "mapped-ram file: the header (%u bytes): %s", len,
				   ret == -ENODATA ? "the file is shorter than its header" :
						     gw_strerror(-ret));
	else
		ret = gw_mapped_decode(buf, len, (uint64_t)st.st_size, h, err);
	free(buf);
	return ret;
}

int gw_mapped_open(const struct gw_migration *m, int fd, struct gw_mapped_hdr *h, uint32_t *map,
		   struct gw_error *err)
{
	int ret = read_header(fd, h, err);

	return ret < 0 ? ret : match_blocks(m, h, map, err);
}

int gw_mapped_load(struct gw_migration *m, int fd, const struct gw_mapped_load_params *params,
		   struct gw_cancel *cancel, uint64_t *received, struct gw_error *err)
{
	struct mload l = {
		.m = m,
		.fd = fd,
		.pfd = fd,
		.params = params,
		.cancel = cancel,
		.received = received,
	};
	struct gw_reader *r = NULL;
	int ret;

	pthread_mutex_init(&l.lock, NULL);
	l.h = calloc(1, sizeof(*l.h));
	ret = l.h ? gw_mapped_open(m, fd, l.h, l.map, err) :
		    gw_error_set(err, -ENOMEM, "mapped-ram load: out of memory");
	if (ret == 0 && params->direct_io)
		ret = gw_dio_reopen(fd, O_RDONLY, &l.pfd, err);
	if (ret == 0 && lseek(fd, (off_t)l.h->stream_offset, SEEK_SET) < 0)
		ret = gw_error_set(err, -errno, "mapped-ram file: seeking to the stream: %s",
				   gw_strerror(errno));
	if (ret == 0)
		ret = gw_reader_new(fd, &r, err);
	if (ret == 0) {
		if (cancel)
			gw_reader_bind(r, cancel->efd);
		gw_reader_count_into(r, received);
		ret = gw_load_mapped_stream(m, r, load_ram, &l, err);
	}
	gw_reader_free(r);
	if (l.pfd != fd)
		close(l.pfd);
	for (uint32_t e = 0; l.h && e < l.h->nr_blocks && e < GW_MAX_RAM_BLOCKS; e++) {
		free(l.bitmap[e]);
		free(l.hashes[e]);
	}
	free(l.runs);
	free(l.h);
	pthread_mutex_destroy(&l.lock);
	return ret < 0 ? gw_error_prefix(err, ret, "restoring a mapped-ram file: ") : 0;
}
