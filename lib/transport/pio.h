/*
 * Positioned I/O of a whole range: pread()/pwrite() until every byte is
 * done, through EINTR and short transfers. For the file formats that
 * address bytes by offset (mapped-ram files).
 */
#ifndef GW_LIB_TRANSPORT_PIO_H
#define GW_LIB_TRANSPORT_PIO_H

#include <stdint.h>

/* 0; -ENODATA if the file ends first; or -errno. *done (may be NULL):
 * the bytes that were transferred. */
int gw_pread_full(int fd, void *buf, uint64_t len, uint64_t off, uint64_t *done);
/* 0, or -errno (-EIO if the kernel wrote nothing and said no error). */
int gw_pwrite_full(int fd, const void *buf, uint64_t len, uint64_t off, uint64_t *done);

#endif
