/*
 * Buffered, counting byte I/O over a file descriptor: the layer below the
 * stream format. Works on anything read()/write() works on — sockets,
 * pipes, regular files, memfds — and never seeks, so a stream can go
 * through `ssh` or a FIFO.
 *
 * Zero-copy: gw_writer_writev() sends large pieces straight from the
 * caller's memory (guest RAM) in the same writev() as whatever is
 * buffered, and gw_reader_readv() receives straight into the caller's
 * memory. Small pieces go through a buffer so a record header does not
 * cost a system call.
 *
 * Ownership: a writer/reader borrows the fd; gw_*_free() neither flushes
 * nor closes it. Threads: one object is used by one thread at a time.
 * Signals: writes to sockets use MSG_NOSIGNAL; a program that writes a
 * stream to a pipe must ignore SIGPIPE itself (the library does not touch
 * signal dispositions, which are process-wide). A non-blocking fd is
 * waited on with poll(), so calls always complete or fail.
 *
 * Errors: after the first failure an object is broken (bytes may have
 * been lost mid-record) and every later call returns the same code.
 * A read that hits end of file returns -EPIPE with the stream offset:
 * "truncated stream at offset 123456 (need 24 more bytes)".
 */
#ifndef GODWIT_IO_H
#define GODWIT_IO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include <godwit/error.h>
#include <godwit/export.h>

#ifdef __cplusplus
extern "C" {
#endif

struct gw_writer;
struct gw_reader;

GW_API int gw_writer_new(int fd, struct gw_writer **out, struct gw_error *err);
GW_API void gw_writer_free(struct gw_writer *w);

/* Append len bytes; they may stay buffered until a flush. */
GW_API int gw_writer_write(struct gw_writer *w, const void *buf, size_t len,
			   struct gw_error *err);

/*
 * Append the iovecs in order. Large pieces are not copied: they are
 * written from the caller's memory before this call returns, so the memory
 * must stay valid (and, for a meaningful checksum, unchanged) only for the
 * duration of the call.
 */
GW_API int gw_writer_writev(struct gw_writer *w, const struct iovec *iov, int iovcnt,
			    struct gw_error *err);

/* Write out everything buffered. */
GW_API int gw_writer_flush(struct gw_writer *w, struct gw_error *err);

/* Bytes appended so far (buffered or not): the stream offset of the next byte. */
GW_API uint64_t gw_writer_offset(const struct gw_writer *w);

GW_API int gw_reader_new(int fd, struct gw_reader **out, struct gw_error *err);
GW_API void gw_reader_free(struct gw_reader *r);

/* Read exactly len bytes, or fail (-EPIPE at end of file). */
GW_API int gw_reader_read(struct gw_reader *r, void *buf, size_t len, struct gw_error *err);

/*
 * Fill the iovecs in order, exactly. Large iovecs are filled by the kernel
 * directly (readv), with read-ahead for the following bytes landing in the
 * internal buffer in the same system call.
 */
GW_API int gw_reader_readv(struct gw_reader *r, const struct iovec *iov, int iovcnt,
			   struct gw_error *err);

/* Read and discard len bytes. */
GW_API int gw_reader_skip(struct gw_reader *r, uint64_t len, struct gw_error *err);

/* Bytes consumed so far: the stream offset of the next byte to be read. */
GW_API uint64_t gw_reader_offset(const struct gw_reader *r);

#ifdef __cplusplus
}
#endif

#endif
