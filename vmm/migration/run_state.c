/*
 * The run-state section: whether the guest ran on the source before the
 * migration paused it, so that a guest paused by `stop` arrives paused
 * (QEMU's global state does the same). The run state is machine.c's,
 * derived from who holds the guest; the one part of it that travels is
 * the user's pause, read and set here under the same run_lock. A file of
 * its own, beside machine.c, because the load fuzzer links it without
 * the main loop and the vCPUs machine.c drives.
 */
#include "vmm/machine.h"
#include "vmm/migration/migratable.h"

static const struct gw_field run_state_fields[] = {
	GW_FIELD_RANGE(U8, struct run_state, running, 0, 1),
};
static const struct gw_vmstate run_state_vmstate = GW_VMSTATE(struct run_state, run_state_fields);

static int run_state_pre_save(void *opaque, struct gw_error *err)
{
	struct vmm *vm = container_of(opaque, struct vmm, run_state);
	(void)err;
	pthread_mutex_lock(&vm->run_lock);
	vm->run_state.running = !vm->user_paused;
	pthread_mutex_unlock(&vm->run_lock);
	return 0;
}

/* The user's pause arrives with the guest. Nothing runs because of it
 * yet: an incoming guest stays held whatever the user wants, until the
 * migration lets go of it (vmm_mig_resume()), which a failed load never
 * does. */
static int run_state_post_load(void *opaque, uint32_t version, struct gw_error *err)
{
	struct vmm *vm = container_of(opaque, struct vmm, run_state);
	(void)version, (void)err;
	pthread_mutex_lock(&vm->run_lock);
	if (!vm->run_state.running)
		vm->user_paused = true;
	pthread_mutex_unlock(&vm->run_lock);
	return 0;
}

static int run_state_sections_init(struct vmm *vm, struct gw_migration *m, struct gw_error *err)
{
	const struct gw_section run_state = {
		.name = "run-state",
		.version = 1,
		.min_version = 1,
		.vmstate = &run_state_vmstate,
		.pre_save = run_state_pre_save,
		.post_load = run_state_post_load,
		.opaque = &vm->run_state,
	};
	return gw_migration_add_section(m, &run_state, err);
}
VMM_SECTIONS(run_state_sections_init, VMM_SECTIONS_MACHINE);
