/*
 * Error messages. The message buffer is the caller's; nothing here is
 * global, so errors of concurrent migrations cannot mix.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <godwit/error.h>

#include "lib/internal.h"

int gw_error_set(struct gw_error *err, int code, const char *fmt, ...)
{
	va_list ap;

	/* A positive code would read as success to every caller up the stack. */
	if (code > 0)
		code = -code;
	if (!err)
		return code;
	err->code = code;
	va_start(ap, fmt);
	vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
	va_end(ap);
	return code;
}

int gw_error_prefix(struct gw_error *err, int code, const char *fmt, ...)
{
	char prefix[GW_ERROR_MSG_MAX];
	char old[GW_ERROR_MSG_MAX];
	va_list ap;

	if (code > 0)
		code = -code;
	if (!err)
		return code;
	va_start(ap, fmt);
	vsnprintf(prefix, sizeof(prefix), fmt, ap);
	va_end(ap);
	/* A callee that failed without a message still gets a readable one. */
	if (err->code == 0 || err->msg[0] == '\0')
		snprintf(old, sizeof(old), "%s", gw_strerror(code));
	else
		memcpy(old, err->msg, sizeof(old));
	err->code = code;
	snprintf(err->msg, sizeof(err->msg), "%s%s", prefix, old);
	return code;
}

void gw_error_clear(struct gw_error *err)
{
	if (!err)
		return;
	err->code = 0;
	err->msg[0] = '\0';
}

const char *gw_strerror(int code)
{
	/* strerrordesc_np() returns a constant string: thread-safe, unlike strerror(). */
	const char *s = strerrordesc_np(code < 0 ? -code : code);

	return s ? s : "unknown error";
}

int gw_check_reserved(const uint64_t *words, size_t n, const char *what, struct gw_error *err)
{
	for (size_t i = 0; i < n; i++)
		if (words[i])
			return gw_error_set(err, -EINVAL,
					    "%s: reserved word %zu is 0x%llx, must be 0 (initialize the struct whole)",
					    what, i, (unsigned long long)words[i]);
	return 0;
}
