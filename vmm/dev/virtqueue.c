/*
 * The device side of a split virtqueue (virtqueue.h).
 */
#include "vmm/dev/virtqueue.h"
#include "vmm/kvm/guest_ram.h"

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#define VRING_DESC_F_NEXT 1
#define VRING_DESC_F_WRITE 2
#define VRING_DESC_F_INDIRECT 4
#define VRING_AVAIL_F_NO_INTERRUPT 1

struct vring_desc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags;
	uint16_t next;
};

static uint64_t desc_bytes(uint32_t num)
{
	return 16ull * num;
}

static uint64_t avail_bytes(uint32_t num)
{
	return 6 + 2ull * num; /* flags, idx, ring[num], used_event */
}

static uint64_t used_bytes(uint32_t num)
{
	return 6 + 8ull * num; /* flags, idx, ring[num] {id, len}, avail_event */
}

bool vq_check(const struct vq_state *q, const struct guest_ram *ram, unsigned max_size, char *why,
	      size_t len)
{
	if (q->num == 0 || q->num > max_size || (q->num & (q->num - 1))) {
		snprintf(why, len, "queue size %u is not a power of two up to %u", q->num,
			 max_size);
		return false;
	}
	/* The spec's alignments (2.7): the device reads them as such. */
	if (q->desc % 16 || q->avail % 2 || q->used % 4) {
		snprintf(why, len,
			 "queue parts misaligned: descriptors 0x%llx (16), driver area 0x%llx (2), device area 0x%llx (4)",
			 (unsigned long long)q->desc, (unsigned long long)q->avail,
			 (unsigned long long)q->used);
		return false;
	}
	if (ram && (!guest_ram_ptr(ram, q->desc, desc_bytes(q->num)) ||
		    !guest_ram_ptr(ram, q->avail, avail_bytes(q->num)) ||
		    !guest_ram_ptr(ram, q->used, used_bytes(q->num)))) {
		snprintf(why, len,
			 "queue parts outside RAM: descriptors 0x%llx, driver area 0x%llx, device area 0x%llx (size %u)",
			 (unsigned long long)q->desc, (unsigned long long)q->avail,
			 (unsigned long long)q->used, q->num);
		return false;
	}
	return true;
}

/* The avail ring's idx and flags, as the driver published them. */
static uint16_t avail_read(const struct vq_state *q, const struct guest_ram *ram, unsigned off)
{
	const uint16_t *p = guest_ram_ptr(ram, q->avail + off, 2);
	return p ? __atomic_load_n(p, __ATOMIC_ACQUIRE) : 0;
}

unsigned vq_pending(const struct vq_state *q, const struct guest_ram *ram)
{
	if (!q->ready)
		return 0;
	return (uint16_t)(avail_read(q, ram, 2) - q->last_avail);
}

bool vq_wants_interrupt(const struct vq_state *q, const struct guest_ram *ram)
{
	return !(avail_read(q, ram, 0) & VRING_AVAIL_F_NO_INTERRUPT);
}

__attribute__((format(printf, 3, 4))) static int bad(char *why, size_t len, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why, len, fmt, ap);
	va_end(ap);
	return -EBADMSG;
}

/* Walk the chain at head into c. A loop cannot run away: a chain longer
 * than the queue (or VQ_MAX_CHAIN) is refused. */
static int walk(const struct vq_state *q, const struct guest_ram *ram, uint16_t head,
		struct vq_chain *c, char *why, size_t len)
{
	const struct vring_desc *table = guest_ram_ptr(ram, q->desc, desc_bytes(q->num));
	unsigned i = head, seen = 0;

	memset(c, 0, offsetof(struct vq_chain, in));
	c->head = head;
	for (;;) {
		if (i >= q->num)
			return bad(why, len, "descriptor %u is outside the queue of %u", i, q->num);
		if (++seen > q->num || seen > VQ_MAX_CHAIN)
			return bad(why, len, "chain from descriptor %u is longer than %u (a loop?)",
				   head, q->num < VQ_MAX_CHAIN ? q->num : VQ_MAX_CHAIN);
		struct vring_desc d;
		memcpy(&d, &table[i], sizeof(d)); /* one snapshot of what the guest may change */
		if (d.flags & VRING_DESC_F_INDIRECT)
			return bad(why, len, "descriptor %u is indirect, which was not offered", i);
		if (d.len > VQ_MAX_BYTES || !guest_ram_ptr(ram, d.addr, d.len))
			return bad(why, len, "descriptor %u (%u bytes) is outside RAM or too long",
				   i, d.len);
		struct vq_buf b = {d.addr, d.len};
		if (d.flags & VRING_DESC_F_WRITE) {
			c->out[c->nr_out++] = b;
			c->out_bytes += d.len;
		} else if (c->nr_out) {
			return bad(why, len, "descriptor %u is readable after a writable one", i);
		} else {
			c->in[c->nr_in++] = b;
			c->in_bytes += d.len;
		}
		if (c->in_bytes + c->out_bytes > VQ_MAX_BYTES)
			return bad(why, len, "chain from descriptor %u holds more than %u bytes",
				   head, VQ_MAX_BYTES);
		if (!(d.flags & VRING_DESC_F_NEXT))
			return 0;
		i = d.next;
	}
}

int vq_pop(struct vq_state *q, const struct guest_ram *ram, struct vq_chain *c, char *why,
	   size_t len)
{
	if (!q->ready)
		return 0;
	uint16_t avail_idx = avail_read(q, ram, 2);
	uint16_t pending = (uint16_t)(avail_idx - q->last_avail);
	if (pending == 0)
		return 0;
	if (pending > q->num)
		return bad(why, len, "the driver made %u entries available in a queue of %u",
			   pending, q->num);
	const uint16_t *ring = guest_ram_ptr(ram, q->avail + 4, 2ull * q->num);
	uint16_t head = __atomic_load_n(&ring[q->last_avail % q->num], __ATOMIC_RELAXED);
	int ret = walk(q, ram, head, c, why, len);
	if (ret < 0)
		return ret;
	q->last_avail++;
	return 1;
}

int vq_push(struct vq_state *q, struct guest_ram *ram, uint16_t head, uint32_t written)
{
	uint64_t elem = q->used + 4 + 8ull * (q->used_idx % q->num);
	uint32_t e[2] = {head, written};
	int ret = guest_ram_write(ram, elem, e, sizeof(e));
	if (ret)
		return ret;
	uint16_t *idx = guest_ram_dma(ram, q->used + 2, 2);
	if (!idx)
		return -EFAULT;
	/* The element before the index that publishes it. */
	__atomic_store_n(idx, ++q->used_idx, __ATOMIC_RELEASE);
	guest_ram_dma_done(ram, q->used + 2, 2);
	return 0;
}
