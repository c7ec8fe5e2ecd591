/*
 * QMP control socket: QEMU's JSON protocol on a unix socket (mode 0600;
 * see struct qmp_address).
 * Greeting, qmp_capabilities negotiation, execute/return/error with the
 * client's "id" echoed, asynchronous events with timestamps, several
 * clients at once. Runs on the main-loop thread only.
 *
 * Commands live in tables registered by the module that owns them
 * (qmp_machine.c for the machine, later migration), so this file knows no
 * command but qmp_capabilities.
 */
#ifndef GW_VMM_QMP_H
#define GW_VMM_QMP_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/un.h>

struct vmm;
struct loop;
struct qmp_server;

/* QMP error classes, as QEMU names them on the wire. */
enum qmp_error_class {
	QMP_ERR_GENERIC,           /* "GenericError" */
	QMP_ERR_COMMAND_NOT_FOUND, /* "CommandNotFound" */
};

struct qmp_error {
	enum qmp_error_class cls;
	char desc[512];
};

/* Fill err and return -1; for handlers: return qmp_fail(err, ...). */
int qmp_fail(struct qmp_error *err, enum qmp_error_class cls, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/*
 * A command handler. args is the "arguments" object (an empty object
 * when the client sent none; borrowed), already checked against the
 * command's argument table. On success return 0 and set *ret to a new
 * reference (NULL means {}); on failure return -1 with err set.
 */
typedef int (*qmp_handler)(struct vmm *vm, json_t *args, json_t **ret, struct qmp_error *err);

struct qmp_arg;

/* One command: the server checks the arguments against args[0..nr_args)
 * before fn runs, and query-commands and query-qmp-schema describe the
 * command from the same table, so what is listed is what is accepted. */
struct qmp_command {
	const char *name;
	qmp_handler fn;
	const struct qmp_arg *args; /* NULL: the command takes none */
	size_t nr_args;
};

/* For a table entry: {"name", fn, QMP_ARGS(name_args)}. */
#define QMP_ARGS(a) (a), (sizeof(a) / sizeof((a)[0]))

/* For handlers: *ret = value (stolen) and return 0, or, when value is NULL
 * because jansson ran out of memory, fail with GenericError. */
int qmp_return(json_t *value, json_t **ret, struct qmp_error *err);

/* Argument checking for handlers, with QEMU's error texts. */
enum qmp_arg_type {
	QMP_ARG_INT,    /* JSON integer ("expected: integer") */
	QMP_ARG_STR,    /* "string" */
	QMP_ARG_BOOL,   /* "boolean" */
	QMP_ARG_NUMBER, /* integer or real ("number") */
	QMP_ARG_OBJECT, /* "object" */
	QMP_ARG_ARRAY,  /* "array" */
};

struct qmp_arg {
	const char *name;
	enum qmp_arg_type type;
	bool required;
};

/*
 * Check args against spec[0..n): a required member that is missing
 * ("Parameter 'x' is missing"), a member of the wrong JSON type ("Invalid
 * parameter type for 'x', expected: integer"), then any member not in the
 * spec ("Parameter 'x' is unexpected"). Returns 0, or -1 with err set.
 * A command without arguments passes n = 0 to refuse any.
 */
int qmp_check_args(json_t *args, const struct qmp_arg *spec, size_t n, struct qmp_error *err);

/* {"qemu": {"major", "minor", "micro"}, "package": "godwit X.Y.Z"}: the
 * greeting's "version" and the return of query-version. The triple is
 * godwit's own version. New reference, NULL when out of memory. */
json_t *qmp_version(void);

/*
 * Where the server listens, from --qmp:
 *   unix:PATH               a socket file, mode 0600: only our user can
 *                           connect (and so control the VM)
 *   unix:NAME,abstract=on   a name in the abstract namespace ("@NAME" as
 *                           ss(8) shows it; a leading '@' is dropped). It
 *                           has no file, hence no mode: any local user in
 *                           the network namespace can connect. Only when
 *                           asked for by name.
 * ",abstract=off" is accepted too (QEMU's spelling). An empty path, and a
 * path starting with '@' without abstract=on, are refused: the first
 * would bind an abstract socket, the second looks like one.
 */
struct qmp_address {
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)]; /* the name, if abstract */
	bool abstract;
};

/* Parse spec (the --qmp argument). 0, or -EINVAL with errmsg saying why. */
int qmp_parse_address(const char *spec, struct qmp_address *out, char *errmsg, size_t errlen);

/* The environment variable under which a cpr-exec hands the listening
 * socket's fd to the new image (qmp_server_start takes it over). */
#define QMP_INHERIT_ENV "GODWIT_QMP_FD"
/* The listening socket, for a cpr-exec to keep across the exec. */
int qmp_server_listen_fd(const struct qmp_server *s);
int qmp_server_start(struct vmm *vm, struct loop *loop, const struct qmp_address *addr,
		     struct qmp_server **out, char *errmsg, size_t errlen);
void qmp_server_free(struct qmp_server *s);

/* Add commands; the table must outlive the server. */
int qmp_register(struct qmp_server *s, const struct qmp_command *cmds, size_t n);

/* Send {"timestamp":{...},"event":name,"data":data} to every client that
 * has finished capabilities negotiation; "data" is left out when data is
 * NULL (STOP, RESUME). Steals data. s may be NULL (no --qmp): a no-op. */
void qmp_emit_event(struct qmp_server *s, const char *name, json_t *data);

/* The oldest fd the client whose command runs now sent with SCM_RIGHTS
 * (the caller owns it), or -1 if it sent none. For command handlers. */
int qmp_take_fd(struct qmp_server *s);
/* The server's named fds and fd sets (vmm/qmp/qmp_fds.c). */
struct qmp_fds;
struct qmp_fds *qmp_server_fds(struct qmp_server *s);
/* getfd, closefd, add-fd, remove-fd, query-fdsets (qmp_fds.c). */
int qmp_fds_register(struct qmp_server *s);
struct qmp_fds *qmp_fds_new(void);
void qmp_fds_free(struct qmp_fds *t);
/*
 * A migration URI that names a passed fd, made one the channel layer
 * opens: "fd:NAME" (a getfd name: taken out of the table, as QEMU does)
 * and "file:/dev/fdset/N" (a dup of the set's fd whose access mode fits
 * `writing`) become "fd:NUM" in out, and *owned is the fd to close once
 * the channel is made (-1 if the URI named none). 0, or -1 with errmsg.
 */
int qmp_fds_resolve(struct qmp_server *s, const char *uri, bool writing, char *out, size_t outlen,
		    int *owned, char *errmsg, size_t errlen);

/* query-commands and query-qmp-schema, derived from the registered
 * tables (qmp.c). */
int qmp_discovery_register(struct qmp_server *s);
/* Machine commands (qmp_machine.c). */
int qmp_machine_register(struct qmp_server *s);
/* object-add, object-del (vmm/qmp/qmp_objects.c). */
int qmp_objects_register(struct qmp_server *s);
/* QEMU's migration commands (vmm/qmp/qmp_migration.c). */
int qmp_migration_register(struct qmp_server *s);

#endif
