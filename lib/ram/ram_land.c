/*
 * Where loaded page data lands. The record readers (lib/ram/ram.c for
 * RAM_PAGES) put each data page in place and then hand the record here:
 * every data page is checked against its hash and either settled or
 * marked torn (lib/format/torn.c), and the zero pages become holes. A
 * reader of another layout (pages at fixed file offsets) lands its pages
 * the same way.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <godwit/stream.h>

#include "lib/format/torn.h"
#include "lib/internal.h"
#include "lib/ram/ram_land.h"

#define PAGE_MASK ((uint64_t)GW_PAGE_SIZE - 1)

/*
 * Make [off, off+len) of b read as zeroes. Punching a hole in the memfd
 * frees the memory and faults nothing in. Memory without an fd is cleared
 * only where it is not zero already: reading untouched anonymous memory
 * maps the shared zero page, writing it would allocate. (A file system
 * that cannot punch 4 KiB holes, like hugetlbfs, and a read-only fd take
 * that path too.)
 */
int gw_land_zero(struct gw_ram_block *b, uint64_t off, uint64_t len, struct gw_error *err)
{
	if (b->fd >= 0) {
		if (fallocate(b->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
			      (off_t)(b->fd_offset + off), (off_t)len) == 0)
			return 0;
		/* EBADF: the fd is read-only; the mapping still takes writes. */
		if (errno != EOPNOTSUPP && errno != ENOSYS && errno != EINVAL && errno != EBADF)
			return gw_error_set(err, -errno,
					    "RAM block '%s': cannot zero 0x%llx+0x%llx (punching a hole in fd %d): %s",
					    b->name, (unsigned long long)off,
					    (unsigned long long)len, b->fd, gw_strerror(errno));
	}
	for (uint64_t o = off; o < off + len; o += GW_PAGE_SIZE)
		if (!gw_page_is_zero(b->host + o))
			memset(b->host + o, 0, GW_PAGE_SIZE);
	return 0;
}

/*
 * Check page i of a record, now in block b (number `block`), against its
 * hash. A page that could not change while sent (DATA_CRC) and does not
 * match is corrupted; any other mismatch is left for a later copy to settle.
 */
static int verify_page(const struct gw_ram_block *b, uint32_t block, struct gw_torn *torn,
		       const struct gw_rec_hdr *h, const struct gw_pages *p, uint32_t i,
		       struct gw_error *err)
{
	uint64_t off = p->entries[i] & ~PAGE_MASK;
	uint64_t hash = gw_page_hash(b->host + off);

	if (hash == p->hashes[i]) {
		gw_torn_clear(torn, block, off / GW_PAGE_SIZE);
		return 0;
	}
	if (h->flags & GW_RECF_DATA_CRC)
		return gw_error_set(err, -EBADMSG,
				    "RAM_PAGES record at offset %llu, RAM block '%s': page 0x%llx is corrupted (page hash 0x%016llx, computed 0x%016llx; the record's pages could not change while sent)",
				    (unsigned long long)h->offset, b->name, (unsigned long long)off,
				    (unsigned long long)p->hashes[i], (unsigned long long)hash);
	return gw_torn_mark(torn, block, off / GW_PAGE_SIZE, h->offset, err);
}

int gw_land_settle(struct gw_migration *m, uint32_t block, struct gw_torn *torn,
		   const struct gw_rec_hdr *h, const struct gw_pages *p, struct gw_error *err)
{
	struct gw_ram_block *b = &m->ram[block];
	uint64_t run_off = 0, run_len = 0;
	int ret;

	for (uint32_t i = 0; i < p->nr_pages; i++) {
		uint64_t off = p->entries[i] & ~PAGE_MASK;

		if (!(p->entries[i] & GW_PAGE_ZERO)) {
			ret = verify_page(b, block, torn, h, p, i, err);
			if (ret < 0)
				return ret;
			continue;
		}
		/* A page that is zero now is whole, whatever an earlier copy was. */
		gw_torn_clear(torn, block, off / GW_PAGE_SIZE);
		if (run_len && run_off + run_len == off) {
			run_len += GW_PAGE_SIZE;
			continue;
		}
		if (run_len && (ret = gw_land_zero(b, run_off, run_len, err)) < 0)
			return ret;
		run_off = off;
		run_len = GW_PAGE_SIZE;
	}
	return run_len ? gw_land_zero(b, run_off, run_len, err) : 0;
}

bool gw_land_has_data(const struct gw_ram_block *b)
{
	if (b->fd < 0)
		return true;
	off_t at = lseek(b->fd, (off_t)b->fd_offset, SEEK_DATA);
	/* ENXIO: no data from there on. Any other error: assume data. */
	if (at < 0)
		return errno != ENXIO;
	return (uint64_t)at < b->fd_offset + b->size;
}
