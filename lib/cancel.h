/*
 * Stopping an engine thread from another thread. An engine waits in three
 * kinds of places: a read or write on the stream's fd, a wait for the
 * peer (the return path), and its own sleeps (rate limit, idle rounds).
 * A wake reaches all three: every wait made through this object polls an
 * eventfd next to whatever it waits for, and the stream's reader and
 * writer are bound to the same eventfd (gw_reader_bind, gw_writer_bind),
 * so they never sleep inside the system call. Shutting a socket down is
 * separate (gw_cancel_shutdown): it tells the peer the stream is over.
 */
#ifndef GW_LIB_CANCEL_H
#define GW_LIB_CANCEL_H

#include <stdbool.h>
#include <stdint.h>

#include <godwit/error.h>

struct gw_cancel {
	int fd;         /* the stream, borrowed */
	bool is_socket; /* shutdown(2) works on fd */
	int efd;        /* eventfd, readable once cancel is requested */
	bool requested; /* atomic */
};

int gw_cancel_init(struct gw_cancel *c, int fd, struct gw_error *err);
void gw_cancel_fini(struct gw_cancel *c);

/* From any thread: flag and wake every wait. Idempotent. */
void gw_cancel_wake(struct gw_cancel *c);
bool gw_cancel_requested(struct gw_cancel *c);

/* Shut a socket fd down both ways, so the peer stops waiting for us;
 * nothing for other fds. */
void gw_cancel_shutdown(struct gw_cancel *c);

/* Sleep ns; -ECANCELED as soon as a cancel is requested, else 0. */
int gw_cancel_sleep(struct gw_cancel *c, uint64_t ns);

/*
 * Wait until the stream's fd has one of events (POLLIN, POLLOUT; errors
 * and hang-up count as ready), for at most timeout_ms (-1: no limit).
 * Returns 1 ready, 0 timed out, -ECANCELED, or -errno of poll().
 */
int gw_cancel_poll(struct gw_cancel *c, short events, int timeout_ms);

#endif
