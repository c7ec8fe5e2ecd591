#include "vmm/kvm/vcpu.h"
#include "vmm/dev/io_bus.h"
#include "vmm/kvm/kvm.h"

#include <errno.h>
#include <linux/kvm.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define SIG_KICK SIGUSR1

static void kick_handler(int sig)
{
	(void)sig; /* its only job is to interrupt KVM_RUN */
}

/* Each vCPU reports its own index as its APIC id, so guests and MP state
 * see distinct CPUs. */
static int set_cpuid(struct vcpu *v, const struct kvm_cpuid2 *supported)
{
	size_t sz = sizeof(*supported) + supported->nent * sizeof(supported->entries[0]);
	struct kvm_cpuid2 *c = malloc(sz);
	if (!c)
		return -ENOMEM;
	memcpy(c, supported, sz);
	for (unsigned i = 0; i < c->nent; i++) {
		struct kvm_cpuid_entry2 *e = &c->entries[i];
		if (e->function == 1)
			e->ebx = (e->ebx & 0x00ffffffu) | (v->index << 24);
		if (e->function == 0xb || e->function == 0x1f)
			e->edx = v->index;
	}
	int ret = ioctl(v->fd, KVM_SET_CPUID2, c) < 0 ? -errno : 0;
	free(c);
	return ret;
}

int vcpus_create(struct vcpu_set *set, struct kvm *kvm, unsigned nr, struct io_bus *pio,
		 struct io_bus *mmio, vcpu_fatal_fn on_fatal, void *opaque, char *errmsg,
		 size_t errlen)
{
	memset(set, 0, sizeof(*set));
	if (nr < 1 || nr > GW_MAX_VCPUS) {
		snprintf(errmsg, errlen, "vCPU count %u: must be between 1 and %d", nr,
			 GW_MAX_VCPUS);
		return -EINVAL;
	}
	set->kvm = kvm;
	set->pio = pio;
	set->mmio = mmio;
	set->on_fatal = on_fatal;
	set->opaque = opaque;
	pthread_mutex_init(&set->lock, NULL);
	pthread_cond_init(&set->cond, NULL);
	for (unsigned i = 0; i < nr; i++) {
		struct vcpu *v = &set->vcpus[i];
		v->index = i;
		v->set = set;
		v->fd = ioctl(kvm->vm_fd, KVM_CREATE_VCPU, i);
		if (v->fd < 0) {
			snprintf(errmsg, errlen, "KVM_CREATE_VCPU %u: %s", i, strerror(errno));
			return -errno;
		}
		set->nr++;
		v->run = mmap(NULL, (size_t)kvm->run_size, PROT_READ | PROT_WRITE, MAP_SHARED,
			      v->fd, 0);
		if (v->run == MAP_FAILED) {
			v->run = NULL;
			snprintf(errmsg, errlen, "mapping kvm_run of vCPU %u: %s", i,
				 strerror(errno));
			return -errno;
		}
		int ret = set_cpuid(v, kvm->cpuid);
		if (ret) {
			snprintf(errmsg, errlen, "KVM_SET_CPUID2 on vCPU %u: %s", i,
				 strerror(-ret));
			return ret;
		}
	}
	return 0;
}

static void die(struct vcpu *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void die(struct vcpu *v, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	struct kvm_regs regs;
	if (ioctl(v->fd, KVM_GET_REGS, &regs) == 0) {
		size_t n = strlen(msg);
		snprintf(msg + n, sizeof(msg) - n, " (rip=0x%llx rsp=0x%llx)",
			 (unsigned long long)regs.rip, (unsigned long long)regs.rsp);
	}
	struct vcpu_set *set = v->set;
	pthread_mutex_lock(&set->lock);
	v->dead = true;
	set->parked++;
	pthread_cond_broadcast(&set->cond);
	pthread_mutex_unlock(&set->lock);
	set->on_fatal(set->opaque, v->index, msg);
}

static void handle_io(struct vcpu *v)
{
	struct kvm_run *run = v->run;
	uint8_t *data = (uint8_t *)run + run->io.data_offset;
	bool is_write = run->io.direction == KVM_EXIT_IO_OUT;
	/* A rep ins/outs arrives as count back-to-back elements. */
	for (uint32_t i = 0; i < run->io.count; i++)
		io_bus_access(v->set->pio, v->index, run->io.port, data + i * run->io.size,
			      run->io.size, is_write);
}

#define THROTTLE_PERIOD_NS 10000000ull

/* Park while a pause is requested, or sleep off a throttle kick. Returns
 * false when the thread must exit. immediate_exit only changes under the
 * lock, so a pause requested while we sleep is never lost. */
static bool park(struct vcpu *v)
{
	struct vcpu_set *set = v->set;
	pthread_mutex_lock(&set->lock);
	if (!set->pause_req && set->throttle_pct && !set->quit) {
		uint64_t ns = THROTTLE_PERIOD_NS * set->throttle_pct / (100 - set->throttle_pct);
		pthread_mutex_unlock(&set->lock);
		/* To an absolute deadline: the kicks that keep arriving while we
		 * sleep interrupt the sleep but must not shorten it. */
		struct timespec until;
		clock_gettime(CLOCK_MONOTONIC, &until);
		ns += (uint64_t)until.tv_nsec;
		until.tv_sec += (time_t)(ns / 1000000000ull);
		until.tv_nsec = (long)(ns % 1000000000ull);
		while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL) == EINTR)
			;
		pthread_mutex_lock(&set->lock);
	}
	if (set->pause_req && !set->quit) {
		set->parked++;
		pthread_cond_broadcast(&set->cond);
		while (set->pause_req && !set->quit)
			pthread_cond_wait(&set->cond, &set->lock);
		set->parked--;
	}
	if (!set->pause_req)
		v->run->immediate_exit = 0;
	bool go_on = !set->quit;
	pthread_mutex_unlock(&set->lock);
	return go_on;
}

static void *throttle_thread(void *arg)
{
	struct vcpu_set *set = arg;
	pthread_setname_np(pthread_self(), "vcpu-throttle");
	pthread_mutex_lock(&set->lock);
	while (set->throttle_pct && !set->quit) {
		if (!set->pause_req)
			for (unsigned i = 0; i < set->nr_threads; i++) {
				struct vcpu *v = &set->vcpus[i];
				v->run->immediate_exit = 1;
				if (!v->dead)
					pthread_kill(v->thread, SIG_KICK);
			}
		pthread_mutex_unlock(&set->lock);
		struct timespec ts = {0, (long)THROTTLE_PERIOD_NS};
		nanosleep(&ts, NULL);
		pthread_mutex_lock(&set->lock);
	}
	pthread_mutex_unlock(&set->lock);
	return NULL;
}

void vcpus_set_throttle(struct vcpu_set *set, unsigned percent)
{
	if (percent > 99)
		percent = 99;
	pthread_mutex_lock(&set->lock);
	bool join = !percent && set->throttle_thread_live;
	pthread_t old = set->throttle_thread;
	set->throttle_pct = percent;
	if (percent && !set->throttle_thread_live)
		set->throttle_thread_live = !pthread_create(&set->throttle_thread, NULL,
							    throttle_thread, set);
	if (join)
		set->throttle_thread_live = false;
	pthread_mutex_unlock(&set->lock);
	if (join)
		pthread_join(old, NULL);
}

static void *vcpu_thread(void *arg)
{
	struct vcpu *v = arg;
	struct vcpu_set *set = v->set;
	char name[16];
	snprintf(name, sizeof(name), "vcpu%u", v->index);
	pthread_setname_np(pthread_self(), name);

	sigset_t kick;
	sigemptyset(&kick);
	sigaddset(&kick, SIG_KICK);
	pthread_sigmask(SIG_UNBLOCK, &kick, NULL);

	pthread_mutex_lock(&set->lock);
	v->tid = (pid_t)syscall(SYS_gettid);
	set->tids_known++;
	pthread_cond_broadcast(&set->cond);
	pthread_mutex_unlock(&set->lock);

	for (;;) {
		int ret = ioctl(v->fd, KVM_RUN, 0);
		if (ret < 0) {
			if (errno == EINTR || errno == EAGAIN) {
				if (!park(v))
					break;
				continue;
			}
			die(v, "KVM_RUN failed on vCPU %u: %s", v->index, strerror(errno));
			break;
		}
		struct kvm_run *run = v->run;
		switch (run->exit_reason) {
		case KVM_EXIT_IO:
			handle_io(v);
			break;
		case KVM_EXIT_MMIO:
			io_bus_access(set->mmio, v->index, run->mmio.phys_addr, run->mmio.data,
				      run->mmio.len, run->mmio.is_write);
			break;
		case KVM_EXIT_INTR:
			if (!park(v))
				goto out;
			break;
		case KVM_EXIT_HLT:
			/* Only without an in-kernel LAPIC; ours halts in the kernel. */
			break;
		case KVM_EXIT_SHUTDOWN:
			die(v, "vCPU %u: guest triple fault (shutdown)", v->index);
			goto out;
		case KVM_EXIT_FAIL_ENTRY:
			die(v, "vCPU %u: VM entry failed, hardware reason 0x%llx", v->index,
			    (unsigned long long)run->fail_entry.hardware_entry_failure_reason);
			goto out;
		case KVM_EXIT_INTERNAL_ERROR:
			die(v, "vCPU %u: KVM internal error, suberror %u", v->index,
			    run->internal.suberror);
			goto out;
		default:
			die(v, "vCPU %u: unexpected KVM exit reason %u", v->index,
			    run->exit_reason);
			goto out;
		}
	}
out:
	return NULL;
}

int vcpus_start(struct vcpu_set *set, bool paused, char *errmsg, size_t errlen)
{
	struct sigaction sa = {.sa_handler = kick_handler};
	sigemptyset(&sa.sa_mask);
	sigaction(SIG_KICK, &sa, NULL); /* no SA_RESTART: KVM_RUN must return EINTR */

	set->pause_req = paused;
	for (unsigned i = 0; i < set->nr; i++) {
		set->vcpus[i].run->immediate_exit = paused;
		int ret = pthread_create(&set->vcpus[i].thread, NULL, vcpu_thread, &set->vcpus[i]);
		if (ret) {
			snprintf(errmsg, errlen, "starting vCPU thread %u: %s", i, strerror(ret));
			/* Threads already started are stopped by vcpus_destroy(). */
			set->nr_threads = i;
			set->started = i > 0;
			return -ret;
		}
	}
	set->nr_threads = set->nr;
	set->started = true;
	pthread_mutex_lock(&set->lock);
	while (set->tids_known < set->nr)
		pthread_cond_wait(&set->cond, &set->lock);
	if (paused)
		while (set->parked < set->nr)
			pthread_cond_wait(&set->cond, &set->lock);
	pthread_mutex_unlock(&set->lock);
	return 0;
}

static void kick_all(struct vcpu_set *set)
{
	for (unsigned i = 0; i < set->nr_threads; i++) {
		struct vcpu *v = &set->vcpus[i];
		v->run->immediate_exit = 1;
		if (!v->dead)
			pthread_kill(v->thread, SIG_KICK);
	}
}

void vcpus_pause(struct vcpu_set *set)
{
	pthread_mutex_lock(&set->lock);
	set->pause_req = true;
	kick_all(set);
	while (set->parked < set->nr)
		pthread_cond_wait(&set->cond, &set->lock);
	pthread_mutex_unlock(&set->lock);
}

void vcpus_resume(struct vcpu_set *set)
{
	pthread_mutex_lock(&set->lock);
	set->pause_req = false;
	for (unsigned i = 0; i < set->nr; i++)
		set->vcpus[i].run->immediate_exit = 0;
	pthread_cond_broadcast(&set->cond);
	pthread_mutex_unlock(&set->lock);
}

void vcpus_destroy(struct vcpu_set *set)
{
	vcpus_set_throttle(set, 0);
	if (set->started) {
		pthread_mutex_lock(&set->lock);
		set->quit = true;
		kick_all(set);
		pthread_cond_broadcast(&set->cond);
		pthread_mutex_unlock(&set->lock);
		for (unsigned i = 0; i < set->nr_threads; i++)
			pthread_join(set->vcpus[i].thread, NULL);
	}
	for (unsigned i = 0; i < set->nr; i++) {
		struct vcpu *v = &set->vcpus[i];
		if (v->run)
			munmap(v->run, (size_t)set->kvm->run_size);
		close(v->fd);
	}
	set->nr = 0;
}
