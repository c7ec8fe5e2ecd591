/*
 * Torn pages: the record of pages whose latest copy in the stream did not
 * match its page hash, in a RAM_PAGES record sent while the guest ran
 * (docs/format.md, "What the checksums protect here"). Such a copy is
 * either torn (the guest wrote the page while it was being sent, so the
 * page is dirty and a later copy replaces it) or damaged in transit; no
 * reader can tell which, so it waits: a later copy that verifies, or a
 * ZERO entry, settles the page, and a page still torn at EOF is damage.
 * The loader fails the load for it; the walker reports it
 * (gw_walker_settled()), and both say it in the same words.
 *
 * Memory is bounded by the machine, not by the stream: one bit per page of
 * a block, allocated at the block's first torn page, plus a fixed table
 * that remembers which record tore a page, for the message.
 */
#ifndef GW_LIB_TORN_H
#define GW_LIB_TORN_H

#include <stdbool.h>
#include <stdint.h>

#include <godwit/error.h>

struct gw_config;
struct gw_migration;

/*
 * Notes are kept for pages torn now, which is a few hundred at most for a
 * guest that writes a small set of pages as fast as it can (the pre-copy
 * unit tests see up to ~360). A page torn while the table is full is still
 * tracked; only its record is not named. The table is searched linearly,
 * on a tear and when a torn page settles, never for other pages.
 */
#define GW_TORN_NOTES 256

struct gw_torn_note {
	uint32_t block;
	uint64_t page;   /* page index in the block */
	uint64_t offset; /* stream offset of the RAM_PAGES record that tore it */
};

struct gw_torn_block {
	const char *name; /* for messages; owned by whoever described the block */
	uint64_t pages;
	uint64_t *bits; /* one per page; NULL until the block's first torn page */
};

struct gw_torn {
	struct gw_torn_block *blocks;
	uint32_t nr_blocks;
	uint64_t count;                           /* pages torn now */
	struct gw_torn_note notes[GW_TORN_NOTES]; /* of pages torn now */
	uint32_t nr_notes;
};

/* For a load: the blocks of m, numbered as in m->ram. m must outlive t. */
int gw_torn_init(struct gw_torn *t, const struct gw_migration *m, struct gw_error *err);
/* For a walk: the blocks a stream's CONFIG lists, numbered as in it (the
 * block ids of its RAM_PAGES records). cfg must outlive t. */
int gw_torn_init_config(struct gw_torn *t, const struct gw_config *cfg, struct gw_error *err);
void gw_torn_release(struct gw_torn *t);

/* Page `page` of block `block` did not match its hash in the record at offset. */
int gw_torn_mark(struct gw_torn *t, uint32_t block, uint64_t page, uint64_t offset,
		 struct gw_error *err);

/* A copy of the page verified, or the page is zero now: it is whole. */
void gw_torn_clear(struct gw_torn *t, uint32_t block, uint64_t page);

/*
 * The earliest damage: of the pages torn now, the one whose note names the
 * earliest record. A page torn while the notes were full has no record:
 * then the first such page, with offset 0 (no record starts there: the
 * stream header does). False if no page is torn.
 */
bool gw_torn_first(const struct gw_torn *t, struct gw_torn_note *first);

/* At EOF (stream offset eof): -EBADMSG naming gw_torn_first()'s page if
 * any is still torn. */
int gw_torn_check(const struct gw_torn *t, uint64_t eof, struct gw_error *err);

#endif
