/*
 * godwit snapshot-save and snapshot-restore: a guest into a mapped-ram
 * file and back (docs/format.md, "Mapped-RAM files"). They are the QMP
 * any manager would send: the mapped-ram capability, the direct-io and
 * multifd-channels parameters, then migrate file:PATH on the source, or
 * migrate-incoming file:PATH on a godwit-vmm started with
 * --incoming defer; then they follow the save or the restore to its end.
 */
#include "cli.h"
#include "progress.h"

#include <errno.h>
#include <limits.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define POLL_MS 50

/* The VMM may run in another directory: give it an absolute path. */
static int absolute(const char *path, char *out, size_t len)
{
	char dir[PATH_MAX], base[PATH_MAX], real[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s", path);
	snprintf(base, sizeof(base), "%s", path);
	if (!realpath(dirname(dir), real)) {
		fprintf(stderr, "godwit: %s: %s\n", path, strerror(errno));
		return -1;
	}
	if ((size_t)snprintf(out, len, "%s/%s", real, basename(base)) >= len) {
		fprintf(stderr, "godwit: %s: path too long\n", path);
		return -1;
	}
	return 0;
}

/* FILE of the command line as the VMM needs it: path absolute, and uri. */
static int file_uri(const char *arg, char *path, size_t path_len, char *uri, size_t uri_len)
{
	if (absolute(arg, path, path_len) < 0)
		return -1;
	snprintf(uri, uri_len, "file:%s", path);
	return 0;
}

/* direct-io and multifd-channels, as the command line gave them. */
static int set_parameters(struct qmp_client *c, const struct opts *o)
{
	json_t *p = json_object();
	if (o->given & OPT_DIRECT_IO)
		json_object_set_new(p, "direct-io", json_true());
	if (o->given & OPT_PARALLEL)
		json_object_set_new(p, "multifd-channels", json_integer(o->parallel));
	if (!json_object_size(p)) {
		json_decref(p);
		return 0;
	}
	return execute(c, "migrate-set-parameters", p);
}

/* Poll until the status is final; print how it ended. */
static int finish(struct qmp_client *c, const struct opts *o, const char *what, const char *path)
{
	struct progress p;
	json_t *info;
	progress_init(&p, o->tty);
	for (;;) {
		if (qmp_client_execute(c, "query-migrate", NULL, &info) < 0) {
			progress_end(&p);
			return command_failed(c);
		}
		const char *s = json_string_value(json_object_get(info, "status"));
		if (s && migration_status_final(s))
			break;
		if (!o->json)
			progress_update(&p, info);
		json_decref(info);
		sleep_ms(POLL_MS);
	}
	progress_end(&p);
	const char *s = json_string_value(json_object_get(info, "status"));
	int status = strcmp(s, "completed") ? EXIT_FAILURE : EXIT_SUCCESS;
	struct stat st;
	if (o->json) {
		print_json(o, info);
	} else if (status == EXIT_SUCCESS && stat(path, &st) == 0) {
		json_t *gen = json_object_get(info, "x-godwit-generation");
		json_t *ram = json_object_get(info, "ram");
		printf("%s %s: %lld ms, file %.1f MiB allocated", what, path,
		       (long long)json_integer_value(json_object_get(info, "total-time")),
		       (double)st.st_blocks * 512 / (1 << 20));
		json_t *pause = json_object_get(info, "x-godwit-pause-us");
		if (pause)
			printf(", live: guest paused %.1f ms, %lld write faults (longest wait %.1f ms)",
			       (double)json_integer_value(pause) / 1000,
			       (long long)json_integer_value(
				       json_object_get(info, "x-godwit-wp-faults")),
			       (double)json_integer_value(
				       json_object_get(info, "x-godwit-wp-max-wait-us")) /
				       1000);
		if (gen)
			printf(", %s save %lld, %.1f MiB written",
			       json_is_true(json_object_get(info, "x-godwit-incremental")) ?
				       "incremental" :
				       "full",
			       (long long)json_integer_value(gen),
			       (double)json_integer_value(json_object_get(ram, "transferred")) /
				       (1 << 20));
		printf("\n");
	}
	if (status != EXIT_SUCCESS) {
		const char *desc = json_string_value(json_object_get(info, "error-desc"));
		fprintf(stderr, "godwit: %s %s %s%s%s\n", what, path, s, desc ? ": " : "",
			desc ? desc : "");
	}
	json_decref(info);
	return status;
}

int run_snapshot_save(struct qmp_client *c, const struct command *cmd, const struct opts *o,
		      char **argv)
{
	(void)cmd;
	char path[PATH_MAX + 8], uri[PATH_MAX + 16];
	if (file_uri(argv[0], path, sizeof(path), uri, sizeof(uri)) < 0)
		return EXIT_FAILURE;
	/* Incremental off ends the dirty tracking an earlier one kept on. */
	if (execute(c, "migrate-set-capabilities",
		    json_pack("{s:[{s:s,s:b},{s:s,s:b},{s:s,s:b}]}", "capabilities", "capability",
			      "mapped-ram", "state", 1, "capability", "x-godwit-incremental",
			      "state", (o->given & OPT_INCREMENTAL) != 0, "capability",
			      "background-snapshot", "state", (o->given & OPT_LIVE) != 0)) < 0 ||
	    set_parameters(c, o) < 0 || execute(c, "migrate", json_pack("{s:s}", "uri", uri)) < 0)
		return command_failed(c);
	return finish(c, o, "saved", path);
}

int run_snapshot_restore(struct qmp_client *c, const struct command *cmd, const struct opts *o,
			 char **argv)
{
	(void)cmd;
	char path[PATH_MAX + 8], uri[PATH_MAX + 16];
	if (file_uri(argv[0], path, sizeof(path), uri, sizeof(uri)) < 0)
		return EXIT_FAILURE;
	if (set_parameters(c, o) < 0 ||
	    execute(c, "migrate-incoming", json_pack("{s:s}", "uri", uri)) < 0)
		return command_failed(c);
	return finish(c, o, "restored", path);
}
