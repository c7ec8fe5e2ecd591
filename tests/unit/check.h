/*
 * The unit tests' assertions: a failed check prints where and what, and
 * exits 1 (meson counts a non-zero exit as a failure). No framework.
 */
#ifndef GW_TEST_CHECK_H
#define GW_TEST_CHECK_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <godwit/error.h>

#define FAIL(...)                                                        \
	do {                                                             \
		fprintf(stderr, "%s:%d: ", __FILE__, __LINE__);          \
		fprintf(stderr, __VA_ARGS__);                            \
		fputc('\n', stderr);                                     \
		exit(1);                                                 \
	} while (0)

#define CHECK(cond)                                                      \
	do {                                                             \
		if (!(cond))                                             \
			FAIL("check failed: %s", #cond);                 \
	} while (0)

/* expr (an int-returning call taking err) must succeed. */
#define CHECK_OK(expr, err_)                                             \
	do {                                                             \
		int ret_ = (expr);                                       \
		if (ret_ < 0)                                            \
			FAIL("%s failed: %d (%s)", #expr, ret_, (err_)->msg); \
	} while (0)

/* expr must fail with code_ and a message containing every given string. */
#define CHECK_ERR(expr, code_, err_, ...)                                \
	do {                                                             \
		const char *want_[] = { __VA_ARGS__, NULL };             \
		gw_error_clear(err_);                                    \
		int ret_ = (expr);                                       \
		if (ret_ != (code_))                                     \
			FAIL("%s returned %d, expected %d (message: %s)", \
			     #expr, ret_, (code_), (err_)->msg);         \
		if ((err_)->code != (code_))                             \
			FAIL("%s: err->code %d, expected %d", #expr,     \
			     (err_)->code, (code_));                     \
		for (int i_ = 0; want_[i_]; i_++)                        \
			if (!strstr((err_)->msg, want_[i_]))             \
				FAIL("%s: message \"%s\" lacks \"%s\"", \
				     #expr, (err_)->msg, want_[i_]);     \
	} while (0)

#endif
