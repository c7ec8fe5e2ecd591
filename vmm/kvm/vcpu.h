/*
 * vCPU threads and the pause protocol.
 *
 * Pausing must be fast and race-free: the pauser sets immediate_exit in
 * each vCPU's kvm_run and kicks the thread with a signal, so a vCPU inside
 * KVM_RUN leaves at once and one about to enter returns immediately. A
 * vCPU parks only after a KVM_RUN that returned EINTR, which also means
 * any port/MMIO access it was completing has been finished by the kernel:
 * register state read while paused is consistent.
 */
#ifndef GW_VMM_VCPU_H
#define GW_VMM_VCPU_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "guests/abi.h"

struct kvm;
struct io_bus;
struct kvm_run;

struct vcpu {
	unsigned index;
	int fd;
	struct kvm_run *run;
	pthread_t thread;
	pid_t tid;
	bool dead; /* left its loop after a fatal exit; counts as parked */
	struct vcpu_set *set;
};

/* Called on a vCPU thread when a vCPU stops for good (triple fault, KVM
 * internal error). The message says what happened. */
typedef void (*vcpu_fatal_fn)(void *opaque, unsigned index, const char *msg);

struct vcpu_set {
	struct kvm *kvm;
	struct io_bus *pio, *mmio;
	vcpu_fatal_fn on_fatal;
	void *opaque;
	unsigned nr;
	struct vcpu vcpus[GW_MAX_VCPUS];
	bool started;
	unsigned nr_threads;

	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool pause_req; /* vCPUs must park */
	bool quit;      /* threads must exit */
	unsigned parked;
	unsigned tids_known;

	/* Auto-converge: every THROTTLE_PERIOD the throttle thread kicks
	 * each vCPU out of KVM_RUN and it sleeps for its share of the
	 * period, so the guest runs (100 - throttle_pct)% of the time. */
	unsigned throttle_pct;
	bool throttle_thread_live;
	pthread_t throttle_thread;
};

int vcpus_create(struct vcpu_set *set, struct kvm *kvm, unsigned nr, struct io_bus *pio,
		 struct io_bus *mmio, vcpu_fatal_fn on_fatal, void *opaque, char *errmsg,
		 size_t errlen);
/* Start the threads, parked if paused is true. */
int vcpus_start(struct vcpu_set *set, bool paused, char *errmsg, size_t errlen);
/* Returns when every vCPU is out of KVM_RUN and parked. */
void vcpus_pause(struct vcpu_set *set);
void vcpus_resume(struct vcpu_set *set);
/* Slow every vCPU down to (100 - percent)% of wall time; 0 = full speed.
 * Thread-safe. */
void vcpus_set_throttle(struct vcpu_set *set, unsigned percent);
/* Stop and join all threads, close the fds. */
void vcpus_destroy(struct vcpu_set *set);

#endif
