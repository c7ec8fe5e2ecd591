/*
 * Saving and loading a guest as a godwit stream (docs/format.md) over a
 * gw_writer / gw_reader. These are the building blocks of the migration
 * engine, snapshots, and tests; they decide nothing about when to send
 * which page.
 *
 * Source side, in this order:
 *
 *     gw_save_begin()       header, CONFIG, SECTION_START of progressive sections
 *     gw_save_iterate()     SECTION_PART of progressive sections  } any number,
 *     (or _budget())                                              }
 *     gw_save_pages()       a RAM_PAGES batch                     } interleaved
 *     gw_save_devices()     SECTION_END / SECTION_FULL of every section (guest paused)
 *     gw_save_pages()       more pages may follow (background snapshot)
 *     gw_save_finish()      VMDESC, EOF, flush
 *
 * Calls out of this order fail with -EINVAL; gw_save_begin() may always
 * start a new stream (a retried migration). A failed call leaves the
 * stream unusable: start again with a new writer.
 *
 * Destination side: gw_load() reads a whole stream into the registered RAM
 * blocks and sections. It checks the stream header and the CONFIG record
 * against the registration before it writes any guest memory or calls any
 * load callback, so a stream for a different machine fails with the guest
 * untouched. On any failure the guest is half-loaded and must not be
 * resumed.
 *
 * Errors: -errno and a message naming the record offset, section or RAM
 * block; the codes are listed in docs/format.md.
 */
#ifndef GODWIT_STREAM_H
#define GODWIT_STREAM_H

#include <stdbool.h>
#include <stdint.h>

#include <godwit/error.h>
#include <godwit/export.h>
#include <godwit/io.h>
#include <godwit/migration.h>

#ifdef __cplusplus
extern "C" {
#endif

GW_API int gw_save_begin(struct gw_migration *m, struct gw_writer *w, struct gw_error *err);
GW_API int gw_save_iterate(struct gw_migration *m, struct gw_writer *w, struct gw_error *err);

/*
 * gw_save_iterate() writes every progressive section's PART records until
 * none has more to send (GW_LIVE_MORE, <godwit/migration.h>). This one
 * stops once about budget bytes were written: one record per section
 * first, then more of those that have more, while the budget lasts
 * (budget 0: one record each).
 * *sent (if not NULL) gets the bytes written. Returns 1 if a section
 * still had more when the budget ran out, 0 if none had, or -errno.
 */
GW_API int gw_save_iterate_budget(struct gw_migration *m, struct gw_writer *w, uint64_t budget,
				  uint64_t *sent, struct gw_error *err);

/* What the progressive sections say they still have to send (their
 * live_pending), in bytes. */
GW_API uint64_t gw_save_live_pending(const struct gw_migration *m);

/*
 * Send n (1..GW_PAGES_MAX) pages of RAM block `block` (registration
 * order). entries[i] is the byte offset of a page in the block, ORed with
 * GW_PAGE_ZERO if the page is known to be zero (then no data is sent).
 * Page data is written straight from the block's host memory, each page
 * with its page hash, computed just before the write.
 *
 * GW_SAVE_DATA_CRC says the pages cannot change during the call (guest
 * paused, pages write-protected): the destination then fails at once on a
 * page that does not match its hash. Without it, the guest may write the
 * pages while they are sent, and the caller must send again every page
 * written after its dirty state was cleared (as a pre-copy round does):
 * the destination fails at EOF on a mismatched page that was never sent
 * again (docs/format.md, "What the checksums protect here").
 */
#define GW_SAVE_DATA_CRC 0x1u

GW_API int gw_save_pages(struct gw_migration *m, struct gw_writer *w, uint32_t block,
			 const uint64_t *entries, uint32_t n, unsigned flags,
			 struct gw_error *err);

GW_API int gw_save_devices(struct gw_migration *m, struct gw_writer *w, struct gw_error *err);
GW_API int gw_save_finish(struct gw_migration *m, struct gw_writer *w, struct gw_error *err);

GW_API int gw_load(struct gw_migration *m, struct gw_reader *r, struct gw_error *err);

/*
 * The probe of a local live update (cpr-exec), run before the guest is
 * paused: gw_save_probe() writes the stream header and CONFIG record that
 * m's state would open with; gw_load_probe(), run by the new binary on
 * its own registration, reads them and checks that it could load that
 * state (the page size, machine, vCPUs and every section's version; not
 * the RAM sizes, since the RAM is adopted). 0, or the reason it could not.
 */
GW_API int gw_save_probe(struct gw_migration *m, struct gw_writer *w, struct gw_error *err);
GW_API int gw_load_probe(struct gw_migration *m, struct gw_reader *r, struct gw_error *err);

/* True if the GW_PAGE_SIZE bytes at page are all zero. */
GW_API bool gw_page_is_zero(const void *page);

#ifdef __cplusplus
}
#endif

#endif
