/*
 * Torn pages (torn.h). Tearing is rare and settles quickly, so only the
 * test of a block's bitmap pointer is on the path of every page; notes are
 * searched linearly, and only when a page tears or a torn page settles.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "bitmap.h"
#include "internal.h"
#include "torn.h"

int gw_torn_init(struct gw_torn *t, const struct gw_migration *m, struct gw_error *err)
{
	*t = (struct gw_torn){ .m = m };
	t->bits = calloc(m->nr_ram + 1, sizeof(*t->bits));
	if (!t->bits)
		return gw_error_set(err, -ENOMEM, "load: out of memory");
	return 0;
}

void gw_torn_release(struct gw_torn *t)
{
	if (!t->bits)
		return;
	for (uint32_t i = 0; i < t->m->nr_ram; i++)
		free(t->bits[i]);
	free(t->bits);
	t->bits = NULL;
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
	const struct gw_ram_block *b = &t->m->ram[block];
	struct gw_torn_note *note;
	uint64_t *bm = t->bits[block];

	if (!bm) {
		bm = calloc(gw_bitmap_words(b->size / GW_PAGE_SIZE), sizeof(*bm));
		if (!bm)
			return gw_error_set(err, -ENOMEM,
					    "RAM block '%s': out of memory for its torn-page bitmap",
					    b->name);
		t->bits[block] = bm;
	}
	if (!gw_bitmap_test(bm, page)) {
		bm[page / 64] |= 1ull << (page % 64);
		t->count++;
	}
	/* The latest tear is the one that matters: only the last copy counts. */
	note = find_note(t, block, page);
	if (note)
		note->offset = offset;
	else if (t->nr_notes < GW_TORN_NOTES)
		t->notes[t->nr_notes++] = (struct gw_torn_note){ block, page, offset };
	return 0;
}

void gw_torn_clear(struct gw_torn *t, uint32_t block, uint64_t page)
{
	uint64_t *bm = t->bits[block];
	struct gw_torn_note *note;

	if (!bm || !gw_bitmap_test(bm, page))
		return;
	gw_bitmap_clear(bm, page, 1);
	t->count--;
	note = find_note(t, block, page);
	if (note)
		*note = t->notes[--t->nr_notes];
}

int gw_torn_check(const struct gw_torn *t, uint64_t eof, struct gw_error *err)
{
	const struct gw_torn_note *first = NULL;
	struct gw_torn_note unnoted = { 0 };
	char more[48] = "";

	if (!t->count)
		return 0;
	/* Name the earliest damage we have a note of. */
	for (uint32_t i = 0; i < t->nr_notes; i++)
		if (!first || t->notes[i].offset < first->offset)
			first = &t->notes[i];
	if (!first) {
		/* Every note settled, but a page torn while the table was full did not. */
		for (uint32_t i = 0; !first && i < t->m->nr_ram; i++) {
			uint64_t pages = t->m->ram[i].size / GW_PAGE_SIZE;

			if (!t->bits[i])
				continue;
			unnoted = (struct gw_torn_note){ i, gw_bitmap_next_set(t->bits[i], pages, 0), 0 };
			if (unnoted.page < pages)
				first = &unnoted;
		}
	}
	if (t->count > 1)
		snprintf(more, sizeof(more), " (%llu pages in all)", (unsigned long long)t->count);
	if (first == &unnoted)
		return gw_error_set(err, -EBADMSG,
				    "page 0x%llx of RAM block '%s' arrived damaged (checksum mismatch in a RAM_PAGES record before the EOF at stream offset %llu) and was never sent again%s",
				    (unsigned long long)(first->page * GW_PAGE_SIZE),
				    t->m->ram[first->block].name, (unsigned long long)eof, more);
	return gw_error_set(err, -EBADMSG,
			    "page 0x%llx of RAM block '%s' arrived damaged (checksum mismatch in the RAM_PAGES record at stream offset %llu) and was never sent again%s",
			    (unsigned long long)(first->page * GW_PAGE_SIZE),
			    t->m->ram[first->block].name, (unsigned long long)first->offset, more);
}
