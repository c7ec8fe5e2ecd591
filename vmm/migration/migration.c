#include "vmm/migration/migration.h"
#include "gw_version.h"
#include "vmm/kvm/dirty_kvm.h"
#include "vmm/loop.h"
#include "vmm/machine.h"
#include "vmm/migration/cpr_exec.h"
#include "vmm/migration/migratable.h"
#include "vmm/migration/mig_tls.h"
#include "vmm/qmp/qmp.h"
#include "vmm/vmm.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <godwit/channel.h>
#include <godwit/format.h>
#include <godwit/migration.h>
#include <godwit/io.h>
#include <godwit/precopy.h>
#include <godwit/stream.h>
#include <godwit/tracking.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

enum role { ROLE_NONE, ROLE_OUTGOING, ROLE_INCOMING };

struct vm_migration {
	struct vmm *vm;
	struct gw_migration *m;
	struct dirty_kvm dirty;

	/* Everything below is shared with migration threads. */
	pthread_mutex_t lock;
	struct gw_precopy_params params;
	uint64_t go_timeout_ms;      /* destination: READY until GO */
	uint64_t postcopy_bandwidth; /* destination: a lazy restore's background */
	bool lazy_copy;
	bool cap_lazy;     /* x-godwit-lazy-restore */
	bool cap_postcopy; /* postcopy-ram */
	bool in_lazy;      /* the latest incoming migration is a lazy restore */
	/* its faults by thread, kept once the engine is freed */
	struct gw_fault_thread_stats in_threads[GW_FAULT_THREADS_MAX];
	unsigned nr_in_threads;
	bool cap_events, cap_auto_converge, cap_verify_hash, cap_mapped_ram, cap_incremental;
	bool cap_background;         /* background-snapshot */
	bool cap_block;              /* block: copy the disks that are not shared */
	bool cap_multifd;            /* pages over more connections (tcp:, unix:) */
	bool cap_pause;              /* pause-before-switchover */
	struct mig_tls_settings tls; /* tls-creds, tls-hostname, tls-authz */
	bool shown_tls;              /* the latest migration runs over TLS */
	char **exec_cmd;             /* cpr-exec-command, NULL-terminated; or NULL */
	enum role role;              /* what runs now */
	enum role shown;             /* what query-migrate reports: the latest migration */
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
	int passed_fd;    /* an fd the URI names (fd:NUM), closed once connected; or -1 */
	bool update_path; /* incremental mapped-ram save into file:PATH: no truncation */
	bool out_multifd; /* the pages go over multifd channels */
	bool to_file;     /* the latest outgoing migration went into a regular file */
	pthread_t connect_thread;
	bool connect_thread_live;
	struct mig_tls out_tls; /* the connect thread's, until it is joined */
	/* migrate with resume=true: a thread connects (with out_tls) and
	 * hands the channel to the paused post-copy (resume_uri is its) */
	pthread_t resume_thread;
	bool resume_thread_live;
	bool resume_thread_done; /* atomic: it returned, a join is immediate */
	char *resume_uri;
	int resume_passed_fd;
	struct gw_precopy *out;
	struct gw_precopy_stats last; /* kept after the engine is freed */
	bool have_last;

	/* incoming; recover: the listener is migrate-recover's, and its
	 * connection resumes the paused post-copy */
	struct gw_listener *listener;
	bool recover;
	struct mig_tls in_tls;             /* the listener's, while it listens */
	struct mig_tls_acceptor *acceptor; /* its handshakes, with TLS */
	struct gw_incoming *in;
	struct gw_incoming_stats in_last;
	char dest_hash[33];
	/* outgoing background snapshot with x-godwit-verify-hash: RAM hashed
	 * while the engine holds the guest paused at the snapshot's instant */
	bool hash_at_pause;
	bool out_background; /* the latest outgoing migration is a background snapshot */
	uint64_t out_mode;   /* ... and its GW_MODE_* */
	char snapshot_hash[33];

	/* cpr-exec: the stand-in that holds the guest through the exec; and,
	 * in the stand-in, how often it tried to give the guest back */
	struct cpr_stand_in stand_in;
	unsigned returns;
	uint64_t cpr_first_pause_us; /* the image after the exec: its first pause */
};

static int start_outgoing(struct vm_migration *mig, const char *uri, int passed_fd, bool blk,
			  char *errmsg, size_t errlen);
static void stand_in_returned(struct vm_migration *mig, enum gw_mig_status s, bool unconfirmed);

/* ---- vm ops: pause/resume around the switchover ----------------------- */

/* --x-godwit-stop-at: a fault test stops the new process here, to kill it
 * or let it go on after a delay. */
static void test_stop(struct vm_migration *mig, const char *point)
{
	if (mig->vm->test_stop_at && !strcmp(mig->vm->test_stop_at, point))
		raise(SIGSTOP);
}

/* The sections read their state themselves, in their pre_save hooks,
 * once the engine saves them: pausing is only parking the vCPUs. */
static int op_pause(void *opaque, struct gw_error *err)
{
	struct vm_migration *mig = opaque;
	vmm_mig_pause(mig->vm);
	if (!mig->hash_at_pause)
		return 0;
	/* For tests: what a restore of this snapshot must load. */
	char hash[33];
	int ret = guest_ram_hash(&mig->vm->ram, hash);
	if (ret)
		return gw_error_set(err, ret, "hashing RAM at the snapshot's instant: %s",
				    strerror(-ret));
	pthread_mutex_lock(&mig->lock);
	memcpy(mig->snapshot_hash, hash, sizeof(hash));
	pthread_mutex_unlock(&mig->lock);
	return 0;
}

/* Destination, before READY: everything that can fail happens here, so
 * that after the source's GO only the vCPUs have to start. */
static int op_prepare(void *opaque, struct gw_error *err)
{
	struct vm_migration *mig = opaque;
	int ret = cpu_sections_apply(&mig->vm->cpu_state, err);
	if (!ret)
		test_stop(mig, "loaded");
	/* A lazy restore's RAM is not there yet, nor, perhaps, post-copy's:
	 * hash it once it is in (x-godwit-ram-hash after completion). */
	if (ret || !mig->cap_verify_hash || mig->cap_lazy || mig->cap_postcopy)
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
	if (mig->role == ROLE_INCOMING)
		test_stop(mig, "go");
	vmm_mig_resume(mig->vm);
	return 0;
}

/* Destination of a local live update, before the source pauses: the
 * source's memfds become this guest's RAM, and this VMM's own (never
 * used: it waited for a stream) go. */
static int op_adopt(void *opaque, struct gw_cpr_ram *ram, uint32_t n, struct gw_error *err)
{
	struct vm_migration *mig = opaque;
	struct vmm *vm = mig->vm;
	struct guest_ram_fd fds[GUEST_RAM_MAX_BLOCKS];
	uint64_t total = 0;
	if (n > GUEST_RAM_MAX_BLOCKS)
		return gw_error_set(err, -EINVAL,
				    "the source has %u RAM blocks, this machine at most %d", n,
				    GUEST_RAM_MAX_BLOCKS);
	for (uint32_t i = 0; i < n; i++) {
		fds[i] = (struct guest_ram_fd){ram[i].name,      ram[i].gpa, ram[i].size,
					       ram[i].fd_offset, ram[i].fd,  ram[i].live};
		total += ram[i].size;
	}
	if (vm->memory_given && total != vm->ram.size)
		return gw_error_set(err, -EINVAL,
				    "the source's guest has %llu MiB of RAM, this VMM was started with --memory %llu MiB",
				    (unsigned long long)(total >> 20),
				    (unsigned long long)(vm->ram.size >> 20));
	char msg[GW_ERROR_MSG_MAX];
	struct guest_ram next;
	int ret = guest_ram_adopt(&next, fds, n, msg, sizeof(msg));
	if (ret)
		return gw_error_set(err, ret, "%s", msg);
	struct dirty_kvm dirty;
	ret = dirty_kvm_init(&dirty, &vm->kvm, &next);
	if (!ret)
		ret = kvm_replace_ram(&vm->kvm, &vm->ram, &next, msg, sizeof(msg));
	else
		snprintf(msg, sizeof(msg), "out of memory");
	if (ret) {
		dirty_kvm_destroy(&dirty);
		for (unsigned i = 0; i < next.nr_blocks; i++)
			next.blocks[i].memfd = -1; /* the library's still */
		guest_ram_destroy(&next);
		return gw_error_set(err, ret, "%s", msg);
	}
	pthread_mutex_lock(&vm->ram_lock);
	struct guest_ram old = vm->ram;
	vm->ram = next;
	pthread_mutex_unlock(&vm->ram_lock);
	guest_ram_destroy(&old);
	dirty_kvm_destroy(&mig->dirty);
	mig->dirty = dirty;
	mig->dirty.ram = &vm->ram;
	for (uint32_t i = 0; i < n; i++)
		ram[i].host = vm->ram.blocks[i].host;
	test_stop(mig, "adopted");
	return 0;
}

static const struct gw_cpr_ops cpr_ops = {.adopt = op_adopt};

static const struct gw_vm_ops vm_ops = {
	.pause = op_pause,
	.resume = op_resume,
	.prepare = op_prepare,
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
static void join_resume_thread(struct vm_migration *mig);
static void signal_cancel(struct vm_migration *mig);

static void finish_outgoing(struct vm_migration *mig)
{
	if (mig->connect_thread_live) {
		pthread_join(mig->connect_thread, NULL);
		mig->connect_thread_live = false;
	}
	/* A resume still connecting goes too: the post-copy it was for is over. */
	if (mig->resume_thread_live && !__atomic_load_n(&mig->resume_thread_done, __ATOMIC_ACQUIRE))
		signal_cancel(mig);
	join_resume_thread(mig);
	mig_tls_release(&mig->out_tls);
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

	/* A local live update: the new process (for cpr-exec, the stand-in)
	 * runs the guest on these very pages; nothing here may touch them
	 * again, 'cont' included. */
	bool handed = s == GW_MIG_COMPLETED && mig->out_mode != GW_MODE_NORMAL;
	if (handed)
		vmm_set_ram_handed_over(mig->vm);
	/* cpr-exec: a stand-in that did not take the guest goes; one that may
	 * run it (unconfirmed) stays. One that runs it gives it back to the
	 * new binary, which replaces this process (here again only if it
	 * cannot, and then the stand-in runs on). */
	if (mig->out_mode == GW_MODE_CPR_EXEC && !handed && !unconfirmed)
		cpr_stand_in_end(&mig->stand_in);
	/* The first hop's errors name the new binary: it is its refusal. */
	if (mig->out_mode == GW_MODE_CPR_EXEC && s == GW_MIG_FAILED &&
	    strncmp(mig->error, "cpr-exec:", 9)) {
		char msg[GW_ERROR_MSG_MAX];
		snprintf(msg, sizeof(msg),
			 "cpr-exec: the new binary %.120s, as the stand-in: %.340s",
			 mig->exec_cmd[0], mig->error);
		pthread_mutex_lock(&mig->lock);
		snprintf(mig->error, sizeof(mig->error), "%s", msg);
		pthread_mutex_unlock(&mig->lock);
	}
	if (handed && mig->out_mode == GW_MODE_CPR_EXEC) {
		char msg[GW_ERROR_MSG_MAX];
		cpr_exec(mig->vm, mig->exec_cmd, mig->uri, &mig->stand_in, mig->last.downtime_us,
			 msg, sizeof(msg));
		pthread_mutex_lock(&mig->lock);
		s = mig->status = GW_MIG_FAILED;
		snprintf(mig->error, sizeof(mig->error), "%s", msg);
		pthread_mutex_unlock(&mig->lock);
	}
	/* Unconfirmed: the destination may run the guest, so it stays paused
	 * here, as after a completed migration; 'cont' is the operator's call.
	 * A background snapshot never gives the guest away. */
	if ((s == GW_MIG_COMPLETED && !mig->out_background) || unconfirmed || handed)
		vmm_set_postmigrate(mig->vm);
	else
		vmm_mig_resume(mig->vm);
	if (s == GW_MIG_FAILED)
		fprintf(stderr, "godwit-vmm: migration failed: %s\n", mig->error);
	if (mig->vm->cpr_return_to)
		stand_in_returned(mig, s, unconfirmed);
}

/* A cpr-exec's stand-in: the guest runs here; give it back to the new
 * image (the socket pair reaches it across its exec). */
static void stand_in_return(struct vm_migration *mig)
{
	char msg[GW_ERROR_MSG_MAX];
	pthread_mutex_lock(&mig->lock);
	mig->params.mode = GW_MODE_CPR_TRANSFER;
	pthread_mutex_unlock(&mig->lock);
	mig->returns++;
	if (start_outgoing(mig, mig->vm->cpr_return_to, -1, false, msg, sizeof(msg)))
		fprintf(stderr, "godwit-vmm: cpr-exec stand-in: cannot give the guest back: %s\n",
			msg);
}

/* Tries, each one a new hello: a new image that refuses the guest
 * executes the old binary, which then takes it. */
#define STAND_IN_RETURNS 3

/* A stand-in's return ended: done, or the guest runs on here. */
static void stand_in_returned(struct vm_migration *mig, enum gw_mig_status s, bool unconfirmed)
{
	if (s == GW_MIG_COMPLETED) {
		vmm_quit(mig->vm, "cpr-exec-returned");
		return;
	}
	if (!unconfirmed && mig->returns < STAND_IN_RETURNS) {
		stand_in_return(mig);
		return;
	}
	const char *dir = cpr_stand_in_dir();
	fprintf(stderr,
		"godwit-vmm: cpr-exec: the new image did not take the guest back; %s in this stand-in, pid %d, QMP at unix:%s/qmp.sock\n",
		unconfirmed ? "it may run there, or stays paused" : "it runs on", (int)getpid(),
		dir ? dir : "?");
}

static void close_listener(struct vm_migration *mig);
static void on_incoming_connection(void *opaque, uint32_t events);
static void on_tls_accepted(void *opaque, struct gw_channel *ch, int ret, const char *msg);

static void finish_incoming(struct vm_migration *mig)
{
	struct gw_incoming *in = mig->in;
	mig->in = NULL;
	mig->recover = false;
	close_listener(mig);
	mig_tls_release(&mig->in_tls);
	if (in) {
		struct gw_incoming_stats st;
		struct gw_fault_thread_stats threads[GW_FAULT_THREADS_MAX];
		gw_incoming_stats(in, &st);
		unsigned nr_threads = gw_incoming_fault_threads(in, threads, GW_FAULT_THREADS_MAX);
		gw_incoming_free(in);
		pthread_mutex_lock(&mig->lock);
		memcpy(mig->in_threads, threads, nr_threads * sizeof(threads[0]));
		mig->nr_in_threads = nr_threads;
		mig->in_last = st;
		mig->status = st.status;
		snprintf(mig->error, sizeof(mig->error), "%s", st.error);
		pthread_mutex_unlock(&mig->lock);
	}
	mig->role = ROLE_NONE;
	/* A snapshot of a guest that still runs at its source: loaded, and
	 * held paused here ('cont' runs this copy, the operator's call). */
	if (mig->status == GW_MIG_COMPLETED && mig->in_last.held)
		vmm_mig_resume_paused(mig->vm);
	/* A lazy restore that failed after its guest ran: the engine paused
	 * it, and it is back where a failed load leaves a guest (never to
	 * run: part of its memory is missing). */
	if (mig->status != GW_MIG_COMPLETED)
		vmm_set_incoming(mig->vm, true);
	if (mig->status != GW_MIG_COMPLETED)
		fprintf(stderr,
			"godwit-vmm: incoming migration failed, the guest stays stopped: %s\n",
			mig->error);
	/* The image after a cpr-exec that cannot take the guest leaves it to
	 * the old binary; one that runs it counts both pauses and lets go of
	 * the way back. */
	if (getenv(CPR_EXEC_ENV) && mig->status != GW_MIG_COMPLETED) {
		cpr_exec_fall_back(mig->vm, mig->error);
	} else if (getenv(CPR_EXEC_ENV)) {
		pthread_mutex_lock(&mig->lock);
		mig->cpr_first_pause_us = cpr_exec_first_pause_us();
		mig->in_last.downtime_us += mig->cpr_first_pause_us;
		pthread_mutex_unlock(&mig->lock);
		cpr_exec_done();
	}
	if (mig->status == GW_MIG_COMPLETED && mig->vm->cpr_return_to)
		stand_in_return(mig);
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

static void post_status(struct vm_migration *mig, enum gw_mig_status s, bool is_pass, uint64_t pass)
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
	struct vm_migration *mig = opaque;
	/* The disks' writes so far go to stable storage while the guest
	 * runs: the switchover's fdatasync then has only the last ones. */
	for (unsigned i = 0; i < mig->vm->nr_drives; i++)
		virtio_blk_flush_early(&mig->vm->drives[i]);
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
/*
 * An incremental mapped-ram save into file:PATH updates the file of the
 * last save in place: open it for reading and writing, without the
 * truncation of the file: transport (lib/ram/sink_file.c decides whether
 * it can update it; a new or other file gets a full save).
 */
static int open_for_update(struct vm_migration *mig, struct gw_channel *ch, struct gw_error *err)
{
	int fd = open(mig->uri + strlen("file:"), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0)
		return gw_error_set(err, -errno, "%s: cannot open for an incremental save: %s",
				    mig->uri, strerror(errno));
	char uri[32];
	snprintf(uri, sizeof(uri), "fd:%d", fd);
	int ret = gw_channel_connect(uri, ch, err);
	close(fd);
	return ret;
}

/* cpr-exec: the new binary, started as the stand-in, is the first hop's
 * destination. */
static int open_stand_in(struct vm_migration *mig, struct gw_channel *ch, struct gw_error *err)
{
	int fd;
	int ret = cpr_stand_in_start(&mig->stand_in, mig->exec_cmd, mig->uri, mig->cancel_efd,
				     mig->params.ready_timeout_ms, &fd, err->msg, sizeof(err->msg));
	if (ret)
		return ret;
	char uri[32];
	snprintf(uri, sizeof(uri), "fd:%d", fd);
	ret = gw_channel_connect(uri, ch, err);
	close(fd);
	if (ret)
		cpr_stand_in_end(&mig->stand_in);
	return ret;
}

/* A connection to the destination, through TLS when tls-creds is set. */
static int connect_one(struct vm_migration *mig, struct gw_channel *ch, struct gw_error *err)
{
	int ret = gw_channel_connect_cancellable(mig->uri, mig->cancel_efd, ch, err);
	if (!ret && (ret = mig_tls_client(&mig->out_tls, ch, mig->cancel_efd, err)) != 0) {
		gw_channel_abort(ch);
		gw_channel_close(ch, NULL);
	}
	return ret;
}

/* multifd: the channels, once the main stream is connected (the
 * destination takes the first connection for it). */
static int connect_channels(struct vm_migration *mig, struct gw_channel *ch, unsigned n,
			    struct gw_error *err)
{
	int ret = 0;
	unsigned i;
	for (i = 0; i < n && !ret; i++) {
		ret = connect_one(mig, &ch[i], err);
		if (ret && ret != -ECANCELED)
			gw_error_prefix(err, ret, "multifd channel %u: ", i);
	}
	for (unsigned k = 0; ret && k + 1 < i; k++)
		gw_channel_close(&ch[k], NULL);
	return ret;
}

static void *connect_thread(void *opaque)
{
	struct vm_migration *mig = opaque;
	struct gw_error err = {0};
	struct gw_channel chs[1 + GW_MULTIFD_MAX_CHANNELS];
	unsigned nr = 1;
	int ret = mig->update_path                  ? open_for_update(mig, &chs[0], &err) :
		  mig->out_mode == GW_MODE_CPR_EXEC ? open_stand_in(mig, &chs[0], &err) :
						      connect_one(mig, &chs[0], &err);
	if (!ret && mig->out_multifd) {
		ret = connect_channels(mig, chs + 1, mig->params.multifd_channels, &err);
		if (ret)
			gw_channel_close(&chs[0], NULL);
		else
			nr += mig->params.multifd_channels;
	}
	/* The channel holds its own dup of a passed fd now. */
	if (mig->passed_fd >= 0) {
		close(mig->passed_fd);
		mig->passed_fd = -1;
	}
	if (ret == -ECANCELED)
		return connect_failed(mig, GW_MIG_CANCELLED, "");
	if (ret)
		return connect_failed(mig, GW_MIG_FAILED, err.msg);
	pthread_mutex_lock(&mig->lock);
	struct gw_precopy_params p = mig->params;
	p.auto_converge = mig->cap_auto_converge;
	p.mapped_ram = mig->cap_mapped_ram;
	p.incremental = mig->cap_incremental;
	p.background_snapshot = mig->cap_background;
	p.pause_before_switchover = mig->cap_pause;
	p.postcopy = mig->cap_postcopy;
	/* cpr-exec is a cpr-transfer to the stand-in, then the exec. */
	if (p.mode == GW_MODE_CPR_EXEC)
		p.mode = GW_MODE_CPR_TRANSFER;
	/* What the guest was when it stopped: a background snapshot's instant,
	 * or a local live update's RAM as the new process must find it. */
	mig->hash_at_pause = (mig->cap_background || p.mode != GW_MODE_NORMAL) &&
			     mig->cap_verify_hash;
	mig->out_background = mig->cap_background;
	mig->snapshot_hash[0] = '\0';
	pthread_mutex_unlock(&mig->lock);

	const struct gw_precopy_callbacks cb = {
		.status = cb_status,
		.pass = cb_pass,
		.throttle = cb_throttle,
		.opaque = mig,
	};
	struct gw_precopy *out;
	struct stat st;
	bool to_file = fstat(chs[0].fd, &st) == 0 && S_ISREG(st.st_mode);
	ret = gw_precopy_start(mig->m, chs, nr, &p, &cb, &out, &err);
	if (ret) {
		for (unsigned i = 0; i < nr; i++) {
			gw_channel_abort(&chs[i]);
			gw_channel_close(&chs[i], NULL);
		}
		return connect_failed(mig, GW_MIG_FAILED, err.msg);
	}
	pthread_mutex_lock(&mig->lock);
	mig->out = out;
	mig->to_file = to_file;
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

/* What a local live update needs of the URI and the settings, said
 * before anything starts. */
static int check_mode(struct vm_migration *mig, const char *uri, char *errmsg, size_t errlen)
{
	uint64_t mode = mig->params.mode;
	if (mig->cap_pause && (mode != GW_MODE_NORMAL || mig->cap_background)) {
		snprintf(errmsg, errlen,
			 "pause-before-switchover applies to a pre-copy migration: turn it off for a background snapshot or a local live update");
		return -EINVAL;
	}
	if (mode == GW_MODE_NORMAL)
		return 0;
	if (mig->tls.creds[0]) {
		snprintf(errmsg, errlen,
			 "a local live update hands the guest's memory over a unix socket on this host: set tls-creds to \"\" for it");
		return -EINVAL;
	}
	if (mig->cap_background || mig->cap_mapped_ram) {
		snprintf(errmsg, errlen,
			 "a local live update (mode %s) hands RAM over: turn background-snapshot and mapped-ram off",
			 mode == GW_MODE_CPR_EXEC ? "cpr-exec" : "cpr-transfer");
		return -EINVAL;
	}
	if (mode == GW_MODE_CPR_TRANSFER && strncmp(uri, "unix:", 5) && strncmp(uri, "fd:", 3)) {
		snprintf(errmsg, errlen,
			 "mode cpr-transfer hands the memfds over a unix socket: use unix:PATH (the new process's --incoming), not '%.200s'",
			 uri);
		return -EINVAL;
	}
	if (mode != GW_MODE_CPR_EXEC)
		return 0;
	if (strncmp(uri, "file:", 5)) {
		snprintf(errmsg, errlen,
			 "mode cpr-exec saves the state into a file the new binary loads: use file:PATH, not '%.200s'",
			 uri);
		return -EINVAL;
	}
	if (!mig->exec_cmd || !mig->exec_cmd[0]) {
		snprintf(errmsg, errlen,
			 "mode cpr-exec needs cpr-exec-command (migrate-set-parameters): the new binary and its arguments");
		return -EINVAL;
	}
	bool told = false;
	for (char **a = mig->exec_cmd; *a && !told; a++)
		told = !strcmp(*a, uri) ||
		       (!strncmp(*a, "--incoming=", 11) && !strcmp(*a + 11, uri));
	if (!told) {
		snprintf(errmsg, errlen,
			 "cpr-exec-command must tell the new binary where the state is: add --incoming %.200s",
			 uri);
		return -EINVAL;
	}
	return 0;
}

/* multifd opens more connections to the same address: a socket address.
 * Into a mapped-ram file its channels are the file's writers instead. */
static int check_multifd(struct vm_migration *mig, const char *uri, char *errmsg, size_t errlen)
{
	if (!mig->cap_multifd || mig->cap_mapped_ram)
		return 0;
	if (mig->params.mode != GW_MODE_NORMAL || mig->cap_background) {
		snprintf(errmsg, errlen,
			 "multifd is for a live migration: turn it off for a local live update or a background snapshot");
		return -EINVAL;
	}
	if (strncmp(uri, "tcp:", 4) && strncmp(uri, "unix:", 5)) {
		snprintf(errmsg, errlen,
			 "multifd opens %u more connections to the destination: use tcp: or unix:, not '%.200s'",
			 (unsigned)mig->params.multifd_channels, uri);
		return -EINVAL;
	}
	return 0;
}

/*
 * What a disk allows (NULL: nothing against it). A snapshot (a file, a
 * background snapshot, a mapped-ram file) would be restored later beside
 * an image that has changed since; and an image only this host sees
 * cannot follow a guest to another host. A local live update keeps the
 * very image. uri NULL: whatever the URI (query-migrate's blocked-reasons).
 */
static const char *drive_blocker(struct vm_migration *mig, const struct virtio_blk *b,
				 const char *uri, bool block)
{
	if (mig->params.mode != GW_MODE_NORMAL)
		return NULL;
	/* A file is a snapshot; a command may be one (exec:cat > f) or carry
	 * the stream to a live destination (ssh), which only its user knows:
	 * it is not refused. */
	bool stream_snapshot = uri && !strncmp(uri, "file:", 5);
	if (mig->cap_background || mig->cap_mapped_ram)
		return "a background snapshot or a mapped-ram file cannot hold the disk yet";
	if (stream_snapshot && (!block || b->opt.shared))
		return "a snapshot holds the disk only with block migration on (capability block, or migrate's blk) and the drive shared=off; without it a restore would pair this RAM with the image as it is by then";
	if (!b->opt.shared && !block)
		return "shared=off: its contents reach another host only with block migration (capability block, or migrate's blk); or use an image both hosts see (shared=on)";
	return NULL;
}

static int check_drives(struct vm_migration *mig, const char *uri, bool block, char *errmsg,
			size_t errlen)
{
	struct vmm *vm = mig->vm;
	for (unsigned i = 0; i < vm->nr_drives; i++) {
		const struct virtio_blk *b = &vm->drives[i];
		const char *why = drive_blocker(mig, b, uri, block);
		if (why) {
			snprintf(errmsg, errlen, "%s (%.200s): %s", b->t.name, b->opt.path, why);
			return -EOPNOTSUPP;
		}
	}
	return 0;
}

int migration_start(struct vmm *vm, const char *uri, int passed_fd, bool blk, char *errmsg,
		    size_t errlen)
{
	struct vm_migration *mig = vm->mig;
	int ret = start_outgoing(mig, uri, passed_fd, blk, errmsg, errlen);
	if (ret && passed_fd >= 0)
		close(passed_fd);
	return ret;
}

static int start_outgoing(struct vm_migration *mig, const char *uri, int passed_fd, bool blk,
			  char *errmsg, size_t errlen)
{
	struct vmm *vm = mig->vm;
	enum vmm_runstate rs = vmm_runstate(vm);
	if (busy(mig) || rs == VMM_INMIGRATE) {
		snprintf(errmsg, errlen, "There's a migration process in progress");
		return -EBUSY;
	}
	/* Saved into a file, the guest is still only here: it may be saved
	 * again as it stands (an incremental save of a paused guest). */
	pthread_mutex_lock(&mig->lock);
	bool saved_to_file = mig->to_file && mig->status == GW_MIG_COMPLETED;
	pthread_mutex_unlock(&mig->lock);
	if (rs == VMM_POSTMIGRATE && !saved_to_file) {
		snprintf(errmsg, errlen,
			 "the guest already migrated away; 'cont' it first to migrate it again");
		return -EINVAL;
	}
	if (rs == VMM_SHUTDOWN || vm->fatal) {
		snprintf(errmsg, errlen, "the guest has stopped for good");
		return -EINVAL;
	}
	if (vm->ram_handed_over) {
		snprintf(errmsg, errlen,
			 "the guest's RAM was handed over to the new process by a local live update");
		return -EINVAL;
	}
	bool block = (blk || mig->cap_block) && mig->params.mode == GW_MODE_NORMAL;
	int ret = check_mode(mig, uri, errmsg, errlen);
	if (!ret)
		ret = check_multifd(mig, uri, errmsg, errlen);
	if (!ret)
		ret = check_drives(mig, uri, block, errmsg, errlen);
	if (!ret)
		ret = mig_tls_resolve(mig->vm, &mig->tls, uri, false, &mig->out_tls, errmsg,
				      errlen);
	if (ret)
		return ret;
	for (unsigned i = 0; i < vm->nr_drives; i++)
		virtio_blk_copy(&vm->drives[i], block, mig->params.mode != GW_MODE_NORMAL);

	pthread_mutex_lock(&mig->lock);
	free(mig->uri);
	mig->uri = strdup(uri);
	mig->role = mig->shown = ROLE_OUTGOING;
	mig->status = GW_MIG_SETUP;
	mig->error[0] = '\0';
	mig->cancel = false;
	mig->have_last = false;
	mig->passed_fd = passed_fd;
	mig->update_path = mig->cap_incremental && mig->cap_mapped_ram && !strncmp(uri, "file:", 5);
	/* Into a mapped-ram file, multifd-channels are its writers. */
	mig->out_multifd = mig->cap_multifd && !mig->cap_mapped_ram;
	mig->out_mode = mig->params.mode;
	mig->shown_tls = mig->out_tls.creds != NULL;
	/* The previous migration's cancel is over: reset the counter. */
	uint64_t count;
	while (read(mig->cancel_efd, &count, sizeof(count)) > 0)
		;
	pthread_mutex_unlock(&mig->lock);
	if (!mig->uri || pthread_create(&mig->connect_thread, NULL, connect_thread, mig)) {
		mig->role = ROLE_NONE;
		mig->passed_fd = -1; /* the caller closes it */
		mig_tls_release(&mig->out_tls);
		snprintf(errmsg, errlen, "cannot start the migration thread");
		return -ENOMEM;
	}
	mig->connect_thread_live = true;
	return 0;
}

void migration_cancel(struct vmm *vm)
{
	struct vm_migration *mig = vm->mig;
	pthread_mutex_lock(&mig->lock);
	/* Once the engine runs, the cancel is its to take or refuse (after
	 * GO); before, it ends the connect. */
	if (mig->role == ROLE_OUTGOING && mig->out) {
		gw_precopy_cancel(mig->out);
	} else if (mig->role == ROLE_OUTGOING) {
		mig->cancel = true;
		signal_cancel(mig);
	} else if (mig->role == ROLE_INCOMING && mig->in && mig->in_lazy) {
		/* A lazy restore can be stopped while its RAM arrives: its
		 * guest is then paused for good (docs/qmp.md, "Lazy restore").
		 * Other incoming migrations end by their source, as in QEMU. */
		gw_incoming_cancel(mig->in);
	}
	pthread_mutex_unlock(&mig->lock);
}

/* A call into the running outgoing engine, with its reason on failure. */
static int outgoing_call(struct vmm *vm, int (*fn)(struct gw_precopy *, struct gw_error *),
			 char *errmsg, size_t errlen)
{
	struct vm_migration *mig = vm->mig;
	struct gw_error err = {0};
	pthread_mutex_lock(&mig->lock);
	int ret = mig->role == ROLE_OUTGOING && mig->out ? fn(mig->out, &err) : -EINVAL;
	pthread_mutex_unlock(&mig->lock);
	if (ret)
		snprintf(errmsg, errlen, "%s",
			 err.msg[0] ? err.msg : "no outgoing migration is running");
	return ret;
}

int migration_start_postcopy(struct vmm *vm, char *errmsg, size_t errlen)
{
	return outgoing_call(vm, gw_precopy_start_postcopy, errmsg, errlen);
}

int migration_continue(struct vmm *vm, char *errmsg, size_t errlen)
{
	return outgoing_call(vm, gw_precopy_continue, errmsg, errlen);
}

/* Connect to migrate-recover's listener and hand the connection to the
 * paused post-copy; a failure leaves it paused, for another try. */
static void *resume_thread(void *opaque)
{
	struct vm_migration *mig = opaque;
	struct gw_error err = {0};
	struct gw_channel ch;
	int ret = gw_channel_connect_cancellable(mig->resume_uri, mig->cancel_efd, &ch, &err);
	/* The channel holds its own dup of a passed fd now. */
	if (mig->resume_passed_fd >= 0) {
		close(mig->resume_passed_fd);
		mig->resume_passed_fd = -1;
	}
	/* With the migration's TLS credentials, as its first connection. */
	if (!ret && (ret = mig_tls_client(&mig->out_tls, &ch, mig->cancel_efd, &err)) != 0) {
		gw_channel_abort(&ch);
		gw_channel_close(&ch, NULL);
		fprintf(stderr, "godwit-vmm: migrate resume to %s: %s\n", mig->resume_uri, err.msg);
		__atomic_store_n(&mig->resume_thread_done, true, __ATOMIC_RELEASE);
		return NULL;
	}
	if (!ret) {
		pthread_mutex_lock(&mig->lock);
		ret = mig->out ? gw_precopy_resume(mig->out, &ch, &err) : -EINVAL;
		pthread_mutex_unlock(&mig->lock);
		if (ret)
			gw_channel_close(&ch, NULL);
	}
	if (ret)
		fprintf(stderr, "godwit-vmm: migrate resume to %s: %s\n", mig->resume_uri,
			err.msg[0] ? err.msg : "the migration ended");
	__atomic_store_n(&mig->resume_thread_done, true, __ATOMIC_RELEASE);
	return NULL;
}

static void join_resume_thread(struct vm_migration *mig)
{
	if (!mig->resume_thread_live)
		return;
	pthread_join(mig->resume_thread, NULL);
	mig->resume_thread_live = false;
	free(mig->resume_uri);
	mig->resume_uri = NULL;
}

int migration_resume(struct vmm *vm, const char *uri, int passed_fd, char *errmsg, size_t errlen)
{
	struct vm_migration *mig = vm->mig;
	struct gw_precopy_stats st;
	pthread_mutex_lock(&mig->lock);
	bool paused = mig->role == ROLE_OUTGOING && mig->out;
	if (paused) {
		gw_precopy_stats(mig->out, &st);
		paused = st.status == GW_MIG_POSTCOPY_PAUSED;
	}
	pthread_mutex_unlock(&mig->lock);
	if (!paused) {
		if (passed_fd >= 0)
			close(passed_fd);
		snprintf(errmsg, errlen,
			 "resume=true continues a post-copy in postcopy-paused, and there is none");
		return -EINVAL;
	}
	/* One try at a time; the main loop never waits for one to connect. */
	if (mig->resume_thread_live &&
	    !__atomic_load_n(&mig->resume_thread_done, __ATOMIC_ACQUIRE)) {
		if (passed_fd >= 0)
			close(passed_fd);
		snprintf(errmsg, errlen,
			 "an earlier resume (to %.200s) is still connecting: try again once it has failed",
			 mig->resume_uri);
		return -EBUSY;
	}
	join_resume_thread(mig);
	mig->resume_thread_done = false;
	mig->resume_uri = strdup(uri);
	mig->resume_passed_fd = passed_fd;
	if (!mig->resume_uri || pthread_create(&mig->resume_thread, NULL, resume_thread, mig)) {
		free(mig->resume_uri);
		mig->resume_uri = NULL;
		if (passed_fd >= 0)
			close(passed_fd);
		mig->resume_passed_fd = -1;
		snprintf(errmsg, errlen, "cannot start the resume thread");
		return -ENOMEM;
	}
	mig->resume_thread_live = true;
	return 0;
}

int migration_recover(struct vmm *vm, const char *uri, char *errmsg, size_t errlen)
{
	struct vm_migration *mig = vm->mig;
	struct gw_incoming_stats st;
	struct gw_error err = {0};
	if (!mig->in || (gw_incoming_stats(mig->in, &st), st.status != GW_MIG_POSTCOPY_PAUSED)) {
		snprintf(errmsg, errlen,
			 "Migrate recover can only be run when postcopy is paused.");
		return -EINVAL;
	}
	/* The listener of the migration's start (or of an earlier try)
	 * makes way: the new one may be on the same address. */
	close_listener(mig);
	/* With the migration's TLS credentials, as its first connection. */
	int ret = mig->in_tls.creds ? mig_tls_acceptor_new(vm->loop, &mig->in_tls, on_tls_accepted,
							   mig, &mig->acceptor) :
				      0;
	if (ret) {
		snprintf(errmsg, errlen, "TLS: %s", strerror(-ret));
		return ret;
	}
	ret = gw_channel_listen(uri, &mig->listener, &err);
	if (ret) {
		close_listener(mig);
		snprintf(errmsg, errlen, "migrate-recover %.160s: %.300s", uri, err.msg);
		return ret;
	}
	mig->recover = true;
	int fd = gw_listener_fd(mig->listener);
	if (fd >= 0)
		return loop_add_fd(vm->loop, fd, EPOLLIN, on_incoming_connection, mig);
	on_incoming_connection(mig, 0);
	return 0;
}

/* ---- incoming ------------------------------------------------------- */

/* The engine takes the channel (and ends it, and its command). */
static int start_incoming(struct vm_migration *mig, struct gw_channel *ch, char *errmsg,
			  size_t errlen)
{
	struct gw_error err = {0};
	const struct gw_incoming_callbacks cb = {.status = cb_status, .opaque = mig};
	const struct gw_incoming_params params = {
		.go_timeout_ms = mig->go_timeout_ms,
		.direct_io = mig->params.direct_io,
		.multifd_channels = mig->params.multifd_channels,
		.multifd = mig->cap_multifd,
		.lazy_restore = mig->cap_lazy,
		.lazy_copy = mig->lazy_copy,
		.lazy_max_bandwidth = mig->postcopy_bandwidth,
		.postcopy = mig->cap_postcopy,
	};
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
	mig->in_lazy = params.lazy_restore;
	pthread_mutex_unlock(&mig->lock);
	emit_status(mig, GW_MIG_ACTIVE);
	return 0;
}

static void close_listener(struct vm_migration *mig)
{
	mig_tls_acceptor_free(mig->acceptor);
	mig->acceptor = NULL;
	if (!mig->listener)
		return;
	if (gw_listener_fd(mig->listener) >= 0)
		loop_del_fd(mig->vm->loop, gw_listener_fd(mig->listener));
	gw_listener_free(mig->listener);
	mig->listener = NULL;
}

/* multifd: a connection after the main stream's is one of its channels.
 * One that is not fails the migration in the engine, which says why. */
static void on_channel(struct vm_migration *mig, struct gw_channel *ch)
{
	struct gw_error err = {0};
	if (gw_incoming_add_channel(mig->in, ch, &err)) {
		fprintf(stderr, "godwit-vmm: incoming migration: %s (%s)\n", err.msg, ch->desc);
		gw_channel_abort(ch);
		gw_channel_close(ch, NULL);
	}
}

/* A connection, accepted (and through its TLS handshake), or the reason
 * there is none (ret < 0, msg). */
static void take_channel(struct vm_migration *mig, struct gw_channel *ch, int ret, const char *msg)
{
	if (mig->recover) {
		/* migrate-recover listens for one connection; the post-copy
		 * stays paused if it is not the one. */
		struct gw_error err = {0};
		mig->recover = false;
		close_listener(mig);
		if (ret) {
			fprintf(stderr, "godwit-vmm: migrate-recover: %s\n", msg);
			return;
		}
		ret = mig->in ? gw_incoming_recover(mig->in, ch, &err) :
				gw_error_set(&err, -EINVAL, "the incoming migration is over");
		if (ret) {
			fprintf(stderr, "godwit-vmm: migrate-recover: %s\n", err.msg);
			gw_channel_close(ch, NULL);
		}
		return;
	}
	if (!ret && mig->in) {
		on_channel(mig, ch);
		return;
	}
	/* A socket listener stays until the migration ends (finish_incoming()):
	 * multifd channels follow the main stream on it, and a source that
	 * sends with multifd to a destination without it gets that reason
	 * back, not a connection refused. */
	if (ret || !mig->listener || gw_listener_fd(mig->listener) < 0)
		close_listener(mig);
	char why[GW_ERROR_MSG_MAX];
	snprintf(why, sizeof(why), "%s", ret ? msg : "");
	if (ret || start_incoming(mig, ch, why, sizeof(why))) {
		close_listener(mig);
		pthread_mutex_lock(&mig->lock);
		mig->status = GW_MIG_FAILED;
		snprintf(mig->error, sizeof(mig->error), "%s", why);
		pthread_mutex_unlock(&mig->lock);
		fprintf(stderr, "godwit-vmm: incoming migration: %s\n", why);
		emit_status(mig, GW_MIG_FAILED);
	}
}

/* With TLS: a handshake is over. A refused first connection fails the
 * incoming migration, as a failed accept does (both sides then say why);
 * a refused later one is a multifd channel the engine goes without, and
 * its source fails on its own side of the same handshake. */
static void on_tls_accepted(void *opaque, struct gw_channel *ch, int ret, const char *msg)
{
	struct vm_migration *mig = opaque;
	if (!mig->in && mig->status != GW_MIG_SETUP) {
		if (!ret) {
			gw_channel_abort(ch);
			gw_channel_close(ch, NULL);
		}
		return;
	}
	if (ret && mig->in && !mig->recover) {
		fprintf(stderr, "godwit-vmm: incoming migration: %s\n", msg);
		return;
	}
	take_channel(mig, ch, ret, msg);
}

static void on_incoming_connection(void *opaque, uint32_t events)
{
	struct vm_migration *mig = opaque;
	struct gw_error err = {0};
	struct gw_channel ch = {.fd = -1};
	(void)events;
	int ret = gw_listener_accept(mig->listener, &ch, &err);
	if (ret == -EAGAIN)
		return;
	if (!ret && mig->acceptor)
		mig_tls_accept(mig->acceptor, &ch);
	else
		take_channel(mig, &ch, ret, err.msg);
}

int migration_listen(struct vmm *vm, const char *uri, char *errmsg, size_t errlen)
{
	struct vm_migration *mig = vm->mig;
	struct gw_error err = {0};
	mig->recover = false;
	mig_tls_release(&mig->in_tls);
	int ret = mig_tls_resolve(vm, &mig->tls, uri, true, &mig->in_tls, errmsg, errlen);
	if (ret)
		return ret;
	if (mig->in_tls.creds &&
	    (ret = mig_tls_acceptor_new(vm->loop, &mig->in_tls, on_tls_accepted, mig,
					&mig->acceptor)) != 0) {
		snprintf(errmsg, errlen, "TLS: %s", strerror(-ret));
		mig_tls_release(&mig->in_tls);
		return ret;
	}
	ret = gw_channel_listen(uri, &mig->listener, &err);
	if (ret) {
		mig_tls_acceptor_free(mig->acceptor);
		mig->acceptor = NULL;
		mig_tls_release(&mig->in_tls);
		/* Precisions bound the output so a long URI cannot push the
		 * library's reason out of the message. */
		snprintf(errmsg, errlen, "--incoming %.160s: %.300s", uri, err.msg);
		return ret;
	}
	mig->role = mig->shown = ROLE_INCOMING;
	mig->status = GW_MIG_SETUP;
	mig->shown_tls = mig->in_tls.creds != NULL;
	vmm_set_incoming(vm, true);
	int fd = gw_listener_fd(mig->listener);
	if (fd >= 0)
		return loop_add_fd(vm->loop, fd, EPOLLIN, on_incoming_connection, mig);
	on_incoming_connection(mig, 0);
	return 0;
}

static int start_incoming_uri(struct vmm *vm, const char *uri, char *errmsg, size_t errlen);

int migration_incoming(struct vmm *vm, const char *uri, int passed_fd, char *errmsg, size_t errlen)
{
	/* The listener takes its own dup of a passed fd, or fails. */
	int ret = start_incoming_uri(vm, uri, errmsg, errlen);
	if (passed_fd >= 0)
		close(passed_fd);
	return ret;
}

static int start_incoming_uri(struct vmm *vm, const char *uri, char *errmsg, size_t errlen)
{
	struct vm_migration *mig = vm->mig;
	if (vmm_runstate(vm) != VMM_INMIGRATE) {
		snprintf(errmsg, errlen, "'-incoming' was not specified on the command line");
		return -EINVAL;
	}
	pthread_mutex_lock(&mig->lock);
	bool started = mig->listener || mig->in || mig->status != GW_MIG_NONE;
	pthread_mutex_unlock(&mig->lock);
	if (started) {
		snprintf(errmsg, errlen, "The incoming migration has already been started");
		return -EBUSY;
	}
	return migration_listen(vm, uri, errmsg, errlen);
}

/* ---- what QMP reads and sets ------------------------------------------ */

static void add_blocker(struct migration_info *out, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void add_blocker(struct migration_info *out, const char *fmt, ...)
{
	if (out->nr_blocked >= MIGRATION_MAX_BLOCKERS)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(out->blocked[out->nr_blocked++], sizeof(out->blocked[0]), fmt, ap);
	va_end(ap);
}

/* What would refuse a `migrate` now, whatever its URI: the reasons
 * start_outgoing() gives that do not depend on the command's arguments
 * (a guest in the middle of a migration is busy, not blocked). */
static void migration_blockers(struct vmm *vm, struct migration_info *out)
{
	struct vm_migration *mig = vm->mig;
	if (vm->fatal)
		add_blocker(out, "the guest has stopped for good");
	if (vm->ram_handed_over)
		add_blocker(out,
			    "the guest's RAM was handed over to the new process by a local live update");
	for (unsigned i = 0; i < vm->nr_drives; i++) {
		const struct virtio_blk *b = &vm->drives[i];
		const char *why = drive_blocker(mig, b, NULL, mig->cap_block);
		if (why)
			add_blocker(out, "%s (%.200s): %s", b->t.name, b->opt.path, why);
	}
}

void migration_query(struct vmm *vm, struct migration_info *out)
{
	struct vm_migration *mig = vm->mig;
	memset(out, 0, sizeof(*out));
	pthread_mutex_lock(&mig->lock);
	out->kind = mig->shown == ROLE_INCOMING ? MIGRATION_INCOMING :
		    mig->shown == ROLE_OUTGOING ? MIGRATION_OUTGOING :
						  MIGRATION_NONE;
	out->status = mig->status;
	snprintf(out->error, sizeof(out->error), "%s", mig->error);
	out->auto_converge = mig->cap_auto_converge;
	out->tls = mig->shown_tls;
	out->background = mig->out_background;
	out->mode = mig->out_mode;
	if (mig->out) {
		gw_precopy_stats(mig->out, &out->out);
		out->have_stats = true;
	} else if (mig->have_last) {
		out->out = mig->last;
		out->have_stats = true;
	}
	out->in = mig->in_last;
	out->lazy = mig->in_lazy;
	/* The faults of a lazy restore or a post-copy, by vCPU: its threads
	 * are the vCPUs'. */
	struct gw_fault_thread_stats threads[GW_FAULT_THREADS_MAX];
	unsigned nr_threads = mig->nr_in_threads;
	if (mig->in)
		nr_threads = gw_incoming_fault_threads(mig->in, threads, GW_FAULT_THREADS_MAX);
	else
		memcpy(threads, mig->in_threads, nr_threads * sizeof(threads[0]));
	for (unsigned i = 0; (out->lazy || mig->cap_postcopy) && i < vm->vcpus.nr; i++) {
		out->fault_vcpus[i] = (struct gw_fault_thread_stats){.tid = vm->vcpus.vcpus[i].tid};
		for (unsigned t = 0; t < nr_threads; t++)
			if (threads[t].tid == vm->vcpus.vcpus[i].tid)
				out->fault_vcpus[i] = threads[t];
		out->nr_fault_vcpus = i + 1;
	}
	if (mig->in)
		gw_incoming_stats(mig->in, &out->in);
	memcpy(out->dest_hash, mig->dest_hash, sizeof(out->dest_hash));
	memcpy(out->snapshot_hash, mig->snapshot_hash, sizeof(out->snapshot_hash));
	out->cpr_first_pause_us = mig->cpr_first_pause_us;
	out->disk_sync_us = vm->nr_drives ? 0 : -1;
	for (unsigned i = 0; i < vm->ram.nr_blocks; i++)
		out->ram_total += vm->ram.blocks[i].size;
	/* The engine announces "active" from its own thread before the
	 * connect thread records it: in that instant nothing has moved yet,
	 * and a manager reading ram (libvirt, KubeVirt) still finds it. */
	if (out->kind == MIGRATION_OUTGOING && !out->have_stats && out->status == GW_MIG_ACTIVE) {
		out->out = (struct gw_precopy_stats){.total = out->ram_total,
						     .remaining = out->ram_total,
						     .page_size = GW_PAGE_SIZE};
		out->have_stats = true;
	}
	for (unsigned i = 0; i < vm->nr_drives; i++) {
		out->disk_sync_us += (int64_t)virtio_blk_last_sync_us(&vm->drives[i]);
		out->disk_total += virtio_blk_copy_bytes(&vm->drives[i]);
	}
	if (mig->listener)
		snprintf(out->listening, sizeof(out->listening), "%s",
			 gw_listener_address(mig->listener));
	pthread_mutex_unlock(&mig->lock);
	migration_blockers(vm, out);
}

void migration_get_settings(struct vmm *vm, struct migration_settings *out)
{
	struct vm_migration *mig = vm->mig;
	pthread_mutex_lock(&mig->lock);
	*out = (struct migration_settings){
		.precopy = mig->params,
		.go_timeout_ms = mig->go_timeout_ms,
		.events = mig->cap_events,
		.auto_converge = mig->cap_auto_converge,
		.verify_hash = mig->cap_verify_hash,
		.mapped_ram = mig->cap_mapped_ram,
		.incremental = mig->cap_incremental,
		.background_snapshot = mig->cap_background,
		.block = mig->cap_block,
		.multifd = mig->cap_multifd,
		.postcopy_bandwidth = mig->postcopy_bandwidth,
		.lazy_copy = mig->lazy_copy,
		.lazy_restore = mig->cap_lazy,
		.pause_before_switchover = mig->cap_pause,
		.postcopy = mig->cap_postcopy,
		.tls = mig->tls,
	};
	pthread_mutex_unlock(&mig->lock);
}

void migration_set_params(struct vmm *vm, const struct migration_settings *s)
{
	struct vm_migration *mig = vm->mig;
	const struct gw_precopy_params *p = &s->precopy;
	pthread_mutex_lock(&mig->lock);
	mig->params = *p;
	mig->go_timeout_ms = s->go_timeout_ms;
	mig->postcopy_bandwidth = s->postcopy_bandwidth;
	mig->lazy_copy = s->lazy_copy;
	/* A migration under way keeps what it resolved at its start. */
	mig->tls = s->tls;
	/* A lazy restore under way takes its new rate at once. */
	if (mig->in) {
		const struct gw_incoming_params in = {.lazy_max_bandwidth = s->postcopy_bandwidth};
		gw_incoming_set_params(mig->in, &in, NULL);
	}
	if (mig->out) {
		struct gw_precopy_params now = *p;
		now.auto_converge = mig->cap_auto_converge;
		now.mapped_ram = mig->cap_mapped_ram;
		now.incremental = mig->cap_incremental;
		now.background_snapshot = mig->cap_background;
		/* p came from the defaults: no reserved word, nothing to refuse */
		gw_precopy_set_params(mig->out, &now, NULL);
	}
	pthread_mutex_unlock(&mig->lock);
}

int migration_set_caps(struct vmm *vm, const struct migration_settings *want, char *errmsg,
		       size_t errlen)
{
	struct vm_migration *mig = vm->mig;
	if (busy(mig) && mig->role == ROLE_OUTGOING) {
		snprintf(errmsg, errlen, "There's a migration process in progress");
		return -EBUSY;
	}
	if (want->background_snapshot && want->incremental) {
		snprintf(errmsg, errlen,
			 "background-snapshot and x-godwit-incremental cannot both be on: an incremental save needs dirty tracking between saves, which a background snapshot does not run");
		return -EINVAL;
	}
	pthread_mutex_lock(&mig->lock);
	mig->cap_events = want->events;
	mig->cap_auto_converge = want->auto_converge;
	mig->cap_verify_hash = want->verify_hash;
	mig->cap_mapped_ram = want->mapped_ram;
	/* Turned off between saves: the tracking it kept on ends. */
	if (mig->cap_incremental && !want->incremental)
		gw_migration_end_tracking(mig->m);
	mig->cap_incremental = want->incremental;
	mig->cap_background = want->background_snapshot;
	mig->cap_block = want->block;
	mig->cap_multifd = want->multifd;
	mig->cap_lazy = want->lazy_restore;
	mig->cap_pause = want->pause_before_switchover;
	mig->cap_postcopy = want->postcopy;
	pthread_mutex_unlock(&mig->lock);
	return 0;
}

static void free_argv(char **argv)
{
	for (char **a = argv; a && *a; a++)
		free(*a);
	free(argv);
}

int migration_set_exec_command(struct vmm *vm, const char *const *argv, size_t n)
{
	struct vm_migration *mig = vm->mig;
	char **copy = calloc(n + 1, sizeof(*copy));
	for (size_t i = 0; copy && i < n; i++)
		if (!(copy[i] = strdup(argv[i]))) {
			free_argv(copy);
			copy = NULL;
		}
	if (!copy)
		return -ENOMEM;
	pthread_mutex_lock(&mig->lock);
	/* A running cpr-exec keeps the command it checked. */
	bool running = busy(mig) && mig->role == ROLE_OUTGOING && mig->out_mode == GW_MODE_CPR_EXEC;
	if (!running) {
		free_argv(mig->exec_cmd);
		mig->exec_cmd = n ? copy : NULL;
		if (!n)
			free_argv(copy);
	}
	pthread_mutex_unlock(&mig->lock);
	if (running)
		free_argv(copy);
	return running ? -EBUSY : 0;
}

size_t migration_get_exec_command(struct vmm *vm, char ***out)
{
	struct vm_migration *mig = vm->mig;
	size_t n = 0;
	pthread_mutex_lock(&mig->lock);
	while (mig->exec_cmd && mig->exec_cmd[n])
		n++;
	*out = calloc(n + 1, sizeof(**out));
	for (size_t i = 0; *out && i < n; i++)
		(*out)[i] = strdup(mig->exec_cmd[i]);
	pthread_mutex_unlock(&mig->lock);
	return *out ? n : 0;
}

void migration_free_exec_command(char **argv)
{
	free_argv(argv);
}

/* ---- set-up ----------------------------------------------------------- */

int migration_init(struct vmm *vm, char *errmsg, size_t errlen)
{
	struct vm_migration *mig = calloc(1, sizeof(*mig));
	if (!mig)
		return -ENOMEM;
	vm->mig = mig;
	mig->vm = vm;
	pthread_mutex_init(&mig->lock, NULL);
	mig->passed_fd = -1;
	mig->stand_in = (struct cpr_stand_in){.back = -1, .pid = -1, .pidfd = -1};
	mig->cancel_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (mig->cancel_efd < 0)
		return -errno;
	gw_precopy_params_default(&mig->params);
	mig->params.multifd_channels = 2; /* QEMU's default */
	mig->go_timeout_ms = GW_SWITCHOVER_TIMEOUT_DEFAULT_MS;

	int ret = dirty_kvm_init(&mig->dirty, &vm->kvm, &vm->ram);
	if (ret)
		return ret;

	struct gw_error err = {0};
	const struct gw_machine machine = {
		.vmm_name = "godwit-vmm",
		.vmm_version = GW_VERSION,
		.machine = "godwit-x86",
		.nr_vcpus = vm->vcpus.nr,
	};
	ret = gw_migration_new(&machine, &mig->m, &err);
	for (unsigned i = 0; !ret && i < vm->ram.nr_blocks; i++) {
		const struct ram_block *b = &vm->ram.blocks[i];
		const struct gw_ram r = {
			.name = b->name,
			.host = b->host,
			.size = b->size,
			.fd = b->memfd,
			.fd_offset = 0,
			.gpa = b->gpa,
		};
		ret = gw_migration_add_ram(mig->m, &r, &err);
	}
	if (!ret)
		ret = vmm_sections_register(vm, mig->m, &err);
	if (!ret)
		ret = gw_migration_set_vm_ops(mig->m, &vm_ops, mig, &err);
	if (!ret)
		ret = gw_migration_set_cpr_ops(mig->m, &cpr_ops, mig, &err);
	if (!ret)
		ret = gw_migration_set_dirty_ops(mig->m, &dirty_kvm_ops, &mig->dirty, &err);
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
	join_resume_thread(mig);
	if (mig->out)
		gw_precopy_free(mig->out);
	if (mig->in)
		gw_incoming_free(mig->in);
	mig_tls_acceptor_free(mig->acceptor);
	if (mig->listener)
		gw_listener_free(mig->listener);
	mig_tls_release(&mig->in_tls);
	mig_tls_release(&mig->out_tls);
	/* A stand-in that did not get the guest goes with this VMM. */
	if (mig->stand_in.pidfd >= 0 && !vm->ram_handed_over)
		cpr_stand_in_end(&mig->stand_in);
	gw_migration_free(mig->m);
	dirty_kvm_destroy(&mig->dirty);
	free(mig->uri);
	free_argv(mig->exec_cmd);
	close(mig->cancel_efd);
	pthread_mutex_destroy(&mig->lock);
	free(mig);
	vm->mig = NULL;
}
