#include "machine.h"
#include "loop.h"
#include "qmp.h"

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
	}
	return "unknown";
}

enum vmm_runstate vmm_runstate(struct vmm *vm)
{
	return vm->state;
}

static void emit(struct vmm *vm, const char *event, json_t *data)
{
	if (vm->qmp)
		qmp_emit_event(vm->qmp, event, data);
	else
		json_decref(data);
}

int vmm_stop(struct vmm *vm)
{
	if (vm->state != VMM_RUNNING)
		return 0;
	vcpus_pause(&vm->vcpus);
	vm->state = VMM_PAUSED;
	emit(vm, "STOP", NULL);
	return 0;
}

int vmm_cont(struct vmm *vm)
{
	if (vm->state == VMM_SHUTDOWN || vm->fatal)
		return -ESHUTDOWN;
	if (vm->state != VMM_PAUSED)
		return 0;
	vcpus_resume(&vm->vcpus);
	vm->state = VMM_RUNNING;
	emit(vm, "RESUME", NULL);
	return 0;
}

void vmm_quit(struct vmm *vm, const char *reason)
{
	if (vm->quitting)
		return;
	vm->quitting = true;
	bool guest = !strncmp(reason, "guest-", 6);
	emit(vm, "SHUTDOWN", json_pack("{s:b, s:s}", "guest", guest, "reason", reason));
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
	return vm->ram.size;
}

int vmm_ram_read(struct vmm *vm, uint64_t gpa, void *buf, uint64_t len)
{
	return guest_ram_read(&vm->ram, gpa, buf, len);
}

int vmm_ram_hash(struct vmm *vm, char out[33])
{
	return guest_ram_hash(&vm->ram, out);
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

struct qmp_server *vmm_qmp(struct vmm *vm)
{
	return vm->qmp;
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
	vm->fatal = true;
	vmm_quit(vm, "guest-panic");
}

void vmm_on_vcpu_fatal(void *opaque, unsigned index, const char *msg)
{
	struct vmm *vm = opaque;
	(void)index;
	fprintf(stderr, "godwit-vmm: %s\n", msg);
	loop_call(vm->loop, vcpu_fatal_main, vm);
}
