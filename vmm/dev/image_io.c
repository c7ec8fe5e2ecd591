#include "vmm/dev/image_io.h"

#include <errno.h>

int image_io(int fd, bool write, struct iovec *iov, int n, off_t off)
{
	while (n > 0) {
		ssize_t k = write ? pwritev(fd, iov, n, off) : preadv(fd, iov, n, off);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0)
			return -errno;
		if (k == 0)
			return -EIO;
		off += k;
		iov_advance(&iov, &n, (size_t)k);
	}
	return 0;
}

void iov_advance(struct iovec **iov, int *n, size_t k)
{
	while (*n > 0 && k >= (*iov)->iov_len) {
		k -= (*iov)->iov_len;
		(*iov)++;
		(*n)--;
	}
	if (*n > 0) {
		(*iov)->iov_base = (char *)(*iov)->iov_base + k;
		(*iov)->iov_len -= k;
	}
}
