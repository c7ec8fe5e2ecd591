/*
 * godwit: the command line for a running godwit-vmm (or QEMU), over its
 * QMP socket, and for the streams they write.
 *
 *   godwit [--socket PATH] [--json] COMMAND [ARGS]
 *
 * Exit status: 0 done, 1 the command failed (no VMM, QMP error, a
 * migration that did not complete, a damaged stream), 2 the command line
 * was wrong. Results go to stdout, diagnostics to stderr, so
 * `godwit --json status | jq` works and so does `if godwit stop; then`.
 *
 * This file is the command table and the command line; the commands that
 * are more than one QMP call live in their own files (cli.h).
 */
#include "cli.h"
#include "gw_version.h"

#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

void print_json(const struct opts *o, json_t *v)
{
	size_t flags = JSON_ENCODE_ANY | (o->tty && !o->json ? JSON_INDENT(2) : JSON_COMPACT);
	json_dumpf(v, stdout, flags);
	putchar('\n');
}

int command_failed(struct qmp_client *c)
{
	fprintf(stderr, "godwit: %s\n", qmp_client_error(c));
	return EXIT_FAILURE;
}

int execute(struct qmp_client *c, const char *cmd, json_t *args)
{
	json_t *ret;
	if (qmp_client_execute(c, cmd, args, &ret) < 0)
		return -1;
	json_decref(ret);
	return 0;
}

void sleep_ms(long ms)
{
	struct timespec ts = {ms / 1000, ms % 1000 * 1000000L};
	nanosleep(&ts, NULL);
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

/* stop, cont, quit, migrate-cancel: the command's name is the QMP command,
 * and success has nothing to say (except {} to a script that asked for JSON). */
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
		fprintf(stderr, "godwit: %s: %s\n", cls ? cls : "error",
			desc ? desc : "(no description)");
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
	{"status", "", 0, 0, 0, "show whether the guest is running or paused",
	 "Print the run state of the guest: running, paused or shutdown\n"
	 "(QMP query-status). With --json, print the whole query-status reply.\n",
	 NULL, run_status, NULL},
	{"stop", "", 0, 0, 0, "pause the guest",
	 "Pause every vCPU (QMP stop). Pausing a paused guest does nothing.\n", NULL, run_plain,
	 NULL},
	{"cont", "", 0, 0, 0, "resume the guest",
	 "Resume every vCPU (QMP cont). Resuming a running guest does nothing.\n", NULL, run_plain,
	 NULL},
	{"quit", "", 0, 0, 0, "stop godwit-vmm",
	 "Shut godwit-vmm down (QMP quit). It answers, then exits.\n", NULL, run_plain, NULL},
	{"qmp", " JSON", 1, 1, 0, "send one raw QMP request and print the reply",
	 "Send JSON, a QMP request such as '{\"execute\": \"query-version\"}', exactly\n"
	 "as given, and print the \"return\" value of the reply. With --json, print\n"
	 "the whole reply as one line. An error reply prints its class and\n"
	 "description on stderr and exits with status 1.\n",
	 check_qmp, run_qmp, NULL},
	{"events", "", 0, 0, 0, "print QMP events until interrupted",
	 "Print each QMP event as it arrives, one line each: seconds.microseconds,\n"
	 "name and data. With --json, print each event object as one line. Ends\n"
	 "when interrupted or when godwit-vmm exits.\n",
	 NULL, run_events, NULL},
	{"migrate", " [--wait] [OPTION...] URI", 1, 1,
	 OPT_WAIT | OPT_BANDWIDTH | OPT_DOWNTIME | OPT_AUTO_CONVERGE | OPT_PARALLEL | OPT_TIMEOUT |
		 OPT_TIMEOUT_SUSPEND | OPT_DEST_SOCKET | OPT_TLS | OPT_TLS_CREDS |
		 OPT_TLS_HOSTNAME | OPT_POSTCOPY | OPT_POSTCOPY_AFTER,
	 "migrate the guest to URI",
	 "Start migrating the guest to URI (QMP migrate): tcp:HOST:PORT, unix:PATH,\n"
	 "fd:N, exec:COMMAND or file:PATH, as seen from godwit-vmm. The destination\n"
	 "must already be waiting (godwit-vmm --incoming URI).\n"
	 "\n"
	 "Without --wait, return once the migration has started.\n"
	 "\n"
	 "  -w, --wait   follow the migration to its end (query-migrate every 0.1 s).\n"
	 "               On a terminal one line shows a progress bar (the share of\n"
	 "               guest RAM not dirty), bytes sent and left, throughput, the\n"
	 "               guest's dirty rate, the expected downtime, the round, the\n"
	 "               status, and why the migration does not switch over yet.\n"
	 "               Otherwise the same figures go out as plain lines, at most\n"
	 "               one per second and one per round. At the end a summary:\n"
	 "               status, total time, downtime, bytes, rounds, average\n"
	 "               throughput, pages, and the error if any.\n"
	 "               Ctrl-C cancels the migration (QMP migrate-cancel) and waits\n"
	 "               for it to end; a second Ctrl-C stops waiting.\n"
	 "      --json   print only the final query-migrate reply, as JSON.\n"
	 "\n"
	 "virsh migrate's options, set before the migration starts (and kept for\n"
	 "later ones, as migrate-set and migrate-cap do):\n"
	 "  --bandwidth MIB      at most MIB MiB/s while the guest runs\n"
	 "                       (max-bandwidth; 0 = unlimited)\n"
	 "  --downtime MS        switch over once the rest fits MS milliseconds\n"
	 "                       (downtime-limit, 0 to 2000000)\n"
	 "  --auto-converge      throttle the vCPUs while the guest dirties memory\n"
	 "                       faster than it is sent (capability auto-converge)\n"
	 "  --parallel N         the pages on N more connections (capability multifd\n"
	 "                       and multifd-channels N; tcp: and unix: only). The\n"
	 "                       destination needs multifd on too: --dest-socket sets\n"
	 "                       it, or 'godwit -s DEST migrate-cap multifd=on'\n"
	 "  --timeout SECONDS    with --wait: a migration still running after SECONDS\n"
	 "                       gets the guest suspended (QMP stop), so that nothing\n"
	 "                       is dirtied and it completes (virsh's default action)\n"
	 "  --timeout-suspend    that action, said explicitly (needs --timeout)\n"
	 "  --postcopy           allow the switch to post-copy (capability\n"
	 "                       postcopy-ram; the destination needs it too:\n"
	 "                       --dest-socket sets it). 'godwit\n"
	 "                       migrate-start-postcopy' switches\n"
	 "  --postcopy-after-precopy\n"
	 "                       with --wait: switch to post-copy once the first\n"
	 "                       pre-copy pass has ended (implies --postcopy)\n"
	 "  --tls                over TLS with the credentials the VMM has\n"
	 "                       (parameter tls-creds, set with --tls-creds or\n"
	 "                       'migrate-set tls-creds=ID'); refused if it has none.\n"
	 "                       The destination needs its own, set before it listens\n"
	 "  --tls-creds ID       the tls-creds-x509 object to use (implies --tls)\n"
	 "  --tls-hostname NAME  the name the destination's certificate must carry\n"
	 "                       (default: the tcp: URI's host; implies --tls)\n"
	 "  --dest-socket PATH   the destination's QMP socket: --parallel and\n"
	 "                       --postcopy turn their capability on there, and a\n"
	 "                       guest --timeout suspended is resumed there once the\n"
	 "                       migration has completed. Without it such a guest\n"
	 "                       arrives paused (QEMU's rule for a guest stopped on\n"
	 "                       the source).\n"
	 "A migration that does not complete leaves the guest running here: a\n"
	 "guest suspended by --timeout is resumed.\n"
	 "\n"
	 "Exit status with --wait: 0 only if the migration completed.\n",
	 NULL, run_migrate, NULL},
	{"migrate-cancel", "", 0, 0, 0, "cancel the migration in progress",
	 "Cancel the outgoing migration (QMP migrate-cancel). The guest goes on\n"
	 "running here. Returns at once; 'godwit migrate-status' shows when the\n"
	 "migration has ended (status cancelled).\n",
	 NULL, run_plain, NULL},
	{"migrate-start-postcopy", "", 0, 0, 0, "switch the migration to post-copy",
	 "Switch the outgoing migration to post-copy (QMP migrate-start-postcopy,\n"
	 "virsh's migrate-postcopy): at the end of the current round the guest\n"
	 "runs on at the destination, which asks for the pages it has not got yet.\n"
	 "Needs the capability postcopy-ram on both sides (migrate --postcopy).\n",
	 NULL, run_plain, NULL},
	{"migrate-status", "", 0, 0, 0, "show the state of the migration",
	 "Print the state of the current or last migration (QMP query-migrate):\n"
	 "one progress line while it runs, a summary once it has ended, 'no\n"
	 "migration' before the first. With --json, print the query-migrate reply.\n",
	 NULL, run_migrate_status, NULL},
	{"migrate-set", " [KEY=VALUE...]", 0, -1, 0, "set migration parameters",
	 "Set migration parameters (QMP migrate-set-parameters), all in one\n"
	 "request: either all are set or none. Without arguments, print them\n"
	 "(query-migrate-parameters). godwit-vmm has:\n"
	 "\n"
	 "  downtime-limit=MS            longest pause of the guest at switchover\n"
	 "  max-bandwidth=BYTES          bytes per second; K, M, G, T suffixes are\n"
	 "                               powers of 1024 (max-bandwidth=1G); 0 = none\n"
	 "  cpu-throttle-initial=PCT     auto-converge: the first throttle step\n"
	 "  cpu-throttle-increment=PCT   auto-converge: added each slow round\n"
	 "  max-cpu-throttle=PCT         auto-converge: the most it throttles\n"
	 "  x-godwit-switchover-timeout=MS  source: pause until EOF is written\n"
	 "  x-godwit-ready-timeout=MS       source: EOF until the destination's READY\n"
	 "  x-godwit-confirm-timeout=MS     source: GO until RUNNING (then it stays\n"
	 "                                  paused, unconfirmed)\n"
	 "  x-godwit-go-timeout=MS          destination: READY until the source's GO\n"
	 "\n"
	 "Other names are passed on as given (QEMU has more): integers as numbers,\n"
	 "on/off as booleans, anything else as a string.\n",
	 check_set_parameters, run_migrate_set, NULL},
	{"migrate-cap", " [NAME=on|off...]", 0, -1, 0, "set migration capabilities",
	 "Turn migration capabilities on or off (QMP migrate-set-capabilities),\n"
	 "all in one request. Without arguments, print them\n"
	 "(query-migrate-capabilities). godwit-vmm has events (MIGRATION events),\n"
	 "auto-converge (throttle the guest when it dirties memory faster than it\n"
	 "is sent) and x-godwit-verify-hash (destination: hash the loaded RAM).\n",
	 check_set_capabilities, run_migrate_cap, NULL},
	{"snapshot-save", " [--live] [--direct-io] [--parallel N] [--incremental] FILE", 1, 1,
	 OPT_LIVE | OPT_DIRECT_IO | OPT_PARALLEL | OPT_INCREMENTAL,
	 "save the guest into a snapshot file (mapped-ram)",
	 "Save the guest into FILE, a mapped-ram file: every page at a fixed offset,\n"
	 "so the file never grows past the guest's RAM plus metadata, and a restore\n"
	 "reads it in parallel and checks every page (docs/format.md). The QMP is\n"
	 "QEMU's: capability mapped-ram, then migrate file:FILE. A running guest is\n"
	 "saved live and stays paused where it was saved ('godwit cont' runs it on);\n"
	 "a stopped one is saved as it is. Follows the save to its end.\n"
	 "'godwit snapshot save' is the same command.\n"
	 "\n"
	 "      --live        save the guest as it is at the command, while it runs on\n"
	 "                    (capability background-snapshot: a pause of about a\n"
	 "                    millisecond, then RAM is written with writes to pages not\n"
	 "                    saved yet caught by userfaultfd write-protect)\n"
	 "      --direct-io   write page data with O_DIRECT (parameter direct-io)\n"
	 "      --parallel N  N threads write the pages (parameter multifd-channels)\n"
	 "      --incremental keep tracking dirty pages after the save, and if FILE is\n"
	 "                    the file of the last such save, write only the pages\n"
	 "                    changed since (capability x-godwit-incremental)\n"
	 "      --json        print only the final query-migrate reply\n",
	 NULL, run_snapshot_save, NULL},
	{"snapshot-restore", " [--direct-io] [--parallel N] FILE", 1, 1,
	 OPT_DIRECT_IO | OPT_PARALLEL, "restore a snapshot file into a waiting godwit-vmm",
	 "Restore FILE (mapped-ram, or a stream file) into a godwit-vmm started with\n"
	 "--incoming defer (QMP migrate-incoming file:FILE), and follow the restore\n"
	 "to its end. Every page is checked against its hash before the guest runs;\n"
	 "a damaged, truncated or unfinished file is refused and the guest never\n"
	 "runs. The guest then runs as it was saved (a stopped guest stays paused).\n"
	 "\n"
	 "      --direct-io   read page data with O_DIRECT\n"
	 "      --parallel N  N threads read the pages\n"
	 "      --json        print only the final query-migrate reply\n",
	 NULL, run_snapshot_restore, NULL},
	{"update", " --to PATH | --exec BINARY", 0, 0, OPT_UPDATE_TO | OPT_UPDATE_EXEC,
	 "move the guest onto a new godwit-vmm, RAM not copied",
	 "Local live update: the guest goes on in a new godwit-vmm, which takes\n"
	 "over its RAM where it is (the memfds) instead of a copy; only device and\n"
	 "vCPU state moves, and the guest pauses for about a millisecond whatever\n"
	 "its size. The QMP is QEMU's: migrate-set-parameters mode, then migrate\n"
	 "(docs/format.md, \"Local live update\").\n"
	 "\n"
	 "      --to PATH       mode cpr-transfer: to a godwit-vmm started with the\n"
	 "                      same vCPUs and --incoming unix:PATH (it takes the\n"
	 "                      memory size from this one unless given -m); this\n"
	 "                      process quits once the guest runs there\n"
	 "      --exec BINARY   mode cpr-exec: this process becomes BINARY, run with\n"
	 "                      its own command line: the same pid, the same QMP\n"
	 "                      socket; BINARY is asked first whether it can take\n"
	 "                      the guest, and if it cannot load it after all, the\n"
	 "                      old binary takes the guest back\n"
	 "      --json          print only the final query-migrate reply\n"
	 "\n"
	 "Prints the downtime, the bytes of state sent and the RAM bytes copied\n"
	 "(0). Exit status 0 only if the guest runs in the new binary.\n",
	 NULL, run_update, NULL},
	{"analyze", " [--records] [--no-decode] FILE|-", 1, 1, OPT_RECORDS | OPT_NO_DECODE,
	 "check and describe a godwit stream (no VMM needed)",
	 "Walk a godwit stream, as written by 'migrate file:PATH' or sent over any\n"
	 "transport, from FILE or from standard input (-), e.g.\n"
	 "  ssh host cat guest.gw | godwit analyze -\n"
	 "It reads front to back without seeking and keeps no page data.\n"
	 "\n"
	 "Prints the format version; the CONFIG record (VMM, machine, vCPUs, RAM\n"
	 "blocks, sections and their versions); every record with its offset,\n"
	 "type, flags, length and check, its section or its RAM block and page\n"
	 "counts; totals per RAM block (zero, normal, re-sent, unique and torn\n"
	 "pages) and per section; and each section's device state, decoded field\n"
	 "by field with the stream's own description (VMDESC) - no device code\n"
	 "is needed.\n"
	 "\n"
	 "The check of a record: ok; BAD, with the stored and computed CRC or\n"
	 "page hash; torn: pages that do not match their hash, sent while the\n"
	 "guest wrote them - harmless when a later copy of each page arrives\n"
	 "intact, damage when none does.\n"
	 "\n"
	 "      --records    one line per record; by default consecutive RAM_PAGES\n"
	 "                   records of one block are shown as one line\n"
	 "      --no-decode  show the description of the device state, not its values\n"
	 "      --json       one JSON document with all of the above\n"
	 "\n"
	 "Exit status: 0 the stream is intact through its EOF record; 1 a CRC\n"
	 "or the last copy of a page does not match, the stream is truncated\n"
	 "(the offset is given) or malformed, or FILE cannot be read; 2 a wrong\n"
	 "command line.\n",
	 NULL, NULL, run_analyze},
};

#define NR_COMMANDS (sizeof(commands) / sizeof(commands[0]))

static const char options_help[] =
	"options:\n"
	"  -s, --socket PATH  QMP socket of godwit-vmm (default: $GODWIT_SOCKET);\n"
	"                     the unix: prefix of godwit-vmm's --qmp is accepted\n"
	"      --json         print results as JSON, one value per line\n"
	"  -h, --help         show this help\n"
	"  -V, --version      show the version\n";

static const struct {
	unsigned opt;
	const char *name;
} command_options[] = {
	{OPT_WAIT, "--wait"},
	{OPT_RECORDS, "--records"},
	{OPT_NO_DECODE, "--no-decode"},
	{OPT_DIRECT_IO, "--direct-io"},
	{OPT_PARALLEL, "--parallel"},
	{OPT_INCREMENTAL, "--incremental"},
	{OPT_LIVE, "--live"},
	{OPT_UPDATE_TO, "--to"},
	{OPT_UPDATE_EXEC, "--exec"},
	{OPT_BANDWIDTH, "--bandwidth"},
	{OPT_DOWNTIME, "--downtime"},
	{OPT_AUTO_CONVERGE, "--auto-converge"},
	{OPT_TIMEOUT, "--timeout"},
	{OPT_TIMEOUT_SUSPEND, "--timeout-suspend"},
	{OPT_DEST_SOCKET, "--dest-socket"},
	{OPT_TLS, "--tls"},
	{OPT_TLS_CREDS, "--tls-creds"},
	{OPT_TLS_HOSTNAME, "--tls-hostname"},
	{OPT_POSTCOPY, "--postcopy"},
	{OPT_POSTCOPY_AFTER, "--postcopy-after-precopy"},
};

static void global_help(FILE *f)
{
	fprintf(f, "usage: godwit [--socket PATH] [--json] COMMAND [ARGS]\n\n"
		   "Control a running godwit-vmm through its QMP socket, and analyze\n"
		   "migration streams.\n\ncommands:\n");
	for (size_t i = 0; i < NR_COMMANDS; i++)
		fprintf(f, "  %-16s %s\n", commands[i].name, commands[i].summary);
	fprintf(f, "\n%s\nRun 'godwit COMMAND --help' for more about one command.\n", options_help);
}

static void command_help(const struct command *cmd)
{
	if (cmd->run_local)
		printf("usage: godwit [--json] %s%s\n\n%s", cmd->name, cmd->args, cmd->help);
	else
		printf("usage: godwit [--socket PATH] [--json] %s%s\n\n%s\n%s", cmd->name,
		       cmd->args, cmd->help, options_help);
}

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* A decimal number from min to max, nothing else on the argument. */
static int parse_count(const char *text, uint64_t min, uint64_t max, uint64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long n = strtoull(text, &end, 10);
	if (!*text || *end || errno || *text == '-' || n < min || n > max)
		return -1;
	*out = n;
	return 0;
}

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
	if (cmd->run_local)
		return cmd->run_local(o, argv);
	const char *path = o->socket ? o->socket : getenv("GODWIT_SOCKET");
	if (!path || !*path)
		return usage_error("no QMP socket: use --socket PATH or set GODWIT_SOCKET");
	if (!strncmp(path, "unix:", 5))
		path += 5;

	struct qmp_client *c;
	char err[512];
	int rc = qmp_client_open(path, &c, err, sizeof(err));
	if (rc == -ENOENT || rc == -ECONNREFUSED) {
		fprintf(stderr, "godwit: %s (is godwit-vmm running with --qmp unix:%s?)\n", err,
			path);
		return EXIT_FAILURE;
	}
	if (rc < 0) {
		fprintf(stderr, "godwit: %s\n", err);
		return EXIT_FAILURE;
	}
	struct opts with_path = *o;
	with_path.qmp_path = path;
	int status = cmd->run(c, cmd, &with_path, argv);
	qmp_client_close(c);
	return status;
}

int main(int argc, char **argv)
{
	/* clang-format off */
	static const struct option longopts[] = {
		{"socket", required_argument, NULL, 's'},
		{"json", no_argument, NULL, 'j'},
		{"help", no_argument, NULL, 'h'},
		{"version", no_argument, NULL, 'V'},
		{"wait", no_argument, NULL, 'w'},
		{"records", no_argument, NULL, 'r'},
		{"no-decode", no_argument, NULL, 'n'},
		{"direct-io", no_argument, NULL, 'd'},
		{"parallel", required_argument, NULL, 'p'},
		{"incremental", no_argument, NULL, 'i'},
		{"live", no_argument, NULL, 'l'},
		{"to", required_argument, NULL, 't'},
		{"exec", required_argument, NULL, 'x'},
		{"bandwidth", required_argument, NULL, 'B'},
		{"downtime", required_argument, NULL, 'D'},
		{"auto-converge", no_argument, NULL, 'A'},
		{"timeout", required_argument, NULL, 'T'},
		{"timeout-suspend", no_argument, NULL, 'S'},
		{"dest-socket", required_argument, NULL, 'E'},
		{"tls", no_argument, NULL, 'L'},
		{"tls-creds", required_argument, NULL, 'C'},
		{"tls-hostname", required_argument, NULL, 'H'},
		{"postcopy", no_argument, NULL, 'P'},
		{"postcopy-after-precopy", no_argument, NULL, 'a'},
		{0},
	};
	/* clang-format on */
	struct opts o = {.tty = isatty(STDOUT_FILENO)};
	bool help = false, version = false;
	int ch;

	/* Options may come before or after the command (GNU getopt moves
	 * them first), so `godwit status --json` works as well. */
	opterr = 0;
	while ((ch = getopt_long(argc, argv, "s:hVw", longopts, NULL)) != -1) {
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
		case 'w':
			o.given |= OPT_WAIT;
			break;
		case 'r':
			o.given |= OPT_RECORDS;
			break;
		case 'n':
			o.given |= OPT_NO_DECODE;
			break;
		case 'd':
			o.given |= OPT_DIRECT_IO;
			break;
		case 'i':
			o.given |= OPT_INCREMENTAL;
			break;
		case 'l':
			o.given |= OPT_LIVE;
			break;
		case 't':
			o.given |= OPT_UPDATE_TO;
			o.update_target = optarg;
			break;
		case 'x':
			o.given |= OPT_UPDATE_EXEC;
			o.update_target = optarg;
			break;
		case 'p': {
			uint64_t n;
			if (parse_count(optarg, 1, 64, &n) < 0)
				return usage_error("--parallel '%s': must be a number from 1 to 64",
						   optarg);
			o.parallel = (unsigned)n;
			o.given |= OPT_PARALLEL;
			break;
		}
		case 'B':
			/* MiB/s in bytes must fit QMP's int64. */
			if (parse_count(optarg, 0, INT64_MAX >> 20, &o.policy.bandwidth_mib) < 0)
				return usage_error("--bandwidth '%s': must be a number of MiB/s",
						   optarg);
			o.given |= OPT_BANDWIDTH;
			break;
		case 'D':
			/* The range is the VMM's to check, with QEMU's message. */
			if (parse_count(optarg, 0, INT64_MAX, &o.policy.downtime_ms) < 0)
				return usage_error("--downtime '%s': must be a number of milliseconds",
						   optarg);
			o.given |= OPT_DOWNTIME;
			break;
		case 'A':
			o.given |= OPT_AUTO_CONVERGE;
			break;
		case 'T':
			if (parse_count(optarg, 1, UINT32_MAX, &o.policy.timeout_s) < 0)
				return usage_error("--timeout '%s': must be a number of seconds, 1 or more",
						   optarg);
			o.given |= OPT_TIMEOUT;
			break;
		case 'S':
			o.given |= OPT_TIMEOUT_SUSPEND;
			break;
		case 'E':
			o.policy.dest_socket = optarg;
			o.given |= OPT_DEST_SOCKET;
			break;
		case 'L':
			o.given |= OPT_TLS;
			break;
		case 'C':
			o.policy.tls_creds = optarg;
			o.given |= OPT_TLS_CREDS;
			break;
		case 'H':
			o.policy.tls_hostname = optarg;
			o.given |= OPT_TLS_HOSTNAME;
			break;
		case 'P':
			o.given |= OPT_POSTCOPY;
			break;
		case 'a':
			o.given |= OPT_POSTCOPY_AFTER;
			break;
		default:
			if (optopt == 's')
				return usage_error("option --socket needs a PATH");
			if (optopt == 'p' || optopt == 'B' || optopt == 'D' || optopt == 'T')
				return usage_error("option %s needs a number", argv[optind - 1]);
			if (optopt == 'E')
				return usage_error("option --dest-socket needs a PATH");
			if (optopt == 'C' || optopt == 'H')
				return usage_error("option %s needs a%s", argv[optind - 1],
						   optopt == 'C' ? "n object ID" : " host NAME");
			if (optopt == 't' || optopt == 'x')
				return usage_error("option --%s needs a path",
						   optopt == 't' ? "to" : "exec");
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
	/* 'snapshot save' and 'snapshot restore' are snapshot-save and
	 * snapshot-restore. */
	char joined[32];
	if (!strcmp(argv[optind], "snapshot") && optind + 1 < argc &&
	    (!strcmp(argv[optind + 1], "save") || !strcmp(argv[optind + 1], "restore"))) {
		snprintf(joined, sizeof(joined), "snapshot-%s", argv[optind + 1]);
		argv[++optind] = joined;
	}
	const struct command *cmd = find_command(argv[optind]);
	if (!cmd)
		return usage_error("unknown command '%s'", argv[optind]);
	if (help) {
		command_help(cmd);
		return EXIT_SUCCESS;
	}
	for (size_t i = 0; i < sizeof(command_options) / sizeof(command_options[0]); i++)
		if ((o.given & command_options[i].opt) && !(cmd->options & command_options[i].opt))
			return usage_error("%s does not take %s", cmd->name,
					   command_options[i].name);
	int nargs = argc - optind - 1;
	if (nargs < cmd->min_args || (cmd->max_args >= 0 && nargs > cmd->max_args)) {
		fprintf(stderr, "godwit: %s takes %s\nusage: godwit %s%s\n", cmd->name,
			cmd->max_args == 0 ? "no arguments" : "one argument", cmd->name, cmd->args);
		return EXIT_USAGE;
	}
	if (cmd->run == run_migrate && check_migrate(&o) < 0)
		return EXIT_USAGE;
	if (cmd->check && cmd->check(argv + optind + 1) < 0)
		return EXIT_USAGE;
	int status = run(cmd, &o, argv + optind + 1);
	if (fflush(stdout) != 0 || ferror(stdout)) {
		fprintf(stderr, "godwit: writing output: %s\n", strerror(errno));
		return EXIT_FAILURE;
	}
	return status;
}
