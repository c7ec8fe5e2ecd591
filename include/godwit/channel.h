/*
 * Transports, named by the URIs QEMU users already know:
 *
 *   tcp:HOST:PORT   TCP (IPv4, IPv6 in brackets [::1]:PORT, or a host name)
 *   unix:PATH       a unix stream socket
 *   fd:N            an fd the process already has (inherited or passed)
 *   exec:CMD        /bin/sh -c CMD; the stream goes to its stdin (source)
 *                   or comes from its stdout (destination): ssh, cat > f.
 *                   It runs in its own process group, with SIGPIPE and
 *                   SIGTERM at their defaults and no signal blocked.
 *   file:PATH       a regular file (save a stopped guest, load it back),
 *                   or a FIFO
 *
 * The source connects (gw_channel_connect); the destination listens
 * (gw_channel_listen) and accepts without blocking its event loop. Both
 * end up with a gw_channel: one fd, and whether it can carry a return
 * path (sockets can; pipes and files cannot).
 *
 * Waits: connecting can wait for a long time (a TCP handshake with a host
 * that does not answer, a FIFO nobody reads yet, a unix listener whose
 * backlog is full), and so can the end of an exec: command. Both take a
 * cancel_fd: an fd (eventfd, pipe) that becomes readable when the caller
 * gives up. It is only polled, never read, so one fd can serve every wait
 * of a migration; -1 means no cancel. Call them on a thread other than
 * an event loop's; or, for the end, put pidfd in the loop
 * (gw_channel_close_stream()).
 *
 * No global state; the library never changes signal dispositions (a
 * program writing to exec: must ignore SIGPIPE itself). An exec: command
 * is the caller's child: the program must not reap it (waitpid(-1), or
 * SIGCHLD ignored), or its status is lost.
 */
#ifndef GODWIT_CHANNEL_H
#define GODWIT_CHANNEL_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <godwit/error.h>
#include <godwit/export.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * A channel's fd is close-on-exec and blocking, except where nonblocking
 * says otherwise: our end of an exec: pipe and a FIFO we opened carry
 * O_NONBLOCK, so I/O on them waits in poll() (the stream reader and
 * writer do), where a cancel can wake it. Only files nobody else has open get the flag: never
 * fd:N, whose open file is shared with whoever passed it.
 */
struct gw_channel {
	int fd;
	bool nonblocking;   /* O_NONBLOCK is set on fd: I/O polls on EAGAIN */
	bool bidirectional; /* a socket: the destination can answer */
	bool is_socket;     /* shutdown(2) works on fd (how a cancel unblocks I/O) */
	pid_t child;        /* exec: the shell, 0 otherwise */
	int pidfd;          /* exec (child > 0): readable once the command has exited */
	char desc[128];     /* for messages: "tcp 127.0.0.1:4444", "exec 'cat > f'" */
	uint64_t reserved[4]; /* for later versions (<godwit/export.h>) */
};

/*
 * Source side. tcp/unix connect; fd:N dups N; exec spawns the command with
 * a pipe to its stdin; file: creates/truncates the file with mode 0600, or
 * opens a FIFO once a reader has it open.
 *
 * Every wait polls cancel_fd (see the top): the TCP handshake, room in a
 * unix listener's backlog, a FIFO's reader. A cancel returns -ECANCELED
 * with the URI and the step in the message ("file:/tmp/f: cancelled while
 * waiting for a reader to open the FIFO"), as does a cancel_fd readable
 * on entry. What cannot be cancelled: resolving a host name (bounded by
 * the resolver's timeouts), and open() of a path on a server that does
 * not answer (a hard NFS mount).
 */
GW_API int gw_channel_connect_cancellable(const char *uri, int cancel_fd, struct gw_channel *out,
					  struct gw_error *err);

/* The same, without a cancel. */
GW_API int gw_channel_connect(const char *uri, struct gw_channel *out, struct gw_error *err);

/*
 * End the channel: close the fd and, for exec, wait for the command,
 * which sees the end of the stream. It fails the stream (-EIO, with its
 * exit status in the message) unless it exits 0: a stream that `cat`
 * could not write is a failed save.
 *
 * A command that does not exit within grace_ms of the end of the stream,
 * or is still running when cancel_fd becomes readable, is ended: SIGTERM
 * to its process group, SIGKILL grace_ms later if it is still there. It
 * then fails the stream whatever its status, since it did not confirm the
 * end: -ETIMEDOUT or -ECANCELED, the message saying what was sent
 * ("exec 'sleep 600' did not exit within 2000 ms of the end of the
 * stream; sent SIGTERM"). So the wait is at most 2 * grace_ms + 1 s, and
 * a cancel cuts the first grace_ms short. Only a command that survives
 * SIGKILL for a second (asleep in the kernel: a hung NFS server) is left
 * unwaited: then ch still holds child and pidfd, for another call.
 *
 * Safe on a zeroed, ended or closed channel. Not at the same time as
 * gw_channel_abort(): once the command is reaped its pid is not ours.
 */
GW_API int gw_channel_end(struct gw_channel *ch, int cancel_fd, unsigned grace_ms,
			  struct gw_error *err);

/* The grace gw_channel_close() gives a command: long enough for `ssh` to
 * push what is buffered for a slow link (several MiB) to the other side. */
#define GW_CHANNEL_CLOSE_GRACE_MS 30000

/* gw_channel_end(ch, -1, GW_CHANNEL_CLOSE_GRACE_MS, err). */
GW_API int gw_channel_close(struct gw_channel *ch, struct gw_error *err);

/*
 * Close only the stream's fd, for an event loop that must not wait: an
 * exec: command then sees the end of the stream and goes on to exit,
 * which makes ch->pidfd readable; gw_channel_end() then collects its
 * status at once. Idempotent.
 */
GW_API int gw_channel_close_stream(struct gw_channel *ch, struct gw_error *err);

/* Make blocked I/O on the channel fail now (shutdown a socket, SIGKILL an
 * exec child and its process group). From any thread; the channel must
 * still be ended or closed. A blocking write to an fd:N pipe or a file
 * cannot be woken; one on a non-blocking fd waits in poll(), which the
 * I/O layer's own cancel reaches. */
GW_API void gw_channel_abort(struct gw_channel *ch);

struct gw_listener;

/*
 * Destination side. tcp/unix: bind and listen (non-blocking); TCP port 0
 * picks a free port (see gw_listener_address). fd:N: N is either a
 * listening socket or an already connected stream (dup'ed, as for the
 * source: N stays the caller's). exec: spawns the command with a pipe
 * from its stdout. file: opens the file for reading.
 */
GW_API int gw_channel_listen(const char *uri, struct gw_listener **out, struct gw_error *err);

/* fd to wait on for EPOLLIN before gw_listener_accept(), or -1 when a
 * channel is ready at once (exec, file, a connected fd:N). */
GW_API int gw_listener_fd(const struct gw_listener *l);

/* Take the incoming connection: 0, or -EAGAIN if none is waiting yet. */
GW_API int gw_listener_accept(struct gw_listener *l, struct gw_channel *out, struct gw_error *err);

/* The address actually listened on, as a URI ("tcp:127.0.0.1:40123"). */
GW_API const char *gw_listener_address(const struct gw_listener *l);

/* Close the listening socket (and unlink a unix socket path it created). */
GW_API void gw_listener_free(struct gw_listener *l);

#ifdef __cplusplus
}
#endif

#endif
