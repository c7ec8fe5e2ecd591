/*
 * O_DIRECT on a file the caller already has open: the alignment the file
 * system asks for, and a second open file description of the same file
 * with O_DIRECT (the caller's fd keeps buffered I/O for the small writes
 * that are not page data).
 */
#ifndef GW_LIB_TRANSPORT_DIRECT_IO_H
#define GW_LIB_TRANSPORT_DIRECT_IO_H

#include <stdint.h>

#include <godwit/error.h>

/* The file's direct I/O alignment of buffers and file offsets
 * (statx STATX_DIOALIGN, Linux 6.1+); -EOPNOTSUPP with a message when the
 * file system does not do direct I/O on it. */
int gw_dio_align(int fd, uint32_t *mem_align, uint32_t *offset_align, struct gw_error *err);

/* Open the file of fd again with O_DIRECT and access mode O_RDONLY or
 * O_WRONLY (through /proc/self/fd: works for a passed fd too). */
int gw_dio_reopen(int fd, int access, int *out, struct gw_error *err);

#endif
