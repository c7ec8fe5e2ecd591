/*
 * Local live update, the outgoing engine (<godwit/precopy.h>, modes
 * cpr-transfer and cpr-exec; docs/format.md, "Local live update"). The
 * guest's RAM is not sent: it stays in its memfds, and the new process
 * maps the same pages. What crosses is the machine's description, which
 * fd is which block, and the device and vCPU state, a few kilobytes.
 *
 * cpr-transfer, over a unix socket to a new process that is already
 * running (it made its VM and vCPU threads while it waited):
 *   guest running:  hello (CONFIG, CPR table, the memfds attached)
 *                   <- ADOPTED: the machine fits, the memfds are mapped
 *                      as its guest memory and its page tables pre-faulted
 *                   stream header (COMMIT | CPR) and CONFIG
 *   guest paused:   device sections, VMDESC, EOF
 *                   <- READY, GO ->, <- RUNNING (the switchover handshake)
 * so the pause holds only the device state's save, send and load, the
 * same for 256 MiB as for 16 GiB. A destination that refuses the machine
 * (a section version out of its range, another vCPU count) refuses it in
 * its answer to the hello, before the pause.
 *
 * Who holds the guest is decided as in pre-copy (the GO rule), with one
 * thing a local peer allows: after GO without RUNNING, the source can see
 * whether the new process still exists (a pidfd from SO_PEERCRED). One
 * that has exited cannot run the guest, so the source takes it back
 * instead of leaving it paused and unconfirmed.
 *
 * cpr-exec, into a file, for this very process to exec a new binary:
 *   guest paused:   stream header (CPR), CONFIG, CPR record (each block's
 *                   memfd by fd number and inode, the pause's monotonic
 *                   time), device sections, VMDESC, EOF
 * and the engine completes with the guest still paused; the VMM clears
 * close-on-exec on the memfds and execs. The new binary loads the file,
 * adopts the memfds it inherited and reports the downtime from the
 * pause's time, which CLOCK_MONOTONIC keeps across the exec.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <godwit/precopy.h>
#include <godwit/stream.h>

#include "lib/clock.h"
#include "lib/engine/cpr_hello.h"
#include "lib/engine/outgoing.h"
#include "lib/format/cpr.h"
#include "lib/internal.h"
#include "lib/transport/fd_pass.h"

/* After GO without RUNNING: how long a peer that hung up may take to be
 * gone, before the source decides it may be running the guest. */
#define PEER_EXIT_WAIT_MS 2000

struct cpr {
	struct gw_precopy h; /* job, params, stats (outgoing.h) */
	struct gw_migration *m;
	struct gw_channel ch;
	struct gw_writer *w;
	struct gw_handover ho;
	bool exec;   /* cpr-exec, else cpr-transfer */
	bool paused; /* this engine paused the guest */
	uint64_t pause_ns;
	int peer_pidfd; /* cpr-transfer: the new process, or -1 */
};

static void publish(struct cpr *c)
{
	pthread_mutex_lock(&c->h.job.lock);
	c->h.stats.state_bytes = c->w ? gw_writer_sent(c->w) : 0;
	pthread_mutex_unlock(&c->h.job.lock);
}

static int pause_guest(struct cpr *c, struct gw_error *err)
{
	struct gw_precopy_params pp;
	int ret;

	gw_outgoing_params(&c->h, &pp);
	/* Set first: a pause that fails half-way is undone too. */
	c->paused = true;
	c->pause_ns = gw_now_ns();
	ret = c->m->vm_ops.pause(c->m->vm_opaque, err);
	if (ret < 0)
		return gw_error_prefix(err, ret, "cannot pause the guest: ");
	gw_job_set_status(&c->h.job, GW_MIG_DEVICE);
	gw_writer_set_deadline(c->w, c->pause_ns + pp.switchover_timeout_ms * 1000000);
	return 0;
}

static int device_state(struct cpr *c, struct gw_error *err)
{
	int ret = gw_save_devices(c->m, c->w, err);

	if (ret == 0)
		ret = gw_save_finish(c->m, c->w, err);
	publish(c);
	return ret;
}

static int transfer(struct cpr *c, struct gw_error *err)
{
	struct gw_precopy_params pp;
	int ret;

	gw_outgoing_params(&c->h, &pp);
	ret = gw_cpr_hello_send(c->m, &c->h.job.cancel, (int)pp.ready_timeout_ms, err);
	if (ret < 0)
		return ret;
	gw_job_set_status(&c->h.job, GW_MIG_ACTIVE);
	ret = gw_outgoing_expect(&c->h, &c->ho, pp.ready_timeout_ms, GW_REPORT_ADOPTED,
				 "the new process's ADOPTED (x-godwit-ready-timeout)", err);
	if (ret == 0 && gw_job_cancelled(&c->h.job))
		ret = gw_error_set(err, -ECANCELED, "cancelled");
	/* Everything that does not depend on the guest's state leaves first. */
	if (ret == 0)
		ret = gw_save_begin_flags(c->m, c->w, GW_HDRF_COMMIT | GW_HDRF_CPR, err);
	if (ret == 0)
		ret = gw_writer_flush(c->w, err);
	if (ret == 0)
		ret = pause_guest(c, err);
	/* The new process reports the downtime too: from this instant. */
	if (ret == 0) {
		unsigned char t[8];
		gw_le64(t, c->pause_ns);
		ret = gw_record_write(c->w, GW_REC_PAUSE, GW_RECF_SKIPPABLE, t, sizeof(t), err);
	}
	if (ret == 0)
		ret = device_state(c, err);
	if (ret == -ETIMEDOUT)
		gw_error_prefix(err, ret,
				"the device state was not written within x-godwit-switchover-timeout (%llu ms): ",
				(unsigned long long)pp.switchover_timeout_ms);
	if (ret == 0)
		ret = gw_outgoing_handshake(&c->h, &c->ho, &pp, err);
	if (ret == 0)
		gw_outgoing_downtime(&c->h, c->pause_ns, c->ho.resumed_ns);
	return ret;
}

static int exec_state(struct cpr *c, struct gw_error *err)
{
	struct gw_wbuf table;
	int ret;

	gw_job_set_status(&c->h.job, GW_MIG_ACTIVE);
	ret = pause_guest(c, err);
	gw_wbuf_init(&table, GW_CPR_MAX);
	if (ret == 0)
		ret = gw_cpr_table_put(c->m, c->pause_ns, true, &table, err);
	if (ret == 0)
		ret = gw_save_begin_cpr(c->m, c->w, GW_HDRF_CPR, table.data, table.len, err);
	gw_wbuf_release(&table);
	if (ret == 0)
		ret = device_state(c, err);
	return ret;
}

static int cpr_run(struct gw_job *j, struct gw_error *err)
{
	struct cpr *c = j->engine;
	int ret;

	gw_job_set_status(&c->h.job, GW_MIG_SETUP);
	ret = gw_writer_new(c->h.job.cancel.fd, &c->w, err);
	if (ret == 0) {
		gw_writer_bind(c->w, c->h.job.cancel.efd);
		ret = c->exec ? exec_state(c, err) : transfer(c, err);
	}
	return ret < 0 ? gw_error_prefix(err, ret, "%s: ", c->exec ? "cpr-exec" : "cpr-transfer") :
			 0;
}

/* GO left and RUNNING did not come: a new process that no longer exists
 * is not running the guest. */
static bool peer_gone(struct cpr *c)
{
	return c->peer_pidfd >= 0 && gw_pidfd_exited(c->peer_pidfd, PEER_EXIT_WAIT_MS);
}

static enum gw_mig_status cpr_conclude(struct gw_job *j, int ret, struct gw_error *err)
{
	struct cpr *c = j->engine;
	struct gw_migration *m = c->m;
	enum gw_mig_status outcome = GW_MIG_COMPLETED;
	struct gw_error e2 = {0};
	bool unconfirmed;
	int end;

	if (c->w)
		publish(c);
	gw_writer_free(c->w);
	c->w = NULL;
	if (ret < 0) {
		gw_error_prefix(err, ret, "%s: ", c->ch.desc);
		gw_cancel_shutdown(&j->cancel);
	}
	end = gw_outgoing_end_channel(&c->h, &c->ch, c->ho.handed_over, ret, err);
	ret = c->ho.confirmed ? 0 : end;
	unconfirmed = ret < 0 && c->ho.handed_over && !c->ho.dest_failed;
	if (unconfirmed && peer_gone(c)) {
		unconfirmed = false;
		gw_error_append(err, "the new process has exited without running the guest",
				"the source takes it back");
	}
	if (unconfirmed) {
		outcome = GW_MIG_FAILED;
		gw_error_append(err, "the source guest stays paused",
				"the new process got GO and may be running the guest; 'cont' resumes it here only if that process is known not to run it");
	} else if (ret < 0) {
		outcome = gw_job_cancelled(j) && !c->ho.handed_over ? GW_MIG_CANCELLED :
								      GW_MIG_FAILED;
		if (c->paused && m->vm_ops.resume(m->vm_opaque, &e2) < 0) {
			gw_error_append(err, "and the source guest cannot be resumed", e2.msg);
			outcome = GW_MIG_FAILED;
		}
	}
	pthread_mutex_lock(&j->lock);
	c->h.stats.unconfirmed = unconfirmed;
	pthread_mutex_unlock(&j->lock);
	return outcome;
}

static const struct gw_job_ops cpr_ops = {
	.run = cpr_run,
	.conclude = cpr_conclude,
};

static void cpr_release(struct gw_precopy *h)
{
	struct cpr *c = (struct cpr *)h;

	if (c->peer_pidfd >= 0)
		close(c->peer_pidfd);
	free(c);
}

int gw_cpr_start(struct gw_migration *m, struct gw_channel *ch,
		 const struct gw_precopy_params *params, const struct gw_precopy_callbacks *cb,
		 struct gw_precopy **out, struct gw_error *err)
{
	bool exec = params->mode == GW_MODE_CPR_EXEC;
	struct cpr *c;

	for (uint32_t i = 0; i < m->nr_ram; i++)
		if (m->ram[i].fd < 0)
			return gw_error_set(err, -EINVAL,
					    "local live update: RAM block '%s' has no memfd to hand over",
					    m->ram[i].name);
	if (!exec && !gw_fd_is_unix_socket(ch->fd))
		return gw_error_set(err, -EINVAL,
				    "cpr-transfer: %s is not a unix socket; the memfds can only travel over unix:PATH",
				    ch->desc);
	if (exec && ch->bidirectional)
		return gw_error_set(err, -EINVAL,
				    "cpr-exec: %s is a socket; the state of cpr-exec goes into a file (file:PATH) that the new binary loads",
				    ch->desc);
	c = calloc(1, sizeof(*c));
	if (!c)
		return gw_error_set(err, -ENOMEM, "local live update: out of memory");
	c->h.release = cpr_release;
	c->m = m;
	c->h.params = *params;
	c->ch = *ch;
	c->exec = exec;
	c->peer_pidfd = exec ? -1 : gw_peer_pidfd(ch->fd);
	if (c->peer_pidfd < 0)
		c->peer_pidfd = -1;
	return gw_outgoing_launch(&c->h, m, &cpr_ops, c, "gw-cpr", cb, ch, out,
				  "local live update: ", err);
}
