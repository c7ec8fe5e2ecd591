/*
 * QMP server. Wire behaviour follows QEMU (monitor/qmp.c, qapi/qmp-dispatch.c)
 * closely enough that QEMU's own clients cannot tell the difference: the
 * same error classes and texts, replies before the events they cause, one
 * JSON object per "\r\n"-terminated line.
 *
 * Input: qmp_framer.c finds where each message ends, jansson parses it,
 * and every message, however wrong, costs one error reply and nothing
 * else (see qmp_framer.h for the limits).
 */
#include "vmm/qmp/qmp.h"

#include "vmm/buf.h"
#include "gw_version.h"
#include "vmm/loop.h"
#include "vmm/qmp/qmp_framer.h"
#include "vmm/machine.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* Output a client has not read yet; past this it is not reading at all and
 * would otherwise grow the VMM's memory without bound. */
#define QMP_MAX_OUTPUT (16u << 20)
#define QMP_READ_CHUNK 65536
/* How long qmp_server_free() waits for a client to take its last replies
 * (the reply to "quit" above all) before closing it anyway. */
#define QMP_FINAL_FLUSH_MS 1000

/* File descriptors a client may send ahead of the command that takes them. */
#define QMP_MAX_PENDING_FDS 8

struct qmp_client {
	struct qmp_server *srv;
	int fd;
	/* Received with SCM_RIGHTS, oldest first, for getfd and add-fd. */
	int fds[QMP_MAX_PENDING_FDS];
	unsigned nr_fds;
	bool negotiated;
	bool eof;       /* peer closed its side: close once replies are sent */
	bool dead;      /* unwatched; freed by server_leave() */
	uint32_t armed; /* epoll interest currently registered */
	struct qmp_framer fr;
	struct buf out; /* unsent output, from out_off */
	size_t out_off;
	struct qmp_client *next;
};

struct cmd_table {
	const struct qmp_command *cmds;
	size_t n;
};

struct qmp_server {
	struct vmm *vm;
	struct loop *loop;
	int fd;
	struct qmp_address addr;
	bool accept_paused;
	struct qmp_client *clients;
	struct qmp_client *current; /* whose command runs now, or NULL */
	struct qmp_fds *fds;        /* getfd names and add-fd sets */
	struct cmd_table *tables;
	size_t nr_tables;
	/* Depth of server entry points on the stack. Clients die in the
	 * middle of things (a send fails while an event is broadcast from a
	 * command handler); they are freed only when nothing is using them. */
	unsigned busy;
	char rbuf[QMP_READ_CHUNK];
};

static const char *const error_class_names[] = {
	[QMP_ERR_GENERIC] = "GenericError",
	[QMP_ERR_COMMAND_NOT_FOUND] = "CommandNotFound",
};

/* Descriptions echo client input (a command name, a member name) and may
 * not fit; cut at a character boundary, since jansson refuses to send a
 * string that ends in half a UTF-8 sequence. */
static void set_desc(struct qmp_error *err, size_t at, const char *fmt, va_list ap)
{
	size_t room = sizeof(err->desc) - at;
	int n = vsnprintf(err->desc + at, room, fmt, ap);
	if (n < 0 || (size_t)n < room)
		return;
	size_t end = sizeof(err->desc) - 1;
	while (end > at && ((unsigned char)err->desc[end - 1] & 0xc0) == 0x80)
		end--;
	if (end > at && (unsigned char)err->desc[end - 1] >= 0xc0)
		end--;
	err->desc[end] = '\0';
}

int qmp_fail(struct qmp_error *err, enum qmp_error_class cls, const char *fmt, ...)
{
	va_list ap;
	err->cls = cls;
	va_start(ap, fmt);
	set_desc(err, 0, fmt, ap);
	va_end(ap);
	return -1;
}

int qmp_return(json_t *value, json_t **ret, struct qmp_error *err)
{
	if (!value)
		return qmp_fail(err, QMP_ERR_GENERIC, "out of memory");
	*ret = value;
	return 0;
}

static const char *const arg_type_names[] = {
	[QMP_ARG_INT] = "integer",   [QMP_ARG_STR] = "string",    [QMP_ARG_BOOL] = "boolean",
	[QMP_ARG_NUMBER] = "number", [QMP_ARG_OBJECT] = "object", [QMP_ARG_ARRAY] = "array",
};

static bool arg_type_ok(enum qmp_arg_type type, json_t *v)
{
	switch (type) {
	case QMP_ARG_INT:
		return json_is_integer(v);
	case QMP_ARG_STR:
		return json_is_string(v);
	case QMP_ARG_BOOL:
		return json_is_boolean(v);
	case QMP_ARG_NUMBER:
		return json_is_number(v);
	case QMP_ARG_OBJECT:
		return json_is_object(v);
	case QMP_ARG_ARRAY:
		return json_is_array(v);
	}
	return false;
}

int qmp_check_args(json_t *args, const struct qmp_arg *spec, size_t n, struct qmp_error *err)
{
	/* QEMU's input visitor order: members in declaration order (missing,
	 * then wrongly typed), and only then members nobody asked for. */
	for (size_t i = 0; i < n; i++) {
		json_t *v = json_object_get(args, spec[i].name);
		if (!v) {
			if (spec[i].required)
				return qmp_fail(err, QMP_ERR_GENERIC, "Parameter '%s' is missing",
						spec[i].name);
			continue;
		}
		if (!arg_type_ok(spec[i].type, v))
			return qmp_fail(err, QMP_ERR_GENERIC,
					"Invalid parameter type for '%s', expected: %s",
					spec[i].name, arg_type_names[spec[i].type]);
	}
	const char *key;
	json_t *v;
	json_object_foreach(args, key, v) {
		size_t i = 0;
		while (i < n && strcmp(spec[i].name, key))
			i++;
		if (i == n)
			return qmp_fail(err, QMP_ERR_GENERIC, "Parameter '%s' is unexpected", key);
	}
	return 0;
}

json_t *qmp_version(void)
{
	unsigned major = 0, minor = 0, micro = 0;
	sscanf(GW_VERSION, "%u.%u.%u", &major, &minor, &micro);
	return json_pack("{s:{s:I,s:I,s:I},s:s}", "qemu", "major", (json_int_t)major, "minor",
			 (json_int_t)minor, "micro", (json_int_t)micro, "package",
			 "godwit " GW_VERSION);
}

/* ---- client lifetime ---------------------------------------------------- */

static void client_kill(struct qmp_client *c)
{
	if (c->dead)
		return;
	c->dead = true;
	loop_del_fd(c->srv->loop, c->fd);
}

static void client_free(struct qmp_client *c)
{
	for (unsigned i = 0; i < c->nr_fds; i++)
		close(c->fds[i]);
	close(c->fd);
	qmp_framer_release(&c->fr);
	buf_release(&c->out);
	free(c);
}

static void server_enter(struct qmp_server *s)
{
	s->busy++;
}

static void server_leave(struct qmp_server *s)
{
	if (--s->busy)
		return;
	bool freed = false;
	struct qmp_client **pp = &s->clients;
	while (*pp) {
		struct qmp_client *c = *pp;
		if (c->dead) {
			*pp = c->next;
			client_free(c);
			freed = true;
		} else {
			pp = &c->next;
		}
	}
	/* accept() ran out of descriptors earlier; one may be free now. */
	if (freed && s->accept_paused && loop_mod_fd(s->loop, s->fd, EPOLLIN) == 0)
		s->accept_paused = false;
}

/* ---- output ------------------------------------------------------------- */

/* Interest follows state: input until the peer's EOF, output while some
 * is pending. */
static void client_watch(struct qmp_client *c)
{
	uint32_t ev = (c->eof ? 0 : EPOLLIN) | (c->out.len > c->out_off ? EPOLLOUT : 0);
	if (c->dead || ev == c->armed)
		return;
	if (loop_mod_fd(c->srv->loop, c->fd, ev) < 0) {
		client_kill(c);
		return;
	}
	c->armed = ev;
}

static void client_flush(struct qmp_client *c)
{
	while (!c->dead && c->out_off < c->out.len) {
		ssize_t n = send(c->fd, c->out.data + c->out_off, c->out.len - c->out_off,
				 MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			break;
		if (n < 0) {
			client_kill(c); /* EPIPE, ECONNRESET: the client is gone */
			return;
		}
		c->out_off += (size_t)n;
	}
	if (c->dead)
		return;
	size_t pending = c->out.len - c->out_off;
	if (pending == 0) {
		buf_reset(&c->out);
		c->out_off = 0;
		if (c->eof) {
			client_kill(c);
			return;
		}
	} else if (c->out_off > pending) {
		memmove(c->out.data, c->out.data + c->out_off, pending);
		c->out.len = pending;
		c->out_off = 0;
	}
	if (pending > QMP_MAX_OUTPUT) {
		fprintf(stderr,
			"godwit-vmm: qmp: dropping a client that stopped reading "
			"(%zu bytes of replies and events pending)\n",
			pending);
		client_kill(c);
		return;
	}
	client_watch(c);
}

static void client_send_text(struct qmp_client *c, const char *text, size_t len)
{
	if (c->dead)
		return;
	if (buf_append(&c->out, text, len) < 0 || buf_append(&c->out, "\r\n", 2) < 0) {
		client_kill(c);
		return;
	}
	client_flush(c);
}

/* Steals msg; NULL (jansson out of memory) costs the client its session
 * rather than leaving it waiting forever for a reply. */
static void client_send(struct qmp_client *c, json_t *msg)
{
	char *text = msg ? json_dumps(msg, JSON_ENSURE_ASCII) : NULL;
	json_decref(msg);
	if (!text) {
		client_kill(c);
		return;
	}
	client_send_text(c, text, strlen(text));
	free(text);
}

static void reply_error(struct qmp_client *c, json_t *id, const struct qmp_error *err)
{
	json_t *rsp = json_pack("{s:{s:s,s:s}}", "error", "class", error_class_names[err->cls],
				"desc", err->desc);
	if (rsp && id)
		json_object_set(rsp, "id", id);
	client_send(c, rsp);
}

static void reply_return(struct qmp_client *c, json_t *id, json_t *ret)
{
	json_t *rsp = json_pack("{s:o}", "return", ret ? ret : json_object());
	if (rsp && id)
		json_object_set(rsp, "id", id);
	client_send(c, rsp);
}

static void reply_parse_error(struct qmp_client *c, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void reply_parse_error(struct qmp_client *c, const char *fmt, ...)
{
	static const char prefix[] = "JSON parse error, ";
	struct qmp_error err = {.cls = QMP_ERR_GENERIC};
	memcpy(err.desc, prefix, sizeof(prefix));
	va_list ap;
	va_start(ap, fmt);
	set_desc(&err, sizeof(prefix) - 1, fmt, ap);
	va_end(ap);
	reply_error(c, NULL, &err);
}

/* ---- commands ----------------------------------------------------------- */

static const struct qmp_command *find_command(struct qmp_server *s, const char *name)
{
	for (size_t t = 0; t < s->nr_tables; t++)
		for (size_t i = 0; i < s->tables[t].n; i++)
			if (!strcmp(s->tables[t].cmds[i].name, name))
				return &s->tables[t].cmds[i];
	return NULL;
}

int qmp_register(struct qmp_server *s, const struct qmp_command *cmds, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!strcmp(cmds[i].name, "qmp_capabilities") || find_command(s, cmds[i].name))
			return -EEXIST;
	struct cmd_table *t = realloc(s->tables, (s->nr_tables + 1) * sizeof(*t));
	if (!t)
		return -ENOMEM;
	s->tables = t;
	s->tables[s->nr_tables++] = (struct cmd_table){cmds, n};
	return 0;
}

static const struct qmp_arg capabilities_args[] = {{"enable", QMP_ARG_ARRAY, false}};

/* qmp_capabilities is the one command that changes the session, so it
 * lives here rather than in a table. godwit offers no capabilities (no
 * out-of-band execution), so "enable" may only be empty. */
static int qmp_capabilities(struct qmp_client *c, json_t *args, struct qmp_error *err)
{
	if (c->negotiated)
		return qmp_fail(err, QMP_ERR_COMMAND_NOT_FOUND,
				"Capabilities negotiation is already complete, command ignored");
	if (qmp_check_args(args, QMP_ARGS(capabilities_args), err))
		return -1;
	size_t i;
	json_t *cap;
	json_array_foreach(json_object_get(args, "enable"), i, cap) {
		if (!json_is_string(cap))
			return qmp_fail(err, QMP_ERR_GENERIC,
					"Invalid parameter type for 'enable[%zu]', expected: string",
					i);
		return qmp_fail(err, QMP_ERR_GENERIC, "Capability %s not available",
				json_string_value(cap));
	}
	c->negotiated = true;
	return 0;
}

/* The checks and texts of QEMU's qmp_dispatch_check_obj(). */
static int check_request(json_t *req, struct qmp_error *err)
{
	if (!json_is_object(req))
		return qmp_fail(err, QMP_ERR_GENERIC, "QMP input must be a JSON object");
	const char *key;
	json_t *v;
	json_object_foreach(req, key, v) {
		if (!strcmp(key, "execute")) {
			if (!json_is_string(v))
				return qmp_fail(err, QMP_ERR_GENERIC,
						"QMP input member 'execute' must be a string");
		} else if (!strcmp(key, "arguments")) {
			if (!json_is_object(v))
				return qmp_fail(err, QMP_ERR_GENERIC,
						"QMP input member 'arguments' must be an object");
		} else if (strcmp(key, "id")) {
			return qmp_fail(err, QMP_ERR_GENERIC, "QMP input member '%s' is unexpected",
					key);
		}
	}
	if (!json_object_get(req, "execute"))
		return qmp_fail(err, QMP_ERR_GENERIC, "QMP input lacks member 'execute'");
	return 0;
}

static int execute(struct qmp_client *c, json_t *req, json_t **ret, struct qmp_error *err)
{
	if (check_request(req, err))
		return -1;
	const char *name = json_string_value(json_object_get(req, "execute"));
	json_t *args = json_object_get(req, "arguments");
	json_t *empty = NULL;
	if (!args) {
		args = empty = json_object();
		if (!args)
			return qmp_fail(err, QMP_ERR_GENERIC, "out of memory");
	}
	int rc;
	if (!strcmp(name, "qmp_capabilities")) {
		rc = qmp_capabilities(c, args, err);
	} else if (!c->negotiated) {
		rc = qmp_fail(err, QMP_ERR_COMMAND_NOT_FOUND,
			      "Expecting capabilities negotiation with 'qmp_capabilities'");
	} else {
		const struct qmp_command *cmd = find_command(c->srv, name);
		c->srv->current = c;
		if (!cmd)
			rc = qmp_fail(err, QMP_ERR_COMMAND_NOT_FOUND,
				      "The command %s has not been found", name);
		else if (qmp_check_args(args, cmd->args, cmd->nr_args, err))
			rc = -1;
		else
			rc = cmd->fn(c->srv->vm, args, ret, err);
		c->srv->current = NULL;
	}
	json_decref(empty);
	return rc;
}

static void dispatch(struct qmp_client *c, const char *text, size_t len)
{
	json_error_t jerr;
	json_t *req = json_loadb(text, len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &jerr);
	if (!req) {
		reply_parse_error(c, "%s", jerr.text);
		return;
	}
	/* QEMU echoes the id even when the rest of the request is wrong. */
	json_t *id = json_is_object(req) ? json_object_get(req, "id") : NULL;
	struct qmp_error err;
	json_t *ret = NULL;
	if (execute(c, req, &ret, &err) == 0)
		reply_return(c, id, ret);
	else
		reply_error(c, id, &err);
	json_decref(req);
}

/* ---- input ------------------------------------------------------------- */

static void client_input(struct qmp_client *c, const char *p, size_t n)
{
	bool dispatched = false;
	while (!c->dead) {
		size_t used, len;
		int frame = qmp_framer_feed(&c->fr, p, n, &used);
		p += used;
		n -= used;
		if (frame < 0) {
			client_kill(c); /* out of memory: its message is lost */
			return;
		}
		if (frame == QMP_FRAME_MORE) {
			/* An fd comes with the command that takes it. One a command
			 * of this read did not take (a refused getfd, any other
			 * command) must not wait for a later one, unless part of
			 * that one came in this read too and the fd may be its. */
			if (dispatched && c->fr.state == QMP_FRAMER_IDLE)
				while (c->nr_fds)
					close(c->fds[--c->nr_fds]);
			return;
		}
		if (frame == QMP_FRAME_VALUE) {
			const char *text = qmp_framer_value(&c->fr, &len);
			dispatch(c, text, len);
			dispatched = true;
		} else {
			reply_parse_error(c, "%s", qmp_framer_error(&c->fr));
		}
	}
}

/* ---- events from the loop ----------------------------------------------- */

/* Keep the fds of an SCM_RIGHTS message for the commands that take them;
 * past the bound, or in any other control message, they are closed. */
static void take_fds(struct qmp_client *c, struct msghdr *msg)
{
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(msg); cm; cm = CMSG_NXTHDR(msg, cm)) {
		if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
			continue;
		size_t n = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < n; i++) {
			int fd;
			memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(fd));
			if (c->nr_fds < QMP_MAX_PENDING_FDS)
				c->fds[c->nr_fds++] = fd;
			else
				close(fd);
		}
	}
}

int qmp_take_fd(struct qmp_server *s)
{
	struct qmp_client *c = s->current;
	if (!c || !c->nr_fds)
		return -1;
	int fd = c->fds[0];
	memmove(c->fds, c->fds + 1, --c->nr_fds * sizeof(c->fds[0]));
	return fd;
}

struct qmp_fds *qmp_server_fds(struct qmp_server *s)
{
	return s->fds;
}

static void client_read(struct qmp_client *c)
{
	struct qmp_server *s = c->srv;
	union {
		char buf[CMSG_SPACE(QMP_MAX_PENDING_FDS * sizeof(int))];
		struct cmsghdr align;
	} ctl;
	struct iovec iov = {s->rbuf, sizeof(s->rbuf)};
	struct msghdr msg = {
		.msg_iov = &iov,
		.msg_iovlen = 1,
		.msg_control = ctl.buf,
		.msg_controllen = sizeof(ctl),
	};
	ssize_t n = recvmsg(c->fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
	if (n >= 0)
		take_fds(c, &msg);
	if (n < 0) {
		if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
			client_kill(c);
		return;
	}
	if (n == 0) {
		/* Half-closed: "echo '...' | socat - UNIX:sock" still expects
		 * its replies, so stop reading but keep sending. */
		c->eof = true;
		client_flush(c);
		return;
	}
	client_input(c, s->rbuf, (size_t)n);
}

static void client_event(void *opaque, uint32_t events)
{
	struct qmp_client *c = opaque;
	struct qmp_server *s = c->srv;

	server_enter(s);
	if (events & (EPOLLOUT | EPOLLHUP | EPOLLERR))
		client_flush(c);
	if (!c->dead && !c->eof && (events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
		client_read(c);
	server_leave(s);
}

static void client_new(struct qmp_server *s, int fd)
{
	struct qmp_client *c = calloc(1, sizeof(*c));
	if (!c) {
		close(fd);
		return;
	}
	c->srv = s;
	c->fd = fd;
	c->armed = EPOLLIN;
	qmp_framer_init(&c->fr);
	if (loop_add_fd(s->loop, fd, EPOLLIN, client_event, c) < 0) {
		client_free(c);
		return;
	}
	c->next = s->clients;
	s->clients = c;
	client_send(c,
		    json_pack("{s:{s:o,s:[]}}", "QMP", "version", qmp_version(), "capabilities"));
}

static void accept_event(void *opaque, uint32_t events)
{
	struct qmp_server *s = opaque;
	(void)events;

	server_enter(s);
	for (;;) {
		/* Blocking socket, non-blocking calls (MSG_DONTWAIT): the
		 * final flush in qmp_server_free() can then simply block. */
		int fd = accept4(s->fd, NULL, NULL, SOCK_CLOEXEC);
		if (fd >= 0) {
			client_new(s, fd);
			continue;
		}
		if (errno == EINTR || errno == ECONNABORTED)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK) {
			/* Out of descriptors or memory: the pending connection
			 * would wake us forever. Wait until a client leaves. */
			fprintf(stderr, "godwit-vmm: qmp: accept: %s\n", strerror(errno));
			if (loop_mod_fd(s->loop, s->fd, 0) == 0)
				s->accept_paused = true;
		}
		break;
	}
	server_leave(s);
}

void qmp_emit_event(struct qmp_server *s, const char *name, json_t *data)
{
	if (!s) {
		json_decref(data);
		return;
	}
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	/* QEMU's member order: timestamp, event, data. */
	json_t *ev = json_pack("{s:{s:I,s:I},s:s}", "timestamp", "seconds", (json_int_t)ts.tv_sec,
			       "microseconds", (json_int_t)(ts.tv_nsec / 1000), "event", name);
	if (ev && data)
		json_object_set(ev, "data", data);
	json_decref(data);
	char *text = ev ? json_dumps(ev, JSON_ENSURE_ASCII) : NULL;
	json_decref(ev);
	if (!text) {
		fprintf(stderr, "godwit-vmm: qmp: out of memory, event %s lost\n", name);
		return;
	}
	server_enter(s);
	size_t len = strlen(text);
	for (struct qmp_client *c = s->clients; c; c = c->next)
		if (c->negotiated)
			client_send_text(c, text, len);
	server_leave(s);
	free(text);
}

/* ---- the listening socket ----------------------------------------------- */

/* A spec's trailing option, if it is there: cut it off. */
static bool strip_suffix(const char *s, size_t *len, const char *suffix)
{
	size_t n = strlen(suffix);
	if (*len < n || memcmp(s + *len - n, suffix, n))
		return false;
	*len -= n;
	return true;
}

int qmp_parse_address(const char *spec, struct qmp_address *out, char *errmsg, size_t errlen)
{
	if (strncmp(spec, "unix:", 5)) {
		snprintf(errmsg, errlen, "only unix:PATH is supported");
		return -EINVAL;
	}
	/* Only as the last thing: anything else is part of the path, which
	 * may contain commas. */
	const char *name = spec + 5;
	size_t len = strlen(name);
	out->abstract = strip_suffix(name, &len, ",abstract=on");
	if (!out->abstract)
		strip_suffix(name, &len, ",abstract=off");
	if (out->abstract && len && name[0] == '@') {
		name++;
		len--;
	}
	if (!len) {
		snprintf(errmsg, errlen, "missing the %s",
			 out->abstract ?
				 "abstract socket's name" :
				 "socket path (an empty one would bind an abstract socket, which any "
				 "local user can connect to)");
		return -EINVAL;
	}
	if (!out->abstract && name[0] == '@') {
		snprintf(errmsg, errlen,
			 "'@' names an abstract socket, which has no file mode: any local user could "
			 "connect and control the VM. Add ,abstract=on if that is what you want, or "
			 "write ./%.*s for a file",
			 (int)len, name);
		return -EINVAL;
	}
	if (len >= sizeof(out->path)) {
		snprintf(errmsg, errlen,
			 "the socket %s is %zu bytes, a unix socket address holds at most %zu",
			 out->abstract ? "name" : "path", len, sizeof(out->path) - 1);
		return -ENAMETOOLONG;
	}
	memcpy(out->path, name, len);
	out->path[len] = '\0';
	return 0;
}

/* For messages: the path, or "@NAME" as ss(8) shows an abstract name. */
static const char *addr_text(const struct qmp_address *a, char *buf, size_t size)
{
	snprintf(buf, size, "%s%s", a->abstract ? "@" : "", a->path);
	return buf;
}

/* A socket file left by a VMM that crashed is removed; a live one (someone
 * accepts on it) or a file that is not a socket is an error, not ours to
 * delete. */
static int remove_stale_socket(const struct sockaddr_un *addr, char *errmsg, size_t errlen)
{
	struct stat st;
	if (lstat(addr->sun_path, &st) < 0)
		return errno == ENOENT ? 0 : -errno;
	if (!S_ISSOCK(st.st_mode)) {
		snprintf(errmsg, errlen, "%s exists and is not a socket", addr->sun_path);
		return -EEXIST;
	}
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	int live = connect(fd, (const struct sockaddr *)addr, sizeof(*addr)) == 0;
	close(fd);
	if (live) {
		snprintf(errmsg, errlen, "%s is in use by another process", addr->sun_path);
		return -EADDRINUSE;
	}
	return unlink(addr->sun_path) < 0 ? -errno : 0;
}

/* Bind the socket file with mode 0600: the socket controls the whole VM,
 * so only our user may connect. The mode comes from the umask at bind()
 * time; a chmod() afterwards would leave a window where anyone could.
 * Nothing else creates files while the VMM starts (no other thread runs
 * yet), so changing the process umask briefly is safe. */
static int bind_private(int fd, const struct sockaddr_un *sun)
{
	mode_t old = umask(0177);
	int rc = bind(fd, (const struct sockaddr *)sun, sizeof(*sun)) < 0 ? -errno : 0;
	umask(old);
	return rc;
}

/* An abstract name is not NUL-terminated: its length is the address's. */
static int bind_abstract(int fd, const char *name)
{
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	size_t len = strlen(name);
	memcpy(sun.sun_path + 1, name, len);
	socklen_t alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + len);
	return bind(fd, (const struct sockaddr *)&sun, alen) < 0 ? -errno : 0;
}

static int listen_unix(const struct qmp_address *a, int *out, char *errmsg, size_t errlen)
{
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	char text[sizeof(a->path) + 1];
	int rc;

	errmsg[0] = '\0';
	if (!a->abstract) {
		strcpy(addr.sun_path, a->path); /* qmp_parse_address() checked the length */
		rc = remove_stale_socket(&addr, errmsg, errlen);
		if (rc < 0) {
			if (!errmsg[0])
				snprintf(errmsg, errlen, "cannot replace %s: %s", a->path,
					 strerror(-rc));
			return rc;
		}
	}
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		rc = -errno;
		snprintf(errmsg, errlen, "socket: %s", strerror(-rc));
		return rc;
	}
	rc = a->abstract ? bind_abstract(fd, a->path) : bind_private(fd, &addr);
	if (rc == 0 && listen(fd, 16) < 0)
		rc = -errno;
	if (rc < 0) {
		snprintf(errmsg, errlen, "cannot listen on %s: %s",
			 addr_text(a, text, sizeof(text)), strerror(-rc));
		close(fd);
		return rc;
	}
	*out = fd;
	return 0;
}

static void remove_socket_file(const struct qmp_address *a)
{
	if (!a->abstract)
		unlink(a->path);
}

/*
 * After a cpr-exec the listening socket is the old image's, inherited
 * under GODWIT_QMP_FD (vmm/migration/migration.c): clients reconnect to
 * the same path and never find it missing. Taken only if it is a
 * listening unix socket bound to this very address; otherwise the socket
 * is made anew.
 */
static bool inherit_listener(const struct qmp_address *a, int *out)
{
	const char *v = getenv(QMP_INHERIT_ENV);
	if (!v)
		return false;
	char *end;
	long fd = strtol(v, &end, 10);
	unsetenv(QMP_INHERIT_ENV);
	struct sockaddr_un sun;
	socklen_t len = sizeof(sun);
	int listening = 0;
	socklen_t ilen = sizeof(listening);
	if (*end || fd < 3 || fd > INT_MAX ||
	    getsockopt((int)fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &ilen) < 0 || !listening ||
	    getsockname((int)fd, (struct sockaddr *)&sun, &len) < 0 || sun.sun_family != AF_UNIX)
		return false;
	size_t plen = len - offsetof(struct sockaddr_un, sun_path);
	bool same = a->abstract ? plen == strlen(a->path) + 1 && sun.sun_path[0] == '\0' &&
					  !memcmp(sun.sun_path + 1, a->path, plen - 1) :
				  plen > 0 && !strncmp(sun.sun_path, a->path, plen) &&
					  strlen(a->path) == strnlen(sun.sun_path, plen);
	if (!same)
		return false;
	if (fcntl((int)fd, F_SETFD, FD_CLOEXEC) < 0 ||
	    fcntl((int)fd, F_SETFL, fcntl((int)fd, F_GETFL) | O_NONBLOCK) < 0)
		return false;
	*out = (int)fd;
	return true;
}

int qmp_server_listen_fd(const struct qmp_server *s)
{
	return s->fd;
}

int qmp_server_start(struct vmm *vm, struct loop *loop, const struct qmp_address *addr,
		     struct qmp_server **out, char *errmsg, size_t errlen)
{
	struct qmp_server *s = calloc(1, sizeof(*s));
	if (!s) {
		snprintf(errmsg, errlen, "out of memory");
		return -ENOMEM;
	}
	s->vm = vm;
	s->loop = loop;
	s->addr = *addr;
	s->fds = qmp_fds_new();
	int rc = !s->fds                        ? -ENOMEM :
		 inherit_listener(addr, &s->fd) ? 0 :
						  listen_unix(addr, &s->fd, errmsg, errlen);
	if (rc < 0) {
		if (!s->fds)
			snprintf(errmsg, errlen, "out of memory");
		qmp_fds_free(s->fds);
		free(s);
		return rc;
	}
	rc = loop_add_fd(loop, s->fd, EPOLLIN, accept_event, s);
	if (rc < 0) {
		char text[sizeof(addr->path) + 1];
		snprintf(errmsg, errlen, "cannot watch %s: %s", addr_text(addr, text, sizeof(text)),
			 strerror(-rc));
		close(s->fd);
		remove_socket_file(addr);
		qmp_fds_free(s->fds);
		free(s);
		return rc;
	}
	*out = s;
	return 0;
}

/* Best effort, bounded: the replies that led here ("quit") should reach
 * their clients, but a client that does not read must not hold up exit. */
static void final_flush(struct qmp_client *c)
{
	struct timeval tv = {.tv_sec = QMP_FINAL_FLUSH_MS / 1000,
			     .tv_usec = (QMP_FINAL_FLUSH_MS % 1000) * 1000};
	if (setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0)
		return;
	while (c->out_off < c->out.len) {
		ssize_t n = send(c->fd, c->out.data + c->out_off, c->out.len - c->out_off,
				 MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return;
		c->out_off += (size_t)n;
	}
}

void qmp_server_free(struct qmp_server *s)
{
	if (!s)
		return;
	while (s->clients) {
		struct qmp_client *c = s->clients;
		s->clients = c->next;
		if (!c->dead) {
			loop_del_fd(s->loop, c->fd);
			final_flush(c);
		}
		client_free(c);
	}
	loop_del_fd(s->loop, s->fd);
	close(s->fd);
	remove_socket_file(&s->addr);
	qmp_fds_free(s->fds);
	free(s->tables);
	free(s);
}

/* ---- what the server offers --------------------------------------------- */

/* QEMU's CommandInfo list: every command a negotiated client may send. */
static int cmd_query_commands(struct vmm *vm, json_t *args, json_t **ret, struct qmp_error *err)
{
	struct qmp_server *s = vm->qmp;
	json_t *list = json_array();
	(void)args;
	for (size_t t = 0; list && t < s->nr_tables; t++)
		for (size_t i = 0; i < s->tables[t].n; i++)
			json_array_append_new(list, json_pack("{s:s}", "name",
							      s->tables[t].cmds[i].name));
	json_array_append_new(list, json_pack("{s:s}", "name", "qmp_capabilities"));
	return qmp_return(list, ret, err);
}

/* The schema's names for the argument types a table can say. */
static const char *const schema_types[] = {
	[QMP_ARG_INT] = "int",       [QMP_ARG_STR] = "str",    [QMP_ARG_BOOL] = "bool",
	[QMP_ARG_NUMBER] = "number", [QMP_ARG_OBJECT] = "any", [QMP_ARG_ARRAY] = "[any]",
};

static json_t *arg_object(const struct qmp_command *cmd, const char *type_name)
{
	json_t *members = json_array();
	for (size_t i = 0; members && i < cmd->nr_args; i++) {
		json_t *m = json_pack("{s:s,s:s}", "name", cmd->args[i].name, "type",
				      schema_types[cmd->args[i].type]);
		/* QEMU marks an optional member with "default": null. */
		if (m && !cmd->args[i].required)
			json_object_set_new(m, "default", json_null());
		json_array_append_new(members, m);
	}
	return json_pack("{s:s,s:s,s:o}", "name", type_name, "meta-type", "object", "members",
			 members);
}

static json_t *command_info(const char *name, const char *arg_type)
{
	return json_pack("{s:s,s:s,s:s,s:s,s:b}", "name", name, "meta-type", "command", "arg-type",
			 arg_type, "ret-type", "any", "allow-oob", 0);
}

/*
 * A minimal QEMU SchemaInfo list, from the command tables: each command
 * with its arguments' names, types and optionality (what libvirt probes,
 * e.g. migrate's arg-type members). Return types are not described
 * ("any"), nor are events. Type names are the command's own ("migrate-arg")
 * where QEMU masks them as numbers; clients follow the references either way.
 */
static int cmd_query_qmp_schema(struct vmm *vm, json_t *args, json_t **ret, struct qmp_error *err)
{
	struct qmp_server *s = vm->qmp;
	static const char *const builtins[][2] = {
		{"str", "string"},    {"int", "int"},   {"bool", "boolean"},
		{"number", "number"}, {"any", "value"},
	};
	json_t *list = json_array();
	(void)args;
	for (size_t i = 0; list && i < sizeof(builtins) / sizeof(builtins[0]); i++)
		json_array_append_new(list, json_pack("{s:s,s:s,s:s}", "name", builtins[i][0],
						      "meta-type", "builtin", "json-type",
						      builtins[i][1]));
	json_array_append_new(list, json_pack("{s:s,s:s,s:s}", "name", "[any]", "meta-type",
					      "array", "element-type", "any"));
	json_array_append_new(list, json_pack("{s:s,s:s,s:[]}", "name", "0", "meta-type", "object",
					      "members"));
	for (size_t t = 0; list && t < s->nr_tables; t++)
		for (size_t i = 0; i < s->tables[t].n; i++) {
			const struct qmp_command *cmd = &s->tables[t].cmds[i];
			char type_name[128] = "0"; /* the empty object */
			if (cmd->nr_args) {
				snprintf(type_name, sizeof(type_name), "%s-arg", cmd->name);
				json_array_append_new(list, arg_object(cmd, type_name));
			}
			json_array_append_new(list, command_info(cmd->name, type_name));
		}
	if (list) {
		const struct qmp_command caps = {"qmp_capabilities", NULL,
						 QMP_ARGS(capabilities_args)};
		json_array_append_new(list, arg_object(&caps, "qmp_capabilities-arg"));
		json_array_append_new(list,
				      command_info("qmp_capabilities", "qmp_capabilities-arg"));
	}
	return qmp_return(list, ret, err);
}

static const struct qmp_command discovery_commands[] = {
	{"query-commands", cmd_query_commands},
	{"query-qmp-schema", cmd_query_qmp_schema},
};

int qmp_discovery_register(struct qmp_server *s)
{
	return qmp_register(s, discovery_commands,
			    sizeof(discovery_commands) / sizeof(discovery_commands[0]));
}
