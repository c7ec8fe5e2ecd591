/*
 * Putting a guest into RAM and its vCPUs at their first instruction.
 */
#ifndef GW_VMM_BOOT_H
#define GW_VMM_BOOT_H

#include <stddef.h>

#include "guests/abi.h"

struct guest_ram;
struct vcpu_set;

/*
 * A 64-bit ELF: load PT_LOAD segments, write the config block (with the
 * nr_virtio virtio-mmio slots in use), GDT and identity page tables
 * covering all RAM (see guests/abi.h), and start every vCPU in long mode
 * at the entry point.
 */
int boot_elf(struct guest_ram *ram, struct vcpu_set *vcpus, const char *path, const char *cmdline,
	     const struct gw_virtio_slot *virtio, unsigned nr_virtio, char *errmsg, size_t errlen);

/* A raw 512-byte boot sector at 0x7c00, vCPU 0 in real mode with
 * dl = 0x80 as a PC BIOS leaves it; the other vCPUs wait for INIT/SIPI. */
int boot_sector(struct guest_ram *ram, struct vcpu_set *vcpus, const char *path, char *errmsg,
		size_t errlen);

#endif
