/*
 * The return path: the one message a destination sends back to the
 * source, on the same (bidirectional) fd, after the stream: "my guest
 * runs" or "I failed, and my guest will not run". Layout and rules in
 * docs/format.md, "Return path". The message is framed so that nothing
 * else can pass for it: a magic, a version, a bounded length, printable
 * text and a CRC32C over all of it.
 */
#ifndef GW_LIB_RETURN_PATH_H
#define GW_LIB_RETURN_PATH_H

#include <stddef.h>
#include <stdint.h>

#include <godwit/error.h>

#include "cancel.h"

#define GW_REPORT_MAGIC      "\x89GWBACK\n"
#define GW_REPORT_MAGIC_LEN  8
#define GW_REPORT_VERSION    1u
#define GW_REPORT_HEAD_SIZE  24u
#define GW_REPORT_MSG_MAX    (GW_ERROR_MSG_MAX - 1)
#define GW_REPORT_MAX        (GW_REPORT_HEAD_SIZE + GW_REPORT_MSG_MAX + 4)

enum gw_report_status {
	GW_REPORT_RUNNING = 0, /* the stream loaded and the guest runs */
	GW_REPORT_FAILED = 1,  /* the guest will not run: msg says why */
};

struct gw_report {
	enum gw_report_status status;
	int code;                   /* negative errno when failed, 0 when running */
	char msg[GW_ERROR_MSG_MAX]; /* "" when running */
};

/* Encode r into buf (GW_REPORT_MAX bytes); returns the length. */
size_t gw_report_encode(const struct gw_report *r, unsigned char *buf);
/*
 * Check and decode a whole message of len bytes. -EBADMSG for anything
 * that is not a well-formed report (wrong magic or CRC, bad length or
 * status, unprintable text); -EPROTONOSUPPORT for another version.
 */
int gw_report_decode(const unsigned char *buf, size_t len, struct gw_report *r,
		     struct gw_error *err);

/* Send r on fd (without SIGPIPE on a socket whose peer is gone). */
int gw_report_send(int fd, const struct gw_report *r, struct gw_error *err);

/*
 * Read one report from the stream fd of c, waiting at most timeout_ms
 * for it all (cancel ends the wait: -ECANCELED). Reads no byte past the
 * message. A peer that closes first gives -EPIPE; garbage gives -EBADMSG,
 * as soon as the header shows it.
 */
int gw_report_recv(struct gw_cancel *c, int timeout_ms, struct gw_report *r,
		   struct gw_error *err);

#endif
