/*
 * Transports, named by the URIs QEMU users already know:
 *
 *   tcp:HOST:PORT   TCP (IPv4, IPv6 in brackets [::1]:PORT, or a host name)
 *   unix:PATH       a unix stream socket
 *   fd:N            an fd the process already has (inherited or passed)
 *   exec:CMD        /bin/sh -c CMD; the stream goes to its stdin (source)
 *                   or comes from its stdout (destination): ssh, cat > f.
 *                   It runs in its own process group, with SIGPIPE at its
 *                   default and no signal blocked.
 *   file:PATH       a regular file (save a stopped guest, load it back)
 *
 * The source connects (gw_channel_connect); the destination listens
 * (gw_channel_listen) and accepts without blocking its event loop. Both
 * end up with a gw_channel: one fd, and whether it can carry a return
 * path (sockets can; pipes and files cannot).
 *
 * No global state; the library never changes signal dispositions (a
 * program writing to exec: must ignore SIGPIPE itself).
 */
#ifndef GODWIT_CHANNEL_H
#define GODWIT_CHANNEL_H

#include <stdbool.h>
#include <sys/types.h>

#include <godwit/error.h>

#ifdef __cplusplus
extern "C" {
#endif

struct gw_channel {
	int fd;             /* blocking, close-on-exec */
	bool bidirectional; /* a socket: the destination can answer */
	bool is_socket;     /* shutdown(2) works on fd (how a cancel unblocks I/O) */
	pid_t child;        /* exec: the shell, 0 otherwise */
	char desc[128];     /* for messages: "tcp 127.0.0.1:4444", "exec 'cat > f'" */
};

/* Source side. tcp/unix connect (blocking); fd:N dups N; exec spawns the
 * command with a pipe to its stdin; file: creates/truncates the file. */
int gw_channel_connect(const char *uri, struct gw_channel *out, struct gw_error *err);

/*
 * Close the fd; for exec, wait for the command and fail (-EIO, with its
 * exit status in the message) if it did not exit 0 — a stream that `cat`
 * could not write is a failed save. Safe on a zeroed or closed channel.
 */
int gw_channel_close(struct gw_channel *ch, struct gw_error *err);

/* Make blocked I/O on the channel fail now (shutdown a socket, SIGKILL an
 * exec child and its process group). From any thread; the channel must
 * still be closed. Nothing can wake I/O on an fd:N pipe or a file. */
void gw_channel_abort(struct gw_channel *ch);

struct gw_listener;

/*
 * Destination side. tcp/unix: bind and listen (non-blocking); TCP port 0
 * picks a free port (see gw_listener_address). fd:N: N is either a
 * listening socket or an already connected stream (dup'ed, as for the
 * source: N stays the caller's). exec: spawns the command with a pipe
 * from its stdout. file: opens the file for reading.
 */
int gw_channel_listen(const char *uri, struct gw_listener **out, struct gw_error *err);

/* fd to wait on for EPOLLIN before gw_listener_accept(), or -1 when a
 * channel is ready at once (exec, file, a connected fd:N). */
int gw_listener_fd(const struct gw_listener *l);

/* Take the incoming connection: 0, or -EAGAIN if none is waiting yet. */
int gw_listener_accept(struct gw_listener *l, struct gw_channel *out, struct gw_error *err);

/* The address actually listened on, as a URI ("tcp:127.0.0.1:40123"). */
const char *gw_listener_address(const struct gw_listener *l);

/* Close the listening socket (and unlink a unix socket path it created). */
void gw_listener_free(struct gw_listener *l);

#ifdef __cplusplus
}
#endif

#endif
