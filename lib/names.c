/*
 * Names and strings in the stream (docs/format.md, "Conventions"). Names
 * are printable ASCII without spaces so they can be quoted in a message,
 * printed by an analyzer or used as a JSON key without escaping surprises;
 * the same rule applies when registering and when reading a stream, so
 * whatever a reader accepts, a writer could have written.
 */
#include <errno.h>
#include <string.h>

#include "lib/internal.h"

static bool text_ok(const char *s, size_t len, char lowest)
{
	for (size_t i = 0; i < len; i++)
		if (s[i] < lowest || s[i] > 0x7e)
			return false;
	return len <= GW_NAME_MAX;
}

static bool name_ok(const char *s, size_t len)
{
	return len >= 1 && text_ok(s, len, 0x21);
}

int gw_check_name(const char *what, const char *name, struct gw_error *err)
{
	if (!name)
		return gw_error_set(err, -EINVAL, "%s has no name", what);
	if (!name_ok(name, strnlen(name, GW_NAME_MAX + 1)))
		return gw_error_set(err, -EINVAL,
				    "%s name '%.64s' is invalid: it must be 1 to %u printable ASCII characters without spaces",
				    what, name, GW_NAME_MAX);
	return 0;
}

int gw_check_text(const char *what, const char *text, struct gw_error *err)
{
	if (!text)
		return gw_error_set(err, -EINVAL, "%s is missing", what);
	if (!text_ok(text, strnlen(text, GW_NAME_MAX + 1), 0x20))
		return gw_error_set(err, -EINVAL,
				    "%s '%.64s' is invalid: it must be at most %u printable ASCII characters",
				    what, text, GW_NAME_MAX);
	return 0;
}

int gw_put_str(struct gw_wbuf *b, const char *s)
{
	size_t len = strlen(s);

	gw_put_u8(b, (uint8_t)len);
	return gw_put_bytes(b, s, len);
}

int gw_get_str(struct gw_rbuf *b, char out[GW_NAME_MAX + 1], bool is_name)
{
	uint8_t len;

	gw_get_u8(b, &len);
	gw_get_bytes(b, out, len);
	out[b->error ? 0 : len] = '\0';
	if (!b->error && !(is_name ? name_ok(out, len) : text_ok(out, len, 0x20)))
		b->error = -EBADMSG;
	return b->error;
}
