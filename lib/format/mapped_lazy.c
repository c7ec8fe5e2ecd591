/*
 * Lazy restore of a mapped-ram file (mapped_lazy.h). The file side is
 * the one mapped_load.c reads: the same header, bitmaps and hashes, the
 * same checked reads; only the order changes. Where a full restore reads
 * every run before the sections, this one starts the page server where
 * RAM would be read (between CONFIG and the sections), so the guest can
 * run as soon as the sections are in, whatever its size.
 *
 * A page's hash is found by its rank among the present pages of its
 * block; a prefix count per 64-page bitmap word makes that one popcount
 * for a fault anywhere in the block.
 *
 * The hash tables (8 bytes a page: 8 MiB for 4 GiB) are not read before
 * the guest runs, which would make the time to running grow with the
 * guest: until gw_mapped_lazy_wait() has read a block's table whole and
 * checked its CRC, each read takes the slice of the table its pages need
 * from the file with them.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <godwit/io.h>
#include <godwit/stream.h>

#include "lib/cancel.h"
#include "lib/format/mapped.h"
#include "lib/format/mapped_lazy.h"
#include "lib/format/mapped_load.h"
#include "lib/internal.h"
#include "lib/ram/ram_land.h"
#include "lib/transport/direct_io.h"

#define PAGE ((uint64_t)GW_PAGE_SIZE)

struct gw_mapped_lazy {
	struct gw_migration *m;
	int fd, pfd; /* fd is the caller's; pfd may be an O_DIRECT reopen */
	struct gw_mapped_lazy_params params;
	struct gw_mapped_hdr *h;
	uint32_t map[GW_MAX_RAM_BLOCKS]; /* header block -> index in m->ram */
	uint64_t *bitmap[GW_MAX_RAM_BLOCKS];
	uint64_t *hashes[GW_MAX_RAM_BLOCKS]; /* atomic: NULL until read whole */
	uint64_t *rank[GW_MAX_RAM_BLOCKS];   /* present pages before each bitmap word */
	uint64_t *received;                  /* atomic, may be NULL */
	struct gw_page_server *ps;
};

/* A run's pages checked against the slice of the hash table they need. */
static int read_with_slice(struct gw_mapped_lazy *lz, uint32_t e, uint64_t first, uint64_t n,
			   uint64_t rank, void *dst, struct gw_error *err)
{
	uint64_t *slice = malloc(8 * n);
	int ret = slice ? gw_mapped_read_hash_slice(lz->fd, &lz->h->blocks[e], rank, n, slice,
						    err) :
			  gw_error_set(err, -ENOMEM, "lazy restore: out of memory");

	if (ret == 0)
		ret = gw_mapped_read_pages(lz->pfd, &lz->h->blocks[e], slice, first, n, 0, dst,
					   err);
	free(slice);
	return ret;
}

static int read_from_file(void *opaque, uint32_t e, uint64_t first, uint64_t n, bool urgent,
			  void *dst, struct gw_error *err)
{
	struct gw_mapped_lazy *lz = opaque;
	const uint64_t *bm = lz->bitmap[e];
	uint64_t below = first % 64 ? bm[first / 64] & ((1ull << (first % 64)) - 1) : 0;
	uint64_t rank = lz->rank[e][first / 64] + (uint64_t)__builtin_popcountll(below);
	const uint64_t *hashes = __atomic_load_n(&lz->hashes[e], __ATOMIC_ACQUIRE);

	(void)urgent; /* a file serves every read at once */
	int ret = hashes ? gw_mapped_read_pages(lz->pfd, &lz->h->blocks[e], hashes, first, n, rank,
						dst, err) :
			   read_with_slice(lz, e, first, n, rank, dst, err);

	if (ret == 0 && lz->received)
		__atomic_add_fetch(lz->received, n * PAGE, __ATOMIC_RELAXED);
	return ret;
}

/* Header block e: its bitmap and hashes (checked), their ranks; and the
 * RAM it lands in, emptied, as the page server needs it. */
static int prepare_block(struct gw_mapped_lazy *lz, uint32_t e, struct gw_ps_block *out,
			 struct gw_error *err)
{
	const struct gw_mapped_block *mb = &lz->h->blocks[e];
	struct gw_ram_block *b = &lz->m->ram[lz->map[e]];
	uint64_t words = gw_mapped_bitmap_bytes(mb->size) / 8, sum = 0;
	int ret = gw_mapped_read_bitmap(lz->fd, mb, &lz->bitmap[e], err);

	if (ret < 0)
		return ret;
	if (b->fd < 0)
		return gw_error_set(err, -EOPNOTSUPP,
				    "lazy restore: RAM block '%s' is not a memfd; restore it whole (without x-godwit-lazy-restore)",
				    b->name);
	lz->rank[e] = malloc(words * sizeof(uint64_t));
	if (!lz->rank[e])
		return gw_error_set(err, -ENOMEM, "lazy restore: out of memory for block '%s'",
				    b->name);
	for (uint64_t w = 0; w < words; w++) {
		lz->rank[e][w] = sum;
		sum += (uint64_t)__builtin_popcountll(lz->bitmap[e][w]);
	}
	/* Whatever the memfd holds goes: the server fills holes only. */
	if (gw_land_has_data(b))
		ret = gw_land_zero(b, 0, b->size, err);
	*out = (struct gw_ps_block){b->name, b->host, b->size, b->fd, b->fd_offset, lz->bitmap[e]};
	return ret;
}

/* Between CONFIG and the sections (gw_load_mapped_stream). */
static int start_serving(void *opaque, struct gw_error *err)
{
	struct gw_mapped_lazy *lz = opaque;
	const struct gw_ps_params pp = {.mode = lz->params.mode, .rate = lz->params.rate};
	const struct gw_page_source src = {read_from_file, lz};
	struct gw_ps_block *blocks = calloc(lz->h->nr_blocks, sizeof(*blocks));
	int ret = blocks ? 0 : gw_error_set(err, -ENOMEM, "lazy restore: out of memory");

	for (uint32_t e = 0; ret == 0 && e < lz->h->nr_blocks; e++)
		ret = prepare_block(lz, e, &blocks[e], err);
	if (ret == 0)
		ret = gw_page_server_start(blocks, lz->h->nr_blocks, &pp, &src, &lz->ps, err);
	free(blocks);
	return ret;
}

int gw_mapped_lazy_start(struct gw_migration *m, int fd, const struct gw_mapped_lazy_params *p,
			 struct gw_cancel *c, uint64_t *received, struct gw_mapped_lazy **out,
			 struct gw_error *err)
{
	struct gw_mapped_lazy *lz = calloc(1, sizeof(*lz));
	struct gw_reader *r = NULL;
	int ret;

	if (!lz)
		return gw_error_set(err, -ENOMEM, "lazy restore: out of memory");
	lz->m = m;
	lz->fd = lz->pfd = fd;
	lz->params = *p;
	lz->received = received;
	lz->h = calloc(1, sizeof(*lz->h));
	ret = lz->h ? gw_mapped_open(m, fd, lz->h, lz->map, err) :
		      gw_error_set(err, -ENOMEM, "lazy restore: out of memory");
	if (ret == 0 && p->direct_io)
		ret = gw_dio_reopen(fd, O_RDONLY, &lz->pfd, err);
	if (ret == 0 && lseek(fd, (off_t)lz->h->stream_offset, SEEK_SET) < 0)
		ret = gw_error_set(err, -errno, "mapped-ram file: seeking to the stream: %s",
				   gw_strerror(errno));
	if (ret == 0)
		ret = gw_reader_new(fd, &r, err);
	if (ret == 0) {
		if (c)
			gw_reader_bind(r, c->efd);
		gw_reader_count_into(r, received);
		ret = gw_load_mapped_stream(m, r, start_serving, lz, err);
	}
	gw_reader_free(r);
	if (ret < 0) {
		gw_mapped_lazy_free(lz);
		return gw_error_prefix(err, ret, "restoring a mapped-ram file lazily: ");
	}
	*out = lz;
	return 0;
}

int gw_mapped_lazy_wait(struct gw_mapped_lazy *lz, int cancel_efd, struct gw_error *err)
{
	int ret = 0;

	/* The guest runs: now the tables, whole and checked. */
	for (uint32_t e = 0; ret == 0 && e < lz->h->nr_blocks; e++) {
		uint64_t *hs;

		ret = gw_mapped_read_hashes(lz->fd, &lz->h->blocks[e], &hs, err);
		if (ret == 0)
			__atomic_store_n(&lz->hashes[e], hs, __ATOMIC_RELEASE);
	}
	if (ret == 0)
		ret = gw_page_server_wait(lz->ps, cancel_efd, -1, err);

	return ret < 0 ? gw_error_prefix(err, ret, "restoring a mapped-ram file lazily: ") : 0;
}

void gw_mapped_lazy_set_rate(struct gw_mapped_lazy *lz, uint64_t rate)
{
	gw_page_server_set_rate(lz->ps, rate);
}

void gw_mapped_lazy_stats(struct gw_mapped_lazy *lz, struct gw_ps_stats *out)
{
	gw_page_server_stats(lz->ps, out);
}

unsigned gw_mapped_lazy_thread_stats(struct gw_mapped_lazy *lz,
				     struct gw_ps_thread_stats out[GW_PS_THREADS_MAX])
{
	return gw_page_server_thread_stats(lz->ps, out);
}

void gw_mapped_lazy_free(struct gw_mapped_lazy *lz)
{
	if (!lz)
		return;
	gw_page_server_free(lz->ps);
	if (lz->pfd != lz->fd)
		close(lz->pfd);
	for (uint32_t e = 0; lz->h && e < lz->h->nr_blocks && e < GW_MAX_RAM_BLOCKS; e++) {
		free(lz->bitmap[e]);
		free(lz->hashes[e]);
		free(lz->rank[e]);
	}
	free(lz->h);
	free(lz);
}
