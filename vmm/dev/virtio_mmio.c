/*
 * The virtio-mmio transport, version 2 (virtio_mmio.h).
 */
#include "vmm/dev/virtio_mmio.h"
#include "guests/abi.h"
#include "vmm/dev/io_bus.h"
#include "vmm/kvm/guest_ram.h"
#include "vmm/kvm/kvm.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

enum {
	REG_MAGIC = 0x000,
	REG_VERSION = 0x004,
	REG_DEVICE_ID = 0x008,
	REG_VENDOR_ID = 0x00c,
	REG_DEVICE_FEATURES = 0x010,
	REG_DEVICE_FEATURES_SEL = 0x014,
	REG_DRIVER_FEATURES = 0x020,
	REG_DRIVER_FEATURES_SEL = 0x024,
	REG_QUEUE_SEL = 0x030,
	REG_QUEUE_NUM_MAX = 0x034,
	REG_QUEUE_NUM = 0x038,
	REG_QUEUE_READY = 0x044,
	REG_QUEUE_NOTIFY = 0x050,
	REG_INTERRUPT_STATUS = 0x060,
	REG_INTERRUPT_ACK = 0x064,
	REG_STATUS = 0x070,
	REG_QUEUE_DESC_LOW = 0x080,
	REG_QUEUE_DESC_HIGH = 0x084,
	REG_QUEUE_DRIVER_LOW = 0x090,
	REG_QUEUE_DRIVER_HIGH = 0x094,
	REG_QUEUE_DEVICE_LOW = 0x0a0,
	REG_QUEUE_DEVICE_HIGH = 0x0a4,
	REG_SHM_LEN_LOW = 0x0b0,
	REG_SHM_LEN_HIGH = 0x0b4,
	REG_CONFIG_GENERATION = 0x0fc,
	REG_CONFIG = 0x100,
};

#define VIRTIO_MMIO_MAGIC 0x74726976u  /* "virt" */
#define VIRTIO_MMIO_VENDOR 0x54495747u /* "GWIT" */

void virtio_mmio_lock(struct virtio_mmio *t)
{
	pthread_mutex_lock(&t->lock);
}

void virtio_mmio_unlock(struct virtio_mmio *t)
{
	pthread_mutex_unlock(&t->lock);
}

void virtio_mmio_sync_irq(struct virtio_mmio *t)
{
	int level = t->st.interrupt_status != 0;
	if (level != t->irq_level) {
		t->irq_level = level;
		kvm_irq_line(t->kvm, t->irq, level);
	}
}

static void interrupt(struct virtio_mmio *t, uint32_t why)
{
	t->st.interrupt_status |= why;
	virtio_mmio_sync_irq(t);
}

void virtio_mmio_needs_reset(struct virtio_mmio *t, const char *why)
{
	if (t->st.status & VIRTIO_STATUS_NEEDS_RESET)
		return;
	if (ratelog_allow(&t->log, 10, "broken-ring messages"))
		fprintf(stderr,
			"godwit-vmm: %s: the driver broke the rules (%s); the device needs a reset\n",
			t->name, why);
	t->st.status |= VIRTIO_STATUS_NEEDS_RESET;
	interrupt(t, VIRTIO_INT_CONFIG);
}

static bool running(const struct virtio_mmio *t)
{
	return (t->st.status & VIRTIO_STATUS_DRIVER_OK) &&
	       !(t->st.status & VIRTIO_STATUS_NEEDS_RESET);
}

int virtio_mmio_pop(struct virtio_mmio *t, unsigned q, struct vq_chain *c)
{
	char why[160];
	if (q >= VIRTIO_MMIO_QUEUES || !running(t))
		return 0;
	int ret = vq_pop(&t->st.vq[q], t->ram, c, why, sizeof(why));
	if (ret < 0)
		virtio_mmio_needs_reset(t, why);
	return ret;
}

void virtio_mmio_push(struct virtio_mmio *t, unsigned q, uint16_t head, uint32_t written)
{
	struct vq_state *vq = &t->st.vq[q];
	/* A queue reset while the request ran: its chain is gone. */
	if (!vq->ready)
		return;
	if (vq_push(vq, t->ram, head, written) < 0) {
		virtio_mmio_needs_reset(t, "the device area left RAM");
		return;
	}
	if (vq_wants_interrupt(vq, t->ram))
		interrupt(t, VIRTIO_INT_USED);
}

void virtio_mmio_kick(struct virtio_mmio *t)
{
	virtio_mmio_lock(t);
	for (unsigned q = 0; q < VIRTIO_MMIO_QUEUES; q++)
		if (running(t) && t->st.vq[q].ready)
			t->ops->notify(t->dev, q);
	virtio_mmio_unlock(t);
}

static uint32_t read_reg(struct virtio_mmio *t, uint64_t off)
{
	const struct virtio_mmio_state *s = &t->st;
	const struct vq_state *vq = s->queue_sel < VIRTIO_MMIO_QUEUES ? &s->vq[s->queue_sel] : NULL;
	switch (off) {
	case REG_MAGIC:
		return VIRTIO_MMIO_MAGIC;
	case REG_VERSION:
		return 2;
	case REG_DEVICE_ID:
		return t->ops->device_id;
	case REG_VENDOR_ID:
		return VIRTIO_MMIO_VENDOR;
	case REG_DEVICE_FEATURES:
		return s->device_features_sel < 2 ?
			       (uint32_t)(t->ops->features >> (32 * s->device_features_sel)) :
			       0;
	case REG_QUEUE_NUM_MAX:
		return vq ? t->ops->queue_max : 0;
	case REG_QUEUE_READY:
		return vq ? vq->ready : 0;
	case REG_INTERRUPT_STATUS:
		return s->interrupt_status;
	case REG_STATUS:
		return s->status;
	case REG_SHM_LEN_LOW:
	case REG_SHM_LEN_HIGH:
		return 0xffffffffu; /* no shared memory region */
	case REG_CONFIG_GENERATION:
		return s->config_generation;
	default:
		return 0;
	}
}

static void reset(struct virtio_mmio *t)
{
	/* The device finishes what it took first, without the lock that its
	 * completions take; with DRIVER_OK gone, a notify from another vCPU
	 * meanwhile takes nothing. */
	t->st.status = 0;
	virtio_mmio_unlock(t);
	t->ops->reset(t->dev);
	virtio_mmio_lock(t);
	uint32_t generation = t->st.config_generation;
	memset(&t->st, 0, sizeof(t->st));
	t->st.config_generation = generation;
	virtio_mmio_sync_irq(t);
}

static void set_status(struct virtio_mmio *t, uint32_t v)
{
	struct virtio_mmio_state *s = &t->st;
	if (v == 0) {
		reset(t);
		return;
	}
	v &= VIRTIO_STATUS_BITS & ~VIRTIO_STATUS_NEEDS_RESET;
	/* FEATURES_OK sticks only for features offered, VERSION_1 among them. */
	if ((v & VIRTIO_STATUS_FEATURES_OK) && !(s->status & VIRTIO_STATUS_FEATURES_OK) &&
	    ((s->driver_features & ~t->ops->features) ||
	     !(s->driver_features & VIRTIO_F_VERSION_1)))
		v &= ~VIRTIO_STATUS_FEATURES_OK;
	s->status = v | (s->status & VIRTIO_STATUS_NEEDS_RESET);
}

static void set_queue_ready(struct virtio_mmio *t, struct vq_state *vq, uint32_t v)
{
	char why[200];
	if (!v) {
		vq->ready = 0;
		return;
	}
	if (!vq_check(vq, t->ram, t->ops->queue_max, why, sizeof(why))) {
		virtio_mmio_needs_reset(t, why);
		return;
	}
	vq->ready = 1;
}

static void set_half(uint64_t *x, bool high, uint32_t v)
{
	*x = high ? (*x & 0xffffffffull) | ((uint64_t)v << 32) : (*x & ~0xffffffffull) | v;
}

static void write_reg(struct virtio_mmio *t, uint64_t off, uint32_t v)
{
	struct virtio_mmio_state *s = &t->st;
	struct vq_state *vq = s->queue_sel < VIRTIO_MMIO_QUEUES ? &s->vq[s->queue_sel] : NULL;
	/* A queue's layout changes only while it is not ready (4.2.2.3). */
	struct vq_state *setup = vq && !vq->ready ? vq : NULL;
	switch (off) {
	case REG_DEVICE_FEATURES_SEL:
		s->device_features_sel = v;
		break;
	case REG_DRIVER_FEATURES:
		if (s->driver_features_sel < 2 && !(s->status & VIRTIO_STATUS_FEATURES_OK))
			set_half(&s->driver_features, s->driver_features_sel, v);
		break;
	case REG_DRIVER_FEATURES_SEL:
		s->driver_features_sel = v;
		break;
	case REG_QUEUE_SEL:
		s->queue_sel = v;
		break;
	case REG_QUEUE_NUM:
		if (setup)
			setup->num = v;
		break;
	case REG_QUEUE_READY:
		if (vq)
			set_queue_ready(t, vq, v);
		break;
	case REG_QUEUE_NOTIFY:
		if (v < VIRTIO_MMIO_QUEUES && running(t) && s->vq[v].ready)
			t->ops->notify(t->dev, v);
		break;
	case REG_INTERRUPT_ACK:
		s->interrupt_status &= ~v;
		virtio_mmio_sync_irq(t);
		break;
	case REG_STATUS:
		set_status(t, v);
		break;
	case REG_QUEUE_DESC_LOW:
	case REG_QUEUE_DESC_HIGH:
		if (setup)
			set_half(&setup->desc, off == REG_QUEUE_DESC_HIGH, v);
		break;
	case REG_QUEUE_DRIVER_LOW:
	case REG_QUEUE_DRIVER_HIGH:
		if (setup)
			set_half(&setup->avail, off == REG_QUEUE_DRIVER_HIGH, v);
		break;
	case REG_QUEUE_DEVICE_LOW:
	case REG_QUEUE_DEVICE_HIGH:
		if (setup)
			set_half(&setup->used, off == REG_QUEUE_DEVICE_HIGH, v);
		break;
	default:
		break; /* read-only or unknown: ignored, as the spec asks */
	}
}

static void mmio_access(void *opaque, unsigned vcpu, uint64_t off, uint8_t *data, unsigned len,
			bool is_write)
{
	struct virtio_mmio *t = opaque;
	(void)vcpu;
	virtio_mmio_lock(t);
	if (off >= REG_CONFIG) {
		/* The config space is the device's and read-only here. */
		if (!is_write)
			t->ops->read_config(t->dev, off - REG_CONFIG, data, len);
	} else if (len != 4 || off % 4) {
		/* Registers are 32-bit, aligned (4.2.2.2): others read as 0. */
		if (!is_write)
			memset(data, 0, len);
	} else if (is_write) {
		uint32_t v;
		memcpy(&v, data, 4);
		write_reg(t, off, v);
	} else {
		uint32_t v = read_reg(t, off);
		memcpy(data, &v, 4);
	}
	virtio_mmio_unlock(t);
}

int virtio_mmio_init(struct virtio_mmio *t, struct io_bus *mmio, struct kvm *kvm,
		     struct guest_ram *ram, unsigned slot, const struct virtio_dev_ops *ops,
		     void *dev, const char *name)
{
	if (slot >= GW_VIRTIO_MMIO_MAX)
		return -ENOSPC;
	memset(t, 0, sizeof(*t));
	pthread_mutex_init(&t->lock, NULL);
	t->ops = ops;
	t->dev = dev;
	t->kvm = kvm;
	t->ram = ram;
	t->slot = slot;
	t->irq = GW_VIRTIO_IRQ_BASE + slot;
	snprintf(t->name, sizeof(t->name), "%s", name);
	return io_bus_register(mmio, GW_VIRTIO_MMIO_BASE + slot * GW_VIRTIO_MMIO_SIZE,
			       GW_VIRTIO_MMIO_SIZE, mmio_access, t);
}

void virtio_mmio_destroy(struct virtio_mmio *t)
{
	pthread_mutex_destroy(&t->lock);
}

int virtio_mmio_check_state(const struct virtio_mmio_state *st, const struct virtio_dev_ops *ops,
			    const struct guest_ram *ram, char *why, size_t len)
{
	if (st->status & ~VIRTIO_STATUS_BITS) {
		snprintf(why, len, "status 0x%x sets bits outside 0x%x", st->status,
			 VIRTIO_STATUS_BITS);
		return -EBADMSG;
	}
	if ((st->status & VIRTIO_STATUS_FEATURES_OK) && (st->driver_features & ~ops->features)) {
		snprintf(why, len, "driver features 0x%llx are not all offered (0x%llx)",
			 (unsigned long long)st->driver_features,
			 (unsigned long long)ops->features);
		return -EBADMSG;
	}
	if (st->interrupt_status & ~(uint32_t)(VIRTIO_INT_USED | VIRTIO_INT_CONFIG)) {
		snprintf(why, len, "interrupt status 0x%x", st->interrupt_status);
		return -EBADMSG;
	}
	for (unsigned q = 0; q < VIRTIO_MMIO_QUEUES; q++) {
		const struct vq_state *vq = &st->vq[q];
		char what[160];
		if (vq->ready > 1 || vq->pad) {
			snprintf(why, len, "queue %u: ready %u", q, vq->ready);
			return -EBADMSG;
		}
		if (vq->ready && !vq_check(vq, ram, ops->queue_max, what, sizeof(what))) {
			snprintf(why, len, "queue %u: %s", q, what);
			return -EBADMSG;
		}
		/* A source drains its requests before it saves: every chain it
		 * took it gave back, and the rest waits in the avail ring. */
		if (vq->last_avail != vq->used_idx) {
			snprintf(why, len,
				 "queue %u: %u requests in flight (taken %u, given back %u)", q,
				 (uint16_t)(vq->last_avail - vq->used_idx), vq->last_avail,
				 vq->used_idx);
			return -EBADMSG;
		}
	}
	return 0;
}
