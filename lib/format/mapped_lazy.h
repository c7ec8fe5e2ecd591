/*
 * Restoring a mapped-ram file lazily (lib/format/mapped_lazy.c): the
 * sections are loaded and the guest may run at once, while guest RAM is
 * served by a page server (lib/ram/page_server.h) from the file: a page
 * the guest touches is one pread() away (every page has a fixed offset),
 * and a background thread reads the rest in contiguous runs. Every page
 * is checked against its hash in the file before anything can map it.
 */
#ifndef GW_LIB_FORMAT_MAPPED_LAZY_H
#define GW_LIB_FORMAT_MAPPED_LAZY_H

#include <stdbool.h>
#include <stdint.h>

#include <godwit/error.h>

#include "lib/ram/page_server.h"

struct gw_cancel;
struct gw_mapped_lazy;
struct gw_migration;

struct gw_mapped_lazy_params {
	bool direct_io;       /* read page data with O_DIRECT */
	enum gw_ps_mode mode; /* how pages are filled */
	uint64_t rate;        /* bytes per second of the background, 0 = unlimited */
};

/*
 * Check the file open on fd (its header, then CONFIG against m), empty
 * guest RAM, start serving it from the file and load the sections from
 * the embedded stream. On success the guest's memory is served from now
 * on and *out must be freed (gw_mapped_lazy_free) before fd is closed.
 * *received (may be NULL) counts the bytes read. The stream's reads end
 * at a cancel of c (may be NULL). On failure nothing is served and *out
 * is untouched.
 */
int gw_mapped_lazy_start(struct gw_migration *m, int fd, const struct gw_mapped_lazy_params *p,
			 struct gw_cancel *c, uint64_t *received, struct gw_mapped_lazy **out,
			 struct gw_error *err);

/* Read and check the hash tables (a damaged one fails it, as a page
 * would), then wait until every page is in (0), a page fails (-errno,
 * err names the page, block and file offset), or cancel_efd is readable
 * (-ECANCELED). */
int gw_mapped_lazy_wait(struct gw_mapped_lazy *lz, int cancel_efd, struct gw_error *err);

void gw_mapped_lazy_set_rate(struct gw_mapped_lazy *lz, uint64_t rate);
void gw_mapped_lazy_stats(struct gw_mapped_lazy *lz, struct gw_ps_stats *out);
unsigned gw_mapped_lazy_thread_stats(struct gw_mapped_lazy *lz,
				     struct gw_ps_thread_stats out[GW_PS_THREADS_MAX]);

/* Stop serving: see gw_page_server_free() for what a waiter then sees. */
void gw_mapped_lazy_free(struct gw_mapped_lazy *lz);

#endif
