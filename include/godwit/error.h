/*
 * Errors of libgodwit (usable by any program, the VMM included).
 *
 * Every function that can fail returns 0 (or a documented positive value)
 * on success and a negative errno on failure, and when the caller passed a
 * struct gw_error, fills it with a message saying what failed and where:
 * the section, RAM block, page or stream offset, and both sides of a
 * mismatch. The struct is plain caller-owned memory; there is no errno-like
 * global state. A NULL err is allowed everywhere and means "just the code".
 */
#ifndef GODWIT_ERROR_H
#define GODWIT_ERROR_H

#include <godwit/export.h>

#ifdef __cplusplus
extern "C" {
#endif

#define GW_ERROR_MSG_MAX 512

struct gw_error {
	int code;                   /* negative errno, 0 when clear */
	char msg[GW_ERROR_MSG_MAX]; /* NUL-terminated, truncated if longer */
};

/*
 * Record an error and return its code, so that a failing path reads
 *     return gw_error_set(err, -EINVAL, "RAM block '%s': size is zero", n);
 * code is a negative errno (a positive one is negated, so a mistake cannot
 * turn an error into success). err may be NULL.
 */
GW_API int gw_error_set(struct gw_error *err, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/*
 * Put context in front of the message already in err, keeping it the same
 * error, and return code (the code the failing callee returned):
 *     if (ret < 0)
 *         return gw_error_prefix(err, ret, "section '%s' instance %u: ", n, i);
 * gives "section 'uart' instance 0: truncated stream at offset ...".
 * err may be NULL.
 */
GW_API int gw_error_prefix(struct gw_error *err, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Reset to "no error". */
GW_API void gw_error_clear(struct gw_error *err);

#ifdef __cplusplus
}
#endif

#endif
