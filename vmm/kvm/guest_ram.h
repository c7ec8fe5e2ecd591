/*
 * Guest RAM: one or more memfds, each mapped MAP_SHARED into the VMM and
 * registered as a KVM memory slot. Memfds rather than anonymous memory so
 * that RAM can be handed to another process (local live update) and so
 * that untouched RAM stays a hole the kernel can report (SEEK_HOLE).
 *
 * Layout as on a PC: the first 3 GiB at guest-physical 0, anything above
 * that at 4 GiB, leaving 3-4 GiB for the LAPIC/IOAPIC MMIO window.
 */
#ifndef GW_VMM_GUEST_RAM_H
#define GW_VMM_GUEST_RAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GUEST_RAM_MAX_BLOCKS 2
#define GUEST_RAM_LOW_LIMIT (3ull << 30)
#define GUEST_RAM_HIGH_BASE (4ull << 30)
#define GUEST_RAM_MAX_SIZE (16ull << 30)

struct ram_block {
	char name[16];
	uint64_t gpa;
	uint64_t size;
	int memfd;
	uint8_t *host;
	/* Pages written by the VMM (guest_ram_write), one bit per page, set
	 * atomically; the dirty tracker takes and clears them at each sync. */
	uint64_t *vmm_dirty;
};

struct guest_ram {
	uint64_t size; /* total bytes */
	unsigned nr_blocks;
	struct ram_block blocks[GUEST_RAM_MAX_BLOCKS];
};

int guest_ram_create(struct guest_ram *ram, uint64_t size, char *errmsg, size_t errlen);
void guest_ram_destroy(struct guest_ram *ram);

/* A block another process made, to be adopted (local live update). */
struct guest_ram_fd {
	const char *name;
	uint64_t gpa, size, fd_offset;
	int fd;        /* a memfd */
	bool prefault; /* fault the populated ranges into the page tables */
};

/*
 * Map the n blocks of another VMM's RAM (their layout must be the one
 * guest_ram_create() makes for their total size) into *out, without
 * writing a byte: the pages may be in use by a running guest. With
 * prefault, the page tables of their populated ranges are filled now.
 * On success *out owns the fds.
 */
int guest_ram_adopt(struct guest_ram *out, const struct guest_ram_fd *blocks, unsigned n,
		    char *errmsg, size_t errlen);

/* Highest guest-physical address of RAM, exclusive. */
uint64_t guest_ram_top(const struct guest_ram *ram);

/* Host pointer for [gpa, gpa+len) if it lies inside one block, else NULL.
 * For reading only: writes must go through guest_ram_write(). */
const void *guest_ram_ptr(const struct guest_ram *ram, uint64_t gpa, uint64_t len);

/*
 * The one way the VMM writes into guest RAM outside KVM_RUN (device DMA,
 * loading images, boot structures). Keeping every such write here is what
 * lets dirty tracking see them: a write that bypasses this function is a
 * page the migration will not resend. Returns -EFAULT outside RAM.
 */
int guest_ram_write(struct guest_ram *ram, uint64_t gpa, const void *buf, uint64_t len);

/*
 * Device DMA straight into guest RAM (a disk read into a guest buffer):
 * the host address of [gpa, gpa+len) if it lies inside one block, to
 * write through, and guest_ram_dma_done() once the write is over, which
 * marks the pages dirty as guest_ram_write() does (after the write, or
 * a dirty sync in between would miss its end).
 */
void *guest_ram_dma(struct guest_ram *ram, uint64_t gpa, uint64_t len);
void guest_ram_dma_done(struct guest_ram *ram, uint64_t gpa, uint64_t len);

/* Take (and clear) the VMM-written bits of block b, ORing them into
 * bitmap. Safe against concurrent guest_ram_write(). */
void guest_ram_take_vmm_dirty(struct guest_ram *ram, unsigned b, uint64_t *bitmap);

/* Copy out; -EFAULT if any byte is outside RAM. */
int guest_ram_read(const struct guest_ram *ram, uint64_t gpa, void *buf, uint64_t len);

/* XXH3-128 of all blocks in order, holes hashed as zeros, hex string. */
int guest_ram_hash(const struct guest_ram *ram, char out[33]);

#endif
