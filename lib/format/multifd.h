/*
 * The records of multifd (docs/format.md, "multifd"): the MULTIFD record
 * that opens the main stream's RAM and each channel's stream, the
 * MULTIFD_SYNC record that marks a round on every stream, and which
 * channel a page travels on.
 */
#ifndef GW_LIB_FORMAT_MULTIFD_H
#define GW_LIB_FORMAT_MULTIFD_H

#include <stdint.h>

#include <godwit/error.h>
#include <godwit/format.h>

struct gw_reader;
struct gw_writer;

struct gw_multifd_hello {
	uint32_t channels; /* 1..GW_MULTIFD_MAX_CHANNELS */
	uint32_t index;    /* < channels, or GW_MULTIFD_MAIN */
	uint8_t id[GW_MULTIFD_ID_SIZE];
};

/* The channel a page at byte offset off of the block listed `block`-th in
 * CONFIG travels on. */
static inline uint32_t gw_multifd_channel_of(uint32_t block, uint64_t off, uint32_t channels)
{
	return (uint32_t)((block + off / GW_MULTIFD_CHUNK) % channels);
}

int gw_multifd_put_hello(struct gw_writer *w, const struct gw_multifd_hello *h,
			 struct gw_error *err);
int gw_multifd_put_sync(struct gw_writer *w, uint64_t round, struct gw_error *err);

/* A MULTIFD record's payload (its CRC checked), range-checked; what names
 * the stream in messages. */
int gw_multifd_parse_hello(const unsigned char *p, uint64_t len, struct gw_multifd_hello *h,
			   const char *what, uint64_t offset, struct gw_error *err);

#endif
