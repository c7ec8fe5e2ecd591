/*
 * The wire pieces of post-copy (docs/format.md, "Post-copy"): the
 * POSTCOPY record, in which the source tells the destination which pages
 * it must fetch (the last dirty bitmap, taken with the guest paused), and
 * the page request a destination sends on the return path for a page a
 * vCPU waits on (return_path.h carries it; the range check is here, since
 * it needs the blocks of CONFIG).
 *
 * Every field from the peer is hostile until checked here: a block index
 * past CONFIG's, a range past its block, a bitmap that does not tile its
 * block in order, stray bits past a block's end. A check that fails says
 * which field and what CONFIG allows.
 */
#ifndef GW_LIB_FORMAT_POSTCOPY_H
#define GW_LIB_FORMAT_POSTCOPY_H

#include <stdbool.h>
#include <stdint.h>

#include <godwit/error.h>
#include <godwit/format.h>

struct gw_migration;
struct gw_page_request;
struct gw_ram_block;
struct gw_writer;

/* Payload bytes of a POSTCOPY record carrying `count` bits. */
static inline uint64_t gw_postcopy_len(uint64_t count)
{
	return GW_POSTCOPY_HEAD_SIZE + (count + 63) / 64 * 8;
}

/*
 * Encode bits [first, first + count) of a block's bitmap (first a
 * multiple of 64) into buf, gw_postcopy_len(count) bytes; returns that
 * length. The caller keeps count <= GW_POSTCOPY_BITS_MAX.
 */
uint64_t gw_postcopy_encode(uint32_t block, uint64_t first, uint64_t count, const uint64_t *bits,
			    uint32_t flags, unsigned char *buf);

/*
 * The POSTCOPY records of a set of pages (bits: one bitmap per block of
 * ram, which are the nr blocks in CONFIG's order), in pieces of piece_bits
 * (a multiple of 64; 0 = GW_POSTCOPY_BITS_MAX). The caller flushes w. The
 * source sends its stale set so at the switch; a destination recovering
 * from a broken post-copy sends the pages it still lacks so.
 */
int gw_postcopy_put(struct gw_writer *w, const struct gw_ram_block *ram, uint32_t nr,
		    uint64_t *const *bits, uint64_t piece_bits, uint32_t flags,
		    struct gw_error *err);

/*
 * What names one post-copy on both sides (docs/format.md, "Post-copy
 * recovery"): a hash of the stale set the switch sent, block by block in
 * CONFIG's order (ram, nr, bits as for gw_postcopy_put). A connection
 * that resumes a post-copy must carry the same, so a source cannot feed
 * another migration's destination.
 */
uint64_t gw_postcopy_fingerprint(const struct gw_ram_block *ram, uint32_t nr,
				 const uint64_t *const *bits);

/*
 * The destination's side: the records must cover every block of CONFIG,
 * in its order, each from page 0 to its last page in consecutive pieces.
 */
struct gw_postcopy_cursor {
	uint32_t block; /* the block the next record must be of */
	uint64_t next;  /* ... and the page it must start at */
};

/*
 * Check one POSTCOPY payload (its CRC already checked) against the nr
 * blocks of CONFIG and the cursor, and copy its bits into bits[block]
 * (one bitmap per block, sized for it). Its flags must be want_flags
 * (the set the caller reads). offset names the record in messages.
 * -EBADMSG for anything out of range or out of order.
 */
int gw_postcopy_accept(struct gw_postcopy_cursor *c, const unsigned char *p, uint64_t len,
		       const struct gw_ram_block *ram, uint32_t nr, uint64_t *const *bits,
		       uint32_t want_flags, uint64_t offset, struct gw_error *err);

/* Every block covered: 0, or -EBADMSG naming the first one that is not. */
int gw_postcopy_complete(const struct gw_postcopy_cursor *c, const struct gw_ram_block *ram,
			 uint32_t nr, struct gw_error *err);

/*
 * The source's side of a page request: its block is one of CONFIG's and
 * its pages lie inside that block. -EBADMSG otherwise, saying what was
 * asked and what the block holds.
 */
int gw_page_request_check(const struct gw_page_request *rq, const struct gw_ram_block *ram,
			  uint32_t nr, struct gw_error *err);

/*
 * The source's answer to a request: the range checked first (a request
 * out of range fails, and nothing is read), then one RAM_PAGES record
 * under DATA_CRC of exactly those pages of m's guest RAM, which must be
 * paused; zero pages go as ZERO entries. The caller flushes w.
 */
int gw_postcopy_answer(struct gw_migration *m, struct gw_writer *w,
		       const struct gw_page_request *rq, struct gw_error *err);

/*
 * The destination at the switch, its guest paused: unmap the stale pages
 * (bits: one per page of b, set = stale) from b's guest mapping, so that
 * the guest's next touch of one faults (a minor fault on the memfd page
 * still cached) and the page server writes the source's copy over it
 * before it maps it: no stale byte can be seen. The pages themselves
 * stay in the memfd, where the fill overwrites them: dropping them too
 * (a hole punched) took 2.5 to 4 times longer on this project's machine
 * (100 MiB: 24-46 ms against 9-13 ms), all of it while the guest waits.
 * -EINVAL if b has no fd (the page server needs one).
 */
int gw_postcopy_discard(struct gw_ram_block *b, const uint64_t *bits, struct gw_error *err);

#endif
