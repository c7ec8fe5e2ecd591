#include "vmm/machine.h"
#include "vmm/loop.h"
#include "vmm/qmp/qmp.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *vmm_runstate_name(enum vmm_runstate s)
{
	switch (s) {
	case VMM_RUNNING:
		return "running";
	case VMM_PAUSED:
		return "paused";
	case VMM_SHUTDOWN:
		return "shutdown";
	case VMM_INMIGRATE:
		return "inmigrate";
	case VMM_FINISH_MIGRATE:
		return "finish-migrate";
	case VMM_POSTMIGRATE:
		return "postmigrate";
	}
	return "unknown";
}

enum vmm_runstate vmm_runstate(struct vmm *vm)
{
	pthread_mutex_lock(&vm->run_lock);
	enum vmm_runstate s = VMM_RUNNING;
	if (vm->shut_down)
		s = VMM_SHUTDOWN;
	else if (vm->incoming)
		s = VMM_INMIGRATE;
	else if (vm->mig_paused)
		s = VMM_FINISH_MIGRATE;
	else if (vm->user_paused)
		s = vm->postmigrate ? VMM_POSTMIGRATE : VMM_PAUSED;
	pthread_mutex_unlock(&vm->run_lock);
	return s;
}

static void emit_main(void *opaque)
{
	struct vmm *vm = *(struct vmm **)opaque;
	const char *name = (const char *)opaque + sizeof(vm);
	if (vm->qmp)
		qmp_emit_event(vm->qmp, name, NULL);
	free(opaque);
}

/* Events go out from the main loop whichever thread changed the state,
 * in the order the changes happened (loop_call is FIFO). On the main
 * thread itself they go out at once, so that, as with QEMU, STOP reaches
 * a client before the reply to its "stop". */
static void emit_later(struct vmm *vm, const char *name)
{
	if (pthread_equal(pthread_self(), vm->main_thread)) {
		if (vm->qmp)
			qmp_emit_event(vm->qmp, name, NULL);
		return;
	}
	size_t len = strlen(name) + 1;
	char *msg = malloc(sizeof(vm) + len);
	if (!msg)
		return;
	memcpy(msg, &vm, sizeof(vm));
	memcpy(msg + sizeof(vm), name, len);
	if (loop_call(vm->loop, emit_main, msg) < 0)
		free(msg);
}

void vmm_devices_run(struct vmm *vm, bool run)
{
	for (unsigned i = 0; i < vm->nr_drives; i++) {
		if (run)
			virtio_blk_resume(&vm->drives[i]);
		else
			virtio_blk_hold(&vm->drives[i]);
	}
}

/* Make the vCPUs do what the flags say; run_lock held. */
static void apply_locked(struct vmm *vm)
{
	bool run = !vm->user_paused && !vm->mig_paused && !vm->incoming && !vm->fatal &&
		   !vm->shut_down;
	if (run && vm->vcpus_paused) {
		vmm_devices_run(vm, true);
		vcpus_resume(&vm->vcpus);
		vm->vcpus_paused = false;
		emit_later(vm, "RESUME");
	} else if (!run && !vm->vcpus_paused) {
		vcpus_pause(&vm->vcpus);
		vmm_devices_run(vm, false);
		vm->vcpus_paused = true;
		emit_later(vm, "STOP");
	}
}

int vmm_stop(struct vmm *vm)
{
	pthread_mutex_lock(&vm->run_lock);
	/* A guest the migration holds paused (finish-migrate) does not run,
	 * so there is nothing to stop, as QEMU has it: what travels is
	 * whether the guest ran when the migration paused it, and a
	 * migration that fails gives it back as it was then. */
	if (!vm->mig_paused)
		vm->user_paused = true;
	apply_locked(vm);
	pthread_mutex_unlock(&vm->run_lock);
	return 0;
}

int vmm_cont(struct vmm *vm)
{
	int ret = 0;
	pthread_mutex_lock(&vm->run_lock);
	if (vm->shut_down || vm->fatal)
		ret = -ESHUTDOWN;
	else if (vm->mig_paused || vm->incoming)
		ret = -EBUSY;
	else if (vm->ram_handed_over)
		ret = -EPERM;
	if (!ret) {
		vm->user_paused = false;
		vm->postmigrate = false;
		apply_locked(vm);
	}
	pthread_mutex_unlock(&vm->run_lock);
	return ret;
}

void vmm_set_ram_handed_over(struct vmm *vm)
{
	pthread_mutex_lock(&vm->run_lock);
	vm->ram_handed_over = true;
	pthread_mutex_unlock(&vm->run_lock);
}

void vmm_mig_pause(struct vmm *vm)
{
	pthread_mutex_lock(&vm->run_lock);
	vm->mig_paused = true;
	apply_locked(vm);
	pthread_mutex_unlock(&vm->run_lock);
}

void vmm_mig_resume(struct vmm *vm)
{
	pthread_mutex_lock(&vm->run_lock);
	vm->mig_paused = false;
	vm->incoming = false;
	apply_locked(vm);
	pthread_mutex_unlock(&vm->run_lock);
}

void vmm_mig_resume_paused(struct vmm *vm)
{
	pthread_mutex_lock(&vm->run_lock);
	vm->user_paused = true;
	vm->mig_paused = false;
	vm->incoming = false;
	apply_locked(vm);
	pthread_mutex_unlock(&vm->run_lock);
}

void vmm_set_incoming(struct vmm *vm, bool incoming)
{
	pthread_mutex_lock(&vm->run_lock);
	vm->incoming = incoming;
	apply_locked(vm);
	pthread_mutex_unlock(&vm->run_lock);
}

void vmm_set_postmigrate(struct vmm *vm)
{
	pthread_mutex_lock(&vm->run_lock);
	vm->user_paused = true;
	vm->postmigrate = true;
	vm->mig_paused = false;
	apply_locked(vm);
	pthread_mutex_unlock(&vm->run_lock);
}

void vmm_quit(struct vmm *vm, const char *reason)
{
	if (vm->quitting)
		return;
	vm->quitting = true;
	bool guest = !strncmp(reason, "guest-", 6);
	if (vm->qmp)
		qmp_emit_event(vm->qmp, "SHUTDOWN",
			       json_pack("{s:b, s:s}", "guest", guest, "reason", reason));
	loop_stop(vm->loop);
}

unsigned vmm_nr_vcpus(struct vmm *vm)
{
	return vm->vcpus.nr;
}

pid_t vmm_vcpu_tid(struct vmm *vm, unsigned index)
{
	return index < vm->vcpus.nr ? vm->vcpus.vcpus[index].tid : 0;
}

uint64_t vmm_ram_size(struct vmm *vm)
{
	pthread_mutex_lock(&vm->ram_lock);
	uint64_t size = vm->ram.size;
	pthread_mutex_unlock(&vm->ram_lock);
	return size;
}

int vmm_ram_read(struct vmm *vm, uint64_t gpa, void *buf, uint64_t len)
{
	pthread_mutex_lock(&vm->ram_lock);
	int ret = guest_ram_read(&vm->ram, gpa, buf, len);
	pthread_mutex_unlock(&vm->ram_lock);
	return ret;
}

int vmm_ram_hash(struct vmm *vm, char out[33])
{
	pthread_mutex_lock(&vm->ram_lock);
	int ret = guest_ram_hash(&vm->ram, out);
	pthread_mutex_unlock(&vm->ram_lock);
	return ret;
}

void vmm_guest_status(struct vmm *vm, struct vmm_guest_status *out)
{
	struct testdev_state s;
	testdev_snapshot(&vm->testdev, &s);
	memset(out, 0, sizeof(*out));
	out->ready = s.ready;
	out->check_failed = s.check_failed;
	out->check_ok = s.check_ok;
	out->first_bad_page = s.first_bad_page;
	out->exit_requested = s.exit_requested;
	out->exit_status = s.exit_status;
	out->nr_vcpus = vm->vcpus.nr;
	for (unsigned i = 0; i < vm->vcpus.nr && i < GW_MAX_VCPUS; i++) {
		out->passes[i] = s.passes[i];
		out->pages_per_pass[i] = s.pages_per_pass[i];
	}
}

struct loop *vmm_loop(struct vmm *vm)
{
	return vm->loop;
}

int vmm_exit_status(struct vmm *vm)
{
	struct testdev_state s;
	testdev_snapshot(&vm->testdev, &s);
	if (vm->fatal)
		return 3;
	if (s.check_failed)
		return s.exit_status ? s.exit_status : 1;
	return s.exit_requested ? s.exit_status : 0;
}

static void guest_exit_main(void *opaque)
{
	vmm_quit(opaque, "guest-shutdown");
}

void vmm_on_guest_exit(void *opaque, int status)
{
	struct vmm *vm = opaque;
	(void)status; /* recorded by the test device; read at exit */
	loop_call(vm->loop, guest_exit_main, vm);
}

static void vcpu_fatal_main(void *opaque)
{
	struct vmm *vm = opaque;
	pthread_mutex_lock(&vm->run_lock);
	vm->fatal = true;
	pthread_mutex_unlock(&vm->run_lock);
	vmm_quit(vm, "guest-panic");
}

void vmm_on_vcpu_fatal(void *opaque, unsigned index, const char *msg)
{
	struct vmm *vm = opaque;
	(void)index;
	fprintf(stderr, "godwit-vmm: %s\n", msg);
	loop_call(vm->loop, vcpu_fatal_main, vm);
}
