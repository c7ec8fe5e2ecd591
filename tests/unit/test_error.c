/*
 * struct gw_error: codes stay negative, messages are formatted, prefixed
 * and truncated safely, and a NULL err is allowed everywhere.
 */
#include <errno.h>
#include <string.h>

#include "check.h"

int main(void)
{
	struct gw_error err = { 0 };
	char longname[600];

	CHECK(gw_error_set(&err, -EINVAL, "RAM block '%s': size %d", "pc.ram", 0) == -EINVAL);
	CHECK(err.code == -EINVAL);
	CHECK(strcmp(err.msg, "RAM block 'pc.ram': size 0") == 0);

	/* A positive code is an error too, never success. */
	CHECK(gw_error_set(&err, ENOENT, "x") == -ENOENT && err.code == -ENOENT);
	CHECK(gw_error_set(NULL, EIO, "x") == -EIO);

	gw_error_set(&err, -EPIPE, "truncated stream at offset %d", 42);
	CHECK(gw_error_prefix(&err, -EPIPE, "section '%s' instance %u: ", "uart", 0u) == -EPIPE);
	CHECK(strcmp(err.msg, "section 'uart' instance 0: truncated stream at offset 42") == 0);
	CHECK(gw_error_prefix(NULL, -EPIPE, "x") == -EPIPE);

	/* A callee that failed without a message: the prefix gets the errno text. */
	gw_error_clear(&err);
	CHECK(err.code == 0 && err.msg[0] == '\0');
	CHECK(gw_error_prefix(&err, -ENOSPC, "writing '%s': ", "f") == -ENOSPC);
	CHECK(strcmp(err.msg, "writing 'f': No space left on device") == 0);

	/* Long messages are cut, never overflow. */
	memset(longname, 'a', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = '\0';
	gw_error_set(&err, -EINVAL, "%s", longname);
	CHECK(strlen(err.msg) == GW_ERROR_MSG_MAX - 1);
	gw_error_prefix(&err, -EINVAL, "%s: ", longname);
	CHECK(strlen(err.msg) == GW_ERROR_MSG_MAX - 1);
	gw_error_clear(NULL);
	printf("error: all tests passed\n");
	return 0;
}
