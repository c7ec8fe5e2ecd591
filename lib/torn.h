/*
 * Torn pages: the loader's record of pages whose latest copy in the stream
 * did not match its page hash, in a RAM_PAGES record sent while the guest
 * ran (docs/format.md, "What the checksums protect here"). Such a copy is
 * either torn (the guest wrote the page while it was being sent, so the
 * page is dirty and a later copy replaces it) or damaged in transit; the
 * loader cannot tell which, so it waits: a later copy that verifies, or a
 * ZERO entry, settles the page, and a page still torn at EOF fails the load.
 *
 * Memory is bounded by the machine, not by the stream: one bit per page of
 * a block, allocated at the block's first torn page, plus a fixed table
 * that remembers which record tore a page, for the message.
 */
#ifndef GW_LIB_TORN_H
#define GW_LIB_TORN_H

#include <stdint.h>

#include <godwit/error.h>

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

struct gw_torn {
	const struct gw_migration *m;
	uint64_t **bits;  /* per block of m (index in m->ram); NULL until needed */
	uint64_t count;   /* pages torn now */
	struct gw_torn_note notes[GW_TORN_NOTES]; /* of pages torn now */
	uint32_t nr_notes;
};

int gw_torn_init(struct gw_torn *t, const struct gw_migration *m, struct gw_error *err);
void gw_torn_release(struct gw_torn *t);

/* Page `page` of block `block` did not match its hash in the record at offset. */
int gw_torn_mark(struct gw_torn *t, uint32_t block, uint64_t page, uint64_t offset,
		 struct gw_error *err);

/* A copy of the page verified, or the page is zero now: it is whole. */
void gw_torn_clear(struct gw_torn *t, uint32_t block, uint64_t page);

/* At EOF (stream offset eof): -EBADMSG naming a page if any is still torn. */
int gw_torn_check(const struct gw_torn *t, uint64_t eof, struct gw_error *err);

#endif
