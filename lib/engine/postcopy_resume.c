/*
 * Post-copy recovery's handshake (postcopy_resume.h).
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <godwit/io.h>

#include "lib/bitmap.h"
#include "lib/clock.h"
#include "lib/crc32c.h"
#include "lib/engine/postcopy_resume.h"
#include "lib/format/postcopy.h"
#include "lib/internal.h"
#include "lib/transport/return_path.h"

#define PAGE ((uint64_t)GW_PAGE_SIZE)

/* Best effort: the peer learns why before the connection drops. */
static int refuse(struct gw_cancel *c, int timeout_ms, int ret, struct gw_error *err)
{
	struct gw_report r = {GW_REPORT_FAILED, ret, ""};

	snprintf(r.msg, sizeof(r.msg), "%s", err->msg);
	gw_report_send(c, timeout_ms, &r, NULL);
	return ret;
}

/* The peer's next message, which must be `want`; its FAILED is its reason. */
static int expect(struct gw_cancel *c, int timeout_ms, enum gw_report_status want, const char *what,
		  struct gw_report *r, struct gw_error *err)
{
	int ret = gw_report_recv(c, timeout_ms, what, r, err);

	if (ret < 0)
		return ret;
	/* Its code is the peer's: ours says only that the peer refused (a
	 * peer's ECANCELED must not pass for a stop of this side). */
	if (r->status == GW_REPORT_FAILED)
		return gw_error_set(err, -ECONNREFUSED, "the peer refused the resume: %s", r->msg);
	if (r->status != want)
		return gw_error_set(err, -EPROTO, "%s where %s belongs", gw_report_name(r->status),
				    what);
	return 0;
}

static int check_fingerprint(uint64_t got, uint64_t mine, const char *whose, struct gw_error *err)
{
	if (got == mine)
		return 0;
	return gw_error_set(err, -EPROTO,
			    "%s post-copy is another one (its stale set's fingerprint %016llx, this side's %016llx): not the peer of this migration",
			    whose, (unsigned long long)got, (unsigned long long)mine);
}

/* The destination's set, POSTCOPY records until every block is covered. */
static int read_set(struct gw_cancel *c, int timeout_ms, const struct gw_ram_block *ram,
		    uint32_t nr, uint64_t *const *into, struct gw_error *err)
{
	struct gw_postcopy_cursor cur = {0};
	unsigned char *buf = NULL;
	struct gw_reader *r;
	size_t cap = 0;
	int ret = gw_reader_new(c->fd, &r, err);

	if (ret < 0)
		return ret;
	gw_reader_bind(r, c->efd);
	while (ret == 0 && gw_postcopy_complete(&cur, ram, nr, NULL) < 0) {
		struct gw_rec_hdr h;

		/* The reader itself waits without a limit: bound each record's start. */
		if (!gw_reader_buffered(r)) {
			int ready = gw_cancel_poll(c, POLLIN, timeout_ms);

			if (ready == 0)
				ret = gw_error_set(err, -ETIMEDOUT,
						   "the destination's set of missing pages did not come within %d ms",
						   timeout_ms);
			else if (ready < 0)
				ret = gw_error_set(err, ready, "poll: %s", gw_strerror(ready));
			if (ret < 0)
				break;
		}
		ret = gw_record_read_header(r, &h, err);
		if (ret == 0 && h.type != GW_REC_POSTCOPY)
			ret = gw_error_set(err, -EBADMSG,
					   "a %s record at offset %llu in the destination's set of missing pages",
					   gw_record_type_name(h.type),
					   (unsigned long long)h.offset);
		if (ret == 0)
			ret = gw_record_read_payload(r, &h, &buf, &cap, err);
		if (ret == 0)
			ret = gw_record_check_crc(&h, gw_crc32c(0, buf, h.length), err);
		if (ret == 0)
			ret = gw_postcopy_accept(&cur, buf, h.length, ram, nr, into, 0, h.offset,
						 err);
	}
	/* It waits for GO: anything more is out of step. */
	if (ret == 0 && gw_reader_buffered(r))
		ret = gw_error_set(err, -EPROTO,
				   "the destination sent %zu bytes after its set of missing pages",
				   gw_reader_buffered(r));
	free(buf);
	gw_reader_free(r);
	return ret;
}

int gw_pc_resume_source(struct gw_cancel *c, int timeout_ms, uint64_t fingerprint,
			const struct gw_ram_block *ram, uint32_t nr, uint64_t *const *orig,
			uint64_t *const *owed, struct gw_error *err)
{
	const struct gw_report resume = {.status = GW_REPORT_RESUME, .fingerprint = fingerprint};
	const struct gw_report go = {GW_REPORT_GO, 0, ""};
	uint64_t **got = calloc(nr + 1, sizeof(*got));
	struct gw_report r;
	int ret = got ? 0 : gw_error_set(err, -ENOMEM, "out of memory");

	for (uint32_t i = 0; ret == 0 && i < nr; i++)
		if (!(got[i] = calloc(gw_bitmap_words(ram[i].size / PAGE) + 1, sizeof(uint64_t))))
			ret = gw_error_set(err, -ENOMEM, "out of memory");
	if (ret == 0)
		ret = gw_report_send(c, timeout_ms, &resume, err);
	if (ret == 0)
		ret = expect(c, timeout_ms, GW_REPORT_RESUME, "the destination's RESUME", &r, err);
	if (ret == 0 &&
	    (ret = check_fingerprint(r.fingerprint, fingerprint, "the destination's", err)) < 0)
		refuse(c, timeout_ms, ret, err);
	if (ret == 0 && (ret = read_set(c, timeout_ms, ram, nr, got, err)) < 0)
		refuse(c, timeout_ms, ret, err);
	for (uint32_t i = 0; ret == 0 && i < nr; i++) {
		uint64_t pages = ram[i].size / PAGE;

		for (uint64_t k = 0; k < gw_bitmap_words(pages); k++)
			if (got[i][k] & ~orig[i][k]) {
				uint64_t page = k * 64 +
						(uint64_t)__builtin_ctzll(got[i][k] & ~orig[i][k]);

				ret = gw_error_set(err, -EBADMSG,
						   "the destination asks for the page at 0x%llx of RAM block '%s', which the switch did not leave at the source (its copy there is the one that counts)",
						   (unsigned long long)(page * PAGE), ram[i].name);
				refuse(c, timeout_ms, ret, err);
				break;
			}
	}
	if (ret == 0)
		ret = gw_report_send(c, timeout_ms, &go, err);
	for (uint32_t i = 0; ret == 0 && i < nr; i++)
		memcpy(owed[i], got[i], gw_bitmap_words(ram[i].size / PAGE) * sizeof(uint64_t));
	for (uint32_t i = 0; got && i < nr; i++)
		free(got[i]);
	free(got);
	return ret < 0 ? gw_error_prefix(err, ret, "post-copy recovery: ") : 0;
}

int gw_pc_resume_destination(struct gw_cancel *c, int timeout_ms, uint64_t fingerprint,
			     const struct gw_ram_block *ram, uint32_t nr, uint64_t *const *needed,
			     struct gw_error *err)
{
	const struct gw_report resume = {.status = GW_REPORT_RESUME, .fingerprint = fingerprint};
	struct gw_writer *w = NULL;
	struct gw_report r;
	int ret = expect(c, timeout_ms, GW_REPORT_RESUME, "the source's RESUME", &r, err);

	if (ret == 0 &&
	    (ret = check_fingerprint(r.fingerprint, fingerprint, "the source's", err)) < 0)
		refuse(c, timeout_ms, ret, err);
	if (ret == 0)
		ret = gw_report_send(c, timeout_ms, &resume, err);
	if (ret == 0)
		ret = gw_writer_new(c->fd, &w, err);
	if (ret == 0) {
		gw_writer_bind(w, c->efd);
		gw_writer_set_deadline(w, gw_now_ns() + (uint64_t)timeout_ms * 1000000);
		ret = gw_postcopy_put(w, ram, nr, needed, 0, 0, err);
	}
	if (ret == 0)
		ret = gw_writer_flush(w, err);
	gw_writer_free(w);
	if (ret == 0)
		ret = expect(c, timeout_ms, GW_REPORT_GO, "the source's GO", &r, err);
	return ret < 0 ? gw_error_prefix(err, ret, "post-copy recovery: ") : 0;
}
