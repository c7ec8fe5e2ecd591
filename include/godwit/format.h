/*
 * Constants of the godwit stream format, version 1. docs/format.md is the
 * specification; this header only names its numbers for C code (the
 * library, the analyzer, tests). Nothing here allocates or has state.
 */
#ifndef GODWIT_FORMAT_H
#define GODWIT_FORMAT_H

#include <stdint.h>

#include <godwit/export.h>

#ifdef __cplusplus
extern "C" {
#endif

#define GW_STREAM_MAGIC          "\x89GODWIT\n" /* 8 bytes, no NUL on the wire */
#define GW_STREAM_MAGIC_LEN      8
#define GW_FORMAT_VERSION        1u
#define GW_STREAM_HEADER_SIZE    16u
#define GW_RECORD_HEADER_SIZE    24u

#define GW_PAGE_SIZE             4096u
#define GW_NAME_MAX              255u   /* names: 1..255 bytes of 0x21-0x7e */
#define GW_MAX_RAM_BLOCKS        256u
#define GW_MAX_SECTIONS          4096u
#define GW_PAGES_MAX             1024u  /* pages in one RAM_PAGES record */

/* Per-record-type bounds on the payload length. */
#define GW_CONFIG_MAX            (2ull << 20)
#define GW_SECTION_RECORD_MAX    (64ull << 20)
/* RAM_PAGES descriptor: 16-byte head, then an entry and a page hash per page. */
#define GW_PAGES_DESC_SIZE(n)    (16ull + 16ull * (n))
#define GW_PAGES_RECORD_MAX      (GW_PAGES_DESC_SIZE(GW_PAGES_MAX) + \
				  (uint64_t)GW_PAGE_SIZE * GW_PAGES_MAX)
#define GW_VMDESC_MAX            (16ull << 20)
#define GW_CPR_MAX               (1ull << 20)
#define GW_RECORD_MAX_UNKNOWN    (256ull << 20)

enum gw_record_type {
	GW_REC_CONFIG        = 0x0001,
	GW_REC_SECTION_START = 0x0002,
	GW_REC_SECTION_PART  = 0x0003,
	GW_REC_SECTION_END   = 0x0004,
	GW_REC_SECTION_FULL  = 0x0005,
	GW_REC_RAM_PAGES     = 0x0006,
	GW_REC_VMDESC        = 0x0007,
	GW_REC_EOF           = 0x0008,
	GW_REC_CPR           = 0x0009,
	/* A local live update's source paused the guest at this time of the
	 * host's CLOCK_MONOTONIC (u64 ns): the destination reports the
	 * downtime the guest saw. Skippable: a reader without it loses only
	 * that figure. */
	GW_REC_PAUSE         = 0x000a,
	/* multifd (docs/format.md, "multifd"): the first record after CONFIG
	 * of the main stream, and the first record of each channel's stream:
	 * u32 channels, u32 index (GW_MULTIFD_MAIN in the main stream), a
	 * 16-byte id of the migration. */
	GW_REC_MULTIFD       = 0x000b,
	/* u64 round: every RAM_PAGES record sent before it, on every channel,
	 * is in place once it is passed. */
	GW_REC_MULTIFD_SYNC  = 0x000c,
	/* Post-copy (docs/format.md, "Post-copy"): a piece of one block's
	 * bitmap of the pages the destination must fetch. */
	GW_REC_POSTCOPY      = 0x000d,
};

/* Stream header flags. */
/* The source runs the switchover handshake on the return path: a
 * destination resumes the guest only after the source's GO
 * (docs/format.md, "Switchover handshake"). */
#define GW_HDRF_COMMIT     0x1u
/* A mapped-ram file (docs/format.md, "Mapped-RAM files"): RAM is at fixed
 * offsets of the file, not in RAM_PAGES records. At offset 0 this header
 * opens the file header; the stream embedded in the file carries it too. */
#define GW_HDRF_MAPPED_RAM 0x2u
/* A snapshot of a guest that runs on at its source (a background
 * snapshot): a destination reading it from a socket or pipe loads it and
 * keeps the guest paused, so that one guest does not run twice. */
#define GW_HDRF_SNAPSHOT   0x4u
/* A local live update (docs/format.md, "Local live update"): the stream
 * carries no RAM; the destination has adopted the source's memfds, over
 * the socket before the stream (cpr-transfer) or by fd number from a CPR
 * record after CONFIG (cpr-exec). Only such a destination may load it. */
#define GW_HDRF_CPR        0x8u
/* multifd: the main stream carries no RAM_PAGES; its pages travel on
 * channels, further connections to the same address, each a stream with
 * GW_HDRF_CHANNEL. */
#define GW_HDRF_MULTIFD    0x10u
#define GW_HDRF_CHANNEL    0x20u
#define GW_HDRF_KNOWN      (GW_HDRF_COMMIT | GW_HDRF_MAPPED_RAM | GW_HDRF_SNAPSHOT | GW_HDRF_CPR | \
			    GW_HDRF_MULTIFD | GW_HDRF_CHANNEL)

/* multifd. */
#define GW_MULTIFD_MAX_CHANNELS 64u
#define GW_MULTIFD_MAIN         0xffffffffu /* the index of the main stream */
#define GW_MULTIFD_ID_SIZE      16u
#define GW_MULTIFD_SIZE         24u         /* a MULTIFD record's payload */
/* A page at byte offset o of the block listed i-th in CONFIG travels on
 * channel (i + o / GW_MULTIFD_CHUNK) % channels, always the same one. */
#define GW_MULTIFD_CHUNK        (2u << 20)

/* Post-copy. A POSTCOPY record: u32 block, u32 flags, u64 first page
 * (a multiple of 64), u64 count of bits, then the bits in u64 words.
 * Flags 0: the switch's stale set; GW_POSTCOPY_EARLY: the pages stale
 * already, sent before the pause so the destination unmaps them then. */
#define GW_POSTCOPY_EARLY      0x1u
#define GW_POSTCOPY_HEAD_SIZE  24u
#define GW_POSTCOPY_BITS_MAX   (8u << 20) /* 1 MiB of bitmap: 32 GiB of RAM a record */
#define GW_POSTCOPY_MAX        (GW_POSTCOPY_HEAD_SIZE + GW_POSTCOPY_BITS_MAX / 8ull)

/* Mapped-ram files. */
#define GW_MAPPED_FIXED_SIZE   64u   /* file header before the block entries */
#define GW_MAPPED_ENTRY_SIZE   320u  /* one block entry, its name included */
#define GW_MAPPED_STATE_SAVING 0x45564153u /* "SAVE": a save has not finished */
#define GW_MAPPED_STATE_DONE   0x454e4f44u /* "DONE": complete and synced */
#define GW_MAPPED_ALIGN_MIN    (1u << 20)  /* page regions start at 1 MiB multiples, */
#define GW_MAPPED_ALIGN_MAX    (1u << 30)  /* or at the file system's larger one */

/* Record header flags. */
#define GW_RECF_SKIPPABLE  0x0001u /* a reader that does not know the type may skip it */
/* RAM_PAGES: the pages could not change while sent, so a page that does
 * not match its hash is corrupted, not torn (docs/format.md). */
#define GW_RECF_DATA_CRC   0x0002u
#define GW_RECF_KNOWN      (GW_RECF_SKIPPABLE | GW_RECF_DATA_CRC)

/* Flags in the low bits of a RAM_PAGES entry (the rest is the page offset). */
#define GW_PAGE_ZERO       0x001u
#define GW_PAGE_FLAGS_MASK ((uint64_t)GW_PAGE_SIZE - 1)

/* CONFIG section table flags. */
#define GW_SECF_PROGRESSIVE 0x1u

#define GW_GPA_NONE        UINT64_MAX /* RAM block not mapped at a guest address */

/* Name of a record type for messages ("SECTION_FULL"), "unknown" if none. */
GW_API const char *gw_record_type_name(uint16_t type);

#ifdef __cplusplus
}
#endif

#endif
