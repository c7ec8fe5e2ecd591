/*
 * Walking a godwit stream without device code or a migration object: the
 * analyzer's view. The walker checks the stream header, then returns one
 * record at a time with its offset, type, length and CRC verdict, the
 * parsed CONFIG, section identities and section data, and VMDESC, and
 * discards page data after checking each page against its page hash. It
 * keeps the account of which pages a later copy has yet to settle, as
 * the loader does (gw_walker_settled()).
 *
 * A record whose header CRC fails ends the walk (its length cannot be
 * trusted, so nothing after it can be found); a record whose payload CRC
 * fails is returned with crc = GW_CRC_BAD and the walk goes on.
 *
 * Ownership: the walker borrows the reader. Pointers it returns stay valid
 * until the next gw_walker_next() (record data) or gw_walker_free()
 * (config). Threads: one thread at a time.
 */
#ifndef GODWIT_WALK_H
#define GODWIT_WALK_H

#include <stddef.h>
#include <stdint.h>

#include <godwit/error.h>
#include <godwit/export.h>
#include <godwit/format.h>
#include <godwit/io.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * The CONFIG record, parsed (also what gw_load() checks). The library
 * allocates it, so struct gw_config grows at its end; the entries of its
 * arrays keep reserved words for what later versions of the format add.
 */
struct gw_config_ram {
	char name[GW_NAME_MAX + 1];
	uint64_t size;
	uint64_t gpa;
	uint64_t reserved[2];
};

struct gw_config_section {
	char name[GW_NAME_MAX + 1];
	uint32_t instance;
	uint32_t version;
	uint32_t flags; /* GW_SECF_* */
	uint64_t reserved[2];
};

struct gw_config {
	uint32_t page_size;
	uint32_t nr_vcpus;
	char vmm_name[GW_NAME_MAX + 1];
	char vmm_version[GW_NAME_MAX + 1];
	char machine[GW_NAME_MAX + 1];
	uint32_t nr_ram;
	struct gw_config_ram *ram;
	uint32_t nr_sections;
	struct gw_config_section *sections;
};

enum gw_crc_verdict {
	GW_CRC_OK,        /* the whole payload is covered and matches */
	/*
	 * RAM_PAGES without DATA_CRC: the descriptor matches, but nr_mismatch
	 * pages do not match their page hash. Each is torn (the guest wrote it
	 * while it was sent, and a later copy replaces it) or damaged; only a
	 * later copy of the page, or none, tells (docs/format.md).
	 */
	GW_CRC_DESC_ONLY,
	GW_CRC_BAD,       /* a covered part does not match */
};

struct gw_record_info {
	uint64_t offset; /* stream offset of the record header */
	uint16_t type;   /* enum gw_record_type, or unknown */
	uint16_t flags;  /* GW_RECF_* */
	uint64_t length; /* payload bytes */
	enum gw_crc_verdict crc;
	/*
	 * GW_CRC_BAD: the CRC the record carries for the part that failed (the
	 * payload; for RAM_PAGES the descriptor) and the CRC of the bytes as
	 * read. crc_computed is 0 when the part could not be delimited (a page
	 * count that does not fit). Both are 0 for a RAM_PAGES record whose
	 * descriptor matches: its pages are checked by their hashes below.
	 */
	uint32_t crc_stored;
	uint32_t crc_computed;

	/* SECTION_*: identity (name is NULL if the id is not in the CONFIG table). */
	uint32_t section_id;
	const char *name;
	uint32_t instance;
	uint32_t version;

	/* RAM_PAGES */
	uint32_t block_id;
	uint32_t nr_pages;
	uint32_t nr_zero;
	const uint64_t *entries; /* page offset | GW_PAGE_* flags; NULL if the descriptor is bad */
	/* Per entry, the page hash the record carries and the one of the data
	 * as read (0 for ZERO entries); NULL if the descriptor is bad. */
	const uint64_t *hashes_stored;
	const uint64_t *hashes_computed;
	uint32_t nr_mismatch; /* pages whose data does not match their hash */

	uint64_t reserved[8]; /* for later record types (<godwit/export.h>) */
};

struct gw_walker;

/* Reads and checks the stream header. */
GW_API int gw_walker_new(struct gw_reader *r, struct gw_walker **out, struct gw_error *err);
GW_API void gw_walker_free(struct gw_walker *wk);

/*
 * The next record: 1 with *info filled, 0 once the EOF record has been
 * returned, or -errno (truncation, a header that fails its CRC, a payload
 * that is malformed although its CRC matches).
 */
GW_API int gw_walker_next(struct gw_walker *wk, struct gw_record_info *info,
			  struct gw_error *err);

/* The flags of the stream header (GW_HDRF_*). */
GW_API uint32_t gw_walker_stream_flags(const struct gw_walker *wk);

/* The CONFIG of the stream, NULL before the CONFIG record has been walked. */
GW_API const struct gw_config *gw_walker_config(const struct gw_walker *wk);

/*
 * The data of the current record: a section record's data after its
 * sub-header, VMDESC's JSON text; NULL with *len = 0 for other types.
 */
GW_API const void *gw_walker_data(const struct gw_walker *wk, size_t *len);

/*
 * Whether every page is settled: whether the latest copy of each page the
 * stream has sent so far matched its page hash (a ZERO entry always
 * does). A page whose latest copy did not (GW_CRC_DESC_ONLY, or a
 * DATA_CRC record's GW_CRC_BAD) waits for a later copy to settle it; one
 * still unsettled at EOF arrived damaged and was never sent again, and
 * gw_load() refuses the stream for it.
 *
 * 0 when every page is settled. Otherwise -EBADMSG with the message
 * gw_load() gives for a page still torn at EOF (under DATA_CRC it refuses
 * the record itself, earlier), which names the earliest such damage;
 * and, if record is not NULL, *record set to the stream offset of the
 * RAM_PAGES record holding that page's last copy, or to the EOF record's
 * when the walker kept no note of that record (it notes a few hundred
 * torn pages at a time; more are still tracked, without their records).
 * Ask once gw_walker_next() has returned 0: before that, a later copy may
 * still come, and the offset the walk has reached stands for the EOF.
 *
 * Only pages of blocks the CONFIG record lists, within their size, are
 * tracked: nothing before a good CONFIG. Memory: one bit per page of a
 * block, from the block's first unsettled page on.
 */
GW_API int gw_walker_settled(const struct gw_walker *wk, uint64_t *record,
			     struct gw_error *err);

#ifdef __cplusplus
}
#endif

#endif
