/*
 * godwit-vmm: the machine as seen by the control plane (QMP handlers,
 * main). Everything here runs on the main-loop thread unless it says
 * otherwise.
 */
#ifndef GW_VMM_H
#define GW_VMM_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

/* Elements in an array (not a pointer). */
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

struct vmm;
struct loop;

/* QEMU's RunState names, so QMP clients see what they expect. */
enum vmm_runstate {
	VMM_RUNNING,
	VMM_PAUSED,
	VMM_SHUTDOWN,
	VMM_INMIGRATE,      /* destination: waiting for or loading a stream */
	VMM_FINISH_MIGRATE, /* source: paused by the migration for switchover */
	VMM_POSTMIGRATE,    /* source: the guest now runs elsewhere */
};

const char *vmm_runstate_name(enum vmm_runstate s);
enum vmm_runstate vmm_runstate(struct vmm *vm);

/* Pause every vCPU (returns once all are out of KVM_RUN) and emit STOP.
 * Already paused: no-op. */
int vmm_stop(struct vmm *vm);
/* Resume every vCPU and emit RESUME. Already running: no-op. -EBUSY
 * while a migration holds the guest paused or it is half-loaded. */
int vmm_cont(struct vmm *vm);
/* Begin an orderly shutdown: emit SHUTDOWN with the given reason
 * ("host-qmp-quit", "host-signal", "guest-shutdown") and leave the main
 * loop. */
void vmm_quit(struct vmm *vm, const char *reason);

unsigned vmm_nr_vcpus(struct vmm *vm);
pid_t vmm_vcpu_tid(struct vmm *vm, unsigned index);

uint64_t vmm_ram_size(struct vmm *vm);
/* Copy guest-physical [gpa, gpa+len) into buf; -EFAULT if any part is not
 * guest RAM. */
int vmm_ram_read(struct vmm *vm, uint64_t gpa, void *buf, uint64_t len);
/* Hash of all guest RAM (XXH3-128, hex), holes hashed as zeros so an
 * unpopulated page equals a zero page. Meaningful while paused. */
int vmm_ram_hash(struct vmm *vm, char out[33]);

/* What the guest reported through the test device. */
struct vmm_guest_status {
	bool ready;
	bool check_failed;
	uint64_t check_ok;       /* number of CHECK_OK reports */
	uint32_t first_bad_page; /* arg of the first CHECK_FAIL */
	bool exit_requested;
	int exit_status;
	unsigned nr_vcpus;
	uint64_t passes[16]; /* last pass reported, per vCPU */
	uint64_t pages_per_pass[16];
};
void vmm_guest_status(struct vmm *vm, struct vmm_guest_status *out);

struct loop *vmm_loop(struct vmm *vm);

#endif
