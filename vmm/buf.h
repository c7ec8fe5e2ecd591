/*
 * A growable byte buffer: the QMP server's unsent output and the message
 * its framer is assembling. Both are idle most of the time and briefly
 * large (a burst of events, a megabyte request), so emptying one gives
 * its memory back past BUF_KEEP.
 */
#ifndef GW_VMM_BUF_H
#define GW_VMM_BUF_H

#include <stddef.h>

/* An emptied buffer keeps at most this much memory: one QMP socket read. */
#define BUF_KEEP 65536

struct buf {
	char *data;
	size_t len, cap;
};

/* Append n bytes: 0, or -ENOMEM with the buffer unchanged. */
int buf_append(struct buf *b, const void *p, size_t n);

/* Empty it; free its memory if it holds more than BUF_KEEP. */
void buf_reset(struct buf *b);

/* Free its memory; the buffer is then empty and may be used again. */
void buf_release(struct buf *b);

#endif
