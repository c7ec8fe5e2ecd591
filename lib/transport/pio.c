/* Positioned I/O of a whole range (pio.h). */
#include <errno.h>
#include <unistd.h>

#include "lib/transport/pio.h"

int gw_pread_full(int fd, void *buf, uint64_t len, uint64_t off, uint64_t *done)
{
	unsigned char *p = buf;
	uint64_t got = 0;
	int ret = 0;

	while (got < len) {
		ssize_t n = pread(fd, p + got, len - got, (off_t)(off + got));

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			ret = n < 0 ? -errno : -ENODATA;
			break;
		}
		got += (uint64_t)n;
	}
	if (done)
		*done = got;
	return ret;
}

int gw_pwrite_full(int fd, const void *buf, uint64_t len, uint64_t off, uint64_t *done)
{
	const unsigned char *p = buf;
	uint64_t put = 0;
	int ret = 0;

	while (put < len) {
		ssize_t n = pwrite(fd, p + put, len - put, (off_t)(off + put));

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			ret = n < 0 ? -errno : -EIO;
			break;
		}
		put += (uint64_t)n;
	}
	if (done)
		*done = put;
	return ret;
}
