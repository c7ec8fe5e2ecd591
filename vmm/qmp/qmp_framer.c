/*
 * QMP input framing (qmp_framer.h). One byte at a time: the state says
 * what the byte can mean, and only brackets outside strings are counted.
 * A value is handed out in place, from the buffer it was assembled in,
 * and that buffer is emptied on the next call, after the caller is done
 * with it.
 */
#include "vmm/qmp/qmp_framer.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>

/* What a byte did, beyond moving the state on. */
enum step {
	STEP_NEXT,  /* go on with the next byte */
	STEP_AGAIN, /* it ended a bare word and also starts what follows: feed it again */
};

void qmp_framer_init(struct qmp_framer *f)
{
	*f = (struct qmp_framer){.state = QMP_FRAMER_IDLE};
}

void qmp_framer_release(struct qmp_framer *f)
{
	buf_release(&f->msg);
}

const char *qmp_framer_value(const struct qmp_framer *f, size_t *len)
{
	*len = f->msg.len;
	return f->msg.data;
}

const char *qmp_framer_error(const struct qmp_framer *f)
{
	return f->error;
}

static bool is_space(unsigned char ch)
{
	return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r';
}

/* Outside strings JSON is printable ASCII; anything else ends the message. */
static bool is_json_outside_string(unsigned char ch)
{
	return is_space(ch) || (ch > 0x20 && ch < 0x7f);
}

/* Between messages, with nothing kept. */
static void frame_reset(struct qmp_framer *f)
{
	f->state = QMP_FRAMER_IDLE;
	f->depth = 0;
	f->in_string = f->escape = f->discard = f->handed = false;
	buf_reset(&f->msg);
}

static int refuse(struct qmp_framer *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int refuse(struct qmp_framer *f, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(f->error, sizeof(f->error), fmt, ap);
	va_end(ap);
	return QMP_FRAME_ERROR;
}

/* The value is whole: hand it out, unless it was refused already. */
static int frame_complete(struct qmp_framer *f)
{
	if (f->discard) {
		frame_reset(f);
		return QMP_FRAME_MORE;
	}
	f->state = QMP_FRAMER_IDLE;
	f->handed = true;
	return QMP_FRAME_VALUE;
}

/* A byte that no amount of further input can make valid (see the header). */
static int frame_stray(struct qmp_framer *f, unsigned char ch)
{
	bool answered = f->discard, in_string = f->in_string;
	frame_reset(f);
	f->state = ch == '\n' ? QMP_FRAMER_IDLE : QMP_FRAMER_SKIP_LINE;
	if (answered)
		return QMP_FRAME_MORE;
	return refuse(f, "stray byte 0x%02x%s", ch, in_string ? " in string" : "");
}

static void frame_start(struct qmp_framer *f, unsigned char ch)
{
	f->state = QMP_FRAMER_BARE;
	if (ch == '{' || ch == '[') {
		f->state = QMP_FRAMER_NESTED;
		f->depth = 1;
	} else if (ch == '"') {
		f->state = QMP_FRAMER_STRING;
		f->in_string = true;
	}
}

/* Inside an object, an array or a top-level string, a byte that can
 * never be valid there. */
static bool is_stray_inside(const struct qmp_framer *f, unsigned char ch)
{
	return f->in_string ? ch < 0x20 /* not even after a backslash */
			      :
			      !is_json_outside_string(ch);
}

/* Follow strings and brackets; the depth limit is the one refusal here. */
static int frame_track(struct qmp_framer *f, unsigned char ch)
{
	if (f->in_string) {
		if (f->escape)
			f->escape = false;
		else if (ch == '\\')
			f->escape = true;
		else if (ch == '"')
			f->in_string = false;
	} else if (ch == '"') {
		f->in_string = true;
	} else if (ch == '{' || ch == '[') {
		if (++f->depth > QMP_MAX_NESTING && !f->discard) {
			f->discard = true;
			return refuse(f, "nesting deeper than %d levels", QMP_MAX_NESTING);
		}
	} else if (ch == '}' || ch == ']') {
		f->depth--;
	}
	return QMP_FRAME_MORE;
}

/* Keep a byte of the message, and see whether it ended the value. A byte
 * that takes the message past its limit gets it refused; the value's end
 * is still looked for, so that the next message starts in the right place. */
static int frame_keep(struct qmp_framer *f, unsigned char ch, int frame)
{
	if (!f->discard) {
		if (f->msg.len >= QMP_MAX_MESSAGE) {
			f->discard = true;
			buf_reset(&f->msg);
			frame = refuse(f, "message longer than %u bytes", QMP_MAX_MESSAGE);
		} else if (buf_append(&f->msg, &ch, 1) < 0) {
			frame_reset(f);
			return -ENOMEM;
		}
	}
	if ((f->state == QMP_FRAMER_STRING && !f->in_string) ||
	    (f->state == QMP_FRAMER_NESTED && f->depth == 0)) {
		int done = frame_complete(f);
		return frame == QMP_FRAME_ERROR ? frame : done;
	}
	return frame;
}

/* Feed one byte: an enum qmp_frame or -ENOMEM, and in *step whether the
 * byte must be fed again. */
static int frame_byte(struct qmp_framer *f, unsigned char ch, enum step *step)
{
	*step = STEP_NEXT;
	switch (f->state) {
	case QMP_FRAMER_SKIP_LINE:
		if (ch == '\n')
			f->state = QMP_FRAMER_IDLE;
		return QMP_FRAME_MORE;
	case QMP_FRAMER_IDLE:
		if (is_space(ch))
			return QMP_FRAME_MORE;
		if (!is_json_outside_string(ch))
			return frame_stray(f, ch);
		frame_start(f, ch);
		return frame_keep(f, ch, QMP_FRAME_MORE);
	case QMP_FRAMER_BARE:
		if (is_space(ch) || ch == '{' || ch == '[' || ch == '"') {
			*step = STEP_AGAIN;
			return frame_complete(f);
		}
		if (!is_json_outside_string(ch))
			return frame_stray(f, ch);
		return frame_keep(f, ch, QMP_FRAME_MORE);
	case QMP_FRAMER_STRING:
	case QMP_FRAMER_NESTED:
		if (is_stray_inside(f, ch))
			return frame_stray(f, ch);
		return frame_keep(f, ch, frame_track(f, ch));
	}
	return QMP_FRAME_MORE;
}

int qmp_framer_feed(struct qmp_framer *f, const char *data, size_t len, size_t *used)
{
	int frame = QMP_FRAME_MORE;
	size_t i = 0;

	if (f->handed)
		frame_reset(f);
	while (i < len && frame == QMP_FRAME_MORE) {
		enum step step;
		frame = frame_byte(f, (unsigned char)data[i], &step);
		if (step == STEP_NEXT)
			i++;
	}
	*used = i;
	return frame;
}
