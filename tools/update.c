/*
 * godwit update: move the running guest onto a new godwit-vmm without a
 * second copy of its RAM (docs/format.md, "Local live update"). The QMP is
 * QEMU's: migrate-set-parameters mode cpr-transfer or cpr-exec (with
 * cpr-exec-command), then migrate.
 *
 *   --to PATH        cpr-transfer to a godwit-vmm already waiting on
 *                    --incoming unix:PATH; the old process quits after.
 *   --exec BINARY    cpr-exec: this very process becomes BINARY, run with
 *                    the VMM's own command line; same pid, same QMP socket.
 */
#include "cli.h"
#include "progress.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define POLL_MS 20
/* How long the new image may take to answer on the old socket path. */
#define RECONNECT_MS 30000

/* query-migrate until final; NULL if the connection went (cpr-exec). */
static json_t *wait_final(struct qmp_client *c)
{
	for (;;) {
		json_t *info;
		if (qmp_client_execute(c, "query-migrate", NULL, &info) < 0)
			return NULL;
		const char *s = json_string_value(json_object_get(info, "status"));
		if (s && migration_status_final(s))
			return info;
		json_decref(info);
		sleep_ms(POLL_MS);
	}
}

static long long field(json_t *info, const char *name)
{
	return (long long)json_integer_value(json_object_get(info, name));
}

static long long ram_copied(json_t *info)
{
	return (long long)json_integer_value(
		json_object_get(json_object_get(info, "ram"), "transferred"));
}

static int failed(const struct opts *o, json_t *info)
{
	const char *desc = json_string_value(json_object_get(info, "error-desc"));
	if (o->json)
		print_json(o, info);
	fprintf(stderr, "godwit: update %s%s%s\n",
		json_string_value(json_object_get(info, "status")), desc ? ": " : "",
		desc ? desc : "");
	json_decref(info);
	return EXIT_FAILURE;
}

/* A failed update leaves the old process as it was, mode included. */
static void back_to_normal(struct qmp_client *c)
{
	execute(c, "migrate-set-parameters", json_pack("{s:s}", "mode", "normal"));
}

/* The parameters (stolen), then migrate uri; -1 after saying why. */
static int start(struct qmp_client *c, json_t *params, const char *uri)
{
	if (execute(c, "migrate-set-parameters", params) < 0)
		return command_failed(c), -1;
	if (execute(c, "migrate", json_pack("{s:s}", "uri", uri)) < 0) {
		command_failed(c);
		back_to_normal(c);
		return -1;
	}
	return 0;
}

static int update_to(struct qmp_client *c, const struct opts *o)
{
	char uri[PATH_MAX + 8], real[PATH_MAX];
	/* The VMM may run in another directory. */
	const char *path = o->update_target;
	if (path[0] != '/' && realpath(dirname(strdupa(path)), real))
		snprintf(uri, sizeof(uri), "unix:%s/%s", real, basename(strdupa(path)));
	else
		snprintf(uri, sizeof(uri), "unix:%s", path);
	if (start(c, json_pack("{s:s}", "mode", "cpr-transfer"), uri) < 0)
		return EXIT_FAILURE;
	json_t *info = wait_final(c);
	if (!info)
		return command_failed(c);
	if (strcmp(json_string_value(json_object_get(info, "status")), "completed")) {
		back_to_normal(c);
		return failed(o, info);
	}
	if (o->json)
		print_json(o, info);
	else
		printf("updated to the process on %s: downtime %.3f ms, state %lld bytes sent, RAM "
		       "copied %lld bytes; the old process quits\n",
		       uri + 5, (double)field(info, "x-godwit-downtime-us") / 1000,
		       field(info, "x-godwit-state-bytes"), ram_copied(info));
	json_decref(info);
	/* It can only quit now: the guest runs on in the new process. */
	if (execute(c, "quit", NULL) < 0)
		return command_failed(c);
	return EXIT_SUCCESS;
}

/* The VMM's command line, from /proc (its pid from the socket). */
static int vmm_argv(struct qmp_client *c, char *buf, size_t cap, size_t *len, int *pid)
{
	*pid = qmp_client_peer_pid(c);
	char proc[64];
	snprintf(proc, sizeof(proc), "/proc/%d/cmdline", *pid);
	int fd = *pid > 0 ? open(proc, O_RDONLY | O_CLOEXEC) : -1;
	if (fd < 0) {
		fprintf(stderr, "godwit: cannot read the VMM's command line (%s): %s\n", proc,
			strerror(errno));
		return -1;
	}
	ssize_t n = read(fd, buf, cap);
	close(fd);
	if (n <= 0 || (size_t)n == cap) {
		fprintf(stderr, "godwit: cannot read the VMM's command line (%s)\n", proc);
		return -1;
	}
	*len = (size_t)n;
	return 0;
}

/*
 * cpr-exec-command: BINARY, then the VMM's arguments without the
 * --incoming it may have had, then --incoming file:STATE.
 */
static json_t *exec_command(const char *binary, const char *args, size_t len, const char *state_uri)
{
	json_t *cmd = json_array();
	json_array_append_new(cmd, json_string(binary));
	const char *a = args + strlen(args) + 1; /* argv[0] was the old binary */
	while (a < args + len) {
		if (!strcmp(a, "--incoming") || !strcmp(a, "-i")) {
			a += strlen(a) + 1;
			if (a < args + len)
				a += strlen(a) + 1;
			continue;
		}
		if (strncmp(a, "--incoming=", 11))
			json_array_append_new(cmd, json_string(a));
		a += strlen(a) + 1;
	}
	json_array_append_new(cmd, json_string("--incoming"));
	json_array_append_new(cmd, json_string(state_uri));
	return cmd;
}

static int update_exec(struct qmp_client *c, const struct opts *o)
{
	struct qmp_client *n = NULL;
	char binary[PATH_MAX], args[65536], state[PATH_MAX + 64], uri[PATH_MAX + 80];
	size_t len;
	int pid;
	if (!realpath(o->update_target, binary)) {
		fprintf(stderr, "godwit: %s: %s\n", o->update_target, strerror(errno));
		return EXIT_FAILURE;
	}
	if (vmm_argv(c, args, sizeof(args), &len, &pid) < 0)
		return EXIT_FAILURE;
	/* The state goes next to the QMP socket, a place the VMM can write. */
	char sockdir[PATH_MAX];
	snprintf(sockdir, sizeof(sockdir), "%s", o->qmp_path);
	char real[PATH_MAX];
	if (!realpath(dirname(sockdir), real)) {
		fprintf(stderr, "godwit: %s: %s\n", o->qmp_path, strerror(errno));
		return EXIT_FAILURE;
	}
	snprintf(state, sizeof(state), "%s/.godwit-update-%d.state", real, pid);
	snprintf(uri, sizeof(uri), "file:%s", state);
	json_t *cmd = exec_command(binary, args, len, uri);
	if (start(c, json_pack("{s:s,s:o}", "mode", "cpr-exec", "cpr-exec-command", cmd), uri) < 0)
		return EXIT_FAILURE;
	/* The old image answers until it execs (or refuses): then the
	 * connection ends, and the new image serves the same path. */
	json_t *info = wait_final(c);
	/* "completed" from the old image: the state is saved, the exec next. */
	if (info && strcmp(json_string_value(json_object_get(info, "status")), "completed")) {
		back_to_normal(c);
		unlink(state);
		return failed(o, info);
	}
	json_decref(info);
	char err[512] = "";
	for (int waited = 0;; waited += POLL_MS) {
		if (qmp_client_open(o->qmp_path, &n, err, sizeof(err)) == 0) {
			info = wait_final(n);
			if (info && json_object_get(info, "x-godwit-adopted-bytes"))
				break;
			json_decref(info);
			qmp_client_close(n);
			n = NULL;
		}
		if (waited >= RECONNECT_MS) {
			fprintf(stderr,
				"godwit: the new image did not answer on %s within %d s: %s\n",
				o->qmp_path, RECONNECT_MS / 1000, err);
			return EXIT_FAILURE;
		}
		sleep_ms(POLL_MS);
	}
	int now = qmp_client_peer_pid(n);
	qmp_client_close(n);
	if (strcmp(json_string_value(json_object_get(info, "status")), "completed"))
		return failed(o, info);
	unlink(state);
	if (o->json)
		print_json(o, info);
	else
		printf("updated in place to %s (pid %d%s): downtime %.3f ms, state %lld bytes, RAM "
		       "copied %lld bytes\n",
		       binary, now, now == pid ? ", unchanged" : ", CHANGED",
		       (double)field(info, "x-godwit-downtime-us") / 1000,
		       field(info, "x-godwit-received"), ram_copied(info));
	json_decref(info);
	return now == pid ? EXIT_SUCCESS : EXIT_FAILURE;
}

int run_update(struct qmp_client *c, const struct command *cmd, const struct opts *o, char **argv)
{
	(void)cmd;
	(void)argv;
	if (!(o->given & OPT_UPDATE_TO) == !(o->given & OPT_UPDATE_EXEC)) {
		fprintf(stderr,
			"godwit: update needs exactly one of --to PATH and --exec BINARY\n");
		return EXIT_USAGE;
	}
	return o->given & OPT_UPDATE_TO ? update_to(c, o) : update_exec(c, o);
}
