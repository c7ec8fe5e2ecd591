/*
 * Handing fds to a process on the same host: a message and its fds in
 * one sendmsg() over a unix stream socket (SCM_RIGHTS), and the matching
 * receive. Local live update (lib/engine/cpr.c) moves guest RAM this way:
 * the memfds travel, their pages do not.
 *
 * Both sides wait through a gw_cancel, so a cancel or a timeout ends
 * every wait; the socket may be non-blocking.
 */
#ifndef GW_LIB_FD_PASS_H
#define GW_LIB_FD_PASS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include <godwit/error.h>

#include "lib/cancel.h"

/* At most this many fds in one message. */
#define GW_FDS_MAX 256

/* Whether fd is a unix-domain stream socket (fds can travel over it). */
bool gw_fd_is_unix_socket(int fd);

/*
 * Send len bytes of buf with the n fds attached to its first byte,
 * within timeout_ms. The fds stay the caller's (the kernel gives the
 * peer its own references). A failure means the peer cannot have
 * received the message whole.
 */
int gw_fds_send(struct gw_cancel *c, int timeout_ms, const void *buf, size_t len, const int *fds,
		unsigned n, struct gw_error *err);

/*
 * Receive exactly len bytes into buf and the fds attached to its first
 * byte (at most max, close-on-exec), within timeout_ms. *n is how many
 * came; they are the caller's, also on failure after they arrived (it
 * closes them). More fds than max, or fds attached to any later byte
 * (by a second sendmsg), fail (-EBADMSG) and are closed here.
 */
int gw_fds_recv(struct gw_cancel *c, int timeout_ms, void *buf, size_t len, int *fds, unsigned max,
		unsigned *n, struct gw_error *err);

/*
 * Look at the first len bytes waiting on the socket without taking them
 * (waits for them, no limit but the cancel). 0 with the bytes in buf;
 * -EPIPE if the peer closed first.
 */
int gw_fds_peek(struct gw_cancel *c, void *buf, size_t len, struct gw_error *err);

/*
 * A pidfd for the process at the other end of a connected unix socket
 * (SO_PEERCRED), or -errno. Readable once that process has exited: a
 * peer known dead cannot run anything.
 */
int gw_peer_pidfd(int sock);

/* True if the pidfd's process has exited, waiting at most timeout_ms. */
bool gw_pidfd_exited(int pidfd, int timeout_ms);

#endif
