/*
 * The machine: everything one godwit-vmm process runs. main.c builds it
 * from the command line; machine.c implements vmm.h on top of it.
 */
#ifndef GW_VMM_MACHINE_H
#define GW_VMM_MACHINE_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "vmm/migration/cpu_sections.h"
#include "vmm/dev/dev_testdev.h"
#include "vmm/dev/dev_uart.h"
#include "vmm/dev/virtio_blk.h"
#include "vmm/kvm/guest_ram.h"
#include "vmm/dev/io_bus.h"
#include "vmm/kvm/kvm.h"
#include "vmm/kvm/vcpu.h"
#include "vmm/vmm.h"

/* The run-state section's State (run_state.c). */
struct run_state {
	uint8_t running; /* 0 or 1: the guest ran on the source */
};

struct vmm {
	struct loop *loop;
	struct kvm kvm;
	struct guest_ram ram;
	/* Held while a local live update swaps ram for the adopted one (the
	 * incoming thread), and by the main loop's readers of ram. */
	pthread_mutex_t ram_lock;
	struct io_bus pio, mmio;
	struct vcpu_set vcpus;
	struct uart uart;
	struct testdev testdev;
	struct virtio_blk drives[VIRTIO_BLK_MAX_DRIVES]; /* --drive, in order */
	unsigned nr_drives;
	struct cpu_sections cpu_state; /* vCPU and VM state as a migration moves it */
	struct qmp_server *qmp;
	struct vmm_objects *objects; /* object-add's (vmm/objects.h) */

	/*
	 * Who wants the vCPUs stopped. They run only when nobody does; the
	 * run state QMP reports is derived from these, so it cannot disagree
	 * with what the vCPUs do. Changed from the main thread (QMP) and from
	 * migration threads, hence the lock.
	 */
	pthread_mutex_t run_lock;
	/* stop, --paused, a source that sent its guest stopped, and after a
	 * completed outgoing migration; saved and loaded by run_state.c */
	bool user_paused;
	bool mig_paused;  /* the migration engine's switchover */
	bool incoming;    /* waiting for / loading an incoming stream */
	bool postmigrate; /* an outgoing migration completed */
	bool vcpus_paused;
	bool shut_down;
	struct run_state run_state; /* the section's copy of !user_paused */

	pthread_t main_thread; /* runs the loop; events are emitted from it */
	bool memory_given;     /* --memory was on the command line: a local live
				 update must bring that much */
	bool ram_handed_over;  /* a cpr-transfer completed: the RAM is the new
				 process's, this guest never runs again */
	/* --x-godwit-stop-at: for fault tests, the point of an incoming local
	 * live update where this process stops itself (SIGSTOP): "adopted",
	 * "loaded" or "go"; NULL for none. */
	const char *test_stop_at;
	/* --x-godwit-cpr-return-to: this process is a cpr-exec's stand-in; it
	 * gives the guest back there once it runs it (cpr_exec.h) */
	const char *cpr_return_to;
	bool quitting;
	bool fatal; /* a vCPU stopped for good */
	struct vm_migration *mig;
};

/* For the migration glue, from any thread: hold the guest for a
 * switchover, or enter the incoming state; and let go of it, whichever
 * the hold was (a source after a failure, a destination after it loaded),
 * after which it runs unless the user paused it (stop, --paused, or on a
 * source that sent it stopped). */
void vmm_mig_pause(struct vmm *vm);
void vmm_set_incoming(struct vmm *vm, bool incoming);
void vmm_mig_resume(struct vmm *vm);
/* Let go of an incoming guest that must not run by itself: it stays
 * paused as if by `stop`. */
void vmm_mig_resume_paused(struct vmm *vm);
/* An outgoing migration completed: stay paused, as "postmigrate". */
void vmm_set_postmigrate(struct vmm *vm);
/* A cpr-transfer completed: the guest may never run here again. */
void vmm_set_ram_handed_over(struct vmm *vm);

/* The devices that work for the guest by themselves (a disk's requests)
 * go on only while it runs, as its vCPUs do: a paused guest's queued
 * requests wait, and a migration's switchover finds none in flight. */
void vmm_devices_run(struct vmm *vm, bool run);

/* Exit status of the process: a failed self-check or a dead vCPU is a
 * failure whatever the guest asked for. */
int vmm_exit_status(struct vmm *vm);

/* The callbacks devices and vCPUs use to reach the main loop. */
void vmm_on_guest_exit(void *opaque, int status);
void vmm_on_vcpu_fatal(void *opaque, unsigned index, const char *msg);

#endif
