/*
 * The contract between godwit-vmm and the test guests in guests/.
 *
 * Both sides compile this header: the VMM with the host libc, the guests
 * freestanding. Only fixed-width types and constants live here.
 *
 * Guest-physical layout when booting a 64-bit ELF (--kernel):
 *
 *   0x001000  GDT (built by the VMM)
 *   0x005000  struct gw_guest_config (written by the VMM before boot)
 *   0x010000  identity page tables: PML4, PDPT, PDs with 2 MiB pages
 *             covering all of guest RAM
 *   0x030000  per-vCPU stacks, GW_STACK_SIZE each, vCPU i's stack top at
 *             GW_STACK_BASE + (i + 1) * GW_STACK_SIZE
 *   0x100000  the ELF image (PT_LOAD segments at their physical addresses)
 *
 * The identity map covers [0, max(top of RAM, 4 GiB)): the MMIO window
 * of the virtio devices (GW_VIRTIO_MMIO_BASE, in the hole between the
 * RAM below 3 GiB and the RAM above 4 GiB) is reachable too.
 *
 * At the ELF entry every vCPU runs in long mode, interrupts off, with
 *   rdi = vCPU index, rsi = GW_CONFIG_ADDR, rsp = its stack top.
 *
 * The boot-sector guest (--bootsector) does not use any of this: it is
 * loaded at 0x7c00 and started in real mode with dl = 0x80, as a PC BIOS
 * would, so the same image runs under QEMU.
 */
#ifndef GODWIT_GUEST_ABI_H
#define GODWIT_GUEST_ABI_H

/* Everything up to the boot-sector constants is C; the boot sector's
 * assembly includes only what follows them. */
#ifndef __ASSEMBLER__
#include <stdint.h>

#define GW_GDT_ADDR 0x1000ull
#define GW_CONFIG_ADDR 0x5000ull
#define GW_PAGETABLE_ADDR 0x10000ull
#define GW_STACK_BASE 0x30000ull
#define GW_STACK_SIZE 0x4000ull
#define GW_MAX_VCPUS 16
#define GW_KERNEL_MIN_ADDR 0x100000ull

/* "GWCONF01" little-endian */
#define GW_CONFIG_MAGIC 0x31304652434f4347ull
#define GW_CONFIG_VERSION 2
#define GW_CMDLINE_MAX 1024

/*
 * virtio-mmio devices (virtio 1.x, MMIO transport version 2): slot i has
 * its 4 KiB of registers at GW_VIRTIO_MMIO_BASE + i * GW_VIRTIO_MMIO_SIZE
 * and raises IOAPIC pin GW_VIRTIO_IRQ_BASE + i (level: high while its
 * InterruptStatus is not zero). The config block lists the slots in use.
 */
#define GW_VIRTIO_MMIO_BASE 0xd0000000ull
#define GW_VIRTIO_MMIO_SIZE 0x1000ull
#define GW_VIRTIO_MMIO_MAX 8
#define GW_VIRTIO_IRQ_BASE 5

struct gw_virtio_slot {
	uint64_t base;      /* guest-physical address of its registers */
	uint32_t irq;       /* IOAPIC pin */
	uint32_t device_id; /* virtio device id: 2 block */
};

/*
 * Written by the VMM at GW_CONFIG_ADDR. The cmdline is the VMM's
 * --append string; each guest parses the keys it knows (key=value pairs
 * separated by spaces, sizes with K/M/G suffixes), so the VMM needs no
 * knowledge of any guest's parameters.
 */
struct gw_guest_config {
	uint64_t magic;
	uint32_t version;
	uint32_t nr_vcpus;
	uint64_t ram_size;      /* bytes of guest RAM, starting at 0 */
	uint64_t kernel_end;    /* first byte after the loaded ELF image */
	char cmdline[GW_CMDLINE_MAX]; /* NUL-terminated */
	uint32_t nr_virtio;           /* slots in use, first ones of virtio[] */
	uint32_t reserved;
	struct gw_virtio_slot virtio[GW_VIRTIO_MMIO_MAX];
};

/*
 * The test device: one 32-bit I/O port. A guest reports by writing
 * (command << 24) | argument with a 32-bit OUT. The VMM knows which vCPU
 * wrote, so commands carry no vCPU index. Reads return GW_TESTDEV_ID.
 */
#define GW_TESTDEV_PORT 0x0600
#define GW_TESTDEV_ID 0x47574456u /* "VDWG" */
#define GW_TESTDEV_ARG_MASK 0x00ffffffu
#define GW_TESTDEV_CMD(cmd, arg) \
	(((uint32_t)(cmd) << 24) | ((uint32_t)(arg) & GW_TESTDEV_ARG_MASK))

enum gw_testdev_cmd {
	GW_TD_READY = 1,      /* the guest has started; arg unused */
	GW_TD_PAGES = 2,      /* arg = pages this vCPU writes per pass */
	GW_TD_PASS = 3,       /* arg = number of the pass just completed */
	GW_TD_CHECK_OK = 4,   /* self-check passed; arg = pass checked */
	GW_TD_CHECK_FAIL = 5, /* self-check failed; arg = page index (low 24 bits) */
	GW_TD_EXIT = 6,       /* request exit; arg = exit status (low 8 bits) */
};

/*
 * What the dirtier stores in each page it owns, so that any later pass
 * can tell whether the page still holds what the guest last wrote:
 * qword 0 is the stamp, the last qword is its complement. A page that
 * arrived torn, stale or at the wrong address fails the check.
 * The guests use the guest-physical page number (address >> 12) as
 * page_index, so the host can verify a page knowing only its address.
 */
static inline uint64_t gw_page_stamp(uint64_t pass, uint64_t page_index)
{
	return (pass << 32) ^ (page_index * 0x9e3779b97f4a7c15ull);
}

#endif /* !__ASSEMBLER__ */

/*
 * The boot-sector guest (bootdirtier.bin), 512 bytes ending in 0x55 0xaa.
 * It increments the first byte of every page from GW_BOOTSECTOR_START up
 * to END (exclusive) and writes GW_BOOTSECTOR_PASS_CHAR to COM1 after
 * each pass, forever. END is a little-endian uint32 at
 * GW_BOOTSECTOR_END_OFFSET inside the sector; tests patch it to choose
 * the range. It sits just before the MBR disk signature and partition
 * table, which stay zero. Plain integers: the assembly includes them.
 */
#define GW_BOOTSECTOR_SIZE 512
#define GW_BOOTSECTOR_END_OFFSET 0x1b0
#define GW_BOOTSECTOR_DEFAULT_END 0x06400000 /* 100 MiB */
#define GW_BOOTSECTOR_START 0x100000
#define GW_BOOTSECTOR_PASS_CHAR 0x42 /* 'B' */

#endif
