/*
 * godwit-vmm's destination without KVM, for the load fuzzer and the
 * replay of its corpus: guest RAM as the VMM lays it out (memfds,
 * vmm/kvm/guest_ram.c), the VMM's own sections (every file of
 * vmm_state_sources that declares VMM_SECTIONS) over its real UART and
 * test device on a port bus, registered with libgodwit through the same
 * vmm_sections_register() as migration_init() uses.
 *
 * After a load the devices are driven through the ports a guest uses, so
 * a state that got past the checks but should not have shows up as a
 * device misbehaving: under ASan/UBSan, as a crash. What the devices hold
 * after that must still save and load again: a check that refuses a
 * state the device itself reaches would fail real migrations.
 */
#ifndef GW_FUZZ_LOADVM_H
#define GW_FUZZ_LOADVM_H

#include <stddef.h>

#include <godwit/godwit.h>

#include "vmm/machine.h"

/* The machine the corpus streams were saved from:
 * godwit-vmm --memory 4M --vcpus 1. */
#define LOADVM_MEMORY (4ull << 20)
#define LOADVM_VCPUS 1

struct loadvm {
	struct gw_migration *m;
	/* Of the machine, what the sections reach: RAM, the port bus with the
	 * UART and the test device, the vCPU count, the run state and the
	 * cpu sections' buffers. No KVM, no vCPU threads, no main loop. */
	struct vmm machine;
};

void loadvm_init(struct loadvm *vm);
void loadvm_free(struct loadvm *vm);
/* Devices as at VMM start-up, RAM all holes. */
void loadvm_reset(struct loadvm *vm);
/* gw_load() of the len bytes at p, then, after a whole load, the cpu
 * sections applied as a destination's prepare applies them; fails the
 * test if a refusal has no message. */
int loadvm_load(struct loadvm *vm, const void *p, size_t len, struct gw_error *err);
/* Drive the devices through their ports as a guest would: after any
 * load, since a load that fails late leaves the sections before in place. */
void loadvm_drive(struct loadvm *vm);
/* After a load that succeeded: save every section and load that back; it
 * must pass the checks and arrive exactly as it left. */
void loadvm_round_trip(struct loadvm *vm);
/* Save every section of vm (no RAM) into fd, from where it stands; fd is
 * left positioned at 0 for a load. */
void loadvm_save(struct loadvm *vm, int fd);

#endif
