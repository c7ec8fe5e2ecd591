#include "vmm/kvm/guest_ram.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xxhash.h>

static int add_block(struct guest_ram *ram, const char *name, uint64_t gpa, uint64_t size,
		     char *errmsg, size_t errlen)
{
	struct ram_block *b = &ram->blocks[ram->nr_blocks];
	snprintf(b->name, sizeof(b->name), "%s", name);
	b->gpa = gpa;
	b->size = size;
	b->memfd = memfd_create(name, MFD_CLOEXEC);
	if (b->memfd < 0 || ftruncate(b->memfd, (off_t)size) < 0) {
		int err = -errno;
		snprintf(errmsg, errlen, "guest RAM block '%s' (%llu bytes): %s", name,
			 (unsigned long long)size, strerror(-err));
		if (b->memfd >= 0)
			close(b->memfd);
		b->memfd = -1;
		return err;
	}
	/* MAP_NORESERVE: a 16 GiB guest that touches 100 MiB costs 100 MiB. */
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, b->memfd, 0);
	if (p == MAP_FAILED) {
		int err = -errno;
		snprintf(errmsg, errlen, "mapping guest RAM block '%s': %s", name, strerror(-err));
		close(b->memfd);
		b->memfd = -1;
		return err;
	}
	b->host = p;
	b->vmm_dirty = calloc((size / 4096 + 63) / 64, sizeof(uint64_t));
	if (!b->vmm_dirty) {
		munmap(p, size);
		close(b->memfd);
		b->memfd = -1;
		snprintf(errmsg, errlen, "guest RAM block '%s': out of memory", name);
		return -ENOMEM;
	}
	ram->nr_blocks++;
	ram->size += size;
	return 0;
}

int guest_ram_create(struct guest_ram *ram, uint64_t size, char *errmsg, size_t errlen)
{
	memset(ram, 0, sizeof(*ram));
	if (size < (4ull << 20) || size > GUEST_RAM_MAX_SIZE || size % (2ull << 20)) {
		snprintf(errmsg, errlen,
			 "memory size %llu bytes: must be a multiple of 2 MiB between 4 MiB and 16 GiB",
			 (unsigned long long)size);
		return -EINVAL;
	}
	uint64_t low = size < GUEST_RAM_LOW_LIMIT ? size : GUEST_RAM_LOW_LIMIT;
	int ret = add_block(ram, "ram-low", 0, low, errmsg, errlen);
	if (!ret && size > low)
		ret = add_block(ram, "ram-high", GUEST_RAM_HIGH_BASE, size - low, errmsg, errlen);
	if (ret)
		guest_ram_destroy(ram);
	return ret;
}

/* Map a block someone else made; nothing written, page tables pre-faulted. */
static int map_block(struct ram_block *b, const struct guest_ram_fd *f, char *errmsg, size_t errlen)
{
	snprintf(b->name, sizeof(b->name), "%s", f->name);
	b->gpa = f->gpa;
	b->size = f->size;
	b->memfd = -1;
	void *p = mmap(NULL, f->size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, f->fd,
		       (off_t)f->fd_offset);
	if (p == MAP_FAILED) {
		int err = -errno;
		snprintf(errmsg, errlen, "mapping the adopted block '%s': %s", f->name,
			 strerror(-err));
		return err;
	}
	b->vmm_dirty = calloc((f->size / 4096 + 63) / 64, sizeof(uint64_t));
	if (!b->vmm_dirty) {
		munmap(p, f->size);
		snprintf(errmsg, errlen, "adopted block '%s': out of memory", f->name);
		return -ENOMEM;
	}
	b->host = p;
	/*
	 * The guest will touch its populated pages at once: fault them into
	 * this process's page tables now, while the old process still runs
	 * it, instead of one fault per page after the switch. Only where
	 * there is data (POPULATE_WRITE of a hole would allocate it), and
	 * writes no byte. A failure only costs those faults later. Asked
	 * for only while the old process still runs the guest: once it is
	 * paused, faulting on demand is the quicker way back.
	 */
	off_t pos = (off_t)f->fd_offset, end = (off_t)(f->fd_offset + f->size);
	while (f->prefault && pos < end) {
		off_t data = lseek(f->fd, pos, SEEK_DATA);
		if (data < 0 || data >= end)
			break;
		off_t hole = lseek(f->fd, data, SEEK_HOLE);
		if (hole < 0 || hole > end)
			hole = end;
		madvise((uint8_t *)p + (data - (off_t)f->fd_offset), (size_t)(hole - data),
			MADV_POPULATE_WRITE);
		pos = hole;
	}
	return 0;
}

int guest_ram_adopt(struct guest_ram *out, const struct guest_ram_fd *blocks, unsigned n,
		    char *errmsg, size_t errlen)
{
	uint64_t total = 0;
	for (unsigned i = 0; i < n; i++)
		total += blocks[i].size;
	/* The layout this machine makes for that size, and nothing else: a
	 * block at another address would be guest memory this VMM does not
	 * describe to its guest. */
	uint64_t low = total < GUEST_RAM_LOW_LIMIT ? total : GUEST_RAM_LOW_LIMIT;
	const struct {
		const char *name;
		uint64_t gpa, size;
	} want[GUEST_RAM_MAX_BLOCKS] = {{"ram-low", 0, low},
					{"ram-high", GUEST_RAM_HIGH_BASE, total - low}};
	unsigned nwant = total > low ? 2 : 1;
	if (total < (4ull << 20) || total > GUEST_RAM_MAX_SIZE || total % (2ull << 20) ||
	    n != nwant) {
		snprintf(errmsg, errlen,
			 "the source's RAM (%u blocks, %llu bytes) is not a layout of this machine",
			 n, (unsigned long long)total);
		return -EINVAL;
	}
	for (unsigned i = 0; i < n; i++)
		if (strcmp(blocks[i].name, want[i].name) || blocks[i].gpa != want[i].gpa ||
		    blocks[i].size != want[i].size) {
			snprintf(errmsg, errlen,
				 "the source's RAM block '%s' (%llu bytes at 0x%llx) is not this machine's '%s' (%llu bytes at 0x%llx)",
				 blocks[i].name, (unsigned long long)blocks[i].size,
				 (unsigned long long)blocks[i].gpa, want[i].name,
				 (unsigned long long)want[i].size, (unsigned long long)want[i].gpa);
			return -EINVAL;
		}
	memset(out, 0, sizeof(*out));
	for (unsigned i = 0; i < n; i++) {
		int ret = map_block(&out->blocks[i], &blocks[i], errmsg, errlen);
		if (ret) {
			guest_ram_destroy(out); /* memfd -1: the fds stay the caller's */
			return ret;
		}
		out->nr_blocks++;
		out->size += blocks[i].size;
	}
	for (unsigned i = 0; i < n; i++)
		out->blocks[i].memfd = blocks[i].fd;
	return 0;
}

void guest_ram_destroy(struct guest_ram *ram)
{
	for (unsigned i = 0; i < ram->nr_blocks; i++) {
		struct ram_block *b = &ram->blocks[i];
		munmap(b->host, b->size);
		if (b->memfd >= 0)
			close(b->memfd);
		free(b->vmm_dirty);
	}
	memset(ram, 0, sizeof(*ram));
}

uint64_t guest_ram_top(const struct guest_ram *ram)
{
	const struct ram_block *last = &ram->blocks[ram->nr_blocks - 1];
	return last->gpa + last->size;
}

static const struct ram_block *find_block(const struct guest_ram *ram, uint64_t gpa, uint64_t len)
{
	for (unsigned i = 0; i < ram->nr_blocks; i++) {
		const struct ram_block *b = &ram->blocks[i];
		if (gpa >= b->gpa && gpa - b->gpa <= b->size && len <= b->size - (gpa - b->gpa))
			return b;
	}
	return NULL;
}

const void *guest_ram_ptr(const struct guest_ram *ram, uint64_t gpa, uint64_t len)
{
	const struct ram_block *b = find_block(ram, gpa, len);
	return b ? b->host + (gpa - b->gpa) : NULL;
}

void *guest_ram_dma(struct guest_ram *ram, uint64_t gpa, uint64_t len)
{
	const struct ram_block *b = find_block(ram, gpa, len);
	return b ? b->host + (gpa - b->gpa) : NULL;
}

void guest_ram_dma_done(struct guest_ram *ram, uint64_t gpa, uint64_t len)
{
	const struct ram_block *b = find_block(ram, gpa, len);
	if (!b || !len)
		return;
	/* Marked after the write: a sync that takes the bit before the write
	 * ends would let the next round miss the rest of it. */
	uint64_t first = (gpa - b->gpa) / 4096, last = (gpa - b->gpa + len - 1) / 4096;
	for (uint64_t pg = first; pg <= last; pg++)
		__atomic_fetch_or(&b->vmm_dirty[pg / 64], 1ull << (pg % 64), __ATOMIC_RELEASE);
}

int guest_ram_write(struct guest_ram *ram, uint64_t gpa, const void *buf, uint64_t len)
{
	void *p = guest_ram_dma(ram, gpa, len);
	if (!p)
		return -EFAULT;
	memcpy(p, buf, len);
	guest_ram_dma_done(ram, gpa, len);
	return 0;
}

void guest_ram_take_vmm_dirty(struct guest_ram *ram, unsigned b, uint64_t *bitmap)
{
	const struct ram_block *blk = &ram->blocks[b];
	uint64_t words = (blk->size / 4096 + 63) / 64;
	for (uint64_t i = 0; i < words; i++)
		if (__atomic_load_n(&blk->vmm_dirty[i], __ATOMIC_RELAXED))
			bitmap[i] |= __atomic_exchange_n(&blk->vmm_dirty[i], 0, __ATOMIC_ACQUIRE);
}

int guest_ram_read(const struct guest_ram *ram, uint64_t gpa, void *buf, uint64_t len)
{
	const void *p = guest_ram_ptr(ram, gpa, len);
	if (!p)
		return -EFAULT;
	memcpy(buf, p, len);
	return 0;
}

/* Hash [off, off+len) of a block as zeros without touching it: reading a
 * memfd hole would allocate pages, and the destination of a migration
 * keeps zero pages as holes, so both sides must hash holes alike. */
static void hash_zeros(XXH3_state_t *st, uint64_t len)
{
	static const uint8_t zeros[65536];
	while (len) {
		size_t n = len < sizeof(zeros) ? len : sizeof(zeros);
		XXH3_128bits_update(st, zeros, n);
		len -= n;
	}
}

static int hash_block(XXH3_state_t *st, const struct ram_block *b)
{
	off_t pos = 0, end = (off_t)b->size;
	while (pos < end) {
		off_t data = lseek(b->memfd, pos, SEEK_DATA);
		if (data < 0 && errno != ENXIO)
			return -errno;
		if (data < 0)
			data = end;
		hash_zeros(st, (uint64_t)(data - pos));
		if (data == end)
			break;
		off_t hole = lseek(b->memfd, data, SEEK_HOLE);
		if (hole < 0)
			return -errno;
		XXH3_128bits_update(st, b->host + data, (size_t)(hole - data));
		pos = hole;
	}
	return 0;
}

int guest_ram_hash(const struct guest_ram *ram, char out[33])
{
	XXH3_state_t *st = XXH3_createState();
	if (!st)
		return -ENOMEM;
	XXH3_128bits_reset(st);
	int ret = 0;
	for (unsigned i = 0; i < ram->nr_blocks && !ret; i++)
		ret = hash_block(st, &ram->blocks[i]);
	XXH128_hash_t h = XXH3_128bits_digest(st);
	XXH3_freeState(st);
	if (!ret)
		snprintf(out, 33, "%016llx%016llx", (unsigned long long)h.high64,
			 (unsigned long long)h.low64);
	return ret;
}
