/*
 * The populated-page filter (populated.h), built on lseek(SEEK_DATA /
 * SEEK_HOLE), which shmem answers from its page cache without touching
 * the pages.
 */
#include <errno.h>
#include <unistd.h>

#include "lib/bitmap.h"
#include "lib/ram/populated.h"

/*
 * What the last lookup, made at page `from`, found: pages [from, data)
 * are holes and [data, end) hold data. It answers every later question
 * about a page in [from, end); with no data left in the block, data and
 * end are the page count and it answers everything after from.
 */
struct extent {
	uint64_t from, data, end;
	bool valid;
};

static int lookup(const struct gw_ram_block *b, uint64_t pages, uint64_t page, struct extent *e,
		  struct gw_error *err)
{
	off_t base = (off_t)b->fd_offset;
	off_t limit = base + (off_t)b->size;
	off_t data, hole = 0;

	*e = (struct extent){page, pages, pages, true};
	data = lseek(b->fd, base + (off_t)(page * GW_PAGE_SIZE), SEEK_DATA);
	if (data < 0 && errno == ENXIO)
		return 0; /* nothing but holes up to the end of the file */
	if (data >= 0)
		hole = lseek(b->fd, data, SEEK_HOLE);
	if (data < 0 || hole < 0)
		return gw_error_set(err, -errno,
				    "RAM block '%s': cannot find its populated pages (lseek on fd %d): %s",
				    b->name, b->fd, gw_strerror(errno));
	if (data >= limit)
		return 0;
	/* Round outwards: a partly populated page is a page to send. */
	e->data = (uint64_t)(data - base) / GW_PAGE_SIZE;
	e->end = hole >= limit ? pages :
				 ((uint64_t)(hole - base) + GW_PAGE_SIZE - 1) / GW_PAGE_SIZE;
	return 0;
}

int gw_populated_filter(const struct gw_ram_block *b, uint64_t *bm, struct gw_error *err)
{
	uint64_t pages = b->size / GW_PAGE_SIZE;
	struct extent e = {0};
	uint64_t i = gw_bitmap_next_set(bm, pages, 0);

	if (b->fd < 0)
		return 0;
	while (i < pages) {
		/* A run [i, j) of set bits. */
		uint64_t j = gw_bitmap_next_clear(bm, pages, i);

		while (i < j) {
			if (!e.valid || i < e.from || (i >= e.end && e.end < pages)) {
				int ret = lookup(b, pages, i, &e, err);

				if (ret < 0)
					return ret;
			}
			if (e.data > i) {
				gw_bitmap_clear(bm, i, (e.data < j ? e.data : j) - i);
				if (e.data >= j)
					break;
			}
			i = e.end;
		}
		i = gw_bitmap_next_set(bm, pages, i > j ? i : j);
	}
	return 0;
}
