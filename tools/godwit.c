/*
 * godwit: the command line for a running godwit-vmm, over its QMP socket.
 *
 *   godwit [--socket PATH] [--json] COMMAND [ARGS]
 *
 * Exit status: 0 done, 1 the command failed (no VMM, QMP error), 2 the
 * command line was wrong. Results go to stdout, diagnostics to stderr, so
 * `godwit --json status | jq` works and so does `if godwit stop; then`.
 */
#include "gw_version.h"
#include "qmp_client.h"

#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { EXIT_USAGE = 2 };

struct opts {
	const char *socket;
	bool json; /* print QMP values as JSON, for scripts */
	bool tty;  /* stdout is a terminal: output may be laid out for people */
};

struct command {
	const char *name;
	const char *args; /* positional arguments, for usage lines */
	int nargs;
	const char *summary;
	const char *help;
	/* Refuse bad arguments before connecting; NULL: nothing to check. */
	int (*check)(char **argv);
	int (*run)(struct qmp_client *c, const struct command *cmd, const struct opts *o,
		   char **argv);
};

/* Values for people on a terminal are indented; anything else, and
 * everything under --json, is one line per value. */
static void print_json(const struct opts *o, json_t *v)
{
	size_t flags = JSON_ENCODE_ANY | (o->tty && !o->json ? JSON_INDENT(2) : JSON_COMPACT);
	json_dumpf(v, stdout, flags);
	putchar('\n');
}

static int command_failed(struct qmp_client *c)
{
	fprintf(stderr, "godwit: %s\n", qmp_client_error(c));
	return EXIT_FAILURE;
}

static int run_status(struct qmp_client *c, const struct command *cmd, const struct opts *o,
		      char **argv)
{
	(void)cmd;
	(void)argv;
	json_t *ret;
	if (qmp_client_execute(c, "query-status", NULL, &ret) < 0)
		return command_failed(c);
	if (o->json)
		print_json(o, ret);
	else
		printf("%s\n", json_string_value(json_object_get(ret, "status")));
	json_decref(ret);
	return EXIT_SUCCESS;
}

/* stop, cont, quit: the command's name is the QMP command, and success
 * has nothing to say (except {} to a script that asked for JSON). */
static int run_plain(struct qmp_client *c, const struct command *cmd, const struct opts *o,
		     char **argv)
{
	(void)argv;
	json_t *ret;
	if (qmp_client_execute(c, cmd->name, NULL, &ret) < 0)
		return command_failed(c);
	if (o->json)
		print_json(o, ret);
	json_decref(ret);
	return EXIT_SUCCESS;
}

/* The server would wait forever for the end of an incomplete request. */
static int check_qmp(char **argv)
{
	json_error_t jerr;
	json_t *req = json_loads(argv[0], 0, &jerr);
	if (!req) {
		fprintf(stderr, "godwit: qmp: the request is not valid JSON: %s (column %d)\n",
			jerr.text, jerr.column);
		return -1;
	}
	json_decref(req);
	return 0;
}

static int run_qmp(struct qmp_client *c, const struct command *cmd, const struct opts *o,
		   char **argv)
{
	(void)cmd;
	json_t *reply;
	if (qmp_client_request(c, argv[0], &reply) < 0)
		return command_failed(c);
	json_t *ret = json_object_get(reply, "return");
	json_t *err = json_object_get(reply, "error");
	if (o->json)
		print_json(o, reply);
	else if (ret)
		print_json(o, ret);
	int status = EXIT_SUCCESS;
	if (!ret) {
		const char *cls = json_string_value(json_object_get(err, "class"));
		const char *desc = json_string_value(json_object_get(err, "desc"));
		fprintf(stderr, "godwit: %s: %s\n", cls ? cls : "error", desc ? desc : "(no description)");
		status = EXIT_FAILURE;
	}
	json_decref(reply);
	return status;
}

static void print_event(const struct opts *o, json_t *ev)
{
	if (o->json) {
		print_json(o, ev);
	} else {
		json_t *ts = json_object_get(ev, "timestamp");
		json_t *data = json_object_get(ev, "data");
		printf("%" JSON_INTEGER_FORMAT ".%06" JSON_INTEGER_FORMAT " %s",
		       json_integer_value(json_object_get(ts, "seconds")),
		       json_integer_value(json_object_get(ts, "microseconds")),
		       json_string_value(json_object_get(ev, "event")));
		if (data) {
			putchar(' ');
			json_dumpf(data, stdout, JSON_ENCODE_ANY | JSON_COMPACT);
		}
		putchar('\n');
	}
	/* Whoever reads a pipe wants each event when it happens. */
	fflush(stdout);
}

static int run_events(struct qmp_client *c, const struct command *cmd, const struct opts *o,
		      char **argv)
{
	(void)cmd;
	(void)argv;
	for (;;) {
		json_t *ev;
		int rc = qmp_client_next_event(c, -1, &ev);
		if (rc == -ECONNRESET)
			return EXIT_SUCCESS; /* the VMM exited, after its SHUTDOWN event */
		if (rc < 0)
			return command_failed(c);
		print_event(o, ev);
		json_decref(ev);
	}
}

static const struct command commands[] = {
	{"status", "", 0, "show whether the guest is running or paused",
	 "Print the run state of the guest: running, paused or shutdown\n"
	 "(QMP query-status). With --json, print the whole query-status reply.\n",
	 NULL, run_status},
	{"stop", "", 0, "pause the guest",
	 "Pause every vCPU (QMP stop). Pausing a paused guest does nothing.\n", NULL, run_plain},
	{"cont", "", 0, "resume the guest",
	 "Resume every vCPU (QMP cont). Resuming a running guest does nothing.\n", NULL, run_plain},
	{"quit", "", 0, "stop godwit-vmm",
	 "Shut godwit-vmm down (QMP quit). It answers, then exits.\n", NULL, run_plain},
	{"qmp", " JSON", 1, "send one raw QMP request and print the reply",
	 "Send JSON, a QMP request such as '{\"execute\": \"query-version\"}', exactly\n"
	 "as given, and print the \"return\" value of the reply. With --json, print\n"
	 "the whole reply as one line. An error reply prints its class and\n"
	 "description on stderr and exits with status 1.\n",
	 check_qmp, run_qmp},
	{"events", "", 0, "print QMP events until interrupted",
	 "Print each QMP event as it arrives, one line each: seconds.microseconds,\n"
	 "name and data. With --json, print each event object as one line. Ends\n"
	 "when interrupted or when godwit-vmm exits.\n",
	 NULL, run_events},
};

#define NR_COMMANDS (sizeof(commands) / sizeof(commands[0]))

static const char options_help[] =
	"options:\n"
	"  -s, --socket PATH  QMP socket of godwit-vmm (default: $GODWIT_SOCKET);\n"
	"                     the unix: prefix of godwit-vmm's --qmp is accepted\n"
	"      --json         print results as JSON, one value per line\n"
	"  -h, --help         show this help\n"
	"  -V, --version      show the version\n";

static void global_help(FILE *f)
{
	fprintf(f, "usage: godwit [--socket PATH] [--json] COMMAND [ARGS]\n\n"
		   "Control a running godwit-vmm through its QMP socket.\n\ncommands:\n");
	for (size_t i = 0; i < NR_COMMANDS; i++) {
		char name[32];
		snprintf(name, sizeof(name), "%s%s", commands[i].name, commands[i].args);
		fprintf(f, "  %-16s %s\n", name, commands[i].summary);
	}
	fprintf(f, "\n%s\nRun 'godwit COMMAND --help' for more about one command.\n", options_help);
}

static void command_help(const struct command *cmd)
{
	printf("usage: godwit [--socket PATH] [--json] %s%s\n\n%s\n%s", cmd->name, cmd->args,
	       cmd->help, options_help);
}

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int usage_error(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "godwit: ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\nTry 'godwit --help'.\n");
	va_end(ap);
	return EXIT_USAGE;
}

static const struct command *find_command(const char *name)
{
	for (size_t i = 0; i < NR_COMMANDS; i++)
		if (!strcmp(commands[i].name, name))
			return &commands[i];
	return NULL;
}

static int run(const struct command *cmd, const struct opts *o, char **argv)
{
	const char *path = o->socket ? o->socket : getenv("GODWIT_SOCKET");
	if (!path || !*path)
		return usage_error("no QMP socket: use --socket PATH or set GODWIT_SOCKET");
	if (!strncmp(path, "unix:", 5))
		path += 5;

	struct qmp_client *c;
	char err[512];
	int rc = qmp_client_open(path, &c, err, sizeof(err));
	if (rc == -ENOENT || rc == -ECONNREFUSED) {
		fprintf(stderr, "godwit: %s (is godwit-vmm running with --qmp unix:%s?)\n", err, path);
		return EXIT_FAILURE;
	}
	if (rc < 0) {
		fprintf(stderr, "godwit: %s\n", err);
		return EXIT_FAILURE;
	}
	int status = cmd->run(c, cmd, o, argv);
	qmp_client_close(c);
	return status;
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{"socket", required_argument, NULL, 's'},
		{"json", no_argument, NULL, 'j'},
		{"help", no_argument, NULL, 'h'},
		{"version", no_argument, NULL, 'V'},
		{0},
	};
	struct opts o = {.tty = isatty(STDOUT_FILENO)};
	bool help = false, version = false;
	int ch;

	/* Options may come before or after the command (GNU getopt moves
	 * them first), so `godwit status --json` works as well. */
	opterr = 0;
	while ((ch = getopt_long(argc, argv, "s:hV", longopts, NULL)) != -1) {
		switch (ch) {
		case 's':
			o.socket = optarg;
			break;
		case 'j':
			o.json = true;
			break;
		case 'h':
			help = true;
			break;
		case 'V':
			version = true;
			break;
		default:
			if (optopt == 's')
				return usage_error("option --socket needs a PATH");
			return usage_error("unknown option '%s'", argv[optind - 1]);
		}
	}
	if (version) {
		printf("godwit " GW_VERSION "\n");
		return EXIT_SUCCESS;
	}
	if (optind == argc) {
		if (help) {
			global_help(stdout);
			return EXIT_SUCCESS;
		}
		global_help(stderr);
		return EXIT_USAGE;
	}
	const struct command *cmd = find_command(argv[optind]);
	if (!cmd)
		return usage_error("unknown command '%s'", argv[optind]);
	if (help) {
		command_help(cmd);
		return EXIT_SUCCESS;
	}
	int nargs = argc - optind - 1;
	if (nargs != cmd->nargs) {
		fprintf(stderr, "godwit: %s takes %s\nusage: godwit %s%s\n", cmd->name,
			cmd->nargs ? "one argument" : "no arguments", cmd->name, cmd->args);
		return EXIT_USAGE;
	}
	if (cmd->check && cmd->check(argv + optind + 1) < 0)
		return EXIT_USAGE;
	int status = run(cmd, &o, argv + optind + 1);
	if (fflush(stdout) != 0 || ferror(stdout)) {
		fprintf(stderr, "godwit: writing output: %s\n", strerror(errno));
		return EXIT_FAILURE;
	}
	return status;
}
