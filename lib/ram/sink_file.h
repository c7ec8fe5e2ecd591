/*
 * The file sink (ram_sink.h): a mapped-ram file (docs/format.md,
 * "Mapped-RAM files"). Every page has one slot in the file, so a page
 * sent again overwrites its slot and the file never grows past the
 * guest's RAM plus metadata, however many rounds a live save runs.
 */
#ifndef GW_LIB_RAM_SINK_FILE_H
#define GW_LIB_RAM_SINK_FILE_H

#include <stdbool.h>
#include <stdint.h>

#include <godwit/error.h>

struct gw_cancel;
struct gw_migration;
struct gw_ram_sink;
struct gw_writer;

#define GW_FILE_SINK_MAX_WRITERS 64

struct gw_file_sink_params {
	bool direct_io;   /* page data with O_DIRECT; everything else buffered */
	uint32_t writers; /* threads writing pages, 1..GW_FILE_SINK_MAX_WRITERS */
	/* Update the file of m's last incremental save, if fd is that file
	 * (m->incr), and record this save as the next one's base. */
	bool incremental;
	/* The engine's cancel (may be NULL): looked at while the writers
	 * are busy, so a stalled disk does not hold a cancel up. */
	struct gw_cancel *cancel;
};

/*
 * Lay out m's RAM in the regular file fd (truncated, empty), write the
 * header that says a save is running, and place fd's offset where the
 * embedded stream goes: w (borrowed, on fd, nothing written yet) then
 * carries the stream header, CONFIG, sections and EOF. The sink's finish
 * writes bitmaps, hashes and the completed header, each after an
 * fdatasync, so a save that stops earlier leaves a file every loader
 * refuses.
 *
 * *update says whether this save updates the file of the last incremental
 * save (only the pages the tracker reports dirty since must be sent: the
 * file holds the rest), or lays the file out anew (every page must be
 * sent). An update that fails half-way leaves the file refused, like any
 * unfinished save: the earlier snapshot in it is gone.
 */
int gw_file_sink_open(struct gw_migration *m, int fd, struct gw_writer *w,
		      const struct gw_file_sink_params *sp, struct gw_ram_sink **out, bool *update,
		      struct gw_error *err);
/* The generation the file gets: 1 for a full save, one more than the
 * file's for an update. */
uint32_t gw_file_sink_generation(const struct gw_ram_sink *s);

#endif
