/*
 * The migration commands: start a migration and follow it to its end,
 * look at it, and set its parameters and capabilities. Everything here is
 * QMP that QEMU speaks too (migrate, query-migrate, migrate-cancel,
 * migrate-set-parameters, migrate-set-capabilities and their queries),
 * so the commands drive either VMM.
 *
 * Following is polling: query-migrate every POLL_MS. It needs no
 * "events" capability, so it works whoever set the VMM up, and a poll
 * shows the figures an event would not carry anyway.
 */
#include "cli.h"
#include "progress.h"
#include "units.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define POLL_MS 100

static volatile sig_atomic_t interrupted;

static void on_sigint(int sig)
{
	(void)sig;
	interrupted = 1;
}

/*
 * Ctrl-C while following cancels the migration and still waits for its
 * end, so the user learns where the guest is. The handler is one-shot: a
 * second Ctrl-C ends godwit at once (the cancel is already on its way).
 * Without SA_RESTART the sleep between polls ends early, so the cancel
 * goes out at once.
 */
static void catch_sigint(void)
{
	struct sigaction sa = {.sa_handler = on_sigint, .sa_flags = SA_RESETHAND};
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
}

static int cancel(struct qmp_client *c)
{
	json_t *ret;
	if (qmp_client_execute(c, "migrate-cancel", NULL, &ret) < 0)
		return -1;
	json_decref(ret);
	return 0;
}

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/*
 * virsh's --timeout-suspend: a migration that has not ended after the
 * timeout gets the guest paused (QMP stop), and a paused guest dirties
 * nothing, so the next pass finds nothing left and the switchover comes.
 * *suspended: the guest is paused by the stop now; not if the migration
 * already held it for the switchover (finish-migrate), where a stop does
 * nothing and the guest travels running.
 */
static int suspend_for_timeout(struct qmp_client *c, const struct opts *o, struct progress *p,
			       bool *suspended)
{
	json_t *st;
	progress_end(p);
	fprintf(stderr,
		"godwit: --timeout: the migration is still running after %llu s: suspending "
		"the guest so that it completes\n",
		(unsigned long long)o->policy.timeout_s);
	if (execute(c, "stop", NULL) < 0 || qmp_client_execute(c, "query-status", NULL, &st) < 0)
		return -1;
	const char *status = json_string_value(json_object_get(st, "status"));
	*suspended = status && !strcmp(status, "paused");
	json_decref(st);
	return 0;
}

/* --tls and the options that imply it. */
#define OPTS_TLS (OPT_TLS | OPT_TLS_CREDS | OPT_TLS_HOSTNAME)
#define OPTS_POSTCOPY (OPT_POSTCOPY | OPT_POSTCOPY_AFTER)

/*
 * virsh's --postcopy-after-precopy: once the first pass has ended (the
 * second sync of the dirty bitmap), every page has gone once and the
 * destination holds a valid copy of most of them; from then on pre-copy
 * only re-sends, which post-copy does on demand instead.
 */
static bool first_pass_over(json_t *info)
{
	const char *status = json_string_value(json_object_get(info, "status"));
	json_t *syncs = json_object_get(json_object_get(info, "ram"), "dirty-sync-count");
	return status && !strcmp(status, "active") && json_integer_value(syncs) >= 2;
}

static int start_postcopy(struct qmp_client *c, struct progress *p)
{
	progress_end(p);
	fprintf(stderr, "godwit: --postcopy-after-precopy: the first pass is over, "
			"switching to post-copy\n");
	return execute(c, "migrate-start-postcopy", NULL);
}

/* Poll query-migrate until the status is final; *final gets that reply,
 * *suspended says whether --timeout paused the guest. */
static int follow(struct qmp_client *c, const struct opts *o, json_t **final, bool *suspended)
{
	struct progress p;
	bool cancelled = false, timed_out = false, switched = false;
	uint64_t deadline = now_ms() + o->policy.timeout_s * 1000;
	progress_init(&p, o->tty);
	catch_sigint();
	for (;;) {
		json_t *info;
		if (qmp_client_execute(c, "query-migrate", NULL, &info) < 0) {
			progress_end(&p);
			return command_failed(c);
		}
		const char *status = json_string_value(json_object_get(info, "status"));
		if (!status) {
			progress_end(&p);
			json_decref(info);
			fprintf(stderr,
				"godwit: the VMM reports no migration (query-migrate has no status)\n");
			return EXIT_FAILURE;
		}
		if (migration_status_final(status)) {
			progress_end(&p);
			*final = info;
			return EXIT_SUCCESS;
		}
		if (!o->json)
			progress_update(&p, info);
		bool switch_now = (o->given & OPT_POSTCOPY_AFTER) && !switched && !cancelled &&
				  first_pass_over(info);
		json_decref(info);
		if (switch_now) {
			if (start_postcopy(c, &p) < 0)
				return command_failed(c);
			switched = true;
		}
		if (interrupted && !cancelled) {
			progress_end(&p);
			fprintf(stderr, "godwit: interrupted: cancelling the migration "
					"(Ctrl-C again to stop waiting for it)\n");
			if (cancel(c) < 0)
				return command_failed(c);
			cancelled = true;
			continue;
		}
		if ((o->given & OPT_TIMEOUT) && !timed_out && !cancelled && now_ms() >= deadline) {
			if (suspend_for_timeout(c, o, &p, suspended) < 0)
				return command_failed(c);
			timed_out = true;
			continue;
		}
		sleep_ms(POLL_MS);
	}
}

/* The capabilities --parallel and --postcopy turn on, on either side. */
static void add_destination_caps(json_t *caps, const struct opts *o)
{
	if (o->given & OPT_PARALLEL)
		json_array_append_new(caps,
				      json_pack("{s:s,s:b}", "capability", "multifd", "state", 1));
	if (o->given & OPTS_POSTCOPY)
		json_array_append_new(caps, json_pack("{s:s,s:b}", "capability", "postcopy-ram",
						      "state", 1));
}

/*
 * --tls: virsh's means "with the credentials configured", and so does
 * ours: those the VMM has (parameter tls-creds). Without any, the
 * migration would go in the clear: refuse instead.
 */
static int check_tls(struct qmp_client *c)
{
	json_t *params;
	if (qmp_client_execute(c, "query-migrate-parameters", NULL, &params) < 0)
		return -1;
	const char *creds = json_string_value(json_object_get(params, "tls-creds"));
	bool none = !creds || !*creds;
	json_decref(params);
	if (none)
		fprintf(stderr,
			"godwit: --tls: the VMM has no TLS credentials (parameter tls-creds is "
			"empty): create a tls-creds-x509 object (QMP object-add) and give its id "
			"with --tls-creds ID\n");
	return none ? 1 : 0;
}

/*
 * virsh migrate's options, as the QMP libvirt sends before migrate.
 * Parameters first: the VMM checks all of them before it applies any, so
 * a wrong value changes nothing. Like migrate-set and migrate-cap, what is
 * set stays set for later migrations. 0, -1 when a command failed, 1 when
 * --tls finds no credentials (said here).
 */
static int apply_policy(struct qmp_client *c, const struct opts *o)
{
	json_t *params = json_object(), *caps = json_array();
	int ret = 0;
	if (o->given & OPT_BANDWIDTH)
		json_object_set_new(params, "max-bandwidth",
				    json_integer((json_int_t)(o->policy.bandwidth_mib << 20)));
	if (o->given & OPT_DOWNTIME)
		json_object_set_new(params, "downtime-limit",
				    json_integer((json_int_t)o->policy.downtime_ms));
	if (o->given & OPT_PARALLEL)
		json_object_set_new(params, "multifd-channels", json_integer(o->parallel));
	if (o->given & OPT_TLS_CREDS)
		json_object_set_new(params, "tls-creds", json_string(o->policy.tls_creds));
	if (o->given & OPT_TLS_HOSTNAME)
		json_object_set_new(params, "tls-hostname", json_string(o->policy.tls_hostname));
	if (o->given & OPT_AUTO_CONVERGE)
		json_array_append_new(caps, json_pack("{s:s,s:b}", "capability", "auto-converge",
						      "state", 1));
	add_destination_caps(caps, o);
	if (json_object_size(params))
		ret = execute(c, "migrate-set-parameters", json_incref(params));
	if (ret == 0 && json_array_size(caps))
		ret = execute(c, "migrate-set-capabilities",
			      json_pack("{s:O}", "capabilities", caps));
	json_decref(params);
	json_decref(caps);
	return ret == 0 && (o->given & OPTS_TLS) ? check_tls(c) : ret;
}

/* --dest-socket: the capabilities both sides need (the destination reads
 * multifd channels, or serves post-copy's page requests, only with them
 * on; it takes the channels' count from the stream). */
static int prepare_destination(struct qmp_client *dst, const struct opts *o)
{
	json_t *caps = json_array();
	add_destination_caps(caps, o);
	if (!json_array_size(caps)) {
		json_decref(caps);
		return 0;
	}
	return execute(dst, "migrate-set-capabilities", json_pack("{s:o}", "capabilities", caps));
}

static struct qmp_client *open_destination(const struct opts *o)
{
	const char *path = o->policy.dest_socket;
	struct qmp_client *dst;
	char err[512];
	if (!strncmp(path, "unix:", 5))
		path += 5;
	if (qmp_client_open(path, &dst, err, sizeof(err)) < 0) {
		fprintf(stderr, "godwit: --dest-socket: %s\n", err);
		return NULL;
	}
	return dst;
}

/* The destination completes a moment after the source: wait for it,
 * then run its guest. */
static int resume_destination(struct qmp_client *dst)
{
	for (;;) {
		json_t *info;
		if (qmp_client_execute(dst, "query-migrate", NULL, &info) < 0)
			return command_failed(dst);
		const char *s = json_string_value(json_object_get(info, "status"));
		bool done = s && !strcmp(s, "completed");
		if (s && !done && migration_status_final(s)) {
			fprintf(stderr,
				"godwit: the destination's migration ended %s: "
				"its guest is not resumed\n",
				s);
			json_decref(info);
			return EXIT_FAILURE;
		}
		json_decref(info);
		if (done)
			return execute(dst, "cont", NULL) < 0 ? command_failed(dst) : EXIT_SUCCESS;
		sleep_ms(POLL_MS);
	}
}

/*
 * After --timeout suspended the guest. A guest paused by the user arrives
 * paused (QEMU's rule, which godwit-vmm follows), but virsh's
 * --timeout-suspend means the guest runs on at the destination once the
 * migration has completed (libvirt's finish step starts it there); that
 * takes the destination's socket, and without it the user is told how. A
 * migration that did not complete leaves the source guest running, as it
 * was before the timeout.
 */
static int after_suspend(struct qmp_client *c, struct qmp_client *dst, bool completed)
{
	if (!completed) {
		fprintf(stderr, "godwit: resuming the guest suspended by --timeout\n");
		return execute(c, "cont", NULL) < 0 ? command_failed(c) : EXIT_SUCCESS;
	}
	if (dst)
		return resume_destination(dst);
	fprintf(stderr, "godwit: the guest was suspended by --timeout and arrives paused; "
			"'godwit --socket DEST cont' runs it at the destination\n");
	return EXIT_SUCCESS;
}

static int start_and_follow(struct qmp_client *c, struct qmp_client *dst, const struct opts *o,
			    const char *uri)
{
	json_t *ret;
	if (dst && prepare_destination(dst, o) < 0)
		return command_failed(dst);
	int applied = apply_policy(c, o);
	if (applied < 0)
		return command_failed(c);
	if (applied > 0)
		return EXIT_FAILURE;
	if (qmp_client_execute(c, "migrate", json_pack("{s:s}", "uri", uri), &ret) < 0)
		return command_failed(c);
	if (!(o->given & OPT_WAIT)) {
		if (o->json)
			print_json(o, ret);
		json_decref(ret);
		return EXIT_SUCCESS;
	}
	json_decref(ret);

	json_t *info = NULL;
	bool suspended = false;
	int status = follow(c, o, &info, &suspended);
	if (status != EXIT_SUCCESS) {
		if (suspended)
			after_suspend(c, NULL, false);
		return status;
	}
	if (o->json)
		print_json(o, info);
	else
		migration_print_summary(stdout, info);
	const char *s = json_string_value(json_object_get(info, "status"));
	bool completed = strcmp(s, "completed") == 0;
	if (!completed) {
		const char *desc = json_string_value(json_object_get(info, "error-desc"));
		fprintf(stderr, "godwit: migration %s%s%s\n", s, desc ? ": " : "",
			desc ? desc : "");
		status = EXIT_FAILURE;
	}
	json_decref(info);
	if (suspended && after_suspend(c, dst, completed) != EXIT_SUCCESS)
		status = EXIT_FAILURE;
	return status;
}

int check_migrate(const struct opts *o)
{
	const char *why = NULL;
	if ((o->given & OPT_TIMEOUT_SUSPEND) && !(o->given & OPT_TIMEOUT))
		why = "--timeout-suspend needs --timeout";
	else if ((o->given & OPT_TIMEOUT) && !(o->given & OPT_WAIT))
		why = "--timeout needs --wait: only a command that follows the migration acts on it";
	else if ((o->given & OPT_POSTCOPY_AFTER) && !(o->given & OPT_WAIT))
		why = "--postcopy-after-precopy needs --wait: only a command that follows the "
		      "migration sees its first pass end";
	if (why)
		fprintf(stderr, "godwit: migrate: %s\n", why);
	return why ? -1 : 0;
}

int run_migrate(struct qmp_client *c, const struct command *cmd, const struct opts *o, char **argv)
{
	(void)cmd;
	struct qmp_client *dst = NULL;
	if ((o->given & OPT_DEST_SOCKET) && !(dst = open_destination(o)))
		return EXIT_FAILURE;
	int status = start_and_follow(c, dst, o, argv[0]);
	if (dst)
		qmp_client_close(dst);
	return status;
}

int run_migrate_status(struct qmp_client *c, const struct command *cmd, const struct opts *o,
		       char **argv)
{
	(void)cmd;
	(void)argv;
	json_t *info;
	if (qmp_client_execute(c, "query-migrate", NULL, &info) < 0)
		return command_failed(c);
	const char *status = json_string_value(json_object_get(info, "status"));
	if (o->json)
		print_json(o, info);
	else if (!status)
		printf("no migration\n");
	else if (migration_status_final(status))
		migration_print_summary(stdout, info);
	else
		migration_print_line(stdout, info);
	json_decref(info);
	return EXIT_SUCCESS;
}

/* ---- parameters ------------------------------------------------------- */

/* Parameters that are byte counts (or bytes per second) take K/M/G/T. */
static bool is_size_parameter(const char *key)
{
	static const char *const names[] = {
		"max-bandwidth",
		"max-postcopy-bandwidth",
		"avail-switchover-bandwidth",
		"xbzrle-cache-size",
	};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (!strcmp(key, names[i]))
			return true;
	return false;
}

/* KEY=VALUE: *value points after the '='; NULL if arg has no KEY=. */
static char *split_setting(char *arg, char **value)
{
	char *eq = strchr(arg, '=');
	if (!eq || eq == arg)
		return NULL;
	*eq = '\0';
	*value = eq + 1;
	return arg;
}

/*
 * A parameter's JSON value: a size for the byte-count parameters, else an
 * integer, on/off, or a string (QEMU has string parameters, tls-creds).
 * A wrong type is the VMM's to refuse, with the parameter's name.
 */
static json_t *parameter_value(const char *key, const char *text)
{
	uint64_t size;
	if (is_size_parameter(key))
		return parse_size(text, &size) < 0 ? NULL : json_integer((json_int_t)size);
	char *end;
	errno = 0;
	long long n = strtoll(text, &end, 10);
	if (*text && !*end && !errno)
		return json_integer(n);
	if (!strcmp(text, "on") || !strcmp(text, "off"))
		return json_boolean(!strcmp(text, "on"));
	return json_string(text);
}

int check_set_parameters(char **argv)
{
	for (; *argv; argv++) {
		char *copy = strdup(*argv), *value = NULL;
		char *key = copy ? split_setting(copy, &value) : NULL;
		json_t *v = key ? parameter_value(key, value) : NULL;
		if (!key)
			fprintf(stderr, "godwit: migrate-set: '%s' is not KEY=VALUE\n", *argv);
		else if (!v)
			fprintf(stderr,
				"godwit: migrate-set: %s takes a number of bytes with an "
				"optional K, M, G or T suffix, not '%s'\n",
				key, value);
		json_decref(v);
		free(copy);
		if (!v)
			return -1;
	}
	return 0;
}

static void print_parameters(const struct opts *o, json_t *params)
{
	if (o->json) {
		print_json(o, params);
		return;
	}
	const char *key;
	json_t *v;
	json_object_foreach(params, key, v) {
		char text[UNITS_BUF];
		printf("%-28s ", key);
		json_dumpf(v, stdout, JSON_ENCODE_ANY | JSON_COMPACT);
		if (is_size_parameter(key) && json_is_integer(v) && json_integer_value(v) > 0)
			printf(" (%s%s)", fmt_bytes(text, (uint64_t)json_integer_value(v)),
			       strstr(key, "bandwidth") ? "/s" : "");
		putchar('\n');
	}
}

int run_migrate_set(struct qmp_client *c, const struct command *cmd, const struct opts *o,
		    char **argv)
{
	(void)cmd;
	json_t *ret;
	if (!*argv) {
		if (qmp_client_execute(c, "query-migrate-parameters", NULL, &ret) < 0)
			return command_failed(c);
		print_parameters(o, ret);
		json_decref(ret);
		return EXIT_SUCCESS;
	}
	json_t *args = json_object();
	for (; *argv; argv++) {
		char *value = NULL, *key = split_setting(*argv, &value); /* checked already */
		json_object_set_new(args, key, parameter_value(key, value));
	}
	if (qmp_client_execute(c, "migrate-set-parameters", args, &ret) < 0)
		return command_failed(c);
	if (o->json)
		print_json(o, ret);
	json_decref(ret);
	return EXIT_SUCCESS;
}

/* ---- capabilities ------------------------------------------------------ */

int check_set_capabilities(char **argv)
{
	for (; *argv; argv++) {
		const char *eq = strchr(*argv, '=');
		if (!eq || eq == *argv || (strcmp(eq + 1, "on") && strcmp(eq + 1, "off"))) {
			fprintf(stderr, "godwit: migrate-cap: '%s' is not NAME=on or NAME=off\n",
				*argv);
			return -1;
		}
	}
	return 0;
}

int run_migrate_cap(struct qmp_client *c, const struct command *cmd, const struct opts *o,
		    char **argv)
{
	(void)cmd;
	json_t *ret;
	if (!*argv) {
		if (qmp_client_execute(c, "query-migrate-capabilities", NULL, &ret) < 0)
			return command_failed(c);
		if (o->json) {
			print_json(o, ret);
		} else {
			size_t i;
			json_t *cap;
			json_array_foreach(ret, i, cap) {
				const char *name = json_string_value(
					json_object_get(cap, "capability"));
				printf("%-28s %s\n", name ? name : "?",
				       json_is_true(json_object_get(cap, "state")) ? "on" : "off");
			}
		}
		json_decref(ret);
		return EXIT_SUCCESS;
	}
	json_t *list = json_array();
	for (; *argv; argv++) {
		char *value = NULL, *name = split_setting(*argv, &value); /* checked already */
		json_array_append_new(list, json_pack("{s:s,s:b}", "capability", name, "state",
						      !strcmp(value, "on")));
	}
	if (qmp_client_execute(c, "migrate-set-capabilities",
			       json_pack("{s:o}", "capabilities", list), &ret) < 0)
		return command_failed(c);
	if (o->json)
		print_json(o, ret);
	json_decref(ret);
	return EXIT_SUCCESS;
}
