/*
 * Transports: a migration URI becomes a connected fd (source) or a
 * listener that yields one (destination). All the rest of the library
 * sees of a transport is struct gw_channel, so the stream code is the same
 * over TCP, a unix socket, a pipe to ssh or a file.
 *
 * Every fd made here is close-on-exec (a VMM that spawns helpers must not
 * leak a migration socket into them) and above stdio (see above_stdio()).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/pidfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

#include <godwit/channel.h>

#include "lib/clock.h"
#include "lib/internal.h"

/* A numeric host: an IPv6 address with a scope ("fe80::1%eth0"). */
#define HOST_MAX (INET6_ADDRSTRLEN + IF_NAMESIZE)
/* "[HOST]:PORT" */
#define ADDR_MAX (HOST_MAX + 8)

/* `exec:cat > /dev/null` moves about 2.2 GB/s through a 1 MiB pipe and
 * 1.6 GB/s through the default 64 KiB one. 1 MiB is also the default
 * /proc/sys/fs/pipe-max-size, the most an unprivileged process may ask. */
#define EXEC_PIPE_SIZE (1 << 20)

/*
 * Two waits have nothing to poll: a FIFO with no reader yet (a blocking
 * open() would sleep until one comes, out of a cancel's reach, and the
 * reader's own open() waits for us, so nothing tells a non-blocking opener
 * that one arrived) and a unix listener whose backlog is full (a
 * non-blocking connect fails with EAGAIN, and nothing signals room). Both
 * try again this often: the peer waits at most this long for us, and 100
 * tries a second cost nothing.
 */
#define RETRY_MS 10

/* After SIGKILL a process is gone within microseconds, unless it sleeps
 * uninterruptibly in the kernel (a hung NFS server): not worth waiting for. */
#define KILL_WAIT_MS 1000

extern char **environ;

struct uri;

/*
 * A transport: the prefix that names it in a URI, how the rest of the URI
 * is read, how the source connects and how the destination listens. All
 * of them are in transports[] (at the end, after their functions); a new
 * one is one more entry there and nowhere else.
 *
 * Every function takes the whole URI, for its messages. connect() polls
 * cancel_fd in every wait (see channel.h); the URI is parsed, and a
 * cancel that came before the call has been handled, when it runs.
 */
struct transport {
	const char *prefix; /* "tcp:" */
	int (*parse)(const char *uri, const char *rest, struct uri *u, struct gw_error *err);
	int (*connect)(const char *uri, const struct uri *u, int cancel_fd, struct gw_channel *ch,
		       struct gw_error *err);
	int (*listen)(const char *uri, const struct uri *u, struct gw_listener **out,
		      struct gw_error *err);
};

/* A parsed URI. Strings point into the URI, except the tcp host and port,
 * which are copied out to drop the brackets and the ':'. */
struct uri {
	const struct transport *t;
	bool listening;        /* parsed for gw_channel_listen() */
	char host[NI_MAXHOST]; /* tcp: "" means every address (listen only) */
	char port[6];          /* tcp: decimal */
	const char *path;      /* unix, file */
	const char *cmd;       /* exec */
	int fd;                /* fd */
};

struct gw_listener {
	int fd;                  /* non-blocking listening socket, or -1 */
	struct gw_channel ready; /* exec, file, connected fd:N: the channel... */
	bool has_ready;          /* ...until the first accept takes it */
	bool owns_path;          /* unix: unlink the path when freed... */
	dev_t dev;               /* ...if it is still the socket we bound */
	ino_t ino;
	char desc[sizeof(((struct gw_channel *)0)->desc)]; /* of accepted channels */
	char address[];                                    /* a URI */
};

/* --- URIs ---------------------------------------------------------------- */

/* Decimal digits only, no sign or spaces, at most max. */
static bool parse_uint(const char *s, unsigned long max, unsigned long *out)
{
	unsigned long v = 0;

	if (!*s)
		return false;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return false;
		v = v * 10 + (unsigned long)(*s - '0');
		if (v > max)
			return false;
	}
	*out = v;
	return true;
}

static int parse_tcp(const char *uri, const char *rest, struct uri *u, struct gw_error *err)
{
	const char *host = rest, *host_end, *port;
	bool listening = u->listening;
	unsigned long n;

	if (*rest == '[') {
		host = rest + 1;
		host_end = strchr(host, ']');
		if (!host_end)
			return gw_error_set(err, -EINVAL, "%s: missing ']' after the IPv6 address",
					    uri);
		if (host_end[1] == '\0')
			return gw_error_set(err, -EINVAL, "%s: missing port", uri);
		if (host_end[1] != ':')
			return gw_error_set(err, -EINVAL, "%s: expected ':' and a port after ']'",
					    uri);
		port = host_end + 2;
	} else {
		host_end = strrchr(rest, ':');
		if (!host_end)
			return gw_error_set(err, -EINVAL, "%s: missing port", uri);
		if (memchr(rest, ':', (size_t)(host_end - rest)))
			return gw_error_set(err, -EINVAL,
					    "%s: an IPv6 address must be in brackets, as in tcp:[::1]:4444",
					    uri);
		port = host_end + 1;
	}
	if (host_end == host && !listening)
		return gw_error_set(err, -EINVAL, "%s: missing host", uri);
	if ((size_t)(host_end - host) >= sizeof(u->host))
		return gw_error_set(err, -EINVAL, "%s: host name too long", uri);
	if (!*port)
		return gw_error_set(err, -EINVAL, "%s: missing port", uri);
	if (!parse_uint(port, 65535, &n))
		return gw_error_set(err, -EINVAL, "%s: port '%s' is not a number from %d to 65535",
				    uri, port, listening ? 0 : 1);
	if (n == 0 && !listening)
		return gw_error_set(err, -EINVAL, "%s: cannot connect to port 0", uri);
	memcpy(u->host, host, (size_t)(host_end - host));
	u->host[host_end - host] = '\0';
	snprintf(u->port, sizeof(u->port), "%lu", n);
	return 0;
}

static int parse_unix(const char *uri, const char *rest, struct uri *u, struct gw_error *err)
{
	if (!*rest)
		return gw_error_set(err, -EINVAL, "%s: missing socket path", uri);
	if (strlen(rest) >= sizeof(((struct sockaddr_un *)0)->sun_path))
		return gw_error_set(err, -ENAMETOOLONG,
				    "%s: path is %zu bytes, a unix socket address holds at most %zu",
				    uri, strlen(rest),
				    sizeof(((struct sockaddr_un *)0)->sun_path) - 1);
	u->path = rest;
	return 0;
}

static int parse_fd(const char *uri, const char *rest, struct uri *u, struct gw_error *err)
{
	unsigned long n;

	if (!parse_uint(rest, INT_MAX, &n))
		return gw_error_set(err, -EINVAL, "%s: '%s' is not a file descriptor number", uri,
				    rest);
	u->fd = (int)n;
	return 0;
}

static int parse_exec(const char *uri, const char *rest, struct uri *u, struct gw_error *err)
{
	if (!*rest)
		return gw_error_set(err, -EINVAL, "%s: missing command", uri);
	u->cmd = rest;
	return 0;
}

static int parse_file(const char *uri, const char *rest, struct uri *u, struct gw_error *err)
{
	if (!*rest)
		return gw_error_set(err, -EINVAL, "%s: missing file name", uri);
	u->path = rest;
	return 0;
}

/* --- fds ----------------------------------------------------------------- */

/*
 * Move fd off 0, 1 and 2, where it lands when the program started with
 * stdio closed: a library fd there would be written to by the program's
 * printf(), and a zeroed gw_channel (fd 0) could not be told from an open
 * one. Closes fd; returns the new one, or -1 with errno.
 */
static int above_stdio(int fd)
{
	int moved, saved;

	if (fd < 0 || fd > STDERR_FILENO)
		return fd;
	moved = fcntl(fd, F_DUPFD_CLOEXEC, STDERR_FILENO + 1);
	saved = errno;
	close(fd);
	errno = saved;
	return moved;
}

static int set_nonblock(int fd, bool on)
{
	int flags = fcntl(fd, F_GETFL);

	if (flags < 0)
		return -errno;
	flags = on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK;
	return fcntl(fd, F_SETFL, flags) < 0 ? -errno : 0;
}

static void close_fd(int fd)
{
	if (fd >= 0)
		close(fd);
}

/*
 * Wait until fd has one of events, for at most timeout_ms (-1: no limit),
 * or until cancel_fd is readable: 1 ready, 0 timed out, -ECANCELED, or
 * -errno. Ready wins over a cancel that came at the same time: a command
 * that exited on its own has a status worth reporting. poll() skips a
 * negative fd, so fd -1 makes a cancellable sleep and cancel_fd -1 a
 * plain wait. A signal does not stretch the wait.
 */
static int wait_or_cancel(int fd, short events, int cancel_fd, int timeout_ms)
{
	struct pollfd p[2] = {
		{.fd = cancel_fd, .events = POLLIN},
		{.fd = fd, .events = events},
	};
	uint64_t deadline = gw_now_ns() + (uint64_t)(timeout_ms < 0 ? 0 : timeout_ms) * 1000000;
	int n;

	for (;;) {
		uint64_t now = gw_now_ns();
		int left = timeout_ms < 0  ? -1 :
			   now >= deadline ? 0 :
					     (int)((deadline - now + 999999) / 1000000);

		n = poll(p, 2, left);
		if (n >= 0 || errno != EINTR)
			break;
	}
	if (n < 0)
		return -errno;
	if (p[1].revents)
		return 1;
	if (p[0].revents & POLLNVAL)
		return -EBADF;
	return p[0].revents ? -ECANCELED : 0;
}

/* A cancel that came before we started: nothing is begun. */
static bool cancelled(int cancel_fd)
{
	return wait_or_cancel(-1, 0, cancel_fd, 0) == -ECANCELED;
}

/* A blocking channel with no command; exec: adds its own. */
static void channel_init(struct gw_channel *ch, int fd, bool is_socket, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static void channel_init(struct gw_channel *ch, int fd, bool is_socket, const char *fmt, ...)
{
	const int one = 1;
	va_list ap;

	/*
	 * A TCP socket sends every write at once (no Nagle): the writer
	 * batches the stream itself, and what would wait is the small message
	 * after a pause in the traffic (READY, GO, a page request, the last
	 * piece of a flush), for the peer's delayed ACK: 40 ms of blackout
	 * in the post-copy switch here. Not TCP (a unix socket, a pipe): the
	 * call fails and changes nothing.
	 */
	if (is_socket)
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	ch->fd = fd;
	ch->nonblocking = false;
	ch->bidirectional = is_socket;
	ch->is_socket = is_socket;
	ch->child = 0;
	ch->pidfd = -1;
	va_start(ap, fmt);
	vsnprintf(ch->desc, sizeof(ch->desc), fmt, ap);
	va_end(ap);
}

static struct gw_listener *listener_new(const char *address)
{
	size_t len = strlen(address) + 1;
	struct gw_listener *l = calloc(1, sizeof(*l) + len);

	if (!l)
		return NULL;
	l->fd = -1;
	memcpy(l->address, address, len);
	return l;
}

/* --- sockets ------------------------------------------------------------- */

/* "127.0.0.1:4444" or "[::1]:4444". */
static void format_sockaddr(const struct sockaddr *sa, socklen_t len, char *buf, size_t size)
{
	char host[HOST_MAX], port[8];

	if (getnameinfo(sa, len, host, sizeof(host), port, sizeof(port),
			NI_NUMERICHOST | NI_NUMERICSERV)) {
		snprintf(buf, size, "(address family %d)", sa->sa_family);
		return;
	}
	snprintf(buf, size, sa->sa_family == AF_INET6 ? "[%s]:%s" : "%s:%s", host, port);
}

/*
 * Buffer sizes are left to the kernel: SO_SNDBUF/SO_RCVBUF of 1 to 16 MiB
 * measured no faster over loopback than the defaults (1 GiB in 256 KiB
 * writev()s), and a fixed SO_RCVBUF turns off receive autotuning, which
 * a long-distance link needs.
 */
static int stream_socket(int family, int flags)
{
	return above_stdio(socket(family, SOCK_STREAM | SOCK_CLOEXEC | flags, 0));
}

/*
 * Connect where a cancel can interrupt: the socket is non-blocking until
 * connected, then blocking like every channel. 0, -ECANCELED, or -errno.
 */
static int connect_fd(int fd, const struct sockaddr *sa, socklen_t len, int cancel_fd)
{
	socklen_t elen = sizeof(int);
	int e, ret;

	while (connect(fd, sa, len) < 0) {
		if (errno == EAGAIN) {
			/* unix: the listener's backlog is full (RETRY_MS). */
			ret = wait_or_cancel(-1, 0, cancel_fd, RETRY_MS);
			if (ret < 0)
				return ret;
			continue;
		}
		if (errno != EINPROGRESS)
			return -errno;
		/* TCP: the kernel goes on with the handshake; its SYN retries
		 * bound the wait (about two minutes by default). */
		ret = wait_or_cancel(fd, POLLOUT, cancel_fd, -1);
		if (ret < 0)
			return ret;
		if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &elen) < 0)
			return -errno;
		if (e)
			return -e;
		break;
	}
	return set_nonblock(fd, false);
}

static int resolve(const char *uri, const struct uri *u, bool listening, struct addrinfo **res,
		   struct gw_error *err)
{
	struct addrinfo hints = {
		.ai_socktype = SOCK_STREAM,
		.ai_flags = AI_NUMERICSERV | (listening ? AI_PASSIVE : 0),
	};
	int ret = getaddrinfo(*u->host ? u->host : NULL, u->port, &hints, res);

	if (ret == 0)
		return 0;
	if (ret == EAI_SYSTEM)
		return gw_error_set(err, -errno, "%s: cannot resolve '%s': %s", uri, u->host,
				    gw_strerror(errno));
	return gw_error_set(err, ret == EAI_MEMORY ? -ENOMEM : -EHOSTUNREACH,
			    "%s: cannot resolve '%s': %s", uri, u->host, gai_strerror(ret));
}

/* Name resolution cannot be cancelled: getaddrinfo() has no way to stop
 * it, and the resolver's own timeouts (resolv.conf) bound it. */
static int tcp_connect(const char *uri, const struct uri *u, int cancel_fd, struct gw_channel *ch,
		       struct gw_error *err)
{
	char tried[GW_ERROR_MSG_MAX] = "", addr[ADDR_MAX];
	struct addrinfo *res, *ai;
	size_t used = 0;
	int fd = -1, ret;

	ret = resolve(uri, u, false, &res, err);
	if (ret < 0)
		return ret;
	ret = -EHOSTUNREACH;
	/* A name may have several addresses (::1 and 127.0.0.1): the first
	 * that answers wins, and a failure lists what each one said. */
	for (ai = res; ai; ai = ai->ai_next) {
		format_sockaddr(ai->ai_addr, ai->ai_addrlen, addr, sizeof(addr));
		fd = stream_socket(ai->ai_family, SOCK_NONBLOCK);
		ret = fd < 0 ? -errno : connect_fd(fd, ai->ai_addr, ai->ai_addrlen, cancel_fd);
		if (ret == 0)
			break;
		close_fd(fd);
		fd = -1;
		if (ret == -ECANCELED) {
			freeaddrinfo(res);
			return gw_error_set(err, ret, "%s: cancelled while connecting to %s", uri,
					    addr);
		}
		if (used < sizeof(tried))
			used += (size_t)snprintf(tried + used, sizeof(tried) - used, "%s%s: %s",
						 used ? "; " : "", addr, gw_strerror(ret));
	}
	freeaddrinfo(res);
	if (fd < 0)
		return gw_error_set(err, ret, "%s: cannot connect to %s", uri, tried);
	channel_init(ch, fd, true, "tcp %s", addr);
	return 0;
}

static int listen_on(int fd, const struct sockaddr *sa, socklen_t len)
{
	int one = 1;

	/* A destination restarted on the same port must not wait for the
	 * previous run's connections to leave TIME_WAIT. */
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0)
		return -errno;
	if (bind(fd, sa, len) < 0)
		return -errno;
	/* Room for several channels of one migration connecting at once. */
	return listen(fd, SOMAXCONN) < 0 ? -errno : 0;
}

static int tcp_listen(const char *uri, const struct uri *u, struct gw_listener **out,
		      struct gw_error *err)
{
	char addr[ADDR_MAX] = "", uri_addr[ADDR_MAX + 4];
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	struct addrinfo *res, *ai = NULL;
	struct gw_listener *l;
	int fd = -1, ret, zero = 0;

	ret = resolve(uri, u, true, &res, err);
	if (ret < 0)
		return ret;
	ret = -EADDRNOTAVAIL;
	/*
	 * "tcp::PORT" means every address. glibc lists 0.0.0.0 before ::, but
	 * one IPv6 socket that also accepts IPv4 (V6ONLY off) serves both, so
	 * the IPv6 wildcard goes first; a kernel without IPv6 falls back.
	 */
	for (int pass = *u->host ? 1 : 0; pass < 2 && fd < 0; pass++) {
		for (ai = res; ai; ai = ai->ai_next) {
			if (pass == 0 && ai->ai_family != AF_INET6)
				continue;
			fd = stream_socket(ai->ai_family, SOCK_NONBLOCK);
			ret = fd < 0 ? -errno : 0;
			if (ret == 0 && pass == 0)
				ret = setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero,
						 sizeof(zero)) < 0 ?
					      -errno :
					      0;
			if (ret == 0)
				ret = listen_on(fd, ai->ai_addr, ai->ai_addrlen);
			if (ret == 0)
				break;
			close_fd(fd);
			fd = -1;
			format_sockaddr(ai->ai_addr, ai->ai_addrlen, addr, sizeof(addr));
		}
	}
	freeaddrinfo(res);
	if (fd < 0)
		return gw_error_set(err, ret, "%s: cannot listen on %s: %s", uri, addr,
				    gw_strerror(ret));
	/* Port 0 picked a port: the address to give the source is the real one. */
	if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0) {
		ret = -errno;
		close(fd);
		return gw_error_set(err, ret, "%s: getsockname: %s", uri, gw_strerror(ret));
	}
	format_sockaddr((struct sockaddr *)&ss, len, addr, sizeof(addr));
	snprintf(uri_addr, sizeof(uri_addr), "tcp:%s", addr);
	l = listener_new(uri_addr);
	if (!l) {
		close(fd);
		return gw_error_set(err, -ENOMEM, "%s: out of memory", uri);
	}
	l->fd = fd;
	snprintf(l->desc, sizeof(l->desc), "tcp %s", addr);
	*out = l;
	return 0;
}

static void unix_sockaddr(const char *path, struct sockaddr_un *sun)
{
	memset(sun, 0, sizeof(*sun));
	sun->sun_family = AF_UNIX;
	/* parse_unix() checked that it fits. */
	memcpy(sun->sun_path, path, strlen(path) + 1);
}

static int unix_connect(const char *uri, const struct uri *u, int cancel_fd, struct gw_channel *ch,
			struct gw_error *err)
{
	struct sockaddr_un sun;
	int fd, ret;

	unix_sockaddr(u->path, &sun);
	fd = stream_socket(AF_UNIX, SOCK_NONBLOCK);
	if (fd < 0)
		return gw_error_set(err, -errno, "%s: socket: %s", uri, gw_strerror(errno));
	ret = connect_fd(fd, (struct sockaddr *)&sun, sizeof(sun), cancel_fd);
	if (ret < 0)
		close(fd);
	if (ret == -ECANCELED)
		return gw_error_set(err, ret,
				    "%s: cancelled while waiting for room in the listener's backlog",
				    uri);
	if (ret < 0)
		return gw_error_set(err, ret, "%s: cannot connect: %s", uri, gw_strerror(ret));
	channel_init(ch, fd, true, "unix %s", u->path);
	return 0;
}

static int unix_listen(const char *uri, const struct uri *u, struct gw_listener **out,
		       struct gw_error *err)
{
	struct sockaddr_un sun;
	struct gw_listener *l;
	struct stat st;
	int fd, ret;

	/* A socket file outlives its process: one left by a crashed
	 * destination is replaced, anything else is not ours to delete. */
	if (lstat(u->path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode))
			return gw_error_set(err, -EEXIST, "%s: '%s' exists and is not a socket",
					    uri, u->path);
		if (unlink(u->path) < 0)
			return gw_error_set(err, -errno, "%s: cannot remove the old socket: %s",
					    uri, gw_strerror(errno));
	}
	unix_sockaddr(u->path, &sun);
	fd = stream_socket(AF_UNIX, SOCK_NONBLOCK);
	if (fd < 0)
		return gw_error_set(err, -errno, "%s: socket: %s", uri, gw_strerror(errno));
	ret = listen_on(fd, (struct sockaddr *)&sun, sizeof(sun));
	if (ret == 0)
		ret = lstat(u->path, &st) < 0 ? -errno : 0;
	if (ret < 0) {
		close(fd);
		return gw_error_set(err, ret, "%s: cannot listen: %s", uri, gw_strerror(ret));
	}
	l = listener_new(uri);
	if (!l) {
		close(fd);
		unlink(u->path);
		return gw_error_set(err, -ENOMEM, "%s: out of memory", uri);
	}
	l->fd = fd;
	l->owns_path = true;
	l->dev = st.st_dev;
	l->ino = st.st_ino;
	snprintf(l->desc, sizeof(l->desc), "unix %s", u->path);
	*out = l;
	return 0;
}

/* --- fd:N ---------------------------------------------------------------- */

/*
 * Our own copy of the caller's fd N, so closing the channel leaves N to
 * its owner. *listening tells whether it is a listening socket.
 */
static int fd_take(const char *uri, int n, int *out, bool *is_socket, bool *listening,
		   struct gw_error *err)
{
	struct stat st;
	socklen_t len = sizeof(int);
	int fd, acc = 0;

	if (fcntl(n, F_GETFD) < 0)
		return gw_error_set(err, -errno, "%s: fd %d is not open", uri, n);
	if (fstat(n, &st) < 0)
		return gw_error_set(err, -errno, "%s: fstat: %s", uri, gw_strerror(errno));
	*is_socket = S_ISSOCK(st.st_mode);
	if (*is_socket && getsockopt(n, SOL_SOCKET, SO_ACCEPTCONN, &acc, &len) < 0)
		return gw_error_set(err, -errno, "%s: getsockopt: %s", uri, gw_strerror(errno));
	*listening = acc != 0;
	fd = fcntl(n, F_DUPFD_CLOEXEC, STDERR_FILENO + 1);
	if (fd < 0)
		return gw_error_set(err, -errno, "%s: cannot duplicate fd %d: %s", uri, n,
				    gw_strerror(errno));
	*out = fd;
	return 0;
}

/*
 * A channel fd is blocking, a listening one is not. O_NONBLOCK belongs to
 * the open file, which N shares: fine, the caller gave the file to the
 * migration. Closes fd on failure.
 */
static int fd_set_blocking(const char *uri, int fd, bool blocking, struct gw_error *err)
{
	int ret = set_nonblock(fd, !blocking);

	if (ret < 0) {
		close(fd);
		return gw_error_set(err, ret, "%s: cannot make it %sblocking: %s", uri,
				    blocking ? "" : "non-", gw_strerror(ret));
	}
	return 0;
}

static int fd_connect(const char *uri, const struct uri *u, int cancel_fd, struct gw_channel *ch,
		      struct gw_error *err)
{
	bool is_socket = false, listening = false;
	int fd = -1, ret;

	(void)cancel_fd; /* the fd is there already: nothing to wait for */

	ret = fd_take(uri, u->fd, &fd, &is_socket, &listening, err);
	if (ret < 0)
		return ret;
	if (listening) {
		close(fd);
		return gw_error_set(err, -EINVAL,
				    "%s: fd %d is a listening socket; the source needs a connected one",
				    uri, u->fd);
	}
	ret = fd_set_blocking(uri, fd, true, err);
	if (ret < 0)
		return ret;
	channel_init(ch, fd, is_socket, "fd %d", u->fd);
	return 0;
}

static int fd_listen(const char *uri, const struct uri *u, struct gw_listener **out,
		     struct gw_error *err)
{
	struct gw_listener *l;
	bool is_socket = false, listening = false;
	int fd = -1, ret;

	ret = fd_take(uri, u->fd, &fd, &is_socket, &listening, err);
	if (ret < 0)
		return ret;
	ret = fd_set_blocking(uri, fd, !listening, err);
	if (ret < 0)
		return ret;
	l = listener_new(uri);
	if (!l) {
		close(fd);
		return gw_error_set(err, -ENOMEM, "%s: out of memory", uri);
	}
	snprintf(l->desc, sizeof(l->desc), "fd %d", u->fd);
	if (listening) {
		l->fd = fd;
	} else {
		channel_init(&l->ready, fd, is_socket, "fd %d", u->fd);
		l->has_ready = true;
	}
	*out = l;
	return 0;
}

/* --- exec: --------------------------------------------------------------- */

/*
 * Run /bin/sh -c cmd with child_fd as its fd target (0 or 1). posix_spawn
 * because it does not copy the page tables of a VMM that maps gigabytes.
 * The child gets:
 *  - its own process group, so gw_channel_abort() kills all of
 *    `cat | ssh host ...`: any of them holding the pipe keeps a blocked
 *    writer blocked;
 *  - SIGPIPE and SIGTERM back to the default and no blocked signals,
 *    whatever the calling thread had: a program that must ignore SIGPIPE
 *    (see the header) would otherwise pass that on to cat and ssh, and
 *    gw_channel_end() ends a lingering command with SIGTERM first.
 * Our end of the pipe is close-on-exec, so only the child's end reaches it.
 */
static int spawn_shell(const char *uri, const char *cmd, int child_fd, int target, pid_t *pid,
		       struct gw_error *err)
{
	char *argv[] = {"sh", "-c", (char *)cmd, NULL};
	posix_spawn_file_actions_t actions;
	posix_spawnattr_t attr;
	sigset_t none, defaults;
	int ret;

	sigemptyset(&none);
	sigemptyset(&defaults);
	sigaddset(&defaults, SIGPIPE);
	sigaddset(&defaults, SIGTERM);
	posix_spawn_file_actions_init(&actions);
	posix_spawnattr_init(&attr);
	/* The copy dup2 makes is not close-on-exec: only it reaches the shell. */
	ret = posix_spawn_file_actions_adddup2(&actions, child_fd, target);
	if (ret == 0)
		ret = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP |
							      POSIX_SPAWN_SETSIGMASK |
							      POSIX_SPAWN_SETSIGDEF);
	if (ret == 0)
		ret = posix_spawnattr_setpgroup(&attr, 0);
	if (ret == 0)
		ret = posix_spawnattr_setsigmask(&attr, &none);
	if (ret == 0)
		ret = posix_spawnattr_setsigdefault(&attr, &defaults);
	if (ret == 0)
		ret = posix_spawn(pid, "/bin/sh", &actions, &attr, argv, environ);
	posix_spawnattr_destroy(&attr);
	posix_spawn_file_actions_destroy(&actions);
	if (ret)
		return gw_error_set(err, -ret, "%s: cannot start /bin/sh: %s", uri,
				    gw_strerror(ret));
	return 0;
}

/* A process we started and cannot watch: stop it and collect it. A fresh
 * shell killed with SIGKILL exits at once, so the wait is short. */
static void kill_and_reap(pid_t pid)
{
	kill(-pid, SIGKILL);
	while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
		;
}

/*
 * The command with a pipe to (to_child) or from it, as ch. Our end is
 * non-blocking (nobody else has that open file, so the flag is ours to
 * set): I/O on it waits in poll(), where a cancel can reach it. The
 * shell's end stays blocking, as programs expect.
 */
static int exec_spawn(const char *uri, const char *cmd, bool to_child, struct gw_channel *ch,
		      struct gw_error *err)
{
	int p[2], ours, theirs, pidfd, ret;
	pid_t pid;

	if (pipe2(p, O_CLOEXEC) < 0)
		return gw_error_set(err, -errno, "%s: pipe: %s", uri, gw_strerror(errno));
	ours = above_stdio(p[to_child ? 1 : 0]);
	theirs = above_stdio(p[to_child ? 0 : 1]);
	ret = ours < 0 || theirs < 0 ? -errno : set_nonblock(ours, true);
	if (ret < 0) {
		close_fd(ours);
		close_fd(theirs);
		return gw_error_set(err, ret, "%s: pipe: %s", uri, gw_strerror(ret));
	}
	/* A failure leaves the default size: slower, not wrong. */
	(void)fcntl(ours, F_SETPIPE_SZ, EXEC_PIPE_SIZE);
	ret = spawn_shell(uri, cmd, theirs, to_child ? STDIN_FILENO : STDOUT_FILENO, &pid, err);
	close(theirs);
	if (ret < 0) {
		close(ours);
		return ret;
	}
	/* Race-free: pid is our unreaped child, so it cannot be reused yet. */
	pidfd = above_stdio(pidfd_open(pid, 0));
	if (pidfd < 0) {
		ret = -errno;
		close(ours);
		kill_and_reap(pid);
		return gw_error_set(err, ret, "%s: cannot watch the command (pidfd_open): %s", uri,
				    gw_strerror(ret));
	}
	channel_init(ch, ours, false, "exec '%s'", cmd);
	ch->nonblocking = true;
	ch->child = pid;
	ch->pidfd = pidfd;
	return 0;
}

static int exec_connect(const char *uri, const struct uri *u, int cancel_fd, struct gw_channel *ch,
			struct gw_error *err)
{
	(void)cancel_fd; /* spawning does not wait for the command */
	return exec_spawn(uri, u->cmd, true, ch, err);
}

static int exec_listen(const char *uri, const struct uri *u, struct gw_listener **out,
		       struct gw_error *err)
{
	struct gw_listener *l = listener_new(uri);
	int ret;

	if (!l)
		return gw_error_set(err, -ENOMEM, "%s: out of memory", uri);
	ret = exec_spawn(uri, u->cmd, false, &l->ready, err);
	if (ret < 0) {
		free(l);
		return ret;
	}
	l->has_ready = true;
	*out = l;
	return 0;
}

/* --- file: --------------------------------------------------------------- */

static int file_open_failed(const char *uri, const char *path, bool writing, int e,
			    struct gw_error *err)
{
	return gw_error_set(err, -e, "%s: cannot open '%s' for %s: %s", uri, path,
			    writing ? "writing" : "reading", gw_strerror(e));
}

/*
 * Open path for writing, created with mode 0600 (it holds guest memory).
 * O_NONBLOCK makes open() of a FIFO with no reader fail with ENXIO at
 * once instead of sleeping until one comes; we try again (RETRY_MS) until
 * one does or cancel_fd is readable. A FIFO stays non-blocking (*fifo):
 * the open file is ours alone, and a cancel can then wake a writer whose
 * reader stopped reading. Anything else is made blocking again.
 * ENXIO also means a socket file or a device with no driver: not retried.
 * A slow path (NFS) can still hold open() itself: the caller's thread
 * waits, not its event loop.
 */
static int file_open_writing(const char *uri, const char *path, int cancel_fd, int *out, bool *fifo,
			     struct gw_error *err)
{
	struct stat st;
	int fd, ret;

	for (;;) {
		int e;

		fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NONBLOCK, 0600);
		if (fd >= 0)
			break;
		e = errno;
		if (e == EINTR)
			continue;
		if (e != ENXIO || stat(path, &st) < 0 || !S_ISFIFO(st.st_mode))
			return file_open_failed(uri, path, true, e, err);
		ret = wait_or_cancel(-1, 0, cancel_fd, RETRY_MS);
		if (ret == -ECANCELED)
			return gw_error_set(err, ret,
					    "%s: cancelled while waiting for a reader to open the FIFO",
					    uri);
		if (ret < 0)
			return gw_error_set(err, ret, "%s: waiting for a reader of the FIFO: %s",
					    uri, gw_strerror(ret));
	}
	fd = above_stdio(fd);
	if (fd < 0)
		return file_open_failed(uri, path, true, errno, err);
	ret = fstat(fd, &st) < 0 ? -errno : 0;
	*fifo = ret == 0 && S_ISFIFO(st.st_mode);
	if (ret == 0 && !*fifo)
		ret = set_nonblock(fd, false);
	if (ret < 0) {
		close(fd);
		return gw_error_set(err, ret, "%s: cannot make '%s' blocking: %s", uri, path,
				    gw_strerror(ret));
	}
	*out = fd;
	return 0;
}

static int file_open_reading(const char *uri, const char *path, int *out, struct gw_error *err)
{
	struct stat st;
	int fd;

	do
		fd = open(path, O_RDONLY | O_CLOEXEC);
	while (fd < 0 && errno == EINTR);
	fd = above_stdio(fd);
	if (fd < 0)
		return file_open_failed(uri, path, false, errno, err);
	/* Reading opens a directory fine and fails only at the first read. */
	if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
		close(fd);
		return gw_error_set(err, -EISDIR, "%s: '%s' is a directory", uri, path);
	}
	*out = fd;
	return 0;
}

static int file_connect(const char *uri, const struct uri *u, int cancel_fd, struct gw_channel *ch,
			struct gw_error *err)
{
	bool fifo = false;
	int fd = -1, ret = file_open_writing(uri, u->path, cancel_fd, &fd, &fifo, err);

	if (ret < 0)
		return ret;
	channel_init(ch, fd, false, "file %s", u->path);
	ch->nonblocking = fifo;
	return 0;
}

static int file_listen(const char *uri, const struct uri *u, struct gw_listener **out,
		       struct gw_error *err)
{
	struct gw_listener *l;
	int fd = -1, ret = file_open_reading(uri, u->path, &fd, err);

	if (ret < 0)
		return ret;
	l = listener_new(uri);
	if (!l) {
		close(fd);
		return gw_error_set(err, -ENOMEM, "%s: out of memory", uri);
	}
	channel_init(&l->ready, fd, false, "file %s", u->path);
	l->has_ready = true;
	*out = l;
	return 0;
}

/* --- the table ----------------------------------------------------------- */

static const struct transport transports[] = {
	{"tcp:", parse_tcp, tcp_connect, tcp_listen},
	{"unix:", parse_unix, unix_connect, unix_listen},
	{"fd:", parse_fd, fd_connect, fd_listen},
	{"exec:", parse_exec, exec_connect, exec_listen},
	{"file:", parse_file, file_connect, file_listen},
};

/* "tcp:, unix:, ...", for the message that lists what there is. */
static const char *transport_list(char *buf, size_t size)
{
	size_t used = 0;

	buf[0] = '\0';
	for (size_t i = 0; i < GW_ARRAY_SIZE(transports) && used < size; i++)
		used += (size_t)snprintf(buf + used, size - used, "%s%s", i ? ", " : "",
					 transports[i].prefix);
	return buf;
}

static int parse_uri(const char *uri, bool listening, struct uri *u, struct gw_error *err)
{
	const char *colon = strchr(uri, ':');
	char list[64];

	memset(u, 0, sizeof(*u));
	u->listening = listening;
	for (size_t i = 0; i < GW_ARRAY_SIZE(transports); i++) {
		size_t len = strlen(transports[i].prefix);

		if (!strncmp(uri, transports[i].prefix, len)) {
			u->t = &transports[i];
			return u->t->parse(uri, uri + len, u, err);
		}
	}
	if (!colon)
		return gw_error_set(err, -EINVAL, "'%s': no transport (expected %s)", uri,
				    transport_list(list, sizeof(list)));
	return gw_error_set(err, -EINVAL, "unknown transport '%.*s' in '%s' (expected %s)",
			    (int)(colon - uri), uri, uri, transport_list(list, sizeof(list)));
}

/* --- the API ------------------------------------------------------------- */

int gw_channel_connect_cancellable(const char *uri, int cancel_fd, struct gw_channel *out,
				   struct gw_error *err)
{
	struct uri u;
	int ret = parse_uri(uri, false, &u, err);

	if (ret < 0)
		return ret;
	if (cancelled(cancel_fd))
		return gw_error_set(err, -ECANCELED, "%s: cancelled before connecting", uri);
	return u.t->connect(uri, &u, cancel_fd, out, err);
}

int gw_channel_connect(const char *uri, struct gw_channel *out, struct gw_error *err)
{
	return gw_channel_connect_cancellable(uri, -1, out, err);
}

/* Channel fds are never 0..2 (above_stdio), so a zeroed channel has none. */
static bool channel_has_fd(const struct gw_channel *ch)
{
	return ch->fd > STDERR_FILENO;
}

int gw_channel_close_stream(struct gw_channel *ch, struct gw_error *err)
{
	int ret = 0;

	if (channel_has_fd(ch)) {
		/* EINTR from close() still closed the fd on Linux. */
		if (close(ch->fd) < 0 && errno != EINTR)
			ret = gw_error_set(err, -errno, "%s: close: %s", ch->desc,
					   gw_strerror(errno));
		ch->fd = -1;
	}
	return ret;
}

/* Collect the command, which has exited (its pidfd is readable), and
 * forget it: after this its pid may belong to another process. */
static int reap(struct gw_channel *ch, int *status)
{
	pid_t pid;

	while ((pid = waitpid(ch->child, status, 0)) < 0 && errno == EINTR)
		;
	close_fd(ch->pidfd);
	ch->child = 0;
	ch->pidfd = -1;
	return pid < 0 ? -errno : 0;
}

/* The command's own ending: a failure unless it exited 0. */
static int exit_status(const struct gw_channel *ch, int status, struct gw_error *err)
{
	if (WIFSIGNALED(status))
		return gw_error_set(err, -EIO, "%s was killed by signal %d (%s)", ch->desc,
				    WTERMSIG(status), sigabbrev_np(WTERMSIG(status)) ?: "?");
	if (WEXITSTATUS(status) == 127)
		return gw_error_set(err, -EIO, "%s exited with status 127 (command not found?)",
				    ch->desc);
	if (WEXITSTATUS(status) != 0)
		return gw_error_set(err, -EIO, "%s exited with status %d", ch->desc,
				    WEXITSTATUS(status));
	return 0;
}

/* Signal the command's process group (spawn_shell) and wait up to ms for
 * the command to exit. */
static bool signal_and_wait(const struct gw_channel *ch, int sig, int ms)
{
	kill(-ch->child, sig);
	return wait_or_cancel(ch->pidfd, POLLIN, -1, ms) > 0;
}

int gw_channel_end(struct gw_channel *ch, int cancel_fd, unsigned grace_ms, struct gw_error *err)
{
	int grace = grace_ms > INT_MAX ? INT_MAX : (int)grace_ms;
	int ret = gw_channel_close_stream(ch, err), status, code;
	char why[GW_ERROR_MSG_MAX / 2];

	if (ch->child <= 0)
		return ret;
	code = wait_or_cancel(ch->pidfd, POLLIN, cancel_fd, grace);
	if (code > 0) {
		int st = reap(ch, &status);

		if (st < 0)
			return gw_error_set(err, st, "%s: cannot wait for the command: %s",
					    ch->desc, gw_strerror(st));
		st = exit_status(ch, status, err);
		return st < 0 ? st : ret;
	}
	if (code == 0) {
		code = -ETIMEDOUT;
		snprintf(why, sizeof(why), "%s did not exit within %d ms of the end of the stream",
			 ch->desc, grace);
	} else if (code == -ECANCELED) {
		snprintf(why, sizeof(why), "%s: cancelled while waiting for it to exit", ch->desc);
	} else {
		snprintf(why, sizeof(why), "%s: cannot wait for it to exit: %s", ch->desc,
			 gw_strerror(code));
	}
	/* From here the stream fails, whatever the command's status: it did
	 * not finish on its own, so nothing says the stream reached its end.
	 * How it then ended (reap) adds nothing to that. */
	if (signal_and_wait(ch, SIGTERM, grace)) {
		(void)reap(ch, &status);
		return gw_error_set(err, code, "%s; sent SIGTERM", why);
	}
	if (signal_and_wait(ch, SIGKILL, KILL_WAIT_MS)) {
		(void)reap(ch, &status);
		return gw_error_set(err, code, "%s; sent SIGTERM, then SIGKILL %d ms later", why,
				    grace);
	}
	return gw_error_set(err, code,
			    "%s; sent SIGTERM, then SIGKILL %d ms later, and it has not exited "
			    "%d ms after that (stuck in the kernel?): not waited for",
			    why, grace, KILL_WAIT_MS);
}

int gw_channel_close(struct gw_channel *ch, struct gw_error *err)
{
	return gw_channel_end(ch, -1, GW_CHANNEL_CLOSE_GRACE_MS, err);
}

void gw_channel_abort(struct gw_channel *ch)
{
	/* shutdown() wakes a thread blocked in send/recv on the socket, where
	 * close() would not (and would free the fd number for reuse under it). */
	if (ch->is_socket && channel_has_fd(ch))
		shutdown(ch->fd, SHUT_RDWR);
	/* The whole process group (see spawn_shell): a dead reader makes the
	 * writer's write() fail with EPIPE, a dead writer gives EOF. */
	if (ch->child > 0)
		kill(-ch->child, SIGKILL);
}

int gw_channel_listen(const char *uri, struct gw_listener **out, struct gw_error *err)
{
	struct uri u;
	int ret = parse_uri(uri, true, &u, err);

	if (ret < 0)
		return ret;
	return u.t->listen(uri, &u, out, err);
}

int gw_listener_fd(const struct gw_listener *l)
{
	return l->fd;
}

int gw_listener_accept(struct gw_listener *l, struct gw_channel *out, struct gw_error *err)
{
	struct sockaddr_storage ss;
	char peer[ADDR_MAX];
	socklen_t len;
	int fd;

	if (l->has_ready) {
		*out = l->ready;
		l->has_ready = false;
		return 0;
	}
	if (l->fd < 0)
		return gw_error_set(err, -EINVAL, "%s: the channel was already accepted",
				    l->address);
	do {
		len = sizeof(ss);
		fd = accept4(l->fd, (struct sockaddr *)&ss, &len, SOCK_CLOEXEC);
		/* A connection reset before we got to it: maybe another waits. */
	} while (fd < 0 && (errno == EINTR || errno == ECONNABORTED));
	if (fd < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
		return gw_error_set(err, -EAGAIN, "%s: no connection waiting", l->address);
	fd = above_stdio(fd);
	if (fd < 0)
		return gw_error_set(err, -errno, "%s: accept: %s", l->address, gw_strerror(errno));
	/* accept4() does not pass the listener's O_NONBLOCK on: fd is blocking. */
	if (ss.ss_family == AF_INET || ss.ss_family == AF_INET6) {
		format_sockaddr((struct sockaddr *)&ss, len, peer, sizeof(peer));
		channel_init(out, fd, true, "tcp %s", peer);
	} else {
		channel_init(out, fd, true, "%s", l->desc);
	}
	return 0;
}

const char *gw_listener_address(const struct gw_listener *l)
{
	return l->address;
}

void gw_listener_free(struct gw_listener *l)
{
	struct stat st;

	if (!l)
		return;
	close_fd(l->fd);
	/* Only if it is still the socket we bound: a newer destination may
	 * have replaced it, and its socket is not ours to delete. */
	if (l->owns_path && lstat(l->address + strlen("unix:"), &st) == 0 && st.st_dev == l->dev &&
	    st.st_ino == l->ino)
		unlink(l->address + strlen("unix:"));
	if (l->has_ready) {
		/* A command nobody will read from is stopped, not waited for.
		 * (Not a shutdown(): an fd:N socket is also the caller's.) */
		if (l->ready.child > 0)
			gw_channel_abort(&l->ready);
		gw_channel_close(&l->ready, NULL);
	}
	free(l);
}
