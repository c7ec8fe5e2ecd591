/*
 * What the files of libgodwit share and nobody outside the library sees:
 * the layout of the migration object and the functions one concept file
 * offers another. The migration engine and the other library concepts
 * (precopy, snapshots, mapped-ram) build on these.
 */
#ifndef GW_LIB_INTERNAL_H
#define GW_LIB_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/uio.h>

#include <godwit/error.h>
#include <godwit/format.h>
#include <godwit/io.h>
#include <godwit/migration.h>
#include <godwit/payload.h>
#include <godwit/precopy.h>
#include <godwit/vmstate.h>
#include <godwit/walk.h>

#define GW_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* Little-endian integers on the wire, whatever the host. */
static inline void gw_le16(unsigned char *p, uint16_t v)
{
	p[0] = v;
	p[1] = v >> 8;
}

static inline void gw_le32(unsigned char *p, uint32_t v)
{
	gw_le16(p, v);
	gw_le16(p + 2, v >> 16);
}

static inline void gw_le64(unsigned char *p, uint64_t v)
{
	gw_le32(p, v);
	gw_le32(p + 4, v >> 32);
}

static inline uint16_t gw_get_le16(const unsigned char *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

static inline uint32_t gw_get_le32(const unsigned char *p)
{
	return gw_get_le16(p) | (uint32_t)gw_get_le16(p + 2) << 16;
}

static inline uint64_t gw_get_le64(const unsigned char *p)
{
	return gw_get_le32(p) | (uint64_t)gw_get_le32(p + 4) << 32;
}

/* A timeout parameter as the engines use it: 0 is the default, and none
 * is longer than poll() can wait. */
static inline uint64_t gw_timeout_ms(uint64_t ms, uint64_t dflt)
{
	return !ms ? dflt : ms > INT32_MAX ? INT32_MAX : ms;
}

/*
 * Reserved words of a public struct must be zero, so that a later meaning
 * of theirs is never read into a caller built against an older header
 * (export.h). -EINVAL naming `what` and the word otherwise.
 */
int gw_check_reserved(const uint64_t *words, size_t n, const char *what, struct gw_error *err);

/* error.c: strerror() without its static buffer. */
const char *gw_strerror(int code);

/*
 * io.c: add every byte r reads from its fd to *counter, atomically, so
 * another thread can follow a load that runs in one call (gw_load).
 */
void gw_reader_count_into(struct gw_reader *r, uint64_t *counter);

/*
 * io.c: wait until fd has one of events, or until cancel_fd (-1: none)
 * is readable, or deadline_ns on the monotonic clock (0: none) passes.
 * 0, -ECANCELED, -ETIMEDOUT or -errno of poll().
 */
int gw_wait_fd(int fd, short events, int cancel_fd, uint64_t deadline_ns);

/*
 * io.c, for the engines: bind an object to a cancel eventfd, so that no
 * wait of it outlasts a cancel (-ECANCELED) or, for a writer, a deadline
 * on the monotonic clock (-ETIMEDOUT; 0 removes it). See struct io_wait.
 */
void gw_writer_bind(struct gw_writer *w, int cancel_fd);
void gw_writer_set_deadline(struct gw_writer *w, uint64_t deadline_ns);
void gw_reader_bind(struct gw_reader *r, int cancel_fd);
/* Bytes the fd has accepted (gw_writer_offset() counts buffered ones too). */
uint64_t gw_writer_sent(const struct gw_writer *w);
/* Bytes read from the fd but not consumed yet. */
size_t gw_reader_buffered(const struct gw_reader *r);

/*
 * payload.c. The library builds these on its own stack around a callback:
 * a wbuf grows up to limit bytes; an rbuf reads a record already in memory.
 */
struct gw_wbuf {
	unsigned char *data;
	size_t len;
	size_t cap;
	size_t limit;
	int error;
};

struct gw_rbuf {
	const unsigned char *data;
	size_t len;
	size_t pos;
	int error;
};

void gw_wbuf_init(struct gw_wbuf *b, size_t limit);
void gw_wbuf_reset(struct gw_wbuf *b); /* empty it, keep the memory */
void gw_wbuf_release(struct gw_wbuf *b);
void gw_rbuf_init(struct gw_rbuf *b, const void *data, size_t len);

/* names.c: the name rules of docs/format.md. */
int gw_check_name(const char *what, const char *name, struct gw_error *err);
int gw_check_text(const char *what, const char *text, struct gw_error *err);
int gw_put_str(struct gw_wbuf *b, const char *s);
/* Read a str into out; -EBADMSG (sticky in b) if it breaks the rules. */
int gw_get_str(struct gw_rbuf *b, char out[GW_NAME_MAX + 1], bool is_name);

/* migration.c: the object. */
struct gw_ram_block {
	char name[GW_NAME_MAX + 1];
	unsigned char *host;
	uint64_t size;
	int fd;
	uint64_t fd_offset;
	uint64_t gpa;
};

struct gw_section_reg {
	struct gw_section s; /* as registered, but s.name is NULL: use name */
	char name[GW_NAME_MAX + 1];
};

enum gw_save_state {
	GW_SAVE_IDLE,         /* no stream, or the last one finished or failed */
	GW_SAVE_LIVE,         /* begun: iterate and pages allowed */
	GW_SAVE_DEVICES_DONE, /* device state written: pages and finish allowed */
};

struct gw_migration {
	char vmm_name[GW_NAME_MAX + 1];
	char vmm_version[GW_NAME_MAX + 1];
	char machine[GW_NAME_MAX + 1];
	uint32_t nr_vcpus;

	struct gw_ram_block *ram;
	uint32_t nr_ram;
	struct gw_section_reg *sections;
	uint32_t nr_sections;

	struct gw_vm_ops vm_ops;
	void *vm_opaque;
	struct gw_cpr_ops cpr_ops; /* adopt is NULL until set */
	void *cpr_opaque;

	struct gw_dirty_ops dirty_ops; /* sync is NULL until set */
	void *dirty_opaque;
	/* dirty_ops.start was called and stop not yet: an incremental save
	 * leaves tracking on, so the next save knows what changed since. */
	bool tracking;
	/* The mapped-ram file the last incremental save completed, while
	 * tracking has run ever since (lib/ram/sink_file.c). */
	struct {
		bool valid;
		uint64_t dev, ino;
		uint32_t generation;
	} incr;

	enum gw_save_state save_state;
	/* The VMDESC text of the sections, built by the first save's begin
	 * (the guest still runs) so that the save's end, inside the downtime,
	 * only writes it; registering a section drops it. */
	struct gw_wbuf vmdesc;
	bool vmdesc_ready;
};

/* section.c */
bool gw_section_progressive(const struct gw_section *s);
int gw_section_check(const struct gw_section *s, struct gw_error *err);

/* The sub-header of section records (docs/format.md, "Section records"). */
struct gw_section_hdr {
	uint32_t id;
	uint32_t instance;          /* START/FULL only */
	uint32_t version;           /* START/FULL only */
	char name[GW_NAME_MAX + 1]; /* START/FULL only */
};

int gw_section_put_hdr(struct gw_wbuf *b, uint16_t type, uint32_t id,
		       const struct gw_section_reg *sec);
int gw_section_get_hdr(struct gw_rbuf *b, uint16_t type, struct gw_section_hdr *h);
/* Run the section's save/load callback for a record of this type; a
 * progressive save returns GW_LIVE_MORE when it has more to send. */
int gw_section_save(const struct gw_section_reg *sec, uint16_t type, struct gw_wbuf *out,
		    struct gw_error *err);
int gw_section_load(const struct gw_section_reg *sec, uint16_t type, uint32_t version,
		    struct gw_rbuf *in, struct gw_error *err);

/* vmstate.c */
int gw_vmstate_check(const struct gw_vmstate *vs, uint32_t version, struct gw_error *err);
void gw_vmstate_save(const struct gw_vmstate *vs, const void *state, struct gw_wbuf *out);
/* Decode a section's data into state (a candidate, not yet the device's),
 * refusing bools that are not 0/1 and elements outside their field's range. */
int gw_vmstate_decode(const struct gw_vmstate *vs, void *state, uint32_t version,
		      struct gw_rbuf *in, struct gw_error *err);
/* The VMDESC JSON text of m's sections. */
int gw_vmdesc_build(const struct gw_migration *m, struct gw_wbuf *out, struct gw_error *err);

/* config.c */
int gw_config_put(const struct gw_migration *m, struct gw_wbuf *out);
int gw_config_parse(const void *p, size_t len, struct gw_config *cfg, struct gw_error *err);
void gw_config_release(struct gw_config *cfg);
/*
 * Check that m can take a stream of configuration cfg, and map the
 * stream's block and section ids to m's: ram_map[stream id] = index in
 * m->ram, sec_map likewise (arrays of cfg->nr_ram / cfg->nr_sections).
 */
int gw_config_match(const struct gw_migration *m, const struct gw_config *cfg, uint32_t *ram_map,
		    uint32_t *sec_map, struct gw_error *err);
/* The same checks but for RAM (which a local live update adopts). */
int gw_config_match_machine(const struct gw_migration *m, const struct gw_config *cfg,
			    uint32_t *sec_map, struct gw_error *err);

/* ram.c */
int gw_ram_check(const struct gw_migration *m, const struct gw_ram *ram, struct gw_error *err);

/* save.c / load.c: the stream header flags (GW_HDRF_*) written, and
 * read; gw_load() is gw_load_flags() refusing GW_HDRF_COMMIT. */
int gw_save_begin_flags(struct gw_migration *m, struct gw_writer *w, uint32_t hdr_flags,
			struct gw_error *err);
/* ... with a CPR record (a cpr-exec state's table) right after CONFIG. */
int gw_save_begin_cpr(struct gw_migration *m, struct gw_writer *w, uint32_t hdr_flags,
		      const void *cpr, size_t cpr_len, struct gw_error *err);
int gw_load_flags(struct gw_migration *m, struct gw_reader *r, uint32_t *hdr_flags,
		  struct gw_error *err);
/* What a loader does with a GW_HDRF_CPR stream (a local live update). */
enum gw_load_cpr {
	GW_LOAD_CPR_REFUSE,   /* refuse it: nobody adopted its RAM */
	GW_LOAD_CPR_NO_HELLO, /* refuse it: a peer sent it without a hello */
	GW_LOAD_CPR_ADOPTED,  /* require it: the hello's memfds were adopted */
	GW_LOAD_CPR_EXEC,     /* take it with its CPR record: adopt inherited fds */
};
/* gw_load_flags() for the incoming engine; *adopted gets the RAM bytes a
 * cpr-exec state's CPR record adopted, *pause_ns its source's pause. rx
 * (may be NULL: a multifd stream is refused) reads multifd channels. */
struct gw_multifd_rx;
/* A post-copy destination's share of a load (docs/format.md, "Post-copy"):
 * POSTCOPY records fill stale (one zeroed bitmap per RAM block of m, the
 * caller's); once one came, active is set and stream_id[i] is block i's
 * index in CONFIG. */
struct gw_load_postcopy {
	uint64_t **stale;
	/* The EARLY set (docs/format.md, "Post-copy"), and what to do once it
	 * is whole (unmap it, tell the source), with the stream in hand. */
	uint64_t **early;
	int (*early_done)(void *opaque, struct gw_error *err);
	void *opaque;
	uint32_t stream_id[GW_MAX_RAM_BLOCKS];
	bool active;
};
int gw_load_cpr(struct gw_migration *m, struct gw_reader *r, enum gw_load_cpr cpr,
		struct gw_multifd_rx *rx, struct gw_load_postcopy *pc, uint32_t *hdr_flags,
		uint64_t *adopted, uint64_t *pause_ns, struct gw_error *err);
/* The stream embedded in a mapped-ram file: ram() loads the RAM from the
 * file's regions between CONFIG (matched) and the sections. */
int gw_load_mapped_stream(struct gw_migration *m, struct gw_reader *r,
			  int (*ram)(void *opaque, struct gw_error *err), void *opaque,
			  struct gw_error *err);

/* stream.c: framing (stream header, record headers, bounds). */
struct gw_rec_hdr {
	uint64_t offset; /* of the record header in the stream */
	uint16_t type;
	uint16_t flags;
	uint64_t length;
	uint32_t payload_crc;
};

uint64_t gw_record_max(uint16_t type);
int gw_stream_put_header(struct gw_writer *w, uint32_t flags, struct gw_error *err);
/* Check magic, version and flags (GW_HDRF_*); *flags gets the flags. */
int gw_stream_get_header(struct gw_reader *r, uint32_t *flags, struct gw_error *err);
/* A record whose payload is iov; payload_crc is the CRC of its covered part. */
int gw_record_writev(struct gw_writer *w, uint16_t type, uint16_t flags, uint32_t payload_crc,
		     const struct iovec *iov, int iovcnt, struct gw_error *err);
/* A record whose payload is covered whole by the CRC. */
int gw_record_write(struct gw_writer *w, uint16_t type, uint16_t flags, const void *p, size_t len,
		    struct gw_error *err);
/* Read and check a record header: CRC, reserved bits, bound of the type. */
int gw_record_read_header(struct gw_reader *r, struct gw_rec_hdr *h, struct gw_error *err);
/* Read the whole payload into *buf (grown as needed; *cap is its size). */
int gw_record_read_payload(struct gw_reader *r, const struct gw_rec_hdr *h, unsigned char **buf,
			   size_t *cap, struct gw_error *err);
/* Read and discard len bytes of the payload of h, returning their CRC in *crc. */
int gw_record_drain(struct gw_reader *r, const struct gw_rec_hdr *h, uint64_t len, uint32_t *crc,
		    struct gw_error *err);
/* -EBADMSG with a message unless computed == h->payload_crc. */
int gw_record_check_crc(const struct gw_rec_hdr *h, uint32_t computed, struct gw_error *err);

/* ram.c: RAM_PAGES records. */
struct gw_pages {
	uint32_t block_id;
	uint32_t nr_pages;
	uint32_t reserved[2];
	uint32_t nr_data; /* entries without GW_PAGE_ZERO */
	uint64_t entries[GW_PAGES_MAX];
	uint64_t hashes[GW_PAGES_MAX];
};

/* The page hash of docs/format.md: XXH3-64, seed 0, of one page. */
uint64_t gw_page_hash(const void *page);

/* gw_save_pages() with the page data taken from data (the pages that are
 * not GW_PAGE_ZERO, packed in entry order) instead of guest memory, or,
 * with data NULL, from guest memory: a copy made earlier (a page a
 * background snapshot saved from a write fault) goes as the page. */
int gw_save_pages_from(struct gw_migration *m, struct gw_writer *w, uint32_t block,
		       const uint64_t *entries, uint32_t n, const void *data, unsigned flags,
		       struct gw_error *err);
/* The record itself, whatever the save's state: post-copy's answers come
 * after the stream's EOF (docs/format.md, "Post-copy"). */
int gw_pages_put(struct gw_migration *m, struct gw_writer *w, uint32_t block,
		 const uint64_t *entries, uint32_t n, const void *data, unsigned flags,
		 struct gw_error *err);

/*
 * Read a RAM_PAGES descriptor (head, entries, page hashes) into p, checking
 * only what is needed to know its size; *crc is the CRC32C of its bytes,
 * for the caller to compare before it trusts anything in p.
 */
int gw_pages_read_desc(struct gw_reader *r, const struct gw_rec_hdr *h, struct gw_pages *p,
		       uint32_t *crc, struct gw_error *err);
/* Check a descriptor whose CRC matched, as far as no RAM block is needed:
 * reserved fields, flags, order of the entries, hashes of zero pages,
 * length of the record. Sets p->nr_data. */
int gw_pages_check_desc(const struct gw_rec_hdr *h, struct gw_pages *p, struct gw_error *err);
/*
 * Receive the record's pages into block `block` of m (descriptor already
 * read and checked) and verify each against its hash: a mismatch fails at
 * once under DATA_CRC, and otherwise marks the page in torn (torn.h).
 */
struct gw_torn;
int gw_pages_load(struct gw_migration *m, uint32_t block, struct gw_torn *torn, struct gw_reader *r,
		  const struct gw_rec_hdr *h, const struct gw_pages *p, struct gw_error *err);

#endif
