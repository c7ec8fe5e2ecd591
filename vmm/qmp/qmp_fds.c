/*
 * File descriptors passed over QMP, as management software passes them
 * (QEMU's getfd, closefd, add-fd, remove-fd, query-fdsets): a VMM that
 * may not open paths itself (sandboxed) still saves into and restores
 * from files, and libvirt hands it a connected migration socket. An fd
 * travels in SCM_RIGHTS with the command that takes it
 * (qmp_take_fd()); migrations name it in their URI as fd:NAME or
 * file:/dev/fdset/N (qmp_fds_resolve()).
 */
#include "vmm/machine.h"
#include "vmm/qmp/qmp.h"
#include "vmm/vmm.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_NAMED 64
#define MAX_SETS 64
#define MAX_SET_FDS 16
#define NAME_MAX_LEN 127

struct named_fd {
	char name[NAME_MAX_LEN + 1];
	int fd;
};

struct fdset {
	int64_t id;
	unsigned nr;
	int fds[MAX_SET_FDS];
	char *opaque[MAX_SET_FDS];
};

struct qmp_fds {
	struct named_fd named[MAX_NAMED];
	unsigned nr_named;
	struct fdset sets[MAX_SETS];
	unsigned nr_sets;
};

static struct qmp_fds *fds_of(struct vmm *vm)
{
	return qmp_server_fds(vm->qmp);
}

static struct named_fd *find_named(struct qmp_fds *t, const char *name)
{
	for (unsigned i = 0; i < t->nr_named; i++)
		if (!strcmp(t->named[i].name, name))
			return &t->named[i];
	return NULL;
}

static void drop_named(struct qmp_fds *t, struct named_fd *n)
{
	*n = t->named[--t->nr_named];
}

static const struct qmp_arg cmd_getfd_args[] = {{"fdname", QMP_ARG_STR, true}};

static int cmd_getfd(struct vmm *vm, json_t *args, json_t **ret, struct qmp_error *err)
{
	struct qmp_fds *t = fds_of(vm);
	(void)ret;
	const char *name = json_string_value(json_object_get(args, "fdname"));
	/* A number would read as fd:N, the process's own fd N. */
	if (!name[0] || strlen(name) > NAME_MAX_LEN || (name[0] >= '0' && name[0] <= '9'))
		return qmp_fail(err, QMP_ERR_GENERIC,
				"Parameter 'fdname' expects a name of 1 to %d characters that does not start with a digit",
				NAME_MAX_LEN);
	int fd = qmp_take_fd(vm->qmp);
	if (fd < 0)
		return qmp_fail(err, QMP_ERR_GENERIC, "No file descriptor supplied via SCM_RIGHTS");
	struct named_fd *n = find_named(t, name);
	if (n) {
		/* As QEMU: the name now stands for the new fd. */
		close(n->fd);
		n->fd = fd;
		return 0;
	}
	if (t->nr_named == MAX_NAMED) {
		close(fd);
		return qmp_fail(err, QMP_ERR_GENERIC, "too many named file descriptors (%d)",
				MAX_NAMED);
	}
	n = &t->named[t->nr_named++];
	snprintf(n->name, sizeof(n->name), "%s", name);
	n->fd = fd;
	return 0;
}

static const struct qmp_arg cmd_closefd_args[] = {{"fdname", QMP_ARG_STR, true}};

static int cmd_closefd(struct vmm *vm, json_t *args, json_t **ret, struct qmp_error *err)
{
	struct qmp_fds *t = fds_of(vm);
	(void)ret;
	const char *name = json_string_value(json_object_get(args, "fdname"));
	struct named_fd *n = find_named(t, name);
	if (!n)
		return qmp_fail(err, QMP_ERR_GENERIC, "File descriptor named '%s' not found", name);
	close(n->fd);
	drop_named(t, n);
	return 0;
}

static struct fdset *find_set(struct qmp_fds *t, int64_t id)
{
	for (unsigned i = 0; i < t->nr_sets; i++)
		if (t->sets[i].id == id)
			return &t->sets[i];
	return NULL;
}

static const struct qmp_arg cmd_add_fd_args[] = {
	{"fdset-id", QMP_ARG_INT, false},
	{"opaque", QMP_ARG_STR, false},
};

static int cmd_add_fd(struct vmm *vm, json_t *args, json_t **ret, struct qmp_error *err)
{
	struct qmp_fds *t = fds_of(vm);
	json_t *v = json_object_get(args, "fdset-id");
	int64_t id = 0;
	if (v) {
		id = json_integer_value(v);
		if (id < 0)
			return qmp_fail(err, QMP_ERR_GENERIC,
					"Parameter 'fdset-id' expects a non-negative value");
	} else {
		/* QEMU: the lowest id no set has. */
		while (find_set(t, id))
			id++;
	}
	struct fdset *set = find_set(t, id);
	if (!set && t->nr_sets == MAX_SETS)
		return qmp_fail(err, QMP_ERR_GENERIC, "too many fd sets (%d)", MAX_SETS);
	if (set && set->nr == MAX_SET_FDS)
		return qmp_fail(err, QMP_ERR_GENERIC, "fd set %lld is full (%d fds)", (long long)id,
				MAX_SET_FDS);
	int fd = qmp_take_fd(vm->qmp);
	if (fd < 0)
		return qmp_fail(err, QMP_ERR_GENERIC, "No file descriptor supplied via SCM_RIGHTS");
	if (!set) {
		set = &t->sets[t->nr_sets++];
		memset(set, 0, sizeof(*set));
		set->id = id;
	}
	const char *opaque = json_string_value(json_object_get(args, "opaque"));
	set->opaque[set->nr] = opaque ? strdup(opaque) : NULL;
	set->fds[set->nr++] = fd;
	return qmp_return(json_pack("{s:I,s:i}", "fdset-id", (json_int_t)id, "fd", fd), ret, err);
}

static void drop_set_fd(struct fdset *set, unsigned i)
{
	close(set->fds[i]);
	free(set->opaque[i]);
	set->nr--;
	set->fds[i] = set->fds[set->nr];
	set->opaque[i] = set->opaque[set->nr];
}

static const struct qmp_arg cmd_remove_fd_args[] = {
	{"fdset-id", QMP_ARG_INT, true},
	{"fd", QMP_ARG_INT, false},
};

static int cmd_remove_fd(struct vmm *vm, json_t *args, json_t **ret, struct qmp_error *err)
{
	struct qmp_fds *t = fds_of(vm);
	(void)ret;
	int64_t id = json_integer_value(json_object_get(args, "fdset-id"));
	json_t *v = json_object_get(args, "fd");
	struct fdset *set = find_set(t, id);
	bool found = false;
	for (unsigned i = 0; set && i < set->nr;) {
		if (!v || set->fds[i] == json_integer_value(v)) {
			drop_set_fd(set, i);
			found = true;
		} else {
			i++;
		}
	}
	if (!found) {
		if (v)
			return qmp_fail(err, QMP_ERR_GENERIC,
					"File descriptor named 'fdset-id:%lld, fd:%lld' not found",
					(long long)id, (long long)json_integer_value(v));
		return qmp_fail(err, QMP_ERR_GENERIC,
				"File descriptor named 'fdset-id:%lld' not found", (long long)id);
	}
	if (set->nr == 0)
		*set = t->sets[--t->nr_sets];
	return 0;
}

static int cmd_query_fdsets(struct vmm *vm, json_t *args, json_t **ret, struct qmp_error *err)
{
	(void)args;
	struct qmp_fds *t = fds_of(vm);
	json_t *list = json_array();
	for (unsigned i = 0; i < t->nr_sets; i++) {
		json_t *fds = json_array();
		for (unsigned k = 0; k < t->sets[i].nr; k++) {
			json_t *e = json_pack("{s:i}", "fd", t->sets[i].fds[k]);
			if (t->sets[i].opaque[k])
				json_object_set_new(e, "opaque", json_string(t->sets[i].opaque[k]));
			json_array_append_new(fds, e);
		}
		json_array_append_new(list, json_pack("{s:I,s:o}", "fdset-id",
						      (json_int_t)t->sets[i].id, "fds", fds));
	}
	return qmp_return(list, ret, err);
}

static const struct qmp_command fd_commands[] = {
	{"getfd", cmd_getfd, QMP_ARGS(cmd_getfd_args)},
	{"closefd", cmd_closefd, QMP_ARGS(cmd_closefd_args)},
	{"add-fd", cmd_add_fd, QMP_ARGS(cmd_add_fd_args)},
	{"remove-fd", cmd_remove_fd, QMP_ARGS(cmd_remove_fd_args)},
	{"query-fdsets", cmd_query_fdsets},
};

struct qmp_fds *qmp_fds_new(void)
{
	return calloc(1, sizeof(struct qmp_fds));
}

void qmp_fds_free(struct qmp_fds *t)
{
	if (!t)
		return;
	for (unsigned i = 0; i < t->nr_named; i++)
		close(t->named[i].fd);
	for (unsigned i = 0; i < t->nr_sets; i++)
		while (t->sets[i].nr)
			drop_set_fd(&t->sets[i], 0);
	free(t);
}

int qmp_fds_register(struct qmp_server *s)
{
	return qmp_register(s, fd_commands, ARRAY_SIZE(fd_commands));
}

static bool access_fits(int fd, bool writing)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0)
		return false;
	int mode = fl & O_ACCMODE;
	return mode == O_RDWR || mode == (writing ? O_WRONLY : O_RDONLY);
}

int qmp_fds_resolve(struct qmp_server *s, const char *uri, bool writing, char *out, size_t outlen,
		    int *owned, char *errmsg, size_t errlen)
{
	static const char fdset_prefix[] = "file:/dev/fdset/";
	struct qmp_fds *t = s ? qmp_server_fds(s) : NULL;
	int fd = -1;

	*owned = -1;
	if (t && !strncmp(uri, "fd:", 3) && uri[3] && !(uri[3] >= '0' && uri[3] <= '9')) {
		struct named_fd *n = find_named(t, uri + 3);
		if (!n) {
			snprintf(errmsg, errlen, "File descriptor named '%s' not found", uri + 3);
			return -1;
		}
		if (!access_fits(n->fd, writing)) {
			snprintf(errmsg, errlen, "File descriptor named '%s' is not open for %s",
				 uri + 3, writing ? "writing" : "reading");
			return -1;
		}
		/* The migration takes the named fd: the name is gone after. */
		fd = n->fd;
		drop_named(t, n);
	} else if (t && !strncmp(uri, fdset_prefix, sizeof(fdset_prefix) - 1)) {
		const char *num = uri + sizeof(fdset_prefix) - 1;
		char *end;
		errno = 0;
		long long id = strtoll(num, &end, 10);
		struct fdset *set = end != num && !*end && !errno ? find_set(t, id) : NULL;
		if (!set) {
			snprintf(errmsg, errlen, "%s: no fd set %s was added (add-fd)", uri, num);
			return -1;
		}
		for (unsigned i = 0; i < set->nr && fd < 0; i++)
			if (access_fits(set->fds[i], writing))
				fd = fcntl(set->fds[i], F_DUPFD_CLOEXEC, 0);
		if (fd < 0) {
			snprintf(errmsg, errlen, "%s: the set has no fd open for %s", uri,
				 writing ? "writing" : "reading");
			return -1;
		}
	} else if ((size_t)snprintf(out, outlen, "%s", uri) >= outlen) {
		snprintf(errmsg, errlen, "the URI is longer than %zu bytes", outlen - 1);
		return -1;
	} else {
		return 0;
	}
	*owned = fd;
	snprintf(out, outlen, "fd:%d", fd);
	return 0;
}
