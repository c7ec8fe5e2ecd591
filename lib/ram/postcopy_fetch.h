/*
 * The destination's page source in post-copy (docs/format.md,
 * "Post-copy"): the page server (page_server.h) asks for a run of pages
 * of its fetch set; they are asked for on the return path (a REQUEST per
 * at most GW_PAGES_MAX pages) and read from the stream, where the source
 * answers each request, in order, with one RAM_PAGES record under
 * DATA_CRC holding exactly the pages asked for. Each page is checked
 * against its hash before the page server can map it.
 *
 * One exchange at a time: the fault thread and the background thread of
 * the page server take turns, the background asking in pieces and
 * letting a waiting fault go first between two, so a fault waits at most
 * for one piece already asked for. Anything but the answer asked for (a
 * record of another type or block, other pages, a page that fails its
 * hash, a stream that ends) breaks the connection: nothing more from it
 * can be trusted. The fetch then pauses (post-copy recovery,
 * docs/format.md): the exchange that broke waits, with every later one,
 * until the owner hands in a new connection (gw_postcopy_fetch_resume)
 * and asks again, or gives up (gw_postcopy_fetch_abort), which fails
 * them. No page is mapped from a broken exchange, and the pages
 * received whole are never asked for again.
 */
#ifndef GW_LIB_RAM_POSTCOPY_FETCH_H
#define GW_LIB_RAM_POSTCOPY_FETCH_H

#include <stdbool.h>
#include <stdint.h>

#include <godwit/error.h>

#include "lib/cancel.h"
#include "lib/ram/page_server.h"

/* The page server's block i is the block listed stream_id-th in CONFIG. */
struct gw_pf_block {
	const char *name; /* for messages */
	uint32_t stream_id;
	uint64_t size;
	const uint64_t *stale; /* the pages to fetch (borrowed until free) */
};

struct gw_postcopy_fetch;

/*
 * Fetch over c's stream fd (a socket: requests go out on it too); a
 * cancel of c ends any wait. blocks (nr of them) are copied, their names
 * and sets borrowed until free. A request that cannot leave within
 * send_timeout_ms, or whose answer does not begin within it, breaks the
 * connection.
 */
int gw_postcopy_fetch_new(struct gw_cancel *c, int send_timeout_ms,
			  const struct gw_pf_block *blocks, uint32_t nr,
			  struct gw_postcopy_fetch **out, struct gw_error *err);

/* The page source to give the page server; f must outlive the server. */
struct gw_page_source gw_postcopy_fetch_source(struct gw_postcopy_fetch *f);

/* Pages asked for so far (query-migrate's postcopy-requests). Any thread. */
uint64_t gw_postcopy_fetch_requested(struct gw_postcopy_fetch *f);

/* Readable (an eventfd) each time the connection breaks: the owner reads
 * it, then gw_postcopy_fetch_broken() says why. */
int gw_postcopy_fetch_break_fd(struct gw_postcopy_fetch *f);
/* Why the connection broke last; false if it is not broken now. */
bool gw_postcopy_fetch_broken(struct gw_postcopy_fetch *f, struct gw_error *why);

/* While broken: the pages not received whole (needed[i]: block i's
 * bitmap, sized for it), what a resume asks the source for. */
void gw_postcopy_fetch_needed(struct gw_postcopy_fetch *f, uint64_t *const *needed);

/* The new connection is c's stream fd now (the owner has set it): the
 * exchanges that wait ask again over it. */
int gw_postcopy_fetch_resume(struct gw_postcopy_fetch *f, struct gw_error *err);

/* No new connection will come: every exchange that waits, and every
 * later one, fails with why. Before the page server is freed. */
void gw_postcopy_fetch_abort(struct gw_postcopy_fetch *f, const struct gw_error *why);

void gw_postcopy_fetch_free(struct gw_postcopy_fetch *f);

#endif
