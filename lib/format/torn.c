/*
 * Torn pages (torn.h). Tearing is rare and settles quickly, so only the
 * test of a block's bitmap pointer is on the path of every page; notes are
 * searched linearly, and only when a page tears or a torn page settles.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include <godwit/walk.h>

#include "lib/bitmap.h"
#include "lib/internal.h"
#include "lib/format/torn.h"

static int torn_alloc(struct gw_torn *t, uint32_t nr_blocks, struct gw_error *err)
{
	*t = (struct gw_torn){.nr_blocks = nr_blocks};
	t->blocks = calloc(nr_blocks + 1, sizeof(*t->blocks));
	if (!t->blocks)
		return gw_error_set(err, -ENOMEM, "out of memory for the torn-page table");
	return 0;
}

int gw_torn_init(struct gw_torn *t, const struct gw_migration *m, struct gw_error *err)
{
	int ret = torn_alloc(t, m->nr_ram, err);

	for (uint32_t i = 0; ret == 0 && i < m->nr_ram; i++)
		t->blocks[i] = (struct gw_torn_block){m->ram[i].name, m->ram[i].size / GW_PAGE_SIZE,
						      NULL};
	return ret;
}

int gw_torn_init_config(struct gw_torn *t, const struct gw_config *cfg, struct gw_error *err)
{
	int ret = torn_alloc(t, cfg->nr_ram, err);

	for (uint32_t i = 0; ret == 0 && i < cfg->nr_ram; i++)
		t->blocks[i] = (struct gw_torn_block){cfg->ram[i].name,
						      cfg->ram[i].size / GW_PAGE_SIZE, NULL};
	return ret;
}

void gw_torn_release(struct gw_torn *t)
{
	if (!t->blocks)
		return;
	for (uint32_t i = 0; i < t->nr_blocks; i++)
		free(t->blocks[i].bits);
	free(t->blocks);
	t->blocks = NULL;
}

static struct gw_torn_note *find_note(struct gw_torn *t, uint32_t block, uint64_t page)
{
	for (uint32_t i = 0; i < t->nr_notes; i++)
		if (t->notes[i].block == block && t->notes[i].page == page)
			return &t->notes[i];
	return NULL;
}

int gw_torn_mark(struct gw_torn *t, uint32_t block, uint64_t page, uint64_t offset,
		 struct gw_error *err)
{
	struct gw_torn_block *b = &t->blocks[block];
	struct gw_torn_note *note;

	if (!b->bits) {
		b->bits = calloc(gw_bitmap_words(b->pages), sizeof(*b->bits));
		if (!b->bits)
			return gw_error_set(err, -ENOMEM,
					    "RAM block '%s': out of memory for its torn-page bitmap",
					    b->name);
	}
	if (!gw_bitmap_test(b->bits, page)) {
		b->bits[page / 64] |= 1ull << (page % 64);
		t->count++;
	}
	/* The latest tear is the one that matters: only the last copy counts. */
	note = find_note(t, block, page);
	if (note)
		note->offset = offset;
	else if (t->nr_notes < GW_TORN_NOTES)
		t->notes[t->nr_notes++] = (struct gw_torn_note){block, page, offset};
	return 0;
}

void gw_torn_clear(struct gw_torn *t, uint32_t block, uint64_t page)
{
	uint64_t *bm = t->blocks[block].bits;
	struct gw_torn_note *note;

	if (!bm || !gw_bitmap_test(bm, page))
		return;
	gw_bitmap_clear(bm, page, 1);
	t->count--;
	note = find_note(t, block, page);
	if (note)
		*note = t->notes[--t->nr_notes];
}

bool gw_torn_first(const struct gw_torn *t, struct gw_torn_note *first)
{
	const struct gw_torn_note *noted = NULL;

	if (!t->count)
		return false;
	for (uint32_t i = 0; i < t->nr_notes; i++)
		if (!noted || t->notes[i].offset < noted->offset)
			noted = &t->notes[i];
	if (noted) {
		*first = *noted;
		return true;
	}
	/* Every note settled, but a page torn while the table was full did not. */
	for (uint32_t i = 0; i < t->nr_blocks; i++) {
		const struct gw_torn_block *b = &t->blocks[i];
		uint64_t page;

		if (!b->bits)
			continue;
		page = gw_bitmap_next_set(b->bits, b->pages, 0);
		if (page < b->pages) {
			*first = (struct gw_torn_note){i, page, 0};
			return true;
		}
	}
	return false;
}

int gw_torn_check(const struct gw_torn *t, uint64_t eof, struct gw_error *err)
{
	struct gw_torn_note first;
	char more[48] = "";

	if (!gw_torn_first(t, &first))
		return 0;
	if (t->count > 1)
		snprintf(more, sizeof(more), " (%llu pages in all)", (unsigned long long)t->count);
	if (!first.offset)
		return gw_error_set(err, -EBADMSG,
				    "page 0x%llx of RAM block '%s' arrived damaged (checksum mismatch in a RAM_PAGES record before the EOF at stream offset %llu) and was never sent again%s",
				    (unsigned long long)(first.page * GW_PAGE_SIZE),
				    t->blocks[first.block].name, (unsigned long long)eof, more);
	return gw_error_set(err, -EBADMSG,
			    "page 0x%llx of RAM block '%s' arrived damaged (checksum mismatch in the RAM_PAGES record at stream offset %llu) and was never sent again%s",
			    (unsigned long long)(first.page * GW_PAGE_SIZE),
			    t->blocks[first.block].name, (unsigned long long)first.offset, more);
}
