/*
 * QMP input framing: where, in a client's byte stream, each JSON value
 * ends. A client may send half a message or ten in one write, so this has
 * to be found before jansson parses anything. jansson's
 * JSON_DISABLE_EOF_CHECK does not do it on its own: a buffer ending in
 * "tr" (the start of true), "-", or half a UTF-8 sequence is reported as
 * invalid rather than incomplete, so a message split at the wrong byte
 * would be refused. The framer therefore only counts brackets outside
 * strings, as QEMU's json-streamer does, and hands each complete value to
 * the caller, whose JSON parser does all the parsing and all the error
 * reporting for what it parses.
 *
 * The framer itself refuses only what can never become valid JSON (a
 * control byte inside a string, a non-ASCII or control byte outside one)
 * and bounds size and depth, so hostile input costs a bounded amount of
 * memory and one error per message. It knows nothing of sockets or of
 * QMP's commands: bytes in, values and errors out.
 */
#ifndef GW_VMM_QMP_FRAMER_H
#define GW_VMM_QMP_FRAMER_H

#include <stdbool.h>
#include <stddef.h>

#include "vmm/buf.h"

/* One message may not exceed this many bytes; QEMU allows more, but no
 * godwit command takes more than a few hundred bytes of arguments. */
#define QMP_MAX_MESSAGE (1u << 20)
/* Deeper than any real request, and well below jansson's own recursion
 * limit (2048) so jansson is never the one to hit it. */
#define QMP_MAX_NESTING 1024

/* What qmp_framer_feed() stopped at. */
enum qmp_frame {
	QMP_FRAME_MORE,  /* it took all the input: feed it the next read */
	QMP_FRAME_VALUE, /* a whole value: qmp_framer_value() */
	QMP_FRAME_ERROR, /* input refused: qmp_framer_error() says why */
};

enum qmp_framer_state {
	QMP_FRAMER_IDLE,      /* between messages: whitespace is skipped */
	QMP_FRAMER_NESTED,    /* inside an object or array; ends at depth 0 */
	QMP_FRAMER_STRING,    /* a top-level string */
	QMP_FRAMER_BARE,      /* a top-level number or word; ends at a delimiter */
	QMP_FRAMER_SKIP_LINE, /* after a refused byte: drop input up to the next '\n' */
};

/* Embedded in its user; the fields are the framer's own. */
struct qmp_framer {
	enum qmp_framer_state state;
	size_t depth;
	bool in_string, escape;
	bool discard; /* this value was already refused: follow it, keep nothing */
	bool handed;  /* msg holds the value last handed out */
	struct buf msg;
	char error[48];
};

/* A framer between messages. Nothing to allocate: release it when done. */
void qmp_framer_init(struct qmp_framer *f);
void qmp_framer_release(struct qmp_framer *f);

/*
 * Take bytes from data[0..len) up to the end of the next value, or up to
 * the byte that gets input refused, and set *used to how many it took.
 * Returns an enum qmp_frame, or -ENOMEM (the message being assembled is
 * lost, and the framer is between messages again). Call it again with the rest
 * (len - *used bytes, possibly none) until it returns QMP_FRAME_MORE.
 *
 * A value is a JSON object, array or string, or a bare word ("123",
 * "true", "foo"), which ends at the first delimiter after it, so a word
 * that ends a read is only handed out once the next read shows where it
 * ends. Whitespace between values is skipped.
 *
 * Refusals: a message longer than QMP_MAX_MESSAGE or nested deeper than
 * QMP_MAX_NESTING is refused once, at the byte that crosses the limit,
 * and its remaining bytes are followed but not kept, so the next message
 * starts where it should. A byte that no further input could make valid
 * (a control byte in a string, a non-ASCII or control byte outside one)
 * is refused too; where its message ends is unknown, so the framer drops
 * input up to the next newline (every client we know of sends one
 * message per line) and starts afresh after it; in a value already
 * refused for its size or depth it is not refused a second time.
 */
int qmp_framer_feed(struct qmp_framer *f, const char *data, size_t len, size_t *used);

/* After QMP_FRAME_VALUE: the value's bytes (not NUL-terminated), valid
 * until the next qmp_framer_feed(). */
const char *qmp_framer_value(const struct qmp_framer *f, size_t *len);

/* After QMP_FRAME_ERROR: why, as QEMU's "JSON parse error, ..." would go
 * on ("stray byte 0x01", "message longer than 1048576 bytes"). */
const char *qmp_framer_error(const struct qmp_framer *f);

#endif
