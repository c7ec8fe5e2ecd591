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

struct gw_migration;
struct gw_ram_sink;
struct gw_writer;

#define GW_FILE_SINK_MAX_WRITERS 64

struct gw_file_sink_params {
	bool direct_io;   /* page data with O_DIRECT; everything else buffered */
	uint32_t writers; /* threads writing pages, 1..GW_FILE_SINK_MAX_WRITERS */
};

/*
 * Lay out m's RAM in the regular file fd (truncated, empty), write the
 * header that says a save is running, and place fd's offset where the
 * embedded stream goes: w (borrowed, on fd, nothing written yet) then
 * carries the stream header, CONFIG, sections and EOF. The sink's finish
 * writes bitmaps, hashes and the completed header, each after an
 * fdatasync, so a save that stops earlier leaves a file every loader
 * refuses.
 */
int gw_file_sink_open(struct gw_migration *m, int fd, struct gw_writer *w,
		      const struct gw_file_sink_params *sp, struct gw_ram_sink **out,
		      struct gw_error *err);

#endif
