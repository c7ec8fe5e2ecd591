/*
 * A small blocking QMP client for the godwit tools: connect to a unix
 * socket, check the greeting, negotiate capabilities, run commands and
 * read events. One request is in flight at a time; events that arrive
 * while a reply is awaited are kept, in order, for qmp_client_next_event().
 *
 * Works with godwit-vmm and with QEMU: it relies only on the protocol
 * (one JSON object per line from the server, replies in request order).
 *
 * Functions return 0 or a negative errno; on failure qmp_client_error()
 * says what went wrong in words, including a QMP error's class and desc.
 */
#ifndef GW_TOOLS_QMP_CLIENT_H
#define GW_TOOLS_QMP_CLIENT_H

#include <jansson.h>
#include <stddef.h>

struct qmp_client;

/*
 * Connect to the unix socket at path, read the greeting and run
 * qmp_capabilities. On failure *out is NULL and errmsg holds a sentence
 * ("cannot connect to /x: No such file or directory", "... is not a QMP
 * server"); the return value tells connect errors (-ENOENT, -ECONNREFUSED,
 * -EACCES ...) from protocol ones (-EPROTO).
 */
int qmp_client_open(const char *path, struct qmp_client **out, char *errmsg, size_t errlen);
void qmp_client_close(struct qmp_client *c);

/*
 * Run one command: name with args (stolen; NULL for none), tagged with a
 * fresh "id" that the reply must echo. On success *ret is the "return"
 * value (new reference). A QMP error reply returns -EREMOTEIO with
 * "Class: desc" in qmp_client_error(); callers that need the class alone
 * use qmp_client_request().
 */
int qmp_client_execute(struct qmp_client *c, const char *name, json_t *args, json_t **ret);

/*
 * Send text (one JSON request, as the user wrote it) and return the whole
 * reply object that follows, "return" or "error" alike (new reference).
 * Only transport and framing failures are errors here.
 */
int qmp_client_request(struct qmp_client *c, const char *text, json_t **reply);

/*
 * The next event (new reference): one kept from an earlier wait, or one
 * read now. timeout_ms < 0 waits forever; -ETIMEDOUT when none came,
 * -ECONNRESET when the server closed the connection.
 */
int qmp_client_next_event(struct qmp_client *c, int timeout_ms, json_t **event);

/* The pid of the process serving the socket (SO_PEERCRED), or -errno. */
int qmp_client_peer_pid(struct qmp_client *c);

/* Why the last call failed. */
const char *qmp_client_error(struct qmp_client *c);

#endif
