/*
 * userfaultfd write-protect (wp.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "lib/compat/uapi.h"
#include "lib/internal.h"
#include "lib/ram/wp.h"

/*
 * The syscall is allowed to a process with CAP_SYS_PTRACE, or to anyone
 * when vm.unprivileged_userfaultfd is 1; /dev/userfaultfd (5.11) hands
 * out the same object to whoever may open the device. Either way the
 * flags leave out UFFD_USER_MODE_ONLY (wp.h says why).
 */
int gw_uffd_new(struct gw_error *err)
{
	int sys_errno, dev_errno, dev, fd;

	fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (fd >= 0)
		return fd;
	sys_errno = errno;
	dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
	if (dev >= 0) {
		fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
		dev_errno = errno;
		close(dev);
		if (fd >= 0)
			return fd;
	} else {
		dev_errno = errno;
	}
	return gw_error_set(err, -sys_errno,
			    "the kernel refused a userfaultfd that handles kernel-mode faults (userfaultfd(2): %s; /dev/userfaultfd: %s): give godwit-vmm CAP_SYS_PTRACE, set the sysctl vm.unprivileged_userfaultfd=1, or let it open /dev/userfaultfd read-write",
			    gw_strerror(sys_errno), gw_strerror(dev_errno));
}

int gw_wp_open(struct gw_wp *wp, struct gw_error *err)
{
	struct uffdio_api api = {.api = UFFD_API};
	uint64_t want = UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_WP_HUGETLBFS_SHMEM |
			UFFD_FEATURE_MISSING_SHMEM;
	int fd = gw_uffd_new(err);

	wp->fd = -1;
	wp->zero = NULL;
	if (fd < 0)
		return fd;
	/* Ask first what the kernel has (features 0), then enable. */
	if (ioctl(fd, UFFDIO_API, &api) < 0) {
		int e = errno;
		close(fd);
		return gw_error_set(err, -e, "userfaultfd: UFFDIO_API: %s", gw_strerror(e));
	}
	if ((api.features & want) != want) {
		close(fd);
		return gw_error_set(err, -EOPNOTSUPP,
				    "userfaultfd: this kernel cannot write-protect shared memory and fill its holes (features 0x%llx lack 0x%llx; Linux 5.19 or later has them)",
				    (unsigned long long)api.features,
				    (unsigned long long)(want & ~api.features));
	}
	/* Anonymous memory (a block without a memfd) needs markers asked for;
	 * shared memory gets them anyway. */
	if (api.features & UFFD_FEATURE_WP_UNPOPULATED)
		want |= UFFD_FEATURE_WP_UNPOPULATED;
	/* UFFDIO_API may be called once per fd: a new one for the real call. */
	close(fd);
	fd = gw_uffd_new(err);
	if (fd < 0)
		return fd;
	api = (struct uffdio_api){.api = UFFD_API, .features = want};
	if (ioctl(fd, UFFDIO_API, &api) < 0) {
		int e = errno;
		close(fd);
		return gw_error_set(err, -e, "userfaultfd: enabling features 0x%llx: %s",
				    (unsigned long long)want, gw_strerror(e));
	}
	wp->zero = aligned_alloc(GW_PAGE_SIZE, GW_PAGE_SIZE);
	if (!wp->zero) {
		close(fd);
		return gw_error_set(err, -ENOMEM, "userfaultfd: out of memory");
	}
	memset(wp->zero, 0, GW_PAGE_SIZE);
	wp->fd = fd;
	wp->features = api.features;
	return 0;
}

int gw_wp_register(struct gw_wp *wp, void *addr, uint64_t len, const char *name,
		   struct gw_error *err)
{
	struct uffdio_register r = {
		.range = {.start = (uint64_t)(uintptr_t)addr, .len = len},
		.mode = UFFDIO_REGISTER_MODE_WP | UFFDIO_REGISTER_MODE_MISSING,
	};

	if (ioctl(wp->fd, UFFDIO_REGISTER, &r) < 0)
		return gw_error_set(err, -errno,
				    "userfaultfd: cannot register RAM block '%s' (%p, 0x%llx bytes) for write-protect: %s",
				    name, addr, (unsigned long long)len, gw_strerror(errno));
	if (!(r.ioctls & (1ull << _UFFDIO_WRITEPROTECT)) || !(r.ioctls & (1ull << _UFFDIO_COPY)))
		return gw_error_set(err, -EOPNOTSUPP,
				    "userfaultfd: RAM block '%s' cannot be write-protected (it must be a MAP_SHARED memfd mapping)",
				    name);
	return 0;
}

int gw_wp_protect(struct gw_wp *wp, void *addr, uint64_t len, bool on, struct gw_error *err)
{
	struct uffdio_writeprotect w = {
		.range = {.start = (uint64_t)(uintptr_t)addr, .len = len},
		.mode = on ? UFFDIO_WRITEPROTECT_MODE_WP : 0,
	};

	/* EAGAIN: the address space was changing under the call; it did
	 * nothing and may be repeated. */
	while (ioctl(wp->fd, UFFDIO_WRITEPROTECT, &w) < 0)
		if (errno != EAGAIN && errno != EINTR)
			return gw_error_set(err, -errno, "userfaultfd: %s %p+0x%llx: %s",
					    on ? "write-protecting" : "un-protecting", addr,
					    (unsigned long long)len, gw_strerror(errno));
	return 0;
}

int gw_wp_fill_zero(struct gw_wp *wp, void *addr, bool protect, struct gw_error *err)
{
	uint64_t page = (uint64_t)(uintptr_t)addr & ~((uint64_t)GW_PAGE_SIZE - 1);
	struct uffdio_copy c = {
		.dst = page,
		.src = (uint64_t)(uintptr_t)wp->zero,
		.len = GW_PAGE_SIZE,
		.mode = protect ? UFFDIO_COPY_MODE_WP : 0,
	};
	struct uffdio_range r = {.start = page, .len = GW_PAGE_SIZE};
	bool raced = false;

	while (ioctl(wp->fd, UFFDIO_COPY, &c) < 0) {
		/* Filled by a racing fault: its waiters only need waking. */
		if ((raced = errno == EEXIST))
			break;
		if (errno != EAGAIN && errno != EINTR)
			return gw_error_set(err, -errno,
					    "userfaultfd: filling the hole at 0x%llx: %s",
					    (unsigned long long)page, gw_strerror(errno));
		c.copy = 0;
	}
	if (raced && ioctl(wp->fd, UFFDIO_WAKE, &r) < 0)
		return gw_error_set(err, -errno, "userfaultfd: waking 0x%llx: %s",
				    (unsigned long long)page, gw_strerror(errno));
	return 0;
}

int gw_wp_release(struct gw_wp *wp, void *addr, uint64_t len, struct gw_error *err)
{
	struct uffdio_range r = {.start = (uint64_t)(uintptr_t)addr, .len = len};

	/* Unregistering wakes every waiter and drops the protection with it
	 * (the kernel clears the range's write-protect bits and markers): no
	 * un-protect first, which would walk the range twice. */
	if (ioctl(wp->fd, UFFDIO_UNREGISTER, &r) < 0)
		return gw_error_set(err, -errno, "userfaultfd: unregistering %p+0x%llx: %s", addr,
				    (unsigned long long)len, gw_strerror(errno));
	return 0;
}

void gw_wp_close(struct gw_wp *wp)
{
	if (wp->fd >= 0)
		close(wp->fd);
	wp->fd = -1;
	free(wp->zero);
	wp->zero = NULL;
}
