/*
 * godwit analyze, shared between its two files: analyze.c walks the
 * stream and reports records and totals; analyze_state.c shows the
 * device state the stream carries, decoded with the stream's own
 * description (VMDESC) - no device code.
 */
#ifndef GW_TOOLS_ANALYZE_H
#define GW_TOOLS_ANALYZE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <godwit/walk.h>

/* What a section's records added up to, and its one-shot state. */
struct section_stats {
	uint64_t records[4];  /* SECTION_START, _PART, _END, _FULL */
	uint64_t bytes;       /* section data in all of them */
	unsigned char *state; /* the data of its SECTION_FULL record, kept for decoding */
	size_t state_len;
	bool state_bad;     /* its SECTION_FULL record failed its CRC */
	bool state_dropped; /* not kept: over the analyzer's memory bound */
};

/*
 * The device state of every section in cfg, decoded with vmdesc (NULL if
 * the stream had none) unless decode is false, in which case the field
 * layout is shown instead. Human text on stdout, or a JSON array of one
 * object per section.
 */
void state_print(const struct gw_config *cfg, const struct section_stats *sections,
		 const char *vmdesc, size_t vmdesc_len, bool decode);
json_t *state_json(const struct gw_config *cfg, const struct section_stats *sections,
		   const char *vmdesc, size_t vmdesc_len, bool decode);

/* analyze_mapped.c: is fd a mapped-ram file? Then report its header,
 * blocks and page hashes (human text, or *out as a JSON object to merge
 * into the report), and give the offset of its embedded stream (0 if the
 * header is unreadable). 0 if all is intact, -EBADMSG with why if not. */
bool mapped_sniff(int fd);
int mapped_analyze(int fd, const char *path, bool json, json_t **out, uint64_t *stream_offset,
		   char *why, size_t why_len);

#endif
