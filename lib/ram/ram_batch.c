/*
 * Batches of dirty pages (ram_batch.h).
 */
#include <godwit/stream.h>

#include "lib/bitmap.h"
#include "lib/internal.h"
#include "lib/ram/ram_batch.h"

void gw_ram_walk_init(struct gw_ram_walk *w, const struct gw_ram_block *b, uint32_t block,
		      uint64_t *bitmap)
{
	*w = (struct gw_ram_walk){.b = b,
				  .block = block,
				  .bitmap = bitmap,
				  .pages = b->size / GW_PAGE_SIZE};
	w->next = gw_bitmap_next_set(bitmap, w->pages, 0);
}

bool gw_ram_walk_next(struct gw_ram_walk *w, uint32_t max, struct gw_ram_batch *out)
{
	out->block = w->block;
	out->n = out->zero = 0;
	while (w->next < w->pages && out->n < max) {
		uint64_t i = w->next;
		bool is_zero = gw_page_is_zero(w->b->host + i * GW_PAGE_SIZE);

		out->entries[out->n++] = i * GW_PAGE_SIZE | (is_zero ? GW_PAGE_ZERO : 0);
		out->zero += is_zero;
		gw_bitmap_clear(w->bitmap, i, 1);
		w->next = gw_bitmap_next_set(w->bitmap, w->pages, i + 1);
	}
	return out->n > 0;
}
