/*
 * What the subcommands of the godwit CLI share: the parsed command line,
 * the command table entry, and the conventions every command follows.
 *
 * Conventions: results go to stdout, diagnostics to stderr; a command
 * returns its exit status (EXIT_SUCCESS, EXIT_FAILURE, EXIT_USAGE); with
 * --json, stdout carries JSON and nothing else.
 */
#ifndef GW_TOOLS_CLI_H
#define GW_TOOLS_CLI_H

#include "qmp_client.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

enum { EXIT_USAGE = 2 };

/* Options only some commands take; a command lists the ones it accepts. */
enum {
	OPT_WAIT = 1u << 0,        /* migrate: follow the migration to its end */
	OPT_RECORDS = 1u << 1,     /* analyze: one line per record, no runs */
	OPT_NO_DECODE = 1u << 2,   /* analyze: do not decode device state */
	OPT_DIRECT_IO = 1u << 3,   /* snapshot-*: page data with O_DIRECT */
	OPT_PARALLEL = 1u << 4,    /* snapshot-*: threads moving pages (opts.parallel) */
	OPT_INCREMENTAL = 1u << 5, /* snapshot-save: only what changed since the last save */
	OPT_LIVE = 1u << 6,        /* snapshot-save: the guest at the command, running on */
	OPT_UPDATE_TO = 1u << 7,   /* update: cpr-transfer to the process on this socket */
	OPT_UPDATE_EXEC = 1u << 8, /* update: cpr-exec into this binary */
	/* migrate: virsh migrate's policy options (opts.policy) */
	OPT_BANDWIDTH = 1u << 9,
	OPT_DOWNTIME = 1u << 10,
	OPT_AUTO_CONVERGE = 1u << 11,
	OPT_TIMEOUT = 1u << 12,
	OPT_TIMEOUT_SUSPEND = 1u << 13,
	OPT_DEST_SOCKET = 1u << 14, /* migrate: the destination's QMP socket */
	OPT_TLS = 1u << 15,         /* migrate: over TLS (tls-creds, set or given) */
	OPT_TLS_CREDS = 1u << 16,   /* migrate: the tls-creds-x509 object to use */
	OPT_TLS_HOSTNAME = 1u << 17,
	OPT_POSTCOPY = 1u << 18,       /* migrate: capability postcopy-ram */
	OPT_POSTCOPY_AFTER = 1u << 19, /* migrate: switch after the first pass */
};

/* What `migrate` sets before it starts, and how it follows. */
struct migrate_policy {
	uint64_t bandwidth_mib; /* --bandwidth: MiB/s, as virsh */
	uint64_t downtime_ms;   /* --downtime */
	uint64_t timeout_s;     /* --timeout: then suspend the guest */
	const char *dest_socket;
	const char *tls_creds;    /* --tls-creds ID */
	const char *tls_hostname; /* --tls-hostname NAME */
};

struct opts {
	const char *socket;
	bool json;                 /* print QMP values as JSON, for scripts */
	bool tty;                  /* stdout is a terminal: output may be laid out for people */
	unsigned given;            /* OPT_* on the command line */
	unsigned parallel;         /* --parallel N */
	const char *update_target; /* update --to PATH / --exec BINARY */
	const char *qmp_path;      /* the QMP socket connected to */
	struct migrate_policy policy;
};

struct command {
	const char *name;
	const char *args;       /* positional arguments, for usage lines */
	int min_args, max_args; /* max_args < 0: no limit */
	unsigned options;       /* OPT_* the command accepts */
	const char *summary;
	const char *help;
	/* Refuse bad arguments before connecting; NULL: nothing to check.
	 * Returns 0, or -1 after saying what is wrong. */
	int (*check)(char **argv);
	/* argv is the positional arguments, NULL-terminated. */
	int (*run)(struct qmp_client *c, const struct command *cmd, const struct opts *o,
		   char **argv);
	/* Commands that need no VMM (analyze) set this instead of run. */
	int (*run_local)(const struct opts *o, char **argv);
};

/* Print a JSON value on stdout: indented for people on a terminal,
 * one line otherwise and always under --json. */
void print_json(const struct opts *o, json_t *v);
/* Say why the last QMP call failed; returns EXIT_FAILURE. */
int command_failed(struct qmp_client *c);
/* Run a command whose return value does not matter (args stolen); 0 or
 * -1 with the reason in qmp_client_error(). */
int execute(struct qmp_client *c, const char *cmd, json_t *args);
void sleep_ms(long ms);

/* snapshot.c */
int run_snapshot_save(struct qmp_client *c, const struct command *cmd, const struct opts *o,
		      char **argv);
int run_snapshot_restore(struct qmp_client *c, const struct command *cmd, const struct opts *o,
			 char **argv);

/* migrate.c */
int check_set_parameters(char **argv);
int check_set_capabilities(char **argv);
/* The combinations of options migrate refuses; 0, or -1 after saying why. */
int check_migrate(const struct opts *o);
int run_migrate(struct qmp_client *c, const struct command *cmd, const struct opts *o, char **argv);
int run_migrate_status(struct qmp_client *c, const struct command *cmd, const struct opts *o,
		       char **argv);
int run_migrate_set(struct qmp_client *c, const struct command *cmd, const struct opts *o,
		    char **argv);
int run_migrate_cap(struct qmp_client *c, const struct command *cmd, const struct opts *o,
		    char **argv);

/* update.c */
int run_update(struct qmp_client *c, const struct command *cmd, const struct opts *o, char **argv);

/* analyze.c */
int run_analyze(const struct opts *o, char **argv);

#endif
