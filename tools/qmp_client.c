#include "qmp_client.h"

#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* A server line longer than this is not QMP; stop before eating memory. */
#define MAX_LINE (64u << 20)
/* Events kept while waiting for replies; a client that never asks for
 * them (godwit status) must not grow without bound on a chatty server. */
#define MAX_QUEUED_EVENTS 4096
/* A QMP server greets at once; something that does not is not one (or is
 * wedged), and the user should hear so rather than wait forever. */
#define GREETING_TIMEOUT_MS 10000

struct qmp_client {
	int fd;
	json_t *events; /* array, oldest first */
	json_int_t last_id;
	char *in;
	size_t len, cap;
	char err[512];
};

static int fail(struct qmp_client *c, int rc, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int fail(struct qmp_client *c, int rc, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(c->err, sizeof(c->err), fmt, ap);
	va_end(ap);
	return rc;
}

const char *qmp_client_error(struct qmp_client *c)
{
	return c->err;
}

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Deadlines are CLOCK_MONOTONIC milliseconds; -1 means none. */
static int64_t deadline_after(int timeout_ms)
{
	return timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
}

/* poll() timeout until the deadline: -1 forever, else >= 0. */
static int ms_left(int64_t deadline)
{
	if (deadline < 0)
		return -1;
	int64_t left = deadline - now_ms();
	return left < 0 ? 0 : left > INT32_MAX ? INT32_MAX : (int)left;
}

static bool blank(const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] != ' ' && p[i] != '\t' && p[i] != '\r' && p[i] != '\n')
			return false;
	return true;
}

/* Take one complete line off the input buffer and parse it. Returns 1 when
 * a message was taken, 0 when no complete line is buffered. */
static int take_line(struct qmp_client *c, json_t **msg)
{
	while (c->len) {
		char *nl = memchr(c->in, '\n', c->len);
		if (!nl)
			return 0;
		size_t n = (size_t)(nl - c->in) + 1;
		json_error_t jerr;
		bool skip = blank(c->in, n);
		json_t *m = skip ? NULL : json_loadb(c->in, n, 0, &jerr);
		memmove(c->in, c->in + n, c->len - n);
		c->len -= n;
		if (skip)
			continue;
		if (!m)
			return fail(c, -EPROTO, "the server sent invalid JSON: %s", jerr.text);
		if (!json_is_object(m)) {
			json_decref(m);
			return fail(c, -EPROTO,
				    "the server sent a JSON value that is not an object");
		}
		*msg = m;
		return 1;
	}
	return 0;
}

/* Read more input, waiting until the deadline at most. */
static int fill(struct qmp_client *c, int64_t deadline)
{
	if (c->len >= MAX_LINE)
		return fail(c, -EMSGSIZE, "the server sent a line longer than %u bytes", MAX_LINE);
	if (c->cap - c->len < 65536) {
		size_t cap = c->cap ? c->cap * 2 : 65536;
		char *p = realloc(c->in, cap);
		if (!p)
			return fail(c, -ENOMEM, "out of memory");
		c->in = p;
		c->cap = cap;
	}
	for (;;) {
		struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
		int r = poll(&pfd, 1, ms_left(deadline));
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return fail(c, -errno, "poll: %s", strerror(errno));
		if (r == 0)
			return fail(c, -ETIMEDOUT, "timed out waiting for the server");
		ssize_t n = recv(c->fd, c->in + c->len, c->cap - c->len, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return fail(c, -errno, "reading from the server: %s", strerror(errno));
		if (n == 0)
			return fail(c, -ECONNRESET, "the server closed the connection");
		c->len += (size_t)n;
		return 0;
	}
}

static int read_message(struct qmp_client *c, int64_t deadline, json_t **msg)
{
	for (;;) {
		int rc = take_line(c, msg);
		if (rc != 0)
			return rc < 0 ? rc : 0;
		rc = fill(c, deadline);
		if (rc < 0)
			return rc;
	}
}

static void keep_event(struct qmp_client *c, json_t *ev)
{
	if (json_array_size(c->events) >= MAX_QUEUED_EVENTS)
		json_array_remove(c->events, 0);
	json_array_append_new(c->events, ev);
}

/* The next message that is not an event: replies come in request order. */
static int read_reply(struct qmp_client *c, json_t **reply)
{
	for (;;) {
		json_t *m;
		int rc = read_message(c, -1, &m);
		if (rc < 0)
			return rc;
		if (!json_object_get(m, "event")) {
			*reply = m;
			return 0;
		}
		keep_event(c, m);
	}
}

static int send_all(struct qmp_client *c, const char *p, size_t n)
{
	while (n) {
		ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return fail(c, -errno, "writing to the server: %s", strerror(errno));
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* One send per request: the server may act on it (quit) and close before
 * a second send would arrive, which would then fail with EPIPE. */
int qmp_client_request(struct qmp_client *c, const char *text, json_t **reply)
{
	size_t n = strlen(text);
	char *line = malloc(n + 2);
	if (!line)
		return fail(c, -ENOMEM, "out of memory");
	memcpy(line, text, n);
	memcpy(line + n, "\r\n", 2);
	int rc = send_all(c, line, n + 2);
	free(line);
	return rc < 0 ? rc : read_reply(c, reply);
}

int qmp_client_execute(struct qmp_client *c, const char *name, json_t *args, json_t **ret)
{
	json_int_t id = ++c->last_id;
	json_t *req = json_pack("{s:s,s:o*,s:I}", "execute", name, "arguments", args, "id", id);
	char *text = req ? json_dumps(req, JSON_COMPACT) : NULL;
	json_decref(req);
	if (!text)
		return fail(c, -ENOMEM, "out of memory");
	json_t *reply;
	int rc = qmp_client_request(c, text, &reply);
	free(text);
	if (rc < 0)
		return rc;

	json_t *rid = json_object_get(reply, "id");
	json_t *val = json_object_get(reply, "return");
	json_t *err = json_object_get(reply, "error");
	if (!json_is_integer(rid) || json_integer_value(rid) != id) {
		rc = fail(c, -EPROTO, "the reply to %s carries the wrong id", name);
	} else if (val) {
		*ret = json_incref(val);
	} else if (json_is_object(err)) {
		const char *cls = json_string_value(json_object_get(err, "class"));
		const char *desc = json_string_value(json_object_get(err, "desc"));
		rc = fail(c, -EREMOTEIO, "%s: %s", cls ? cls : "(no class)",
			  desc ? desc : "(no description)");
	} else {
		rc = fail(c, -EPROTO, "the reply to %s has neither return nor error", name);
	}
	json_decref(reply);
	return rc;
}

int qmp_client_next_event(struct qmp_client *c, int timeout_ms, json_t **event)
{
	if (json_array_size(c->events)) {
		*event = json_incref(json_array_get(c->events, 0));
		json_array_remove(c->events, 0);
		return 0;
	}
	int64_t deadline = deadline_after(timeout_ms);
	for (;;) {
		json_t *m;
		int rc = read_message(c, deadline, &m);
		if (rc < 0)
			return rc;
		if (json_object_get(m, "event")) {
			*event = m;
			return 0;
		}
		/* Not ours: no request is in flight between calls. */
		json_decref(m);
	}
}

static int connect_unix(const char *path, int *out, char *errmsg, size_t errlen)
{
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	if (strlen(path) >= sizeof(addr.sun_path)) {
		snprintf(errmsg, errlen, "cannot connect to %s: path longer than %zu bytes", path,
			 sizeof(addr.sun_path) - 1);
		return -ENAMETOOLONG;
	}
	strcpy(addr.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		int rc = -errno;
		snprintf(errmsg, errlen, "socket: %s", strerror(-rc));
		return rc;
	}
	if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		int rc = -errno;
		snprintf(errmsg, errlen, "cannot connect to %s: %s", path, strerror(-rc));
		close(fd);
		return rc;
	}
	*out = fd;
	return 0;
}

/* Greeting, then capabilities negotiation: the handshake every QMP client
 * must make before its first command. */
static int handshake(struct qmp_client *c, const char *path)
{
	json_t *m;
	int rc = read_message(c, deadline_after(GREETING_TIMEOUT_MS), &m);
	char why[sizeof(c->err)];
	if (rc < 0) {
		snprintf(why, sizeof(why), "%s", c->err);
		return fail(c, rc, "%s: no QMP greeting: %s", path, why);
	}
	bool greeting = json_is_object(json_object_get(m, "QMP"));
	json_decref(m);
	if (!greeting)
		return fail(c, -EPROTO, "%s is not a QMP server (unexpected greeting)", path);
	json_t *ret;
	rc = qmp_client_execute(c, "qmp_capabilities", NULL, &ret);
	if (rc < 0) {
		snprintf(why, sizeof(why), "%s", c->err);
		return fail(c, rc, "%s: capabilities negotiation failed: %s", path, why);
	}
	json_decref(ret);
	return 0;
}

int qmp_client_open(const char *path, struct qmp_client **out, char *errmsg, size_t errlen)
{
	*out = NULL;
	struct qmp_client *c = calloc(1, sizeof(*c));
	if (!c || !(c->events = json_array())) {
		free(c);
		snprintf(errmsg, errlen, "out of memory");
		return -ENOMEM;
	}
	int rc = connect_unix(path, &c->fd, errmsg, errlen);
	if (rc < 0) {
		c->fd = -1;
	} else if ((rc = handshake(c, path)) < 0) {
		snprintf(errmsg, errlen, "%s", c->err);
	}
	if (rc < 0) {
		qmp_client_close(c);
		return rc;
	}
	*out = c;
	return 0;
}

void qmp_client_close(struct qmp_client *c)
{
	if (!c)
		return;
	if (c->fd >= 0)
		close(c->fd);
	json_decref(c->events);
	free(c->in);
	free(c);
}

int qmp_client_peer_pid(struct qmp_client *c)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);
	if (getsockopt(c->fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
		return -errno;
	return cred.pid;
}
