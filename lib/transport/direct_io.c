/*
 * Direct I/O on an open file (direct_io.h). The kernel's struct statx
 * (linux/stat.h) and glibc's clash, so this file includes only the
 * kernel's and calls statx(2) itself.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/stat.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "lib/internal.h"
#include "lib/transport/direct_io.h"

int gw_dio_align(int fd, uint32_t *mem_align, uint32_t *offset_align, struct gw_error *err)
{
	struct statx stx = {0};

	if (syscall(SYS_statx, fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) < 0)
		return gw_error_set(err, -errno, "direct-io: statx of fd %d: %s", fd,
				    gw_strerror(errno));
	if (!(stx.stx_mask & STATX_DIOALIGN) || !stx.stx_dio_offset_align)
		return gw_error_set(err, -EOPNOTSUPP,
				    "direct-io: the file system does not do direct I/O on this file (statx reports no STATX_DIOALIGN); turn direct-io off");
	*mem_align = stx.stx_dio_mem_align;
	*offset_align = stx.stx_dio_offset_align;
	return 0;
}

int gw_dio_reopen(int fd, int access, int *out, struct gw_error *err)
{
	char path[64];
	int nfd;

	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	nfd = open(path, access | O_DIRECT | O_CLOEXEC);
	if (nfd < 0)
		return gw_error_set(err, -errno,
				    "direct-io: cannot open the file again with O_DIRECT: %s",
				    gw_strerror(errno));
	*out = nfd;
	return 0;
}
