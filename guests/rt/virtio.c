/*
 * virtio over MMIO (virtio 1.2, 4.2.2) with one split virtqueue (2.7),
 * polled. See virtio.h for the calling sequence.
 */
#include "virtio.h"

#define VIRTIO_MMIO_MAGIC 0x74726976 /* "virt" */
#define VIRTIO_MMIO_VERSION 2

/* A device that resets synchronously reads 0 at once; one that takes
 * longer gets this many polls (each a VM exit, a few µs) before the guest
 * gives up. */
#define RESET_POLLS (1u << 20)
/* While spinning on the used ring, look at Status this often, so that a
 * device that gave up (DEVICE_NEEDS_RESET) ends the guest instead of
 * hanging it. Each look is a VM exit: rarely enough not to slow the poll. */
#define STATUS_POLL_SPINS (1u << 16)

/*
 * Register accesses are single 32-bit movs written out in asm: KVM has to
 * decode the faulting instruction to emulate it, and a compiler is free to
 * pick something harder to decode for a volatile access. The "memory"
 * clobber keeps ring accesses on their side of every register access.
 */
static uint32_t reg_read(const struct gw_virtio *dev, uint32_t reg)
{
	const volatile uint32_t *p = (const volatile uint32_t *)(uintptr_t)(dev->base + reg);
	uint32_t v;

	__asm__ volatile("movl %1, %0" : "=r"(v) : "m"(*p) : "memory");
	return v;
}

static void reg_write(const struct gw_virtio *dev, uint32_t reg, uint32_t v)
{
	volatile uint32_t *p = (volatile uint32_t *)(uintptr_t)(dev->base + reg);

	__asm__ volatile("movl %1, %0" : "=m"(*p) : "r"(v) : "memory");
}

static void expect_reg(const struct gw_virtio *dev, uint32_t reg, const char *name, uint32_t want)
{
	uint32_t v = reg_read(dev, reg);

	if (v != want)
		gw_fatal("virtio@0x%lx: %s (0x%03x) = 0x%x, expected 0x%x\n", dev->base, name, reg,
			 v, want);
}

static void expect_status(const struct gw_virtio *dev, uint32_t want)
{
	uint32_t v = reg_read(dev, GW_VIRTIO_REG_STATUS);

	if (v & GW_VIRTIO_STATUS_NEEDS_RESET)
		gw_fatal("virtio@0x%lx: Status (0x070) = 0x%x: DEVICE_NEEDS_RESET\n", dev->base, v);
	if (v != want)
		gw_fatal("virtio@0x%lx: Status (0x070) = 0x%x, expected 0x%x\n", dev->base, v,
			 want);
}

const struct gw_virtio_slot *gw_virtio_find(const struct gw_guest_config *cfg, uint32_t device_id,
					    unsigned index)
{
	if (cfg->nr_virtio > GW_VIRTIO_MMIO_MAX)
		gw_fatal("virtio: the config block lists %u virtio slots, at most %u exist\n",
			 cfg->nr_virtio, GW_VIRTIO_MMIO_MAX);
	for (uint32_t i = 0; i < cfg->nr_virtio; i++)
		if (cfg->virtio[i].device_id == device_id && index-- == 0)
			return &cfg->virtio[i];
	return NULL;
}

/* 2.4: a reset is complete once Status reads 0 again. */
static void reset(const struct gw_virtio *dev)
{
	reg_write(dev, GW_VIRTIO_REG_STATUS, 0);
	for (uint32_t i = 0; i < RESET_POLLS; i++)
		if (reg_read(dev, GW_VIRTIO_REG_STATUS) == 0)
			return;
	gw_fatal("virtio@0x%lx: Status (0x070) = 0x%x after %u polls, expected 0 after a reset\n",
		 dev->base, reg_read(dev, GW_VIRTIO_REG_STATUS), RESET_POLLS);
}

static uint64_t device_features(const struct gw_virtio *dev)
{
	uint64_t lo, hi;

	reg_write(dev, GW_VIRTIO_REG_DEVICE_FEATURES_SEL, 0);
	lo = reg_read(dev, GW_VIRTIO_REG_DEVICE_FEATURES);
	reg_write(dev, GW_VIRTIO_REG_DEVICE_FEATURES_SEL, 1);
	hi = reg_read(dev, GW_VIRTIO_REG_DEVICE_FEATURES);
	return hi << 32 | lo;
}

uint64_t gw_virtio_probe(struct gw_virtio *dev, uint64_t base, uint32_t device_id)
{
	dev->base = base;
	expect_reg(dev, GW_VIRTIO_REG_MAGIC, "MagicValue", VIRTIO_MMIO_MAGIC);
	expect_reg(dev, GW_VIRTIO_REG_VERSION, "Version", VIRTIO_MMIO_VERSION);
	expect_reg(dev, GW_VIRTIO_REG_DEVICE_ID, "DeviceID", device_id);
	reset(dev);
	reg_write(dev, GW_VIRTIO_REG_STATUS, GW_VIRTIO_STATUS_ACKNOWLEDGE);
	reg_write(dev, GW_VIRTIO_REG_STATUS, GW_VIRTIO_STATUS_PROBED);
	return device_features(dev);
}

void gw_virtio_negotiate(struct gw_virtio *dev, uint64_t features)
{
	uint64_t offered = device_features(dev), want = features | GW_VIRTIO_F_VERSION_1;

	if ((offered & want) != want)
		gw_fatal("virtio@0x%lx: DeviceFeatures = 0x%lx, lacking 0x%lx of the needed 0x%lx\n",
			 dev->base, offered, want & ~offered, want);
	reg_write(dev, GW_VIRTIO_REG_DRIVER_FEATURES_SEL, 0);
	reg_write(dev, GW_VIRTIO_REG_DRIVER_FEATURES, (uint32_t)want);
	reg_write(dev, GW_VIRTIO_REG_DRIVER_FEATURES_SEL, 1);
	reg_write(dev, GW_VIRTIO_REG_DRIVER_FEATURES, (uint32_t)(want >> 32));
	reg_write(dev, GW_VIRTIO_REG_STATUS, GW_VIRTIO_STATUS_NEGOTIATED);
	/* The device says no to a feature set by leaving FEATURES_OK clear. */
	expect_status(dev, GW_VIRTIO_STATUS_NEGOTIATED);
}

uint64_t gw_virtio_config64(const struct gw_virtio *dev, uint32_t offset)
{
	uint32_t generation, lo, hi;

	do {
		generation = reg_read(dev, GW_VIRTIO_REG_CONFIG_GENERATION);
		lo = reg_read(dev, GW_VIRTIO_REG_CONFIG + offset);
		hi = reg_read(dev, GW_VIRTIO_REG_CONFIG + offset + 4);
	} while (reg_read(dev, GW_VIRTIO_REG_CONFIG_GENERATION) != generation);
	return (uint64_t)hi << 32 | lo;
}

/* The three parts back to back: descriptors (16-byte aligned, so at 0),
 * the available ring (2-byte aligned) and the used ring (4-byte aligned). */
static uint64_t avail_offset(unsigned size)
{
	return 16ull * size;
}

static uint64_t used_offset(unsigned size)
{
	return GW_ALIGN_UP(avail_offset(size) + 6 + 2ull * size, 4);
}

uint64_t gw_virtq_bytes(unsigned size)
{
	return GW_ALIGN_UP(used_offset(size) + 6 + 8ull * size, 16);
}

static void write_address(const struct gw_virtio *dev, uint32_t reg_low, const void *p)
{
	uint64_t addr = (uint64_t)(uintptr_t)p;

	reg_write(dev, reg_low, (uint32_t)addr);
	reg_write(dev, reg_low + 4, (uint32_t)(addr >> 32));
}

/* Zeroed (the used ring's flags must start at 0), every descriptor on the
 * free list, linked through next in table order. */
static void init_rings(struct gw_virtio *dev, uint8_t *mem)
{
	for (uint64_t i = 0; i < gw_virtq_bytes(dev->size); i++)
		mem[i] = 0;
	dev->desc = (struct gw_virtq_desc *)mem;
	dev->avail = (struct gw_virtq_avail *)(mem + avail_offset(dev->size));
	dev->used = (struct gw_virtq_used *)(mem + used_offset(dev->size));
	for (unsigned i = 0; i + 1 < dev->size; i++)
		dev->desc[i].next = (uint16_t)(i + 1);
	for (unsigned i = 0; i < dev->size; i++)
		dev->token[i] = NULL;
	dev->nr_free = dev->size;
	dev->free_head = 0;
	dev->avail_idx = dev->kicked_idx = dev->last_used = 0;
	dev->in_flight = 0;
}

unsigned gw_virtio_start(struct gw_virtio *dev, unsigned max_size, void *mem)
{
	uint32_t num_max;

	if (max_size == 0 || max_size > GW_VIRTQ_MAX_SIZE || (max_size & (max_size - 1)) ||
	    (uintptr_t)mem % 16)
		gw_fatal("virtio@0x%lx: bad queue: %u entries at 0x%lx\n", dev->base, max_size,
			 (uint64_t)(uintptr_t)mem);
	reg_write(dev, GW_VIRTIO_REG_QUEUE_SEL, 0);
	expect_reg(dev, GW_VIRTIO_REG_QUEUE_READY, "QueueReady", 0);
	num_max = reg_read(dev, GW_VIRTIO_REG_QUEUE_NUM_MAX);
	if (num_max == 0)
		gw_fatal("virtio@0x%lx: QueueNumMax (0x034) = 0: queue 0 is not available\n",
			 dev->base);
	/* A split queue's size is a power of 2 (2.7). */
	dev->size = (uint16_t)max_size;
	while (dev->size > num_max)
		dev->size /= 2;
	init_rings(dev, mem);

	reg_write(dev, GW_VIRTIO_REG_QUEUE_NUM, dev->size);
	write_address(dev, GW_VIRTIO_REG_QUEUE_DESC_LOW, dev->desc);
	write_address(dev, GW_VIRTIO_REG_QUEUE_DRIVER_LOW, dev->avail);
	write_address(dev, GW_VIRTIO_REG_QUEUE_DEVICE_LOW, dev->used);
	reg_write(dev, GW_VIRTIO_REG_QUEUE_READY, 1);
	reg_write(dev, GW_VIRTIO_REG_STATUS, GW_VIRTIO_STATUS_RUNNING);
	expect_status(dev, GW_VIRTIO_STATUS_RUNNING);
	return dev->size;
}

bool gw_virtq_add(struct gw_virtio *dev, const struct gw_virtq_buf *bufs, unsigned n, void *token)
{
	uint16_t head = dev->free_head, d = head;

	if (n == 0 || n > dev->nr_free)
		return false;
	/* The free list is already linked in chain order: only the flags say
	 * where this chain ends. */
	for (unsigned i = 0; i < n; i++) {
		struct gw_virtq_desc *desc = &dev->desc[d];

		desc->addr = (uint64_t)(uintptr_t)bufs[i].addr;
		desc->len = bufs[i].len;
		desc->flags = (uint16_t)((bufs[i].device_writes ? GW_VIRTQ_DESC_F_WRITE : 0) |
					 (i + 1 < n ? GW_VIRTQ_DESC_F_NEXT : 0));
		d = desc->next;
	}
	dev->free_head = d;
	dev->nr_free = (uint16_t)(dev->nr_free - n);
	dev->token[head] = token;
	dev->in_flight++;
	dev->avail->ring[dev->avail_idx % dev->size] = head;
	/* Release: the descriptors and the ring entry are visible before the
	 * index that hands them to the device (2.7.13.3.1). */
	__atomic_store_n(&dev->avail->idx, ++dev->avail_idx, __ATOMIC_RELEASE);
	return true;
}

/*
 * Always notify rather than honour VIRTQ_USED_F_NO_NOTIFY: the spec only
 * asks a driver not to (SHOULD NOT), the callers add a whole batch before
 * a kick, and a device that suppresses notifications must take spurious
 * ones anyway.
 */
void gw_virtq_kick(struct gw_virtio *dev)
{
	if (dev->kicked_idx == dev->avail_idx)
		return;
	dev->kicked_idx = dev->avail_idx;
	/* avail->idx must be globally visible before the device, woken on
	 * another CPU by this write, looks at it. */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	reg_write(dev, GW_VIRTIO_REG_QUEUE_NOTIFY, 0);
}

/* Acquire: the used elements are read only after the index that
 * published them (2.7.14). */
static uint16_t used_idx(const struct gw_virtio *dev)
{
	uint16_t idx = __atomic_load_n(&dev->used->idx, __ATOMIC_ACQUIRE);

	if ((uint16_t)(idx - dev->last_used) > dev->in_flight)
		gw_fatal("virtio@0x%lx: used->idx = %u, but only %u chains past %u are in flight\n",
			 dev->base, idx, dev->in_flight, dev->last_used);
	return idx;
}

static void wait_used(const struct gw_virtio *dev)
{
	for (uint32_t spins = 1; used_idx(dev) == dev->last_used; spins++) {
		if (spins % STATUS_POLL_SPINS == 0)
			expect_status(dev, GW_VIRTIO_STATUS_RUNNING);
		gw_pause();
	}
}

/* Put the chain that starts at head back on the free list; its token. */
static void *free_chain(struct gw_virtio *dev, uint32_t head)
{
	void *token = head < dev->size ? dev->token[head] : NULL;
	uint16_t tail = (uint16_t)head;
	uint16_t n = 1;

	if (!token)
		gw_fatal("virtio@0x%lx: the used ring returns descriptor %u, not the head of a chain in flight\n",
			 dev->base, head);
	dev->token[head] = NULL;
	while (dev->desc[tail].flags & GW_VIRTQ_DESC_F_NEXT) {
		tail = dev->desc[tail].next;
		n++;
	}
	dev->desc[tail].next = dev->free_head;
	dev->free_head = (uint16_t)head;
	dev->nr_free = (uint16_t)(dev->nr_free + n);
	dev->in_flight--;
	return token;
}

/*
 * The device raised its interrupt line for what was just reaped: lower it
 * (4.2.3.4). A configuration change is how a device announces
 * DEVICE_NEEDS_RESET (2.1.2), so then look at Status.
 */
static void ack_interrupt(const struct gw_virtio *dev)
{
	uint32_t isr = reg_read(dev, GW_VIRTIO_REG_INTERRUPT_STATUS) &
		       (GW_VIRTIO_INT_USED | GW_VIRTIO_INT_CONFIG);

	if (!isr)
		return;
	reg_write(dev, GW_VIRTIO_REG_INTERRUPT_ACK, isr);
	if (isr & GW_VIRTIO_INT_CONFIG)
		expect_status(dev, GW_VIRTIO_STATUS_RUNNING);
}

unsigned gw_virtq_reap(struct gw_virtio *dev, void **tokens, unsigned max)
{
	unsigned n = 0;

	if (!dev->in_flight)
		return 0;
	wait_used(dev);
	while (n < max && dev->last_used != used_idx(dev)) {
		const struct gw_virtq_used_elem *e = &dev->used->ring[dev->last_used % dev->size];

		tokens[n++] = free_chain(dev, e->id);
		dev->last_used++;
	}
	ack_interrupt(dev);
	return n;
}
