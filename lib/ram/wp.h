/*
 * Write-protecting guest RAM with userfaultfd (what a background snapshot
 * stands on): a write to a protected page stops the writer — a vCPU in
 * KVM, or any thread of the VMM — until someone un-protects the page; the
 * fault is read from the userfaultfd's fd as a struct uffd_msg.
 *
 * The userfaultfd is created for kernel-mode faults as well
 * (UFFD_USER_MODE_ONLY is never set): a guest write arrives as a fault
 * KVM takes on the guest's behalf inside the kernel, and a user-mode-only
 * userfaultfd would make it fail instead of wait. On shared memory (the
 * memfds of guest RAM) protecting a range also protects the pages it does
 * not map yet, with pte markers, so a range is protected whole with one
 * call however little of it is populated.
 */
#ifndef GW_LIB_RAM_WP_H
#define GW_LIB_RAM_WP_H

#include <stdbool.h>
#include <stdint.h>

#include <godwit/error.h>

struct gw_wp {
	int fd;            /* the userfaultfd, O_NONBLOCK; -1 when closed */
	uint64_t features; /* what UFFDIO_API enabled */
	void *zero;        /* a page of zeros, the source of gw_wp_fill_zero() */
};

/* A new userfaultfd, O_NONBLOCK | O_CLOEXEC, for kernel-mode faults too
 * (the fd, or -errno with what would allow one); its UFFDIO_API is the
 * caller's to make. The page server (page_server.h) makes its own too. */
int gw_uffd_new(struct gw_error *err);
/* A userfaultfd able to write-protect shared memory; the error says what
 * the kernel refused and what would allow it. */
int gw_wp_open(struct gw_wp *wp, struct gw_error *err);
/* Register [addr, addr+len) for write-protect faults (protects nothing
 * yet) and for missing-page faults: a first touch of a hole of the memfd
 * waits until gw_wp_fill_zero() fills it. */
int gw_wp_register(struct gw_wp *wp, void *addr, uint64_t len, const char *name,
		   struct gw_error *err);
/* Fill the missing page at addr with zeros (write-protected if protect),
 * and wake its waiters; a page filled meanwhile by someone else is only
 * woken. */
int gw_wp_fill_zero(struct gw_wp *wp, void *addr, bool protect, struct gw_error *err);
/* Protect, or un-protect and wake whoever waits on the range. */
int gw_wp_protect(struct gw_wp *wp, void *addr, uint64_t len, bool on, struct gw_error *err);
/* Unregister the range: its protection goes, every waiter wakes. A page
 * filled write-protected while this runs may keep its bit: fill no such
 * page meanwhile. */
int gw_wp_release(struct gw_wp *wp, void *addr, uint64_t len, struct gw_error *err);
void gw_wp_close(struct gw_wp *wp);

#endif
