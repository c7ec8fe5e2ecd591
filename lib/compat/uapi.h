/*
 * Linux uapi constants this kernel has and Debian 12's headers lack. One
 * place for them all: each is defined only where the installed headers
 * do not, with the value the kernel's uapi gives it, so newer headers
 * win silently and a mismatch would be a compile error elsewhere.
 */
#ifndef GW_LIB_COMPAT_UAPI_H
#define GW_LIB_COMPAT_UAPI_H

#include <linux/userfaultfd.h>

/* userfaultfd(2) flag: handle faults from user mode only (5.11). godwit
 * never sets it (KVM's accesses are kernel-mode), but names it to say so. */
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif

/* Write-protect never-populated anonymous pages too, with pte markers (6.4). */
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif

#endif
