/*
 * The return path and the switchover handshake: the few messages the two
 * sides exchange on the same (bidirectional) fd once the stream is over.
 * The destination says READY ("all loaded and checked, my guest waits"),
 * RUNNING ("my guest runs") or FAILED ("my guest will never run"); the
 * source answers READY with GO ("you hold the guest now"). Layout and rules
 * in docs/format.md, "Return path" and "Switchover handshake". A message
 * is framed so that nothing else can pass for it: a magic, a version, a
 * bounded length, printable text and a CRC32C over all of it.
 */
#ifndef GW_LIB_RETURN_PATH_H
#define GW_LIB_RETURN_PATH_H

#include <stddef.h>
#include <stdint.h>

#include <godwit/error.h>

#include "lib/cancel.h"

#define GW_REPORT_MAGIC "\x89GWBACK\n"
#define GW_REPORT_MAGIC_LEN 8
#define GW_REPORT_VERSION 2u
#define GW_REPORT_HEAD_SIZE 24u
#define GW_REPORT_MSG_MAX (GW_ERROR_MSG_MAX - 1)
#define GW_REPORT_MAX (GW_REPORT_HEAD_SIZE + GW_REPORT_MSG_MAX + 4)

enum gw_report_status {
	GW_REPORT_RUNNING =
		0, /* destination: the guest runs (after GO, or at EOF without handshake) */
	GW_REPORT_FAILED = 1,    /* destination: the guest will never run: msg says why */
	GW_REPORT_READY = 2,     /* destination: loaded and checked, waiting for GO */
	GW_REPORT_GO = 3,        /* source: the guest is the destination's to run */
	GW_REPORT_ADOPTED = 4,   /* destination of a local live update: the memfds
				  are mapped, send the state */
	GW_REPORT_REQUEST = 5,   /* post-copy destination: send these pages first */
	GW_REPORT_RESUME = 6,    /* post-copy recovery, both ways: this post-copy (its
				  fingerprint) goes on over this connection */
	GW_REPORT_DISCARDED = 7, /* post-copy destination: the EARLY set is unmapped,
				    the source may pause its guest */
};

/* A REQUEST's body (docs/format.md, "Post-copy"): count pages from page
 * first of the block listed block-th in CONFIG. The framing only bounds
 * its size; gw_page_request_check() (format/postcopy.h) checks the range. */
#define GW_PAGE_REQUEST_SIZE 16u
struct gw_page_request {
	uint32_t block;
	uint32_t count;
	uint64_t first;
};

/* "RUNNING", "FAILED", ... for messages. */
const char *gw_report_name(enum gw_report_status s);

struct gw_report {
	enum gw_report_status status;
	int code;                   /* negative errno when failed, else 0 */
	char msg[GW_ERROR_MSG_MAX]; /* "" unless failed */
	struct gw_page_request req; /* REQUEST only */
	uint64_t fingerprint;       /* RESUME only (gw_postcopy_fingerprint) */
};

/* A RESUME's body: the fingerprint, 8 bytes little-endian. */
#define GW_RESUME_SIZE 8u

/* A RUNNING's text, if any: the destination's CLOCK_MONOTONIC time of the
 * resume in decimal nanoseconds. Sent only to a source on the same host
 * (a local live update), whose clock it is, so the downtime it reports
 * ends when the guest ran, not when the report came back. */
#define GW_REPORT_TIME_MAX 20
/* That time, or 0. */
uint64_t gw_report_time_ns(const struct gw_report *r);

/* Encode r into buf (GW_REPORT_MAX bytes); returns the length. */
size_t gw_report_encode(const struct gw_report *r, unsigned char *buf);
/*
 * Check and decode a whole message of len bytes. -EBADMSG for anything
 * that is not a well-formed report (wrong magic or CRC, bad length or
 * status, unprintable text); -EPROTONOSUPPORT for another version.
 */
int gw_report_decode(const unsigned char *buf, size_t len, struct gw_report *r,
		     struct gw_error *err);

/* Send r on the stream fd of c (without SIGPIPE on a socket whose peer is
 * gone), within timeout_ms; a cancel ends the wait (-ECANCELED). A failure
 * means the message did not leave whole: the peer cannot have decoded it. */
int gw_report_send(struct gw_cancel *c, int timeout_ms, const struct gw_report *r,
		   struct gw_error *err);

/*
 * Read one message from the stream fd of c, waiting at most timeout_ms
 * for it all (cancel ends the wait: -ECANCELED; timeout: -ETIMEDOUT).
 * Reads no byte past the message. A peer that closes first gives -EPIPE;
 * garbage gives -EBADMSG, as soon as the header shows it. `what` names
 * the awaited message in errors ("the destination's READY").
 */
int gw_report_recv(struct gw_cancel *c, int timeout_ms, const char *what, struct gw_report *r,
		   struct gw_error *err);

#endif
