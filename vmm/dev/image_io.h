/*
 * Reading and writing a disk image whole: the device's requests and the
 * disk copy of a migration both need all of a range moved or an error,
 * whatever the kernel returns short.
 */
#ifndef GW_VMM_IMAGE_IO_H
#define GW_VMM_IMAGE_IO_H

#include <stdbool.h>
#include <sys/types.h>
#include <sys/uio.h>

/* All of iov (n buffers) at off, however many calls it takes; iov is
 * consumed. -errno, or -EIO for an image that ends early (it shrank). */
int image_io(int fd, bool write, struct iovec *iov, int n, off_t off);

/* Past the first k bytes of *iov (*n buffers), for a transfer that moved
 * only those: the buffers done are dropped, the next one shortened. */
void iov_advance(struct iovec **iov, int *n, size_t k);

#endif
