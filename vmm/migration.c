#include "migration.h"
#include "vmm.h"
#include "dirty_kvm.h"
#include "gw_version.h"
#include "loop.h"
#include "machine.h"
#include "migratable.h"
#include "qmp.h"

#include <errno.h>
#include <godwit/channel.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <godwit/migration.h>
#include <godwit/precopy.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


enum role { ROLE_NONE, ROLE_OUTGOING, ROLE_INCOMING };


struct vm_migration {
	struct vmm *vm;
	struct gw_migration *m;
	struct dirty_kvm dirty;


	struct gw_precopy_params params;
	uint64_t go_timeout_ms; /* destination: READY until GO */
	bool cap_events, cap_auto_converge, cap_verify_hash;

	/* Everything below is shared with migration threads. */
	pthread_mutex_t lock;
	enum role role;  /* what runs now */
	enum role shown; /* what query-migrate reports: the latest migration */
	enum gw_mig_status status;   /* VMM-level status, final word on the outcome */
	char error[GW_ERROR_MSG_MAX];
	bool cancel;
	bool destroying; /* the main loop has stopped: nobody reads statuses */
	/* Readable once the outgoing migration is cancelled or the VMM quits:
	 * ends the wait of connecting. */
	int cancel_efd;

	/* outgoing: a thread connects and hands the channel to the engine,
	 * which owns it from then on */
	char *uri;
	pthread_t connect_thread;
	bool connect_thread_live;
	struct gw_precopy *out;
	struct gw_precopy_stats last; /* kept after the engine is freed */
	bool have_last;

	/* incoming */
	struct gw_listener *listener;
	struct gw_incoming *in;
	struct gw_incoming_stats in_last;
	char dest_hash[33];
};

/* ---- vm ops: pause/resume around the switchover ----------------------- */

/* The sections read their state themselves, in their pre_save hooks,
 * once the engine saves them: pausing is only parking the vCPUs. */
static int op_pause(void *opaque, struct gw_error *err)
{
	struct vm_migration *mig = opaque;
	(void)err;
	vmm_mig_pause(mig->vm);
	return 0;
}

/* Destination, before READY: everything that can fail happens here, so
 * that after the source's GO only the vCPUs have to start. */
static int op_prepare(void *opaque, struct gw_error *err)
{
	struct vm_migration *mig = opaque;
	int ret = cpu_sections_apply(&mig->vm->cpu_state, err);
	if (ret || !mig->cap_verify_hash)
		return ret;
	char hash[33];
	ret = guest_ram_hash(&mig->vm->ram, hash);
	if (ret)
		return gw_error_set(err, ret, "hashing loaded RAM: %s", strerror(-ret));
	pthread_mutex_lock(&mig->lock);
	memcpy(mig->dest_hash, hash, sizeof(hash));
	pthread_mutex_unlock(&mig->lock);
	return 0;
}

/* A destination after GO, or a source after a failure or a cancel (its
 * guest goes on with the state it never lost): the migration lets go. */
static int op_resume(void *opaque, struct gw_error *err)
{
	struct vm_migration *mig = opaque;
	(void)err;
	vmm_mig_resume(mig->vm);
	return 0;
}

static const struct gw_vm_ops vm_ops = {
	.pause = op_pause, .resume = op_resume, .prepare = op_prepare,
};

/* ---- events and completion, on the main loop ------------------------ */

struct status_msg {
	struct vm_migration *mig;
	enum gw_mig_status status;
	uint64_t pass;
	bool is_pass;
};

static void emit_status(struct vm_migration *mig, enum gw_mig_status s)
{
	if (mig->cap_events && mig->vm->qmp)
		qmp_emit_event(mig->vm->qmp, "MIGRATION",
			       json_pack("{s:s}", "status", gw_mig_status_name(s)));
}

/* An outgoing migration reached its end (the engine has ended its
 * channel and its outcome is final): collect the engine and decide what
 * the guest does next. */
static void finish_outgoing(struct vm_migration *mig)
{
	if (mig->connect_thread_live) {
		pthread_join(mig->connect_thread, NULL);
		mig->connect_thread_live = false;
	}
	pthread_mutex_lock(&mig->lock);
	struct gw_precopy *out = mig->out;
	mig->out = NULL;
	pthread_mutex_unlock(&mig->lock);
	if (out) {
		struct gw_precopy_stats st;
		gw_precopy_stats(out, &st);
		gw_precopy_free(out);
		pthread_mutex_lock(&mig->lock);
		mig->last = st;
		mig->have_last = true;
		mig->status = st.status;
		snprintf(mig->error, sizeof(mig->error), "%s", st.error);
		pthread_mutex_unlock(&mig->lock);
	}
	pthread_mutex_lock(&mig->lock);
	enum gw_mig_status s = mig->status;
	bool unconfirmed = mig->have_last && mig->last.unconfirmed;
	mig->role = ROLE_NONE;
	pthread_mutex_unlock(&mig->lock);

	/* Unconfirmed: the destination may run the guest, so it stays paused
	 * here, as after a completed migration; 'cont' is the operator's call. */
	if (s == GW_MIG_COMPLETED || unconfirmed)
		vmm_set_postmigrate(mig->vm);
	else
		vmm_mig_resume(mig->vm);
	if (s == GW_MIG_FAILED)
		fprintf(stderr, "godwit-vmm: migration failed: %s\n", mig->error);
}

static void finish_incoming(struct vm_migration *mig)
{
	struct gw_incoming *in = mig->in;
	mig->in = NULL;
	if (in) {
		struct gw_incoming_stats st;
		gw_incoming_stats(in, &st);
		gw_incoming_free(in);
		pthread_mutex_lock(&mig->lock);
		mig->in_last = st;
		mig->status = st.status;
		snprintf(mig->error, sizeof(mig->error), "%s", st.error);
		pthread_mutex_unlock(&mig->lock);
	}
	mig->role = ROLE_NONE;
	if (mig->status != GW_MIG_COMPLETED)
		fprintf(stderr,
			"godwit-vmm: incoming migration failed, the guest stays stopped: %s\n",
			mig->error);
}

static void status_main(void *opaque)
{
	struct status_msg *msg = opaque;
	struct vm_migration *mig = msg->mig;
	if (msg->is_pass) {
		if (mig->cap_events && mig->vm->qmp)
			qmp_emit_event(mig->vm->qmp, "MIGRATION_PASS",
				       json_pack("{s:I}", "pass", (json_int_t)msg->pass));
	} else if (gw_mig_status_is_final(msg->status)) {
		if (mig->shown == ROLE_INCOMING)
			finish_incoming(mig);
		else
			finish_outgoing(mig);
		emit_status(mig, mig->status);
	} else {
		emit_status(mig, msg->status);
	}
	free(msg);
}

static void post_status(struct vm_migration *mig, enum gw_mig_status s, bool is_pass,
			uint64_t pass)
{
	pthread_mutex_lock(&mig->lock);
	bool gone = mig->destroying;
	pthread_mutex_unlock(&mig->lock);
	struct status_msg *msg = gone ? NULL : malloc(sizeof(*msg));
	if (!msg)
		return;
	*msg = (struct status_msg){mig, s, pass, is_pass};
	if (loop_call(mig->vm->loop, status_main, msg) < 0)
		free(msg);
}

static void cb_status(void *opaque, enum gw_mig_status s)
{
	struct vm_migration *mig = opaque;
	if (!gw_mig_status_is_final(s)) {
		pthread_mutex_lock(&mig->lock);
		mig->status = s;
		pthread_mutex_unlock(&mig->lock);
	}
	post_status(mig, s, false, 0);
}

static void cb_pass(void *opaque, uint64_t pass)
{
	post_status(opaque, GW_MIG_ACTIVE, true, pass);
}

static int cb_throttle(void *opaque, uint32_t percent, struct gw_error *err)
{
	struct vm_migration *mig = opaque;
	(void)err;
	vcpus_set_throttle(&mig->vm->vcpus, percent);
	return 0;
}

/* ---- outgoing ------------------------------------------------------- */

/* The outgoing migration ended before an engine took it over. */
static void *connect_failed(struct vm_migration *mig, enum gw_mig_status s, const char *msg)
{
	pthread_mutex_lock(&mig->lock);
	mig->status = s;
	snprintf(mig->error, sizeof(mig->error), "%s", msg);
	pthread_mutex_unlock(&mig->lock);
	post_status(mig, s, false, 0);
	return NULL;
}

/*
 * Connecting may wait (a TCP handshake, a FIFO nobody reads yet), so it
 * runs here rather than on the main loop, and ends when cancel_efd is
 * written (migrate-cancel, quit). The engine then owns the channel: it
 * ends it, and an exec: command, before its outcome is final.
 */
static void *connect_thread(void *opaque)
{
	struct vm_migration *mig = opaque;
	struct gw_error err = {0};
	struct gw_channel ch;
	int ret = gw_channel_connect_cancellable(mig->uri, mig->cancel_efd, &ch, &err);
	if (ret == -ECANCELED)
		return connect_failed(mig, GW_MIG_CANCELLED, "");
	if (ret)
		return connect_failed(mig, GW_MIG_FAILED, err.msg);
	pthread_mutex_lock(&mig->lock);
	struct gw_precopy_params p = mig->params;
	p.auto_converge = mig->cap_auto_converge;
	pthread_mutex_unlock(&mig->lock);

	const struct gw_precopy_callbacks cb = {
		.status = cb_status, .pass = cb_pass, .throttle = cb_throttle, .opaque = mig,
	};
	struct gw_precopy *out;
	ret = gw_precopy_start(mig->m, &ch, 1, &p, &cb, &out, &err);
	if (ret) {
		gw_channel_abort(&ch);
		gw_channel_close(&ch, NULL);
		return connect_failed(mig, GW_MIG_FAILED, err.msg);
	}
	pthread_mutex_lock(&mig->lock);
	mig->out = out;
	if (mig->cancel)
		gw_precopy_cancel(out);
	pthread_mutex_unlock(&mig->lock);
	return NULL;
}

static bool busy(struct vm_migration *mig)
{
	return mig->role != ROLE_NONE || mig->connect_thread_live;
}

/* Make cancel_efd readable (idempotent: an eventfd counter only grows). */
static void signal_cancel(struct vm_migration *mig)
{
	uint64_t one = 1;
	ssize_t n = write(mig->cancel_efd, &one, sizeof(one));
	(void)n;
}

static int cmd_migrate(struct vmm *vm, json_t *args, json_t **ret, struct qmp_error *err)
{
	static const struct qmp_arg spec[] = {
		{"uri", QMP_ARG_STR, true},
		{"detach", QMP_ARG_BOOL, false},
		{"resume", QMP_ARG_BOOL, false},
	};
	struct vm_migration *mig = vm->mig;
	(void)ret;
	if (qmp_check_args(args, spec, ARRAY_SIZE(spec), err))
		return -1;
	if (json_is_true(json_object_get(args, "resume")))
		return qmp_fail(err, QMP_ERR_GENERIC, "resume of a paused migration is not supported");
	enum vmm_runstate rs = vmm_runstate(vm);
	if (busy(mig) || rs == VMM_INMIGRATE)
		return qmp_fail(err, QMP_ERR_GENERIC,
				"There's a migration process in progress");
	if (rs == VMM_POSTMIGRATE)
		return qmp_fail(err, QMP_ERR_GENERIC,
				"the guest already migrated away; 'cont' it first to migrate it again");
	if (rs == VMM_SHUTDOWN || vm->fatal)
		return qmp_fail(err, QMP_ERR_GENERIC, "the guest has stopped for good");

	pthread_mutex_lock(&mig->lock);
	free(mig->uri);
	mig->uri = strdup(json_string_value(json_object_get(args, "uri")));
	mig->role = mig->shown = ROLE_OUTGOING;
	mig->status = GW_MIG_SETUP;
	mig->error[0] = '\0';
	mig->cancel = false;
	mig->have_last = false;
	/* The previous migration's cancel is over: reset the counter. */
	uint64_t count;
	while (read(mig->cancel_efd, &count, sizeof(count)) > 0)
		;
	pthread_mutex_unlock(&mig->lock);
	if (!mig->uri || pthread_create(&mig->connect_thread, NULL, connect_thread, mig)) {
		mig->role = ROLE_NONE;
		return qmp_fail(err, QMP_ERR_GENERIC, "cannot start the migration thread");
	}
	mig->connect_thread_live = true;
	return 0;
}

static int cmd_migrate_cancel(struct vmm *vm, json_t *args, json_t **ret, struct qmp_error *err)
{
	struct vm_migration *mig = vm->mig;
	(void)ret;
	if (qmp_check_args(args, NULL, 0, err))
		return -1;
	pthread_mutex_lock(&mig->lock);
	/* Once the engine runs, the cancel is its to take or refuse (after
	 * GO); before, it ends the connect. */
	if (mig->role == ROLE_OUTGOING && mig->out) {
		gw_precopy_cancel(mig->out);
	} else if (mig->role == ROLE_OUTGOING) {
		mig->cancel = true;
		signal_cancel(mig);
	}
	pthread_mutex_unlock(&mig->lock);
	return 0;
}

/* ---- incoming ------------------------------------------------------- */

/* The engine takes the channel (and ends it, and its command). */
static int start_incoming(struct vm_migration *mig, struct gw_channel *ch, char *errmsg,
			  size_t errlen)
{
	struct gw_error err = {0};
	const struct gw_incoming_callbacks cb = {.status = cb_status, .opaque = mig};
	const struct gw_incoming_params params = {.go_timeout_ms = mig->go_timeout_ms};
	int ret = gw_incoming_start(mig->m, ch, &params, &cb, &mig->in, &err);
	if (ret) {
		snprintf(errmsg, errlen, "%s", err.msg);
		/* On the main loop: kill a command rather than wait for it. */
		gw_channel_abort(ch);
		gw_channel_end(ch, -1, 1000, NULL);
		return ret;
	}
	pthread_mutex_lock(&mig->lock);
	mig->status = GW_MIG_ACTIVE;
	pthread_mutex_unlock(&mig->lock);
	emit_status(mig, GW_MIG_ACTIVE);
	return 0;
}

static void on_incoming_connection(void *opaque, uint32_t events)
{
	struct vm_migration *mig = opaque;
	struct gw_error err = {0};
	struct gw_channel ch;
	(void)events;
	int ret = gw_listener_accept(mig->listener, &ch, &err);
	if (ret == -EAGAIN)
		return;
	loop_del_fd(mig->vm->loop, gw_listener_fd(mig->listener));
	gw_listener_free(mig->listener);
	mig->listener = NULL;
	char msg[GW_ERROR_MSG_MAX];
	if (ret)
		snprintf(msg, sizeof(msg), "%s", err.msg);
	if (ret || start_incoming(mig, &ch, msg, sizeof(msg))) {
		pthread_mutex_lock(&mig->lock);
		mig->status = GW_MIG_FAILED;
		snprintf(mig->error, sizeof(mig->error), "%s", msg);
		pthread_mutex_unlock(&mig->lock);
		fprintf(stderr, "godwit-vmm: incoming migration: %s\n", msg);
		emit_status(mig, GW_MIG_FAILED);
	}
}

int migration_listen(struct vmm *vm, const char *uri, char *errmsg, size_t errlen)
{
	struct vm_migration *mig = vm->mig;
	struct gw_error err = {0};
	int ret = gw_channel_listen(uri, &mig->listener, &err);
	if (ret) {
		/* Precisions bound the output so a long URI cannot push the
		 * library's reason out of the message. */
		snprintf(errmsg, errlen, "--incoming %.160s: %.300s", uri, err.msg);
		return ret;
	}
	mig->role = mig->shown = ROLE_INCOMING;
	mig->status = GW_MIG_SETUP;
	vmm_set_incoming(vm, true);
	int fd = gw_listener_fd(mig->listener);
	if (fd >= 0)
		return loop_add_fd(vm->loop, fd, EPOLLIN, on_incoming_connection, mig);
	on_incoming_connection(mig, 0);
	return 0;
}

static int cmd_migrate_incoming(struct vmm *vm, json_t *args, json_t **ret, struct qmp_error *err)
{
	static const struct qmp_arg spec[] = {{"uri", QMP_ARG_STR, true}};
	struct vm_migration *mig = vm->mig;
	(void)ret;
	if (qmp_check_args(args, spec, ARRAY_SIZE(spec), err))
		return -1;
	if (vmm_runstate(vm) != VMM_INMIGRATE)
		return qmp_fail(err, QMP_ERR_GENERIC,
				"'-incoming' was not specified on the command line");
	if (mig->listener || mig->in || mig->status != GW_MIG_NONE)
		return qmp_fail(err, QMP_ERR_GENERIC,
				"The incoming migration has already been started");
	char msg[GW_ERROR_MSG_MAX];
	if (migration_listen(vm, json_string_value(json_object_get(args, "uri")), msg,
			     sizeof(msg)))
		return qmp_fail(err, QMP_ERR_GENERIC, "%s", msg);
	return 0;
}

/* ---- query-migrate and parameters ------------------------------------ */

static json_t *ram_stats(const struct gw_precopy_stats *st)
{
	return json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:f,s:I,s:I}",
			 "transferred", (json_int_t)st->transferred,
			 "remaining", (json_int_t)st->remaining,
			 "total", (json_int_t)st->total,
			 "duplicate", (json_int_t)st->duplicate,
			 "normal", (json_int_t)st->normal,
			 "normal-bytes", (json_int_t)st->normal_bytes,
			 "dirty-pages-rate", (json_int_t)st->dirty_pages_rate,
			 "mbps", st->mbps,
			 "dirty-sync-count", (json_int_t)st->dirty_sync_count,
			 "page-size", (json_int_t)st->page_size);
}

static json_t *outgoing_info(struct vm_migration *mig)
{
	struct gw_precopy_stats st;
	bool have = true;
	if (mig->out)
		gw_precopy_stats(mig->out, &st);
	else if (mig->have_last)
		st = mig->last;
	else
		have = false;
	json_t *r = json_pack("{s:s}", "status", gw_mig_status_name(mig->status));
	if (!have) {
		if (mig->status == GW_MIG_FAILED)
			json_object_set_new(r, "error-desc", json_string(mig->error));
		return r;
	}
	json_object_set_new(r, "total-time", json_integer((json_int_t)st.total_time_ms));
	json_object_set_new(r, "setup-time", json_integer((json_int_t)st.setup_time_ms));
	if (mig->status == GW_MIG_COMPLETED)
		json_object_set_new(r, "downtime", json_integer((json_int_t)st.downtime_ms));
	else
		json_object_set_new(r, "expected-downtime",
				    json_integer((json_int_t)st.expected_downtime_ms));
	json_object_set_new(r, "ram", ram_stats(&st));
	if (mig->cap_auto_converge)
		json_object_set_new(r, "cpu-throttle-percentage",
				    json_integer(st.throttle_percent));
	if (st.blocked[0] && !gw_mig_status_is_final(mig->status))
		json_object_set_new(r, "x-godwit-blocked", json_string(st.blocked));
	if (st.handshake_us)
		json_object_set_new(r, "x-godwit-handshake-us",
				    json_integer((json_int_t)st.handshake_us));
	if (st.unconfirmed)
		json_object_set_new(r, "x-godwit-unconfirmed", json_true());
	if (mig->status == GW_MIG_FAILED)
		json_object_set_new(r, "error-desc", json_string(mig->error));
	return r;
}

static json_t *incoming_info(struct vm_migration *mig)
{
	struct gw_incoming_stats st = mig->in_last;
	if (mig->in)
		gw_incoming_stats(mig->in, &st);
	json_t *r = json_pack("{s:s,s:I,s:I}", "status", gw_mig_status_name(mig->status),
			      "total-time", (json_int_t)st.total_time_ms,
			      "x-godwit-received", (json_int_t)st.received);
	if (mig->status == GW_MIG_FAILED)
		json_object_set_new(r, "error-desc", json_string(mig->error));
	if (mig->dest_hash[0])
		json_object_set_new(r, "x-godwit-ram-hash", json_string(mig->dest_hash));
	if (st.go_wait_us)
		json_object_set_new(r, "x-godwit-go-wait-us", json_integer((json_int_t)st.go_wait_us));
	if (mig->listener)
		json_object_set_new(r, "x-godwit-listening",
				    json_string(gw_listener_address(mig->listener)));
	return r;
}

static int cmd_query_migrate(struct vmm *vm, json_t *args, json_t **ret, struct qmp_error *err)
{
	struct vm_migration *mig = vm->mig;
	if (qmp_check_args(args, NULL, 0, err))
		return -1;
	pthread_mutex_lock(&mig->lock);
	json_t *r;
	if (mig->shown == ROLE_NONE)
		r = json_object(); /* QEMU: nothing before the first migration */
	else if (mig->shown == ROLE_INCOMING)
		r = incoming_info(mig);
	else
		r = outgoing_info(mig);
	pthread_mutex_unlock(&mig->lock);
	return qmp_return(r, ret, err);
}

static int cmd_set_parameters(struct vmm *vm, json_t *args, json_t **ret, struct qmp_error *err)
{
	static const struct qmp_arg spec[] = {
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
	};
	struct vm_migration *mig = vm->mig;
	(void)ret;
	if (qmp_check_args(args, spec, ARRAY_SIZE(spec), err))
		return -1;
	struct gw_precopy_params p = mig->params;
	uint64_t go_timeout = mig->go_timeout_ms;
	json_t *v;
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
	pthread_mutex_lock(&mig->lock);
	mig->params = p;
	mig->go_timeout_ms = go_timeout;
	if (mig->out) {
		p.auto_converge = mig->cap_auto_converge;
		gw_precopy_set_params(mig->out, &p, NULL); /* p came from the defaults: no reserved word */
	}
	pthread_mutex_unlock(&mig->lock);
	return 0;
}

static int cmd_query_parameters(struct vmm *vm, json_t *args, json_t **ret, struct qmp_error *err)
{
	struct vm_migration *mig = vm->mig;
	if (qmp_check_args(args, NULL, 0, err))
		return -1;
	const struct gw_precopy_params *p = &mig->params;
	return qmp_return(json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}",
				    "downtime-limit", (json_int_t)p->downtime_limit_ms,
				    "max-bandwidth", (json_int_t)p->max_bandwidth,
				    "cpu-throttle-initial", (json_int_t)p->throttle_initial,
				    "cpu-throttle-increment", (json_int_t)p->throttle_increment,
				    "max-cpu-throttle", (json_int_t)p->throttle_max,
				    "x-godwit-switchover-timeout", (json_int_t)p->switchover_timeout_ms,
				    "x-godwit-ready-timeout", (json_int_t)p->ready_timeout_ms,
				    "x-godwit-confirm-timeout", (json_int_t)p->confirm_timeout_ms,
				    "x-godwit-go-timeout", (json_int_t)mig->go_timeout_ms,
				    "x-godwit-exec-grace", (json_int_t)p->exec_grace_ms),
			  ret, err);
}

struct capability {
	const char *name;
	size_t offset; /* of the bool in struct vm_migration */
};

static const struct capability capabilities[] = {
	{"events", offsetof(struct vm_migration, cap_events)},
	{"auto-converge", offsetof(struct vm_migration, cap_auto_converge)},
	/* destination: hash guest RAM as loaded, before the guest runs, and
	 * report it in query-migrate (for tests; costs downtime) */
	{"x-godwit-verify-hash", offsetof(struct vm_migration, cap_verify_hash)},
};

static bool *cap_field(struct vm_migration *mig, const struct capability *c)
{
	return (bool *)((char *)mig + c->offset);
}

static int cmd_set_capabilities(struct vmm *vm, json_t *args, json_t **ret, struct qmp_error *err)
{
	static const struct qmp_arg spec[] = {{"capabilities", QMP_ARG_ARRAY, true}};
	struct vm_migration *mig = vm->mig;
	(void)ret;
	if (qmp_check_args(args, spec, ARRAY_SIZE(spec), err))
		return -1;
	if (busy(mig) && mig->role == ROLE_OUTGOING)
		return qmp_fail(err, QMP_ERR_GENERIC, "There's a migration process in progress");
	json_t *list = json_object_get(args, "capabilities"), *item;
	size_t i;
	bool want[ARRAY_SIZE(capabilities)];
	for (size_t c = 0; c < ARRAY_SIZE(capabilities); c++)
		want[c] = *cap_field(mig, &capabilities[c]);
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
		want[c] = json_is_true(json_object_get(item, "state"));
	}
	for (size_t c = 0; c < ARRAY_SIZE(capabilities); c++)
		*cap_field(mig, &capabilities[c]) = want[c];
	return 0;
}

static int cmd_query_capabilities(struct vmm *vm, json_t *args, json_t **ret,
				  struct qmp_error *err)
{
	struct vm_migration *mig = vm->mig;
	if (qmp_check_args(args, NULL, 0, err))
		return -1;
	json_t *list = json_array();
	for (size_t c = 0; c < ARRAY_SIZE(capabilities); c++)
		json_array_append_new(list, json_pack("{s:s,s:b}", "capability",
						      capabilities[c].name, "state",
						      *cap_field(mig, &capabilities[c])));
	return qmp_return(list, ret, err);
}

static const struct qmp_command migration_commands[] = {
	{"migrate", cmd_migrate},
	{"migrate-cancel", cmd_migrate_cancel},
	/* QEMU spells it with an underscore; libvirt sends that. */
	{"migrate_cancel", cmd_migrate_cancel},
	{"migrate-incoming", cmd_migrate_incoming},
	{"query-migrate", cmd_query_migrate},
	{"migrate-set-parameters", cmd_set_parameters},
	{"query-migrate-parameters", cmd_query_parameters},
	{"migrate-set-capabilities", cmd_set_capabilities},
	{"query-migrate-capabilities", cmd_query_capabilities},
};

/* ---- set-up ----------------------------------------------------------- */

int migration_init(struct vmm *vm, char *errmsg, size_t errlen)
{
	struct vm_migration *mig = calloc(1, sizeof(*mig));
	if (!mig)
		return -ENOMEM;
	vm->mig = mig;
	mig->vm = vm;
	pthread_mutex_init(&mig->lock, NULL);
	mig->cancel_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (mig->cancel_efd < 0)
		return -errno;
	gw_precopy_params_default(&mig->params);
	mig->go_timeout_ms = GW_SWITCHOVER_TIMEOUT_DEFAULT_MS;

	int ret = dirty_kvm_init(&mig->dirty, &vm->kvm, &vm->ram);
	if (ret)
		return ret;

	struct gw_error err = {0};
	const struct gw_machine machine = {
		.vmm_name = "godwit-vmm", .vmm_version = GW_VERSION, .machine = "godwit-x86",
		.nr_vcpus = vm->vcpus.nr,
	};
	ret = gw_migration_new(&machine, &mig->m, &err);
	for (unsigned i = 0; !ret && i < vm->ram.nr_blocks; i++) {
		const struct ram_block *b = &vm->ram.blocks[i];
		const struct gw_ram r = {
			.name = b->name, .host = b->host, .size = b->size, .fd = b->memfd,
			.fd_offset = 0, .gpa = b->gpa,
		};
		ret = gw_migration_add_ram(mig->m, &r, &err);
	}
	if (!ret)
		ret = vmm_sections_register(vm, mig->m, &err);
	if (!ret)
		ret = gw_migration_set_vm_ops(mig->m, &vm_ops, mig, &err);
	if (!ret)
		ret = gw_migration_set_dirty_ops(mig->m, &dirty_kvm_ops, &mig->dirty, &err);
	if (!ret && vm->qmp)
		ret = qmp_register(vm->qmp, migration_commands, ARRAY_SIZE(migration_commands));
	if (ret)
		snprintf(errmsg, errlen, "setting up migration: %s",
			 err.msg[0] ? err.msg : strerror(-ret));
	return ret;
}

/* Every wait below ends promptly: the connect thread's on cancel_efd,
 * the engines' on their own cancel eventfds (an exec: command after
 * SIGTERM and SIGKILL within two exec graces). */
void migration_destroy(struct vmm *vm)
{
	struct vm_migration *mig = vm->mig;
	if (!mig)
		return;
	pthread_mutex_lock(&mig->lock);
	mig->destroying = true;
	mig->cancel = true;
	signal_cancel(mig);
	/* Even after GO: the VMM exits, so nobody waits for RUNNING. */
	if (mig->out)
		gw_precopy_abort(mig->out);
	if (mig->in)
		gw_incoming_cancel(mig->in);
	pthread_mutex_unlock(&mig->lock);
	if (mig->connect_thread_live)
		pthread_join(mig->connect_thread, NULL);
	if (mig->out)
		gw_precopy_free(mig->out);
	if (mig->in)
		gw_incoming_free(mig->in);
	if (mig->listener)
		gw_listener_free(mig->listener);
	gw_migration_free(mig->m);
	dirty_kvm_destroy(&mig->dirty);
	free(mig->uri);
	close(mig->cancel_efd);
	pthread_mutex_destroy(&mig->lock);
	free(mig);
	vm->mig = NULL;
}
