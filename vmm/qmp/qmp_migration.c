/*
 * QEMU's migration commands over QMP: argument checks, the errors QEMU
 * gives, and the JSON of query-migrate. What each command does is the
 * migration glue's (vmm/migration/migration.h); this file only speaks
 * QMP for it.
 */
#include "vmm/machine.h"
#include "vmm/migration/migration.h"
#include "vmm/qmp/qmp.h"
#include "vmm/vmm.h"

#include <errno.h>
#include <godwit/precopy.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int fail_with(struct qmp_error *err, const char *msg)
{
	return qmp_fail(err, QMP_ERR_GENERIC, "%s", msg);
}

/*
 * QEMU's MigrationAddress (the "addr" of a channel) as one of our URIs:
 * socket (unix, inet, fd), file, exec. 0, or -1 with the reason.
 */
static int address_uri(json_t *addr, char *out, size_t cap, char *msg, size_t msglen)
{
	const char *transport = json_string_value(json_object_get(addr, "transport"));
	const char *type = json_string_value(json_object_get(addr, "type"));
	int n = -1;
	if (!json_is_object(addr) || !transport) {
		snprintf(msg, msglen, "a channel's 'addr' must be an object with a 'transport'");
		return -1;
	}
	if (!strcmp(transport, "socket") && type && !strcmp(type, "unix") &&
	    json_is_string(json_object_get(addr, "path")))
		n = snprintf(out, cap, "unix:%s", json_string_value(json_object_get(addr, "path")));
	else if (!strcmp(transport, "socket") && type && !strcmp(type, "inet") &&
		 json_is_string(json_object_get(addr, "host")) &&
		 json_is_string(json_object_get(addr, "port")))
		n = snprintf(out, cap, "tcp:%s:%s",
			     json_string_value(json_object_get(addr, "host")),
			     json_string_value(json_object_get(addr, "port")));
	else if (!strcmp(transport, "socket") && type && !strcmp(type, "fd") &&
		 json_is_string(json_object_get(addr, "str")))
		n = snprintf(out, cap, "fd:%s", json_string_value(json_object_get(addr, "str")));
	else if (!strcmp(transport, "file") && json_is_string(json_object_get(addr, "filename")) &&
		 json_integer_value(json_object_get(addr, "offset")) == 0)
		n = snprintf(out, cap, "file:%s",
			     json_string_value(json_object_get(addr, "filename")));
	if (n < 0 || (size_t)n >= cap) {
		snprintf(msg, msglen,
			 "channel address (transport '%s'): godwit takes socket (unix, inet, fd) and file (at offset 0)",
			 transport);
		return -1;
	}
	return 0;
}

/*
 * The channels form of migrate (QEMU 8.2+): a "main" channel, and for
 * cpr-transfer a "cpr" one. godwit carries the memfds and the state on
 * one unix socket, so a cpr channel must name the main one's address (or
 * stand alone).
 */
static int channels_uri(json_t *channels, char *out, size_t cap, char *msg, size_t msglen)
{
	char main_uri[4096] = "", cpr_uri[4096] = "";
	json_t *ch;
	size_t i;
	json_array_foreach(channels, i, ch) {
		const char *type = json_string_value(json_object_get(ch, "channel-type"));
		char *dst = type && !strcmp(type, "main") ? main_uri :
			    type && !strcmp(type, "cpr")  ? cpr_uri :
							    NULL;
		if (!dst || dst[0]) {
			snprintf(msg, msglen,
				 "channels[%zu]: 'channel-type' must be 'main' or 'cpr', each at most once",
				 i);
			return -1;
		}
		if (address_uri(json_object_get(ch, "addr"), dst, sizeof(main_uri), msg, msglen))
			return -1;
	}
	if (!main_uri[0] && !cpr_uri[0]) {
		snprintf(msg, msglen, "'channels' needs a 'main' channel");
		return -1;
	}
	if (main_uri[0] && cpr_uri[0] && strcmp(main_uri, cpr_uri)) {
		snprintf(msg, msglen,
			 "godwit sends the memfds and the state over one unix socket: give the cpr channel the main channel's address, or leave one out (main %.100s, cpr %.100s)",
			 main_uri, cpr_uri);
		return -1;
	}
	snprintf(out, cap, "%s", main_uri[0] ? main_uri : cpr_uri);
	return 0;
}

/* The destination's side of a resume is migrate-recover, as in QEMU. */
static int refuse_resume(json_t *args, struct qmp_error *err)
{
	if (!json_is_true(json_object_get(args, "resume")))
		return 0;
	return qmp_fail(err, QMP_ERR_GENERIC,
			"migrate-incoming does not resume: migrate-recover listens for a paused post-copy's source");
}

static const struct qmp_arg cmd_migrate_args[] = {
	{"uri", QMP_ARG_STR, false},
	{"channels", QMP_ARG_ARRAY, false},
	{"detach", QMP_ARG_BOOL, false},
	{"resume", QMP_ARG_BOOL, false},
	/* QEMU's old block migration: copy the disks, for this one */
	{"blk", QMP_ARG_BOOL, false},
};

static int cmd_migrate(struct vmm *vm, json_t *args, json_t **ret, struct qmp_error *err)
{
	(void)ret;
	json_t *channels = json_object_get(args, "channels");
	const char *given = json_string_value(json_object_get(args, "uri"));
	if (!given == !channels)
		return qmp_fail(err, QMP_ERR_GENERIC, "need either 'uri' or 'channels' argument");
	char msg[GW_ERROR_MSG_MAX], uri[4096], from_channels[4096];
	if (channels &&
	    channels_uri(channels, from_channels, sizeof(from_channels), msg, sizeof(msg)))
		return fail_with(err, msg);
	if (channels)
		given = from_channels;
	int passed;
	if (qmp_fds_resolve(vm->qmp, given, true, uri, sizeof(uri), &passed, msg, sizeof(msg)))
		return fail_with(err, msg);
	/* resume: a paused post-copy goes on over a new connection. */
	if (json_is_true(json_object_get(args, "resume")) ?
		    migration_resume(vm, uri, passed, msg, sizeof(msg)) :
		    migration_start(vm, uri, passed, json_is_true(json_object_get(args, "blk")),
				    msg, sizeof(msg)))
		return fail_with(err, msg);
	return 0;
}

static const struct qmp_arg cmd_migrate_recover_args[] = {{"uri", QMP_ARG_STR, true}};

static int cmd_migrate_recover(struct vmm *vm, json_t *args, json_t **ret, struct qmp_error *err)
{
	(void)ret;
	char msg[GW_ERROR_MSG_MAX], uri[4096];
	int passed;
	if (qmp_fds_resolve(vm->qmp, json_string_value(json_object_get(args, "uri")), false, uri,
			    sizeof(uri), &passed, msg, sizeof(msg)))
		return fail_with(err, msg);
	int r = migration_recover(vm, uri, msg, sizeof(msg));
	/* The listener holds its own dup of a passed fd, or failed. */
	if (passed >= 0)
		close(passed);
	return r ? fail_with(err, msg) : 0;
}

static int cmd_migrate_cancel(struct vmm *vm, json_t *args, json_t **ret, struct qmp_error *err)
{
	(void)args;
	(void)err;
	(void)ret;
	migration_cancel(vm);
	return 0;
}

/* QEMU's MigrationStatus names, the values its migrate-continue takes. */
static const char *const qemu_statuses[] = {
	"none",
	"setup",
	"cancelling",
	"cancelled",
	"active",
	"postcopy-active",
	"postcopy-paused",
	"postcopy-recover-setup",
	"postcopy-recover",
	"completed",
	"failed",
	"colo",
	"pre-switchover",
	"device",
	"wait-unplug",
};

static const struct qmp_arg cmd_migrate_continue_args[] = {{"state", QMP_ARG_STR, true}};

static int cmd_migrate_continue(struct vmm *vm, json_t *args, json_t **ret, struct qmp_error *err)
{
	(void)ret;
	const char *state = json_string_value(json_object_get(args, "state"));
	size_t i = 0;
	while (i < ARRAY_SIZE(qemu_statuses) && strcmp(qemu_statuses[i], state))
		i++;
	if (i == ARRAY_SIZE(qemu_statuses))
		return qmp_fail(err, QMP_ERR_GENERIC,
				"Parameter 'state' does not accept value '%s'", state);
	/* QEMU's check: the migration must be in the state the manager saw. */
	struct migration_info mi;
	migration_query(vm, &mi);
	const char *now = mi.kind == MIGRATION_OUTGOING ? gw_mig_status_name(mi.status) : "none";
	if (strcmp(now, state) || strcmp(state, "pre-switchover"))
		return qmp_fail(err, QMP_ERR_GENERIC, "Migration not in expected state: %s", now);
	char msg[GW_ERROR_MSG_MAX];
	if (migration_continue(vm, msg, sizeof(msg)))
		return fail_with(err, msg);
	return 0;
}

static int cmd_migrate_start_postcopy(struct vmm *vm, json_t *args, json_t **ret,
				      struct qmp_error *err)
{
	(void)args;
	(void)ret;
	char msg[GW_ERROR_MSG_MAX];
	if (migration_start_postcopy(vm, msg, sizeof(msg)))
		return fail_with(err, msg);
	return 0;
}

static const struct qmp_arg cmd_migrate_incoming_args[] = {
	{"uri", QMP_ARG_STR, true},
	/* as migrate's: the command always returns at once */
	{"detach", QMP_ARG_BOOL, false},
	{"resume", QMP_ARG_BOOL, false},
};

static int cmd_migrate_incoming(struct vmm *vm, json_t *args, json_t **ret, struct qmp_error *err)
{
	(void)ret;
	if (refuse_resume(args, err))
		return -1;
	char msg[GW_ERROR_MSG_MAX], uri[4096];
	int passed;
	if (qmp_fds_resolve(vm->qmp, json_string_value(json_object_get(args, "uri")), false, uri,
			    sizeof(uri), &passed, msg, sizeof(msg)) ||
	    migration_incoming(vm, uri, passed, msg, sizeof(msg)))
		return fail_with(err, msg);
	return 0;
}

/* ---- query-migrate ------------------------------------------------------ */

static json_t *ram_stats(const struct gw_precopy_stats *st)
{
	/* The stream less the disks' chunks ("disk"), as QEMU counts. */
	uint64_t ram = st->transferred > st->live_sent ? st->transferred - st->live_sent : 0;
	/* postcopy-requests: pages the destination asked for in post-copy
	 * (libvirt reads the member). */
	return json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:f,s:I,s:I,s:I}", "transferred",
			 (json_int_t)ram, "remaining", (json_int_t)st->remaining, "total",
			 (json_int_t)st->total, "duplicate", (json_int_t)st->duplicate, "normal",
			 (json_int_t)st->normal, "normal-bytes", (json_int_t)st->normal_bytes,
			 "dirty-pages-rate", (json_int_t)st->dirty_pages_rate, "mbps", st->mbps,
			 "dirty-sync-count", (json_int_t)st->dirty_sync_count, "page-size",
			 (json_int_t)st->page_size, "postcopy-requests",
			 (json_int_t)st->postcopy_requests);
}

static const char *const mode_names[] = {"normal", "cpr-transfer", "cpr-exec"};

static const char *mode_name(uint64_t mode)
{
	return mode < ARRAY_SIZE(mode_names) ? mode_names[mode] : "unknown";
}

/* Which record layer carried the migration: GnuTLS's, in user space
 * (lib/transport/tls.c says why not the kernel's). */
static void add_tls(const struct migration_info *mi, json_t *r)
{
	if (mi->tls)
		json_object_set_new(r, "x-godwit-tls", json_string("gnutls"));
}

static json_t *outgoing_info(const struct migration_info *mi)
{
	const struct gw_precopy_stats *st = &mi->out;
	json_t *r = json_pack("{s:s}", "status", gw_mig_status_name(mi->status));
	if (!mi->have_stats) {
		if (mi->status == GW_MIG_FAILED)
			json_object_set_new(r, "error-desc", json_string(mi->error));
		return r;
	}
	json_object_set_new(r, "total-time", json_integer((json_int_t)st->total_time_ms));
	json_object_set_new(r, "setup-time", json_integer((json_int_t)st->setup_time_ms));
	if (mi->status == GW_MIG_COMPLETED)
		json_object_set_new(r, "downtime", json_integer((json_int_t)st->downtime_ms));
	else
		json_object_set_new(r, "expected-downtime",
				    json_integer((json_int_t)st->expected_downtime_ms));
	json_object_set_new(r, "ram", ram_stats(st));
	/* QEMU's block migration figures: the disks' chunks, sent and left. */
	if (mi->disk_total)
		json_object_set_new(r, "disk",
				    json_pack("{s:I,s:I,s:I}", "transferred",
					      (json_int_t)st->live_sent, "remaining",
					      (json_int_t)st->live_pending, "total",
					      (json_int_t)mi->disk_total));
	if (mi->auto_converge)
		json_object_set_new(r, "cpu-throttle-percentage",
				    json_integer(st->throttle_percent));
	if (st->blocked[0] && !gw_mig_status_is_final(mi->status))
		json_object_set_new(r, "x-godwit-blocked", json_string(st->blocked));
	if (st->handshake_us)
		json_object_set_new(r, "x-godwit-handshake-us",
				    json_integer((json_int_t)st->handshake_us));
	if (st->unconfirmed)
		json_object_set_new(r, "x-godwit-unconfirmed", json_true());
	add_tls(mi, r);
	if (st->generation) {
		json_object_set_new(r, "x-godwit-incremental", json_boolean(st->incremental));
		json_object_set_new(r, "x-godwit-generation", json_integer(st->generation));
	}
	if (mi->mode != GW_MODE_NORMAL) {
		json_object_set_new(r, "x-godwit-mode", json_string(mode_name(mi->mode)));
		json_object_set_new(r, "x-godwit-state-bytes",
				    json_integer((json_int_t)st->state_bytes));
	}
	if (mi->mode != GW_MODE_NORMAL && mi->snapshot_hash[0])
		json_object_set_new(r, "x-godwit-pause-hash", json_string(mi->snapshot_hash));
	if (st->downtime_us && mi->status == GW_MIG_COMPLETED)
		json_object_set_new(r, "x-godwit-downtime-us",
				    json_integer((json_int_t)st->downtime_us));
	/* The part of the downtime that made the disks' writes durable. */
	if (mi->disk_sync_us >= 0 && mi->status == GW_MIG_COMPLETED)
		json_object_set_new(r, "x-godwit-disk-sync-us",
				    json_integer((json_int_t)mi->disk_sync_us));
	if (mi->background) {
		json_object_set_new(r, "x-godwit-wp-faults",
				    json_integer((json_int_t)st->wp_faults));
		json_object_set_new(r, "x-godwit-wp-max-wait-us",
				    json_integer((json_int_t)st->wp_max_wait_us));
		json_object_set_new(r, "x-godwit-pause-us", json_integer((json_int_t)st->pause_us));
		if (mi->snapshot_hash[0])
			json_object_set_new(r, "x-godwit-snapshot-hash",
					    json_string(mi->snapshot_hash));
	}
	if (mi->status == GW_MIG_FAILED)
		json_object_set_new(r, "error-desc", json_string(mi->error));
	/* Why the post-copy paused, while it waits for a resume. */
	if (mi->status == GW_MIG_POSTCOPY_PAUSED)
		json_object_set_new(r, "error-desc", json_string(st->error));
	return r;
}

/* What the page server of a lazy restore or of post-copy did, and by
 * vCPU: the faults its thread took (KVM's for it included). */
static json_t *page_server_json(const struct migration_info *mi)
{
	const struct gw_incoming_stats *st = &mi->in;
	json_t *vcpus = json_array();
	for (unsigned i = 0; i < mi->nr_fault_vcpus; i++) {
		const struct gw_fault_thread_stats *f = &mi->fault_vcpus[i];
		json_array_append_new(vcpus,
				      json_pack("{s:I,s:I,s:I,s:I,s:I}", "cpu-index", (json_int_t)i,
						"faults", (json_int_t)f->faults,
						"fault-latency-mean-us",
						(json_int_t)f->fault_mean_us,
						"fault-latency-max-us", (json_int_t)f->fault_max_us,
						"blocked-us", (json_int_t)f->fault_total_us));
	}
	return json_pack("{s:I,s:I,s:I,s:I,s:I,s:o}", "pages-faulted", (json_int_t)st->lazy_faulted,
			 "background-pages", (json_int_t)st->lazy_background, "remaining-pages",
			 (json_int_t)st->lazy_remaining, "fault-latency-mean-us",
			 (json_int_t)st->lazy_fault_mean_us, "fault-latency-max-us",
			 (json_int_t)st->lazy_fault_max_us, "vcpus", vcpus);
}

static json_t *incoming_info(const struct migration_info *mi)
{
	const struct gw_incoming_stats *st = &mi->in;
	json_t *r = json_pack("{s:s,s:I,s:I}", "status", gw_mig_status_name(mi->status),
			      "total-time", (json_int_t)st->total_time_ms, "x-godwit-received",
			      (json_int_t)st->received);
	if (mi->status == GW_MIG_FAILED)
		json_object_set_new(r, "error-desc", json_string(mi->error));
	if (mi->dest_hash[0])
		json_object_set_new(r, "x-godwit-ram-hash", json_string(mi->dest_hash));
	if (st->go_wait_us)
		json_object_set_new(r, "x-godwit-go-wait-us",
				    json_integer((json_int_t)st->go_wait_us));
	if (mi->listening[0])
		json_object_set_new(r, "x-godwit-listening", json_string(mi->listening));
	if (st->held)
		json_object_set_new(r, "x-godwit-held", json_true());
	add_tls(mi, r);
	/* Post-copy: QEMU's postcopy-requests, and its blocktime as the
	 * page server's fault latency. */
	if (!mi->lazy &&
	    (st->postcopy_requests || mi->status == GW_MIG_POSTCOPY_ACTIVE ||
	     mi->status == GW_MIG_POSTCOPY_PAUSED || mi->status == GW_MIG_POSTCOPY_RECOVER)) {
		/* libvirt reads ram's transferred, remaining and total
		 * whenever ram is there. */
		json_object_set_new(r, "ram",
				    json_pack("{s:I,s:I,s:I,s:I}", "transferred",
					      (json_int_t)st->received, "remaining",
					      (json_int_t)(st->lazy_remaining * 4096), "total",
					      (json_int_t)mi->ram_total, "postcopy-requests",
					      (json_int_t)st->postcopy_requests));
		json_object_set_new(r, "x-godwit-postcopy", page_server_json(mi));
		/* QEMU's, in ms: how long each vCPU waited for its pages. */
		json_t *blocktime = json_array();
		for (unsigned i = 0; i < mi->nr_fault_vcpus; i++)
			json_array_append_new(blocktime,
					      json_integer((
						      json_int_t)(mi->fault_vcpus[i].fault_total_us /
								  1000)));
		json_object_set_new(r, "postcopy-vcpu-blocktime", blocktime);
	}
	if (mi->status == GW_MIG_POSTCOPY_PAUSED)
		json_object_set_new(r, "error-desc", json_string(st->error));
	if (mi->lazy)
		json_object_set_new(r, "x-godwit-lazy", page_server_json(mi));
	if (st->adopted_bytes) {
		json_object_set_new(r, "x-godwit-adopted-bytes",
				    json_integer((json_int_t)st->adopted_bytes));
		json_object_set_new(r, "x-godwit-adopt-us", json_integer((json_int_t)st->adopt_us));
		/* The RAM a local live update copied: none. */
		json_object_set_new(r, "ram",
				    json_pack("{s:I,s:I,s:I}", "transferred", (json_int_t)0,
					      "remaining", (json_int_t)0, "total",
					      (json_int_t)st->adopted_bytes));
	}
	if (st->downtime_us) {
		json_object_set_new(r, "downtime",
				    json_integer((json_int_t)(st->downtime_us / 1000)));
		json_object_set_new(r, "x-godwit-downtime-us",
				    json_integer((json_int_t)st->downtime_us));
		/* cpr-exec: the guest paused twice, to the stand-in and back. */
		if (mi->cpr_first_pause_us)
			json_object_set_new(r, "x-godwit-pauses-us",
					    json_pack("[I,I]", (json_int_t)mi->cpr_first_pause_us,
						      (json_int_t)(st->downtime_us -
								   mi->cpr_first_pause_us)));
	}
	return r;
}

static int cmd_query_migrate(struct vmm *vm, json_t *args, json_t **ret, struct qmp_error *err)
{
	(void)args;
	struct migration_info mi;
	migration_query(vm, &mi);
	json_t *r;
	if (mi.kind == MIGRATION_NONE)
		r = json_object(); /* QEMU: nothing before the first migration */
	else if (mi.kind == MIGRATION_INCOMING)
		r = incoming_info(&mi);
	else
		r = outgoing_info(&mi);
	/* As QEMU: present, before any migration too, while something
	 * would refuse a migrate (libvirt shows them as the reason). */
	if (r && mi.nr_blocked) {
		json_t *list = json_array();
		for (unsigned i = 0; i < mi.nr_blocked; i++)
			json_array_append_new(list, json_string(mi.blocked[i]));
		json_object_set_new(r, "blocked-reasons", list);
	}
	return qmp_return(r, ret, err);
}

/* ---- parameters ----------------------------------------------------------- */

static const struct qmp_arg cmd_set_parameters_args[] = {
	{"downtime-limit", QMP_ARG_INT, false},
	{"max-bandwidth", QMP_ARG_INT, false},
	{"cpu-throttle-initial", QMP_ARG_INT, false},
	{"cpu-throttle-increment", QMP_ARG_INT, false},
	{"max-cpu-throttle", QMP_ARG_INT, false},
	{"x-godwit-switchover-timeout", QMP_ARG_INT, false},
	{"x-godwit-ready-timeout", QMP_ARG_INT, false},
	{"x-godwit-confirm-timeout", QMP_ARG_INT, false},
	{"x-godwit-go-timeout", QMP_ARG_INT, false},
	{"x-godwit-exec-grace", QMP_ARG_INT, false},
	{"direct-io", QMP_ARG_BOOL, false},
	{"multifd-channels", QMP_ARG_INT, false},
	{"max-postcopy-bandwidth", QMP_ARG_INT, false},
	{"x-godwit-lazy-fill", QMP_ARG_STR, false},
	/* with postcopy-ram: switch by itself after this many passes that
	 * did not fit the downtime limit (0: only migrate-start-postcopy) */
	{"x-godwit-postcopy-after-passes", QMP_ARG_INT, false},
	{"mode", QMP_ARG_STR, false},
	{"cpr-exec-command", QMP_ARG_ARRAY, false},
	{"tls-creds", QMP_ARG_STR, false},
	{"tls-hostname", QMP_ARG_STR, false},
	{"tls-authz", QMP_ARG_STR, false},
};

/* The TLS parameters: ids and a name, checked when a migration starts
 * (as QEMU does: libvirt sets them before it creates the objects). */
static int set_tls_parameters(json_t *args, struct mig_tls_settings *t, struct qmp_error *err)
{
	struct {
		const char *name;
		char *field;
		size_t size;
	} str[] = {
		{"tls-creds", t->creds, sizeof(t->creds)},
		{"tls-hostname", t->hostname, sizeof(t->hostname)},
		{"tls-authz", t->authz, sizeof(t->authz)},
	};
	for (size_t i = 0; i < ARRAY_SIZE(str); i++) {
		const char *v = json_string_value(json_object_get(args, str[i].name));
		if (v && strlen(v) >= str[i].size)
			return qmp_fail(err, QMP_ERR_GENERIC,
					"Parameter '%s' is longer than %zu bytes", str[i].name,
					str[i].size - 1);
	}
	for (size_t i = 0; i < ARRAY_SIZE(str); i++) {
		const char *v = json_string_value(json_object_get(args, str[i].name));
		if (v)
			snprintf(str[i].field, str[i].size, "%s", v);
	}
	return 0;
}

static int cmd_set_parameters(struct vmm *vm, json_t *args, json_t **ret, struct qmp_error *err)
{
	(void)ret;
	struct migration_settings cur;
	migration_get_settings(vm, &cur);
	struct gw_precopy_params p = cur.precopy;
	uint64_t go_timeout = cur.go_timeout_ms;
	json_t *v;
	if (set_tls_parameters(args, &cur.tls, err))
		return -1;
	if ((v = json_object_get(args, "max-postcopy-bandwidth"))) {
		if (json_integer_value(v) < 0)
			return qmp_fail(err, QMP_ERR_GENERIC,
					"Parameter 'max-postcopy-bandwidth' expects a non-negative number of bytes per second");
		cur.postcopy_bandwidth = (uint64_t)json_integer_value(v);
	}
	if ((v = json_object_get(args, "x-godwit-lazy-fill"))) {
		const char *fill = json_string_value(v);
		if (strcmp(fill, "continue") && strcmp(fill, "copy"))
			return qmp_fail(err, QMP_ERR_GENERIC,
					"Parameter 'x-godwit-lazy-fill' does not accept value '%s' (continue or copy)",
					fill);
		cur.lazy_copy = !strcmp(fill, "copy");
	}
	if ((v = json_object_get(args, "x-godwit-postcopy-after-passes"))) {
		json_int_t n = json_integer_value(v);
		if (n < 0 || n > 1000000)
			return qmp_fail(err, QMP_ERR_GENERIC,
					"Parameter 'x-godwit-postcopy-after-passes' expects an integer in the range of 0 to 1000000");
		p.postcopy_after_passes = (uint64_t)n;
	}
	if ((v = json_object_get(args, "downtime-limit"))) {
		json_int_t n = json_integer_value(v);
		if (n < 0 || n > 2000000)
			return qmp_fail(err, QMP_ERR_GENERIC,
					"Parameter 'downtime_limit' expects an integer in the range of 0 to 2000000 milliseconds");
		p.downtime_limit_ms = (uint64_t)n;
	}
	if ((v = json_object_get(args, "max-bandwidth"))) {
		if (json_integer_value(v) < 0)
			return qmp_fail(err, QMP_ERR_GENERIC,
					"Parameter 'max_bandwidth' expects a non-negative number of bytes per second");
		p.max_bandwidth = (uint64_t)json_integer_value(v);
	}
	struct {
		const char *name;
		uint32_t *field;
		json_int_t lo, hi;
	} pct[] = {
		{"cpu-throttle-initial", &p.throttle_initial, 1, 99},
		{"cpu-throttle-increment", &p.throttle_increment, 1, 99},
		{"max-cpu-throttle", &p.throttle_max, 1, 99},
	};
	for (size_t i = 0; i < ARRAY_SIZE(pct); i++) {
		if (!(v = json_object_get(args, pct[i].name)))
			continue;
		json_int_t n = json_integer_value(v);
		if (n < pct[i].lo || n > pct[i].hi)
			return qmp_fail(err, QMP_ERR_GENERIC,
					"Parameter '%s' expects an integer in the range of 1 to 99",
					pct[i].name);
		*pct[i].field = (uint32_t)n;
	}
	/* The switchover's timeouts (docs/qmp.md): an hour is more than any
	 * link needs and keeps the value inside poll()'s int. */
	struct {
		const char *name;
		uint64_t *field;
	} ms[] = {
		{"x-godwit-switchover-timeout", &p.switchover_timeout_ms},
		{"x-godwit-ready-timeout", &p.ready_timeout_ms},
		{"x-godwit-confirm-timeout", &p.confirm_timeout_ms},
		{"x-godwit-go-timeout", &go_timeout},
		{"x-godwit-exec-grace", &p.exec_grace_ms},
	};
	for (size_t i = 0; i < ARRAY_SIZE(ms); i++) {
		if (!(v = json_object_get(args, ms[i].name)))
			continue;
		json_int_t n = json_integer_value(v);
		if (n < 1 || n > 3600000)
			return qmp_fail(err, QMP_ERR_GENERIC,
					"Parameter '%s' expects an integer in the range of 1 to 3600000 milliseconds",
					ms[i].name);
		*ms[i].field = (uint64_t)n;
	}
	if ((v = json_object_get(args, "direct-io")))
		p.direct_io = json_is_true(v);
	if ((v = json_object_get(args, "multifd-channels"))) {
		json_int_t n = json_integer_value(v);
		if (n < 1 || n > 64)
			return qmp_fail(err, QMP_ERR_GENERIC,
					"Parameter 'multifd-channels' expects an integer in the range of 1 to 64");
		p.multifd_channels = (uint32_t)n;
	}
	if ((v = json_object_get(args, "mode"))) {
		size_t m = 0;
		while (m < ARRAY_SIZE(mode_names) && strcmp(mode_names[m], json_string_value(v)))
			m++;
		if (m == ARRAY_SIZE(mode_names))
			return qmp_fail(err, QMP_ERR_GENERIC,
					"Parameter 'mode' does not accept value '%s'",
					json_string_value(v));
		p.mode = m;
	}
	if ((v = json_object_get(args, "cpr-exec-command"))) {
		const char *argv[256];
		size_t n = json_array_size(v);
		json_t *item;
		size_t i;
		if (n > ARRAY_SIZE(argv))
			return qmp_fail(err, QMP_ERR_GENERIC,
					"Parameter 'cpr-exec-command' has more than %zu arguments",
					ARRAY_SIZE(argv));
		json_array_foreach(v, i, item) {
			if (!json_is_string(item))
				return qmp_fail(err, QMP_ERR_GENERIC,
						"Invalid parameter type for 'cpr-exec-command[%zu]', expected: string",
						i);
			argv[i] = json_string_value(item);
		}
		if (n && argv[0][0] != '/')
			return qmp_fail(err, QMP_ERR_GENERIC,
					"Parameter 'cpr-exec-command': the binary must be an absolute path, not '%s'",
					argv[0]);
		int rc = migration_set_exec_command(vm, argv, n);
		if (rc)
			return qmp_fail(err, QMP_ERR_GENERIC,
					rc == -EBUSY ? "There's a migration process in progress" :
						       "out of memory");
	}
	cur.precopy = p;
	cur.go_timeout_ms = go_timeout;
	migration_set_params(vm, &cur);
	return 0;
}

static int add_cpr_parameters(struct vmm *vm, const struct gw_precopy_params *p, json_t *r)
{
	char **argv;
	size_t n = migration_get_exec_command(vm, &argv);
	json_t *list = json_array();
	for (size_t i = 0; i < n; i++)
		json_array_append_new(list, json_string(argv[i]));
	migration_free_exec_command(argv);
	json_object_set_new(r, "mode", json_string(mode_name(p->mode)));
	json_object_set_new(r, "cpr-exec-command", list);
	return 0;
}

/* A lazy restore's (destination) parameters. */
static int add_dest_parameters(const struct migration_settings *s, json_t *r)
{
	json_object_set_new(r, "max-postcopy-bandwidth",
			    json_integer((json_int_t)s->postcopy_bandwidth));
	json_object_set_new(r, "x-godwit-lazy-fill",
			    json_string(s->lazy_copy ? "copy" : "continue"));
	/* Always there, "" when unset: libvirt takes a missing tls-creds
	 * for a VMM without TLS. */
	json_object_set_new(r, "tls-creds", json_string(s->tls.creds));
	json_object_set_new(r, "tls-hostname", json_string(s->tls.hostname));
	json_object_set_new(r, "tls-authz", json_string(s->tls.authz));
	return 0;
}

static int cmd_query_parameters(struct vmm *vm, json_t *args, json_t **ret, struct qmp_error *err)
{
	(void)args;
	struct migration_settings cur;
	migration_get_settings(vm, &cur);
	const struct gw_precopy_params *p = &cur.precopy;
	return qmp_return(json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:b,s:I,s:I}",
				    "downtime-limit", (json_int_t)p->downtime_limit_ms,
				    "max-bandwidth", (json_int_t)p->max_bandwidth,
				    "cpu-throttle-initial", (json_int_t)p->throttle_initial,
				    "cpu-throttle-increment", (json_int_t)p->throttle_increment,
				    "max-cpu-throttle", (json_int_t)p->throttle_max,
				    "x-godwit-switchover-timeout",
				    (json_int_t)p->switchover_timeout_ms, "x-godwit-ready-timeout",
				    (json_int_t)p->ready_timeout_ms, "x-godwit-confirm-timeout",
				    (json_int_t)p->confirm_timeout_ms, "x-godwit-go-timeout",
				    (json_int_t)cur.go_timeout_ms, "x-godwit-exec-grace",
				    (json_int_t)p->exec_grace_ms, "direct-io", (int)p->direct_io,
				    "multifd-channels", (json_int_t)p->multifd_channels,
				    "x-godwit-postcopy-after-passes",
				    (json_int_t)p->postcopy_after_passes),
			  ret, err) ?
		       -1 :
	       add_dest_parameters(&cur, *ret) ? -1 :
						 add_cpr_parameters(vm, p, *ret);
}

/* ---- capabilities --------------------------------------------------------- */

struct capability {
	const char *name;
	size_t offset; /* of the bool in struct migration_settings */
};

static const struct capability capabilities[] = {
	{"events", offsetof(struct migration_settings, events)},
	{"auto-converge", offsetof(struct migration_settings, auto_converge)},
	/* destination: hash guest RAM as loaded, before the guest runs, and
	 * report it in query-migrate (for tests; costs downtime) */
	{"x-godwit-verify-hash", offsetof(struct migration_settings, verify_hash)},
	/* into a file: one fixed slot per page (docs/format.md, "Mapped-RAM files") */
	{"mapped-ram", offsetof(struct migration_settings, mapped_ram)},
	/* with mapped-ram: keep tracking dirty pages after a save, and write
	 * only those into the same file next time */
	{"x-godwit-incremental", offsetof(struct migration_settings, incremental)},
	/* migrate saves the guest as it was at the command, while it runs on
	 * (userfaultfd write-protect; docs/format.md, "Background snapshot") */
	{"background-snapshot", offsetof(struct migration_settings, background_snapshot)},
	/* copy the disks that both hosts do not see, live (disk_copy.h) */
	{"block", offsetof(struct migration_settings, block)},
	/* pages over multifd-channels more connections (tcp:, unix:), on
	 * both sides (docs/format.md, "multifd") */
	{"multifd", offsetof(struct migration_settings, multifd)},
	/* destination, a mapped-ram file: run the guest once the sections
	 * are in, and serve its RAM from the file until all of it is
	 * (docs/qmp.md, "Lazy restore") */
	{"x-godwit-lazy-restore", offsetof(struct migration_settings, lazy_restore)},
	/* stop at the switchover, guest paused, until migrate-continue */
	{"pause-before-switchover", offsetof(struct migration_settings, pause_before_switchover)},
	/* migrate-start-postcopy may switch to post-copy, on both sides
	 * (docs/format.md, "Post-copy") */
	{"postcopy-ram", offsetof(struct migration_settings, postcopy)},
};

static bool *cap_field(struct migration_settings *s, const struct capability *c)
{
	return (bool *)((char *)s + c->offset);
}

static const struct qmp_arg cmd_set_capabilities_args[] = {{"capabilities", QMP_ARG_ARRAY, true}};

static int cmd_set_capabilities(struct vmm *vm, json_t *args, json_t **ret, struct qmp_error *err)
{
	(void)ret;
	struct migration_settings want;
	migration_get_settings(vm, &want);
	json_t *list = json_object_get(args, "capabilities"), *item;
	size_t i;
	json_array_foreach(list, i, item) {
		static const struct qmp_arg item_spec[] = {
			{"capability", QMP_ARG_STR, true},
			{"state", QMP_ARG_BOOL, true},
		};
		if (!json_is_object(item))
			return qmp_fail(err, QMP_ERR_GENERIC,
					"Invalid parameter type for 'capabilities[%zu]', expected: object",
					i);
		if (qmp_check_args(item, item_spec, ARRAY_SIZE(item_spec), err))
			return -1;
		const char *name = json_string_value(json_object_get(item, "capability"));
		size_t c = 0;
		while (c < ARRAY_SIZE(capabilities) && strcmp(capabilities[c].name, name))
			c++;
		if (c == ARRAY_SIZE(capabilities))
			return qmp_fail(err, QMP_ERR_GENERIC,
					"Parameter 'capability' does not accept value '%s'", name);
		*cap_field(&want, &capabilities[c]) = json_is_true(json_object_get(item, "state"));
	}
	char msg[GW_ERROR_MSG_MAX];
	if (migration_set_caps(vm, &want, msg, sizeof(msg)))
		return fail_with(err, msg);
	return 0;
}

static int cmd_query_capabilities(struct vmm *vm, json_t *args, json_t **ret, struct qmp_error *err)
{
	(void)args;
	struct migration_settings cur;
	migration_get_settings(vm, &cur);
	json_t *list = json_array();
	for (size_t c = 0; c < ARRAY_SIZE(capabilities); c++)
		json_array_append_new(list,
				      json_pack("{s:s,s:b}", "capability", capabilities[c].name,
						"state", *cap_field(&cur, &capabilities[c])));
	return qmp_return(list, ret, err);
}

static const struct qmp_command migration_commands[] = {
	{"migrate", cmd_migrate, QMP_ARGS(cmd_migrate_args)},
	{"migrate-cancel", cmd_migrate_cancel},
	/* QEMU spells it with an underscore; libvirt sends that. */
	{"migrate_cancel", cmd_migrate_cancel},
	{"migrate-incoming", cmd_migrate_incoming, QMP_ARGS(cmd_migrate_incoming_args)},
	{"migrate-continue", cmd_migrate_continue, QMP_ARGS(cmd_migrate_continue_args)},
	{"migrate-start-postcopy", cmd_migrate_start_postcopy},
	{"migrate-recover", cmd_migrate_recover, QMP_ARGS(cmd_migrate_recover_args)},
	{"query-migrate", cmd_query_migrate},
	{"migrate-set-parameters", cmd_set_parameters, QMP_ARGS(cmd_set_parameters_args)},
	{"query-migrate-parameters", cmd_query_parameters},
	{"migrate-set-capabilities", cmd_set_capabilities, QMP_ARGS(cmd_set_capabilities_args)},
	{"query-migrate-capabilities", cmd_query_capabilities},
};

int qmp_migration_register(struct qmp_server *s)
{
	return qmp_register(s, migration_commands, ARRAY_SIZE(migration_commands));
}
