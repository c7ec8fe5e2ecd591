/*
 * Transports over real sockets, pipes, processes and files: every URI
 * kind carries 8 MiB intact, every way of failing says what and where,
 * and every wait (connecting, a command that lingers) ends when cancelled
 * or when its grace runs out. Source and destination are threads of this
 * process.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <godwit/channel.h>

#include "check.h"

#define DATA_SIZE (8u << 20)

static char tmpdir[64];

static const char *tmp_path(const char *name)
{
	static char path[96]; /* fits a sun_path */

	snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
	return path;
}

/* --- data ---------------------------------------------------------------- */

static unsigned char *data;
static uint64_t data_hash;

static uint64_t fnv1a(const unsigned char *p, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ull;

	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 0x100000001b3ull;
	return h;
}

static void make_data(void)
{
	uint64_t x = 0x9e3779b97f4a7c15ull;

	data = malloc(DATA_SIZE);
	CHECK(data);
	for (size_t i = 0; i < DATA_SIZE; i += 8) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		memcpy(data + i, &x, 8);
	}
	data_hash = fnv1a(data, DATA_SIZE);
}

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* After EAGAIN on a non-blocking channel fd, as lib/transport/io.c does. */
static void wait_ready(int fd, short events)
{
	struct pollfd p = { .fd = fd, .events = events };

	CHECK(poll(&p, 1, -1) == 1);
}

static void write_all(int fd, const unsigned char *p, size_t n)
{
	while (n) {
		ssize_t w = write(fd, p, n < (1u << 20) ? n : (1u << 20));

		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && errno == EAGAIN) {
			wait_ready(fd, POLLOUT);
			continue;
		}
		if (w <= 0)
			FAIL("write: %s", strerror(errno));
		p += w;
		n -= (size_t)w;
	}
}

/* One read(), waiting first if the fd is non-blocking and nothing is there. */
static ssize_t read_some(int fd, void *buf, size_t n)
{
	for (;;) {
		ssize_t r = read(fd, buf, n);

		if (r >= 0 || (errno != EINTR && errno != EAGAIN))
			return r;
		if (errno == EAGAIN)
			wait_ready(fd, POLLIN);
	}
}

/* Read to end of file: exactly the data, by length and checksum. */
static void read_all_check(int fd)
{
	unsigned char *buf = malloc(DATA_SIZE + 1);
	size_t got = 0;
	ssize_t r;

	CHECK(buf);
	while (got <= DATA_SIZE && (r = read_some(fd, buf + got, DATA_SIZE + 1 - got)) != 0) {
		if (r < 0)
			FAIL("read: %s", strerror(errno));
		got += (size_t)r;
	}
	if (got != DATA_SIZE)
		FAIL("received %zu bytes, sent %u", got, DATA_SIZE);
	CHECK(fnv1a(buf, got) == data_hash);
	free(buf);
}

static void check_channel_fd(const struct gw_channel *ch)
{
	CHECK(ch->fd > 2);
	CHECK(fcntl(ch->fd, F_GETFD) & FD_CLOEXEC);
	CHECK(!!(fcntl(ch->fd, F_GETFL) & O_NONBLOCK) == ch->nonblocking);
	/* Only files nobody else has open: our end of an exec: pipe, a FIFO
	 * we opened. Never an fd:N, whose open file its owner shares. */
	if (ch->nonblocking)
		CHECK(ch->child > 0 || !strncmp(ch->desc, "file ", 5));
	if (ch->child > 0)
		CHECK(ch->nonblocking && ch->pidfd > 2);
	CHECK(ch->desc[0] != '\0');
}

/* --- round trips --------------------------------------------------------- */

struct source {
	const char *uri;
	int close_after_connect; /* the test's own copy of an fd:N, or -1 */
};

static void *source_run(void *p)
{
	struct source *s = p;
	struct gw_error err = { 0 };
	struct gw_channel ch;

	CHECK_OK(gw_channel_connect(s->uri, &ch, &err), &err);
	if (s->close_after_connect >= 0)
		close(s->close_after_connect);
	check_channel_fd(&ch);
	write_all(ch.fd, data, DATA_SIZE);
	CHECK_OK(gw_channel_close(&ch, &err), &err);
	return NULL;
}

/* Accept the one channel of l, waiting for it like an event loop would. */
static void accept_one(struct gw_listener *l, struct gw_channel *ch)
{
	struct gw_error err = { 0 };
	int fd = gw_listener_fd(l);

	if (fd >= 0) {
		struct pollfd p = { .fd = fd, .events = POLLIN };

		CHECK(fcntl(fd, F_GETFD) & FD_CLOEXEC);
		CHECK(fcntl(fd, F_GETFL) & O_NONBLOCK);
		CHECK(poll(&p, 1, -1) == 1);
	}
	CHECK_OK(gw_listener_accept(l, ch, &err), &err);
	check_channel_fd(ch);
}

static void receive(struct gw_listener *l)
{
	struct gw_error err = { 0 };
	struct gw_channel ch;

	accept_one(l, &ch);
	read_all_check(ch.fd);
	CHECK_OK(gw_channel_close(&ch, &err), &err);
}

/*
 * The destination listens on listen_uri; a source thread connects to
 * s->uri (NULL: the listener's address) and sends the data.
 */
static void roundtrip(const char *listen_uri, struct source s)
{
	struct gw_error err = { 0 };
	struct gw_listener *l;
	pthread_t t;

	CHECK_OK(gw_channel_listen(listen_uri, &l, &err), &err);
	if (!s.uri)
		s.uri = gw_listener_address(l);
	CHECK(pthread_create(&t, NULL, source_run, &s) == 0);
	receive(l);
	CHECK(pthread_join(t, NULL) == 0);
	gw_listener_free(l);
}

#define NO_FD (-1)

/* exec: and file: store, then load (the file must be complete first). */
static void store_and_load(const char *connect_uri, const char *listen_uri)
{
	struct source s = { .uri = connect_uri, .close_after_connect = NO_FD };
	struct gw_error err = { 0 };
	struct gw_listener *l;

	source_run(&s);
	CHECK_OK(gw_channel_listen(listen_uri, &l, &err), &err);
	CHECK(gw_listener_fd(l) == -1);
	receive(l);
	gw_listener_free(l);
}

static void test_tcp(void)
{
	struct gw_error err = { 0 };
	struct gw_listener *l;
	struct gw_channel ch;

	/* Port 0: the address has the real port, and nothing waits yet. */
	CHECK_OK(gw_channel_listen("tcp:127.0.0.1:0", &l, &err), &err);
	CHECK(!strncmp(gw_listener_address(l), "tcp:127.0.0.1:", 14));
	CHECK(strcmp(gw_listener_address(l), "tcp:127.0.0.1:0") != 0);
	CHECK_ERR(gw_listener_accept(l, &ch, &err), -EAGAIN, &err, "no connection waiting");
	gw_listener_free(l);

	roundtrip("tcp:127.0.0.1:0", (struct source){ .close_after_connect = NO_FD });
}

/* Every address ("tcp::PORT"), reached through a host name. */
static void test_tcp_names(void)
{
	struct source s = { .close_after_connect = NO_FD };
	struct gw_error err = { 0 };
	struct gw_listener *l;
	char uri[64];
	pthread_t t;

	CHECK_OK(gw_channel_listen("tcp::0", &l, &err), &err);
	snprintf(uri, sizeof(uri), "tcp:localhost:%s", strrchr(gw_listener_address(l), ':') + 1);
	s.uri = uri;
	CHECK(pthread_create(&t, NULL, source_run, &s) == 0);
	receive(l);
	CHECK(pthread_join(t, NULL) == 0);
	gw_listener_free(l);
}

static void test_tcp6(void)
{
	struct gw_error err = { 0 };
	struct gw_listener *l;
	int ret = gw_channel_listen("tcp:[::1]:0", &l, &err);

	if (ret == -EAFNOSUPPORT || ret == -EADDRNOTAVAIL) {
		printf("# skip IPv6 loopback: %s\n", err.msg);
		return;
	}
	CHECK_OK(ret, &err);
	CHECK(!strncmp(gw_listener_address(l), "tcp:[::1]:", 10));
	gw_listener_free(l);
	roundtrip("tcp:[::1]:0", (struct source){ .close_after_connect = NO_FD });
}

static void test_tcp_refused(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(a);
	struct gw_error err = { 0 };
	struct gw_channel ch;
	char uri[80], addr[64];
	/* Bound but not listening: the port stays ours, and connecting is refused. */
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	CHECK(bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0);
	CHECK(getsockname(fd, (struct sockaddr *)&a, &len) == 0);
	snprintf(addr, sizeof(addr), "127.0.0.1:%u", ntohs(a.sin_port));
	snprintf(uri, sizeof(uri), "tcp:%s", addr);
	CHECK_ERR(gw_channel_connect(uri, &ch, &err), -ECONNREFUSED, &err, uri,
		  "cannot connect to", addr, "Connection refused");
	close(fd);
}

static void test_unix(void)
{
	char uri[300];
	struct stat st;

	snprintf(uri, sizeof(uri), "unix:%s", tmp_path("sock"));
	roundtrip(uri, (struct source){ .close_after_connect = NO_FD });
	/* The listener removed the socket file it made. */
	CHECK(lstat(tmp_path("sock"), &st) < 0 && errno == ENOENT);
}

static void test_unix_stale(void)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	struct gw_error err = { 0 };
	struct gw_listener *l;
	char uri[300];
	int fd;

	/* What a crashed destination leaves behind: a socket file, nobody listening. */
	snprintf(a.sun_path, sizeof(a.sun_path), "%s", tmp_path("stale"));
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	CHECK(bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0);
	close(fd);
	snprintf(uri, sizeof(uri), "unix:%s", a.sun_path);
	roundtrip(uri, (struct source){ .close_after_connect = NO_FD });

	/* Anything else at the path is not ours to delete. */
	fd = open(a.sun_path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
	CHECK(fd >= 0);
	close(fd);
	CHECK_ERR(gw_channel_listen(uri, &l, &err), -EEXIST, &err, uri, "not a socket");
	CHECK(access(a.sun_path, F_OK) == 0);
	unlink(a.sun_path);
}

static void test_unix_too_long(void)
{
	struct gw_error err = { 0 };
	struct gw_listener *l;
	struct gw_channel ch;
	char uri[300];

	snprintf(uri, sizeof(uri), "unix:/tmp/%0200d", 0);
	CHECK_ERR(gw_channel_listen(uri, &l, &err), -ENAMETOOLONG, &err, uri, "205 bytes",
		  "at most 107");
	CHECK_ERR(gw_channel_connect(uri, &ch, &err), -ENAMETOOLONG, &err, "205 bytes");
}

static void test_fd_connected(void)
{
	char listen_uri[32], connect_uri[32];
	struct source s = { .uri = connect_uri };
	struct gw_error err = { 0 };
	struct gw_listener *l;
	pthread_t t;
	int sv[2];

	/* A connected pair: each side is ready at once. The test closes its
	 * own fds, so end of file comes from the channel's close. */
	CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	snprintf(listen_uri, sizeof(listen_uri), "fd:%d", sv[1]);
	snprintf(connect_uri, sizeof(connect_uri), "fd:%d", sv[0]);
	CHECK_OK(gw_channel_listen(listen_uri, &l, &err), &err);
	close(sv[1]);
	CHECK(gw_listener_fd(l) == -1);
	s.close_after_connect = sv[0];
	CHECK(pthread_create(&t, NULL, source_run, &s) == 0);
	receive(l);
	CHECK(pthread_join(t, NULL) == 0);
	gw_listener_free(l);

	/* A listener freed unused leaves the caller's socket working. */
	CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	snprintf(listen_uri, sizeof(listen_uri), "fd:%d", sv[1]);
	CHECK_OK(gw_channel_listen(listen_uri, &l, &err), &err);
	gw_listener_free(l);
	CHECK(write(sv[0], "x", 1) == 1);
	CHECK(read(sv[1], listen_uri, 1) == 1 && listen_uri[0] == 'x');
	close(sv[0]);
	close(sv[1]);
}

static void test_fd_listening(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(a);
	char listen_uri[32], connect_uri[64];
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	/* A listening socket handed over: accepted on like our own. */
	CHECK(bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0);
	CHECK(listen(fd, 4) == 0);
	CHECK(getsockname(fd, (struct sockaddr *)&a, &len) == 0);
	snprintf(listen_uri, sizeof(listen_uri), "fd:%d", fd);
	snprintf(connect_uri, sizeof(connect_uri), "tcp:127.0.0.1:%u", ntohs(a.sin_port));
	roundtrip(listen_uri, (struct source){ .uri = connect_uri, .close_after_connect = NO_FD });
	/* The caller's fd stays its own. */
	CHECK(fcntl(fd, F_GETFD) >= 0);
	close(fd);
}

static void test_fd_errors(void)
{
	struct gw_error err = { 0 };
	struct gw_listener *l;
	struct gw_channel ch;
	char uri[32];
	int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);

	close(fd);
	snprintf(uri, sizeof(uri), "fd:%d", fd);
	CHECK_ERR(gw_channel_connect(uri, &ch, &err), -EBADF, &err, uri, "is not open");
	CHECK_ERR(gw_channel_listen(uri, &l, &err), -EBADF, &err, uri, "is not open");

	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	CHECK(listen(fd, 1) == 0);
	snprintf(uri, sizeof(uri), "fd:%d", fd);
	CHECK_ERR(gw_channel_connect(uri, &ch, &err), -EINVAL, &err, uri, "listening socket");
	close(fd);
}

static void test_exec(void)
{
	char connect_uri[300], listen_uri[300];

	snprintf(connect_uri, sizeof(connect_uri), "exec:cat > '%s'", tmp_path("exec"));
	snprintf(listen_uri, sizeof(listen_uri), "exec:cat '%s'", tmp_path("exec"));
	store_and_load(connect_uri, listen_uri);
}

static void test_exec_status(void)
{
	struct gw_error err = { 0 };
	struct gw_listener *l;
	struct gw_channel ch;
	char buf[16];

	CHECK_OK(gw_channel_connect("exec:exit 3", &ch, &err), &err);
	CHECK(!ch.bidirectional && !ch.is_socket && ch.child > 0);
	CHECK_ERR(gw_channel_close(&ch, &err), -EIO, &err, "exec 'exit 3' exited with status 3");

	CHECK_OK(gw_channel_connect("exec:/nonexistent/godwit-no-such-command", &ch, &err), &err);
	CHECK_ERR(gw_channel_close(&ch, &err), -EIO, &err,
		  "exec '/nonexistent/godwit-no-such-command' exited with status 127");

	/* The destination side: the output, end of file, then the status. */
	CHECK_OK(gw_channel_listen("exec:echo hi; exit 3", &l, &err), &err);
	CHECK_OK(gw_listener_accept(l, &ch, &err), &err);
	CHECK(read_some(ch.fd, buf, sizeof(buf)) == 3 && !memcmp(buf, "hi\n", 3));
	CHECK(read_some(ch.fd, buf, sizeof(buf)) == 0);
	CHECK_ERR(gw_channel_close(&ch, &err), -EIO, &err, "exited with status 3");
	/* Taken once only. */
	CHECK_ERR(gw_listener_accept(l, &ch, &err), -EINVAL, &err, "already accepted");
	gw_listener_free(l);
}

static void test_file(void)
{
	struct gw_error err = { 0 };
	struct gw_listener *l;
	struct gw_channel ch;
	char uri[300];
	struct stat st;

	snprintf(uri, sizeof(uri), "file:%s", tmp_path("file"));
	store_and_load(uri, uri);
	CHECK(stat(tmp_path("file"), &st) == 0 && (st.st_mode & 0777) == 0600);

	snprintf(uri, sizeof(uri), "file:%s", tmp_path("nodir/f"));
	CHECK_ERR(gw_channel_connect(uri, &ch, &err), -ENOENT, &err, uri, "for writing",
		  "No such file or directory");
	CHECK_ERR(gw_channel_listen(uri, &l, &err), -ENOENT, &err, uri, "for reading",
		  "No such file or directory");
	snprintf(uri, sizeof(uri), "file:%s", tmpdir);
	CHECK_ERR(gw_channel_listen(uri, &l, &err), -EISDIR, &err, uri, "is a directory");
}

static void test_bad_uris(void)
{
	static const struct {
		const char *uri;
		const char *msg;
	} bad[] = {
		{ "udp:1.2.3.4:5",
		  "unknown transport 'udp' in 'udp:1.2.3.4:5' (expected tcp:, unix:, fd:, exec:, file:)" },
		{ "localhost", "'localhost': no transport (expected tcp:," },
		{ "", "'': no transport" },
		{ "tcp:localhost", "tcp:localhost: missing port" },
		{ "tcp:localhost:", "tcp:localhost:: missing port" },
		{ "tcp:localhost:99999", "port '99999' is not a number from" },
		{ "tcp:localhost:12ab", "port '12ab'" },
		{ "tcp:localhost:-1", "port '-1'" },
		{ "tcp:[::1", "missing ']'" },
		{ "tcp:[::1]", "tcp:[::1]: missing port" },
		{ "tcp:[::1]x", "expected ':'" },
		{ "tcp:::1:4444", "must be in brackets" },
		{ "unix:", "unix:: missing socket path" },
		{ "fd:", "not a file descriptor number" },
		{ "fd:abc", "fd:abc: 'abc' is not a file descriptor number" },
		{ "fd:-1", "not a file descriptor number" },
		{ "fd:99999999999", "not a file descriptor number" },
		{ "exec:", "exec:: missing command" },
		{ "file:", "file:: missing file name" },
	};
	struct gw_error err = { 0 };
	struct gw_listener *l;
	struct gw_channel ch;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		CHECK_ERR(gw_channel_connect(bad[i].uri, &ch, &err), -EINVAL, &err, bad[i].msg);
		CHECK_ERR(gw_channel_listen(bad[i].uri, &l, &err), -EINVAL, &err, bad[i].msg);
	}
	/* What only the source refuses. */
	CHECK_ERR(gw_channel_connect("tcp::4444", &ch, &err), -EINVAL, &err, "missing host");
	CHECK_ERR(gw_channel_connect("tcp:localhost:0", &ch, &err), -EINVAL, &err,
		  "cannot connect to port 0");
	CHECK_ERR(gw_channel_connect("tcp:no-such-host.invalid:4444", &ch, &err), -EHOSTUNREACH,
		  &err, "cannot resolve 'no-such-host.invalid'");
}

static void test_close_idle(void)
{
	bool stdin_open = fcntl(STDIN_FILENO, F_GETFD) >= 0;
	struct gw_channel ch;

	/* A zeroed channel owns nothing: its fd 0 is stdin, not ours. */
	memset(&ch, 0, sizeof(ch));
	CHECK(gw_channel_close(&ch, NULL) == 0);
	CHECK((fcntl(STDIN_FILENO, F_GETFD) >= 0) == stdin_open);
	/* Closing twice is fine. */
	CHECK(gw_channel_connect("file:/dev/null", &ch, NULL) == 0);
	CHECK(gw_channel_close(&ch, NULL) == 0);
	CHECK(gw_channel_close(&ch, NULL) == 0);
	gw_listener_free(NULL);
}

/* --- abort --------------------------------------------------------------- */

struct blocked_writer {
	struct gw_channel *ch;
	pid_t tid;
	int error;
};

static void *blocked_writer_run(void *p)
{
	struct blocked_writer *w = p;

	__atomic_store_n(&w->tid, gettid(), __ATOMIC_SEQ_CST);
	/* Nobody reads: this fills the pipe or socket buffers, then blocks
	 * (in poll() on a non-blocking fd). */
	for (;;) {
		if (write(w->ch->fd, data, DATA_SIZE) >= 0 || errno == EINTR)
			continue;
		if (errno == EAGAIN) {
			wait_ready(w->ch->fd, POLLOUT);
			continue;
		}
		w->error = errno;
		return NULL;
	}
}

/* Whether thread tid sleeps (in write() or poll(): it does nothing else). */
static bool thread_sleeping(pid_t tid)
{
	char path[64], buf[256], *p;
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/proc/self/task/%d/stat", tid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	CHECK(fd >= 0);
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	CHECK(n > 0);
	buf[n] = '\0';
	p = strrchr(buf, ')');
	return p && p[1] == ' ' && p[2] == 'S';
}

/* A writer blocked on a full channel fails once another thread aborts it. */
static void abort_blocked_writer(struct gw_channel *ch)
{
	struct blocked_writer w = { .ch = ch };
	pthread_t t;
	pid_t tid;

	CHECK(pthread_create(&t, NULL, blocked_writer_run, &w) == 0);
	while (!(tid = __atomic_load_n(&w.tid, __ATOMIC_SEQ_CST)) || !thread_sleeping(tid))
		usleep(1000);
	gw_channel_abort(ch);
	CHECK(pthread_join(t, NULL) == 0);
	CHECK(w.error == EPIPE);
}

static void test_abort(void)
{
	struct gw_error err = { 0 };
	struct gw_channel ch, peer;
	struct gw_listener *l;
	char c;

	/* exec: the command never reads; abort kills it and the pipe breaks. */
	CHECK_OK(gw_channel_connect("exec:sleep 1000", &ch, &err), &err);
	abort_blocked_writer(&ch);
	CHECK_ERR(gw_channel_close(&ch, &err), -EIO, &err, "exec 'sleep 1000' was killed by signal 9");

	/* tcp: the destination accepts but never reads. */
	CHECK_OK(gw_channel_listen("tcp:127.0.0.1:0", &l, &err), &err);
	CHECK_OK(gw_channel_connect(gw_listener_address(l), &ch, &err), &err);
	accept_one(l, &peer);
	abort_blocked_writer(&ch);
	CHECK_OK(gw_channel_close(&ch, &err), &err);
	CHECK_OK(gw_channel_close(&peer, &err), &err);
	gw_listener_free(l);

	/* exec: on the destination, a reader waiting on the command gets end of file. */
	CHECK_OK(gw_channel_listen("exec:sleep 1000", &l, &err), &err);
	CHECK_OK(gw_listener_accept(l, &ch, &err), &err);
	gw_channel_abort(&ch);
	CHECK(read_some(ch.fd, &c, 1) == 0);
	CHECK_ERR(gw_channel_close(&ch, &err), -EIO, &err, "killed by signal 9");
	gw_listener_free(l);

	/* A listener freed before its command was taken stops the command. */
	CHECK_OK(gw_channel_listen("exec:sleep 1000", &l, &err), &err);
	gw_listener_free(l);
}

/* --- waits that a cancel or a grace ends ---------------------------------- */

/* Elapsed times allow for a slow, loaded test machine: a wait must end
 * promptly, not within a millisecond. */
#define PROMPT_MS 2000

struct canceller {
	int efd;
	unsigned delay_ms;
};

static void *canceller_run(void *p)
{
	struct canceller *c = p;
	uint64_t one = 1;

	usleep(c->delay_ms * 1000);
	CHECK(write(c->efd, &one, sizeof(one)) == sizeof(one));
	return NULL;
}

/* An eventfd that becomes readable delay_ms from now (one at a time). */
static int cancel_later(unsigned delay_ms, pthread_t *t)
{
	static struct canceller c;

	c.efd = eventfd(0, EFD_CLOEXEC);
	c.delay_ms = delay_ms;
	CHECK(c.efd >= 0);
	CHECK(pthread_create(t, NULL, canceller_run, &c) == 0);
	return c.efd;
}

static void cancel_done(int efd, pthread_t t)
{
	CHECK(pthread_join(t, NULL) == 0);
	close(efd);
}

/* A cancel already requested: nothing is started, nothing created. */
static void test_cancelled_before_connecting(void)
{
	struct gw_error err = { 0 };
	struct gw_channel ch;
	uint64_t one = 1;
	char uri[300];
	int efd = eventfd(0, EFD_CLOEXEC);

	CHECK(efd >= 0 && write(efd, &one, sizeof(one)) == sizeof(one));
	snprintf(uri, sizeof(uri), "file:%s", tmp_path("never"));
	CHECK_ERR(gw_channel_connect_cancellable(uri, efd, &ch, &err), -ECANCELED, &err, uri,
		  "cancelled before connecting");
	CHECK(access(tmp_path("never"), F_OK) < 0 && errno == ENOENT);
	CHECK_ERR(gw_channel_connect_cancellable("exec:touch /never", efd, &ch, &err),
		  -ECANCELED, &err, "cancelled before connecting");
	close(efd);
}

static void test_fifo_without_reader(void)
{
	struct gw_error err = { 0 };
	struct gw_channel ch;
	char uri[300];
	uint64_t start;
	pthread_t t;
	int efd;

	CHECK(mkfifo(tmp_path("fifo-nobody"), 0600) == 0);
	snprintf(uri, sizeof(uri), "file:%s", tmp_path("fifo-nobody"));
	efd = cancel_later(100, &t);
	start = now_ms();
	CHECK_ERR(gw_channel_connect_cancellable(uri, efd, &ch, &err), -ECANCELED, &err,
		  uri, ": cancelled while waiting for a reader to open the FIFO");
	CHECK(now_ms() - start >= 100 && now_ms() - start < 100 + PROMPT_MS);
	cancel_done(efd, t);
}

static void *fifo_reader_run(void *p)
{
	int fd;

	usleep(100 * 1000);
	fd = open(p, O_RDONLY | O_CLOEXEC);
	CHECK(fd >= 0);
	read_all_check(fd);
	close(fd);
	return NULL;
}

/* The reader comes after the source started waiting for one. */
static void test_fifo_reader_arrives(void)
{
	struct gw_error err = { 0 };
	struct gw_channel ch;
	char uri[300], path[200];
	pthread_t reader;
	int efd;

	snprintf(path, sizeof(path), "%s", tmp_path("fifo-later"));
	CHECK(mkfifo(path, 0600) == 0);
	snprintf(uri, sizeof(uri), "file:%s", path);
	CHECK(pthread_create(&reader, NULL, fifo_reader_run, path) == 0);
	efd = eventfd(0, EFD_CLOEXEC); /* a cancel that never comes */
	CHECK(efd >= 0);
	CHECK_OK(gw_channel_connect_cancellable(uri, efd, &ch, &err), &err);
	check_channel_fd(&ch);
	CHECK(ch.nonblocking && !ch.bidirectional);
	write_all(ch.fd, data, DATA_SIZE);
	CHECK_OK(gw_channel_close(&ch, &err), &err);
	CHECK(pthread_join(reader, NULL) == 0);
	close(efd);

	/* A socket file also fails a non-blocking open() with ENXIO: that is
	 * an error at once, not a FIFO to wait on. */
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	snprintf(a.sun_path, sizeof(a.sun_path), "%s", tmp_path("not-a-fifo"));
	CHECK(bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0);
	snprintf(uri, sizeof(uri), "file:%s", a.sun_path);
	CHECK_ERR(gw_channel_connect(uri, &ch, &err), -ENXIO, &err, "for writing",
		  "No such device or address");
	close(fd);
}

/*
 * A listener whose backlog is full, so the next connect waits: TCP drops
 * the SYN (the handshake hangs), a unix connect has no room. fds[] gets
 * the connections that made it; returns how many.
 */
static int fill_backlog(int lfd, const struct sockaddr *a, socklen_t len, int *fds, int max)
{
	int n;

	for (n = 0; n < max; n++) {
		struct pollfd p = { .events = POLLOUT };
		int fd = socket(a->sa_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);

		CHECK(fd >= 0);
		if (connect(fd, a, len) == 0) {
			fds[n] = fd;
			continue;
		}
		/* unix: no room. TCP: still connecting after 200 ms is a drop. */
		p.fd = fd;
		if (errno == EAGAIN || (errno == EINPROGRESS && poll(&p, 1, 200) == 0)) {
			close(fd);
			return n;
		}
		CHECK(errno == EINPROGRESS);
		fds[n] = fd;
	}
	FAIL("listener fd %d took %d connections with a backlog of 0", lfd, max);
}

static void test_connect_cancelled(void)
{
	struct sockaddr_in in = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	struct sockaddr_un un = { .sun_family = AF_UNIX };
	socklen_t len = sizeof(in);
	struct gw_error err = { 0 };
	struct gw_channel ch;
	char uri[300], addr[64];
	int tfd, ufd, fds[64], n;
	uint64_t start;
	pthread_t t;
	int efd;

	tfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	CHECK(bind(tfd, (struct sockaddr *)&in, sizeof(in)) == 0 && listen(tfd, 0) == 0);
	CHECK(getsockname(tfd, (struct sockaddr *)&in, &len) == 0);
	n = fill_backlog(tfd, (struct sockaddr *)&in, sizeof(in), fds, 64);
	snprintf(addr, sizeof(addr), "127.0.0.1:%u", ntohs(in.sin_port));
	snprintf(uri, sizeof(uri), "tcp:%s", addr);
	efd = cancel_later(100, &t);
	start = now_ms();
	CHECK_ERR(gw_channel_connect_cancellable(uri, efd, &ch, &err), -ECANCELED, &err,
		  uri, "cancelled while connecting to", addr);
	CHECK(now_ms() - start < 100 + PROMPT_MS);
	cancel_done(efd, t);
	while (n--)
		close(fds[n]);
	close(tfd);

	snprintf(un.sun_path, sizeof(un.sun_path), "%s", tmp_path("full"));
	ufd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	CHECK(bind(ufd, (struct sockaddr *)&un, sizeof(un)) == 0 && listen(ufd, 0) == 0);
	n = fill_backlog(ufd, (struct sockaddr *)&un, sizeof(un), fds, 64);
	snprintf(uri, sizeof(uri), "unix:%s", un.sun_path);
	efd = cancel_later(100, &t);
	start = now_ms();
	CHECK_ERR(gw_channel_connect_cancellable(uri, efd, &ch, &err), -ECANCELED, &err,
		  uri, "cancelled while waiting for room in the listener's backlog");
	CHECK(now_ms() - start >= 100 && now_ms() - start < 100 + PROMPT_MS);
	cancel_done(efd, t);
	while (n--)
		close(fds[n]);
	close(ufd);
	unlink(un.sun_path);
}

static void *accept_later_run(void *p)
{
	int lfd = *(int *)p, fd;

	usleep(100 * 1000);
	fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	CHECK(fd >= 0);
	close(fd);
	return NULL;
}

/* A unix connect waiting for room gets in once the listener accepts. */
static void test_unix_backlog_frees(void)
{
	struct sockaddr_un un = { .sun_family = AF_UNIX };
	struct gw_error err = { 0 };
	struct gw_channel ch;
	char uri[300];
	int lfd, fds[64], n;
	pthread_t t;

	snprintf(un.sun_path, sizeof(un.sun_path), "%s", tmp_path("frees"));
	lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	CHECK(bind(lfd, (struct sockaddr *)&un, sizeof(un)) == 0 && listen(lfd, 0) == 0);
	n = fill_backlog(lfd, (struct sockaddr *)&un, sizeof(un), fds, 64);
	CHECK(n > 0);
	CHECK(pthread_create(&t, NULL, accept_later_run, &lfd) == 0);
	snprintf(uri, sizeof(uri), "unix:%s", un.sun_path);
	CHECK_OK(gw_channel_connect(uri, &ch, &err), &err);
	check_channel_fd(&ch);
	CHECK(pthread_join(t, NULL) == 0);
	CHECK_OK(gw_channel_close(&ch, &err), &err);
	while (n--)
		close(fds[n]);
	close(lfd);
	unlink(un.sun_path);
}

/* A command that reads the whole stream and then does not exit. */
static void test_exec_lingers(void)
{
	const char *uri = "exec:cat >/dev/null; sleep 600";
	struct gw_error err = { 0 };
	struct gw_channel ch;
	uint64_t start;

	CHECK_OK(gw_channel_connect(uri, &ch, &err), &err);
	check_channel_fd(&ch);
	write_all(ch.fd, data, DATA_SIZE);
	start = now_ms();
	CHECK_ERR(gw_channel_end(&ch, -1, 200, &err), -ETIMEDOUT, &err,
		  "exec 'cat >/dev/null; sleep 600' did not exit within 200 ms of the end of "
		  "the stream; sent SIGTERM");
	CHECK(!strstr(err.msg, "SIGKILL"));
	CHECK(now_ms() - start >= 200 && now_ms() - start < 200 + PROMPT_MS);
	/* Reaped and forgotten: ending again does nothing. */
	CHECK(ch.child == 0 && ch.fd == -1);
	CHECK_OK(gw_channel_end(&ch, -1, 200, &err), &err);
}

/* A cancel while waiting for the command: SIGTERM at once, and SIGKILL
 * after the grace for one that ignores SIGTERM. */
static void test_exec_cancel_ignoring_term(void)
{
	struct gw_error err = { 0 };
	struct gw_channel ch;
	uint64_t start, took;
	pthread_t t;
	int efd;

	CHECK_OK(gw_channel_connect("exec:trap '' TERM; sleep 600", &ch, &err), &err);
	efd = cancel_later(100, &t);
	start = now_ms();
	CHECK_ERR(gw_channel_end(&ch, efd, 300, &err), -ECANCELED, &err,
		  "exec 'trap '' TERM; sleep 600': cancelled while waiting for it to exit; "
		  "sent SIGTERM, then SIGKILL 300 ms later");
	took = now_ms() - start;
	CHECK(took >= 100 + 300 && took < 100 + 300 + PROMPT_MS);
	CHECK(ch.child == 0);
	cancel_done(efd, t);
}

/* The event-loop way: close the stream, wait for the pidfd, collect. */
static void test_exec_pidfd(void)
{
	struct gw_error err = { 0 };
	struct gw_channel ch;
	struct pollfd p;
	uint64_t start;

	CHECK_OK(gw_channel_connect("exec:cat >/dev/null", &ch, &err), &err);
	write_all(ch.fd, data, DATA_SIZE);
	p = (struct pollfd){ .fd = ch.pidfd, .events = POLLIN };
	CHECK(poll(&p, 1, 0) == 0); /* cat waits for the end of the stream */
	CHECK_OK(gw_channel_close_stream(&ch, &err), &err);
	CHECK(ch.fd == -1 && ch.child > 0);
	CHECK(poll(&p, 1, 10 * 1000) == 1);
	start = now_ms();
	CHECK_OK(gw_channel_end(&ch, -1, 0, &err), &err);
	CHECK(now_ms() - start < PROMPT_MS);

	/* An exit on its own wins over a cancel that is also there. */
	CHECK_OK(gw_channel_connect("exec:exit 3", &ch, &err), &err);
	CHECK_OK(gw_channel_close_stream(&ch, &err), &err);
	p.fd = ch.pidfd;
	CHECK(poll(&p, 1, 10 * 1000) == 1);
	int efd = eventfd(1, EFD_CLOEXEC);
	CHECK_ERR(gw_channel_end(&ch, efd, 0, &err), -EIO, &err, "exec 'exit 3' exited with status 3");
	close(efd);

	/* A zeroed channel: nothing to end. */
	memset(&ch, 0, sizeof(ch));
	CHECK(gw_channel_end(&ch, -1, 0, NULL) == 0);
}

/* atexit: a failed check exits too. */
static void remove_tmpdir(void)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", tmpdir);
}

int main(void)
{
	/* What the header asks of a program that writes to exec: pipes. */
	signal(SIGPIPE, SIG_IGN);
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/gw-test-channel-XXXXXX");
	CHECK(mkdtemp(tmpdir));
	atexit(remove_tmpdir);
	make_data();

	test_bad_uris();
	test_close_idle();
	test_tcp();
	test_tcp_names();
	test_tcp6();
	test_tcp_refused();
	test_unix();
	test_unix_stale();
	test_unix_too_long();
	test_fd_connected();
	test_fd_listening();
	test_fd_errors();
	test_exec();
	test_exec_status();
	test_file();
	test_abort();
	test_cancelled_before_connecting();
	test_fifo_without_reader();
	test_fifo_reader_arrives();
	test_connect_cancelled();
	test_unix_backlog_frees();
	test_exec_lingers();
	test_exec_cancel_ignoring_term();
	test_exec_pidfd();

	free(data);
	return 0;
}
