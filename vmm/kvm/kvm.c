#include "vmm/kvm/kvm.h"
#include "vmm/kvm/guest_ram.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

/* Just below 4 GiB, out of RAM's way, where QEMU puts them too. */
#define KVM_TSS_ADDR 0xfffbd000ull
#define KVM_IDENTITY_MAP_ADDR 0xfffbc000ull
#define CPUID_MAX_ENTRIES 256

static int fail(char *errmsg, size_t errlen, const char *what)
{
	int err = -errno;
	snprintf(errmsg, errlen, "%s: %s", what, strerror(errno));
	return err;
}

static int fetch_cpuid(struct kvm *kvm, char *errmsg, size_t errlen)
{
	kvm->cpuid = calloc(1, sizeof(*kvm->cpuid) +
				       CPUID_MAX_ENTRIES * sizeof(struct kvm_cpuid_entry2));
	if (!kvm->cpuid)
		return -ENOMEM;
	kvm->cpuid->nent = CPUID_MAX_ENTRIES;
	if (ioctl(kvm->sys_fd, KVM_GET_SUPPORTED_CPUID, kvm->cpuid) < 0)
		return fail(errmsg, errlen, "KVM_GET_SUPPORTED_CPUID");
	return 0;
}

int kvm_create(struct kvm *kvm, char *errmsg, size_t errlen)
{
	memset(kvm, 0, sizeof(*kvm));
	kvm->vm_fd = -1;
	kvm->sys_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm->sys_fd < 0)
		return fail(errmsg, errlen,
			    "cannot open /dev/kvm (is KVM available and accessible?)");
	int ret;
	if (ioctl(kvm->sys_fd, KVM_GET_API_VERSION, 0) != KVM_API_VERSION) {
		snprintf(errmsg, errlen, "unsupported KVM API version");
		ret = -ENOTSUP;
		goto out;
	}
	kvm->vm_fd = ioctl(kvm->sys_fd, KVM_CREATE_VM, 0);
	if (kvm->vm_fd < 0) {
		ret = fail(errmsg, errlen, "KVM_CREATE_VM");
		goto out;
	}
	kvm->run_size = ioctl(kvm->sys_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (kvm->run_size <= 0) {
		ret = fail(errmsg, errlen, "KVM_GET_VCPU_MMAP_SIZE");
		goto out;
	}
	if (ioctl(kvm->vm_fd, KVM_SET_TSS_ADDR, KVM_TSS_ADDR) < 0) {
		ret = fail(errmsg, errlen, "KVM_SET_TSS_ADDR");
		goto out;
	}
	uint64_t idmap = KVM_IDENTITY_MAP_ADDR;
	if (ioctl(kvm->vm_fd, KVM_SET_IDENTITY_MAP_ADDR, &idmap) < 0) {
		ret = fail(errmsg, errlen, "KVM_SET_IDENTITY_MAP_ADDR");
		goto out;
	}
	/* In-kernel PIC, IOAPIC and LAPICs: the LAPIC is part of a vCPU's
	 * state as a migration sees it, and halting vCPUs sleep in the kernel. */
	if (ioctl(kvm->vm_fd, KVM_CREATE_IRQCHIP, 0) < 0) {
		ret = fail(errmsg, errlen, "KVM_CREATE_IRQCHIP");
		goto out;
	}
	/* Manual protect: reading the log does not re-protect pages, we
	 * clear exactly what we are about to send (KVM_CLEAR_DIRTY_LOG), in
	 * chunks, instead of write-protecting a whole slot per round.
	 * Initially-set: turning logging on costs nothing up front. */
	struct kvm_enable_cap cap = {
		.cap = KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
		.args[0] = KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | KVM_DIRTY_LOG_INITIALLY_SET,
	};
	if (ioctl(kvm->vm_fd, KVM_ENABLE_CAP, &cap) < 0) {
		ret = fail(errmsg, errlen, "enabling KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2");
		goto out;
	}
	ret = fetch_cpuid(kvm, errmsg, errlen);
out:
	if (ret)
		kvm_destroy(kvm);
	return ret;
}

void kvm_destroy(struct kvm *kvm)
{
	free(kvm->cpuid);
	if (kvm->vm_fd >= 0)
		close(kvm->vm_fd);
	if (kvm->sys_fd >= 0)
		close(kvm->sys_fd);
	memset(kvm, 0, sizeof(*kvm));
	kvm->vm_fd = kvm->sys_fd = -1;
}

static int set_slots(struct kvm *kvm, const struct guest_ram *ram, uint32_t flags)
{
	for (unsigned i = 0; i < ram->nr_blocks; i++) {
		const struct ram_block *b = &ram->blocks[i];
		struct kvm_userspace_memory_region region = {
			.slot = i,
			.flags = flags,
			.guest_phys_addr = b->gpa,
			.memory_size = b->size,
			.userspace_addr = (uintptr_t)b->host,
		};
		if (ioctl(kvm->vm_fd, KVM_SET_USER_MEMORY_REGION, &region) < 0)
			return -errno;
	}
	return 0;
}

int kvm_map_ram(struct kvm *kvm, const struct guest_ram *ram, char *errmsg, size_t errlen)
{
	if (set_slots(kvm, ram, 0) < 0)
		return fail(errmsg, errlen, "KVM_SET_USER_MEMORY_REGION");
	kvm->nr_slots = ram->nr_blocks;
	return 0;
}

static int delete_slots(struct kvm *kvm, unsigned n)
{
	for (unsigned i = 0; i < n; i++) {
		struct kvm_userspace_memory_region region = {.slot = i};
		if (ioctl(kvm->vm_fd, KVM_SET_USER_MEMORY_REGION, &region) < 0)
			return -errno;
	}
	return 0;
}

int kvm_replace_ram(struct kvm *kvm, const struct guest_ram *cur, const struct guest_ram *next,
		    char *errmsg, size_t errlen)
{
	/* A slot's host address cannot change: delete, then create. */
	unsigned had = kvm->nr_slots;
	int ret = delete_slots(kvm, had);
	if (!ret && (ret = set_slots(kvm, next, 0)) < 0) {
		delete_slots(kvm, next->nr_blocks);
		if (had)
			set_slots(kvm, cur, 0);
	}
	if (!ret)
		kvm->nr_slots = next->nr_blocks;
	if (ret)
		snprintf(errmsg, errlen, "KVM_SET_USER_MEMORY_REGION (adopting RAM): %s",
			 strerror(-ret));
	return ret;
}

int kvm_set_dirty_logging(struct kvm *kvm, const struct guest_ram *ram, int on)
{
	return set_slots(kvm, ram, on ? KVM_MEM_LOG_DIRTY_PAGES : 0);
}

int kvm_irq_line(struct kvm *kvm, unsigned irq, int level)
{
	struct kvm_irq_level l = {.irq = irq, .level = level};
	return ioctl(kvm->vm_fd, KVM_IRQ_LINE, &l) < 0 ? -errno : 0;
}
