/*
 * The buffers a device writes its state into and reads it back from.
 * Errors stick so a device can put or get a run of fields and check once;
 * the library checks b->error after every callback in any case.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <godwit/payload.h>

#include "lib/internal.h"

void gw_wbuf_init(struct gw_wbuf *b, size_t limit)
{
	memset(b, 0, sizeof(*b));
	b->limit = limit;
}

void gw_wbuf_reset(struct gw_wbuf *b)
{
	b->len = 0;
	b->error = 0;
}

void gw_wbuf_release(struct gw_wbuf *b)
{
	free(b->data);
	gw_wbuf_init(b, b->limit);
}

/* Make room for n more bytes and return where they go, or NULL (sticky). */
static unsigned char *wbuf_room(struct gw_wbuf *b, size_t n)
{
	size_t need;

	if (b->error)
		return NULL;
	if (n > b->limit - b->len) {
		b->error = -EMSGSIZE;
		return NULL;
	}
	need = b->len + n;
	if (need > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		unsigned char *p;

		while (cap < need)
			cap = cap > b->limit / 2 ? b->limit : cap * 2;
		p = realloc(b->data, cap);
		if (!p) {
			b->error = -ENOMEM;
			return NULL;
		}
		b->data = p;
		b->cap = cap;
	}
	b->len += n;
	return b->data + b->len - n;
}

int gw_put_u8(struct gw_wbuf *b, uint8_t v)
{
	unsigned char *p = wbuf_room(b, 1);

	if (!p)
		return b->error;
	*p = v;
	return 0;
}

int gw_put_u16(struct gw_wbuf *b, uint16_t v)
{
	unsigned char *p = wbuf_room(b, 2);

	if (!p)
		return b->error;
	gw_le16(p, v);
	return 0;
}

int gw_put_u32(struct gw_wbuf *b, uint32_t v)
{
	unsigned char *p = wbuf_room(b, 4);

	if (!p)
		return b->error;
	gw_le32(p, v);
	return 0;
}

int gw_put_u64(struct gw_wbuf *b, uint64_t v)
{
	unsigned char *p = wbuf_room(b, 8);

	if (!p)
		return b->error;
	gw_le64(p, v);
	return 0;
}

int gw_put_bytes(struct gw_wbuf *b, const void *src, size_t n)
{
	unsigned char *p;

	if (n == 0)
		return b->error;
	p = wbuf_room(b, n);
	if (!p)
		return b->error;
	memcpy(p, src, n);
	return 0;
}

void gw_rbuf_init(struct gw_rbuf *b, const void *data, size_t len)
{
	b->data = data;
	b->len = len;
	b->pos = 0;
	b->error = 0;
}

/* The next n bytes, or NULL (sticky) when fewer are left. */
static const unsigned char *rbuf_take(struct gw_rbuf *b, size_t n)
{
	if (b->error)
		return NULL;
	if (n > b->len - b->pos) {
		b->error = -EBADMSG;
		return NULL;
	}
	b->pos += n;
	return b->data + b->pos - n;
}

int gw_get_u8(struct gw_rbuf *b, uint8_t *v)
{
	const unsigned char *p = rbuf_take(b, 1);

	*v = p ? *p : 0;
	return b->error;
}

int gw_get_u16(struct gw_rbuf *b, uint16_t *v)
{
	const unsigned char *p = rbuf_take(b, 2);

	*v = p ? gw_get_le16(p) : 0;
	return b->error;
}

int gw_get_u32(struct gw_rbuf *b, uint32_t *v)
{
	const unsigned char *p = rbuf_take(b, 4);

	*v = p ? gw_get_le32(p) : 0;
	return b->error;
}

int gw_get_u64(struct gw_rbuf *b, uint64_t *v)
{
	const unsigned char *p = rbuf_take(b, 8);

	*v = p ? gw_get_le64(p) : 0;
	return b->error;
}

int gw_get_bytes(struct gw_rbuf *b, void *dst, size_t n)
{
	const unsigned char *p;

	if (n == 0)
		return b->error;
	p = rbuf_take(b, n);
	if (p)
		memcpy(dst, p, n);
	else
		memset(dst, 0, n);
	return b->error;
}

size_t gw_rbuf_remaining(const struct gw_rbuf *b)
{
	return b->error ? 0 : b->len - b->pos;
}
