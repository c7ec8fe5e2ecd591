/*
 * blkevil: a hostile driver for the virtio-blk device. Case after case it
 * resets the device, sets it up and hands it something no driver may do:
 * a descriptor outside RAM, a chain that loops, a queue of 6 entries, a
 * register written a byte at a time... The device must refuse it (complete
 * the request with IOERR or UNSUPP, set DEVICE_NEEDS_RESET, or leave its
 * registers as they were) and must write no guest memory but the used ring
 * and the buffers a valid request names. After each case one valid write
 * and read prove that the device still works. The cases, the memory layout
 * and the reports are described in README.md.
 */
#include "rt/virtio_blk.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define GOLDEN 0x9e3779b97f4a7c15ull

#define QUEUE_SIZE 8
/* What the arena holds where nobody wrote. */
#define ARENA_FILL 0x5a17c0de5a17c0deull
/* The valid write puts VALID_BYTES at VALID_SECTOR; the host checks that
 * nothing else on the disk changed. */
#define VALID_SECTOR 8
#define VALID_BYTES 4096
#define DATA_PAGES 2
#define IN_FLIGHT_BYTES (1u << 20)
/* Two descriptors of this size make a chain of more than the 16 MiB the
 * device takes (VQ_MAX_BYTES), each one alone under it. */
#define BIG_DESC (9u << 20)
#define VIRTIO_F_RING_INDIRECT_DESC (1ull << 28)

/* Status polls (VM exits, a few µs each) before a request that neither
 * completes nor makes the device need a reset counts as a hang. */
#define WAIT_POLLS (1u << 18)
/* This device resets at once; a slower one gets this many polls. */
#define RESET_POLLS (1u << 16)
/* How long memory is watched after a reset for a write arriving late. */
#define QUIET_POLLS 10000

/*
 * The arena, in pages from the first 2 MiB boundary after the image, then
 * its copy (as many pages), then IN_FLIGHT_BYTES for reset-in-flight. Each
 * part of the arena the device is handed has a canary page (named by no
 * request) on both sides, and all of it is checked, several times a case,
 * against the copy, which holds what the guest itself wrote there.
 */
enum {
	PG_QUEUE = 1, /* the rings gw_blk_start sets up */
	PG_REQ = 3,   /* headers, status bytes, an indirect table */
	PG_DATA = 5,  /* DATA_PAGES: the bad requests' data, the queue cases' rings */
	PG_READ = PG_DATA + DATA_PAGES + 1, /* the valid read's buffer */
	PG_WRITE = PG_READ + 2,             /* the valid write's data */
	ARENA_PAGES = PG_WRITE + 2,
};

/* In the PG_REQ page. */
enum {
	OFF_HDR = 0,     /* the request under test */
	OFF_STATUS = 64, /* its status byte */
	OFF_TABLE = 128, /* an indirect table (one descriptor to the data) */
	OFF_HDR2 = 192,  /* a FLUSH, to see whether the device still takes requests */
	OFF_STATUS2 = 256,
};

/* In the first PG_DATA page: the rings of the queue cases, room for a
 * queue of 64 (the cases that ask for more must be refused for the size). */
enum { QOFF_DESC = 0, QOFF_AVAIL = 1024, QOFF_USED = 2048 };

/* Where a descriptor or a queue part points, plus an offset. */
enum where {
	AT_HDR,
	AT_STATUS,
	AT_TABLE,
	AT_HDR2,
	AT_STATUS2,
	AT_DATA,
	AT_READ,
	AT_WRITE,
	AT_BIG,     /* IN_FLIGHT_BYTES past the arena's copy */
	AT_RAM_END, /* the first byte after RAM */
	AT_ABS,     /* the offset alone: an absolute guest-physical address */
	AT_RING,    /* queue cases: where that part of the queue belongs */
};

/* What the device did with a request: a status it completed it with
 * (GW_BLK_S_*), or DEVICE_NEEDS_RESET; REFUSED is a queue or a feature set
 * that did not take, which is all a register write can be answered with. */
enum outcome { O_OK, O_IOERR, O_UNSUPP, O_RESET, O_REFUSED };

static const char *const outcome_name[] = {"OK", "IOERR", "UNSUPP", "needs reset", "refused"};

#define X_REFUSALS ((1u << O_IOERR) | (1u << O_UNSUPP) | (1u << O_RESET))

struct span {
	uint64_t addr, len;
};

/* The rings the device is using, whoever set them up. */
struct rings {
	struct gw_virtq_desc *desc;
	struct gw_virtq_avail *avail;
	struct gw_virtq_used *used;
	uint16_t avail_idx; /* avail->idx as published */
	uint16_t used_seen; /* used->idx up to which completions were checked */
};

static struct {
	const struct gw_guest_config *cfg;
	uint64_t base; /* the device's registers */
	struct gw_blk blk;
	uint8_t *arena, *copy;
	struct rings q;
	unsigned nr; /* the case running, from 1 */
	const char *name;
} e;

/* --- reports ------------------------------------------------------------ */

__attribute__((noreturn, cold)) static void failed(void)
{
	gw_testdev(GW_TD_CHECK_FAIL, e.nr);
	gw_exit(GW_EXIT_CHECK_FAILED);
}

__attribute__((noreturn, cold)) static void fail(const char *what, uint64_t value)
{
	gw_printf("blkevil: %u %s: FAILED: %s (0x%lx)\n", e.nr, e.name, what, value);
	failed();
}

/* --- registers ------------------------------------------------------------ */

/* One mov of exactly this width: the device sees the access as written,
 * which for the narrow and wide cases is the whole point. */
#define MMIO_LOAD(insn, type, addr)                                         \
	({                                                                  \
		type v_;                                                    \
		__asm__ volatile(insn " %1, %0"                             \
				 : "=r"(v_)                                 \
				 : "m"(*(volatile type *)(uintptr_t)(addr)) \
				 : "memory");                               \
		v_;                                                         \
	})
#define MMIO_STORE(insn, type, addr, v)                              \
	__asm__ volatile(insn " %1, %0"                              \
			 : "=m"(*(volatile type *)(uintptr_t)(addr)) \
			 : "r"((type)(v))                            \
			 : "memory")

static uint64_t mmio_read(uint64_t off, unsigned size)
{
	uint64_t a = e.base + off;

	switch (size) {
	case 1:
		return MMIO_LOAD("movb", uint8_t, a);
	case 2:
		return MMIO_LOAD("movw", uint16_t, a);
	case 4:
		return MMIO_LOAD("movl", uint32_t, a);
	}
	return MMIO_LOAD("movq", uint64_t, a);
}

static void mmio_write(uint64_t off, unsigned size, uint64_t v)
{
	uint64_t a = e.base + off;

	switch (size) {
	case 1:
		MMIO_STORE("movb", uint8_t, a, v);
		return;
	case 2:
		MMIO_STORE("movw", uint16_t, a, v);
		return;
	case 4:
		MMIO_STORE("movl", uint32_t, a, v);
		return;
	}
	MMIO_STORE("movq", uint64_t, a, v);
}

static uint32_t reg(uint64_t off)
{
	return (uint32_t)mmio_read(off, 4);
}

static void set_reg(uint64_t off, uint32_t v)
{
	mmio_write(off, 4, v);
}

static void set_reg64(uint64_t off_low, uint64_t v)
{
	set_reg(off_low, (uint32_t)v);
	set_reg(off_low + 4, (uint32_t)(v >> 32));
}

static void notify(uint32_t queue)
{
	/* The rings must be globally visible before the device looks. */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	set_reg(GW_VIRTIO_REG_QUEUE_NOTIFY, queue);
}

/* --- the arena ------------------------------------------------------------ */

static uint64_t page(unsigned pg)
{
	return (uint64_t)(uintptr_t)e.arena + (uint64_t)pg * GW_PAGE_SIZE;
}

static uint64_t address(enum where w, int64_t off)
{
	uint64_t base = 0;

	switch (w) {
	case AT_HDR:
		base = page(PG_REQ) + OFF_HDR;
		break;
	case AT_STATUS:
		base = page(PG_REQ) + OFF_STATUS;
		break;
	case AT_TABLE:
		base = page(PG_REQ) + OFF_TABLE;
		break;
	case AT_HDR2:
		base = page(PG_REQ) + OFF_HDR2;
		break;
	case AT_STATUS2:
		base = page(PG_REQ) + OFF_STATUS2;
		break;
	case AT_DATA:
		base = page(PG_DATA);
		break;
	case AT_READ:
		base = page(PG_READ);
		break;
	case AT_WRITE:
		base = page(PG_WRITE);
		break;
	case AT_BIG:
		base = (uint64_t)(uintptr_t)e.copy + ARENA_PAGES * GW_PAGE_SIZE;
		break;
	case AT_RAM_END:
		base = e.cfg->ram_size;
		break;
	case AT_ABS:
	case AT_RING:
		break;
	}
	return base + (uint64_t)off;
}

static void fill_arena(void)
{
	volatile uint64_t *a = (volatile uint64_t *)e.arena;
	uint64_t *c = (uint64_t *)e.copy;

	for (uint64_t i = 0; i < ARENA_PAGES * GW_PAGE_QWORDS; i++)
		a[i] = c[i] = ARENA_FILL ^ (i * GOLDEN);
}

/*
 * The guest wrote [addr, addr + len) of the arena: the copy takes it, so
 * that the copy always holds what the arena must hold if the device wrote
 * nothing. By qwords when it can: under an emulated CPU every guest
 * instruction costs about a microsecond.
 */
static void mine(uint64_t addr, uint64_t len)
{
	uint64_t off = addr - (uint64_t)(uintptr_t)e.arena;
	const volatile uint8_t *a = e.arena + off;
	uint8_t *c = e.copy + off;

	if (off % 8 == 0 && len % 8 == 0) {
		for (uint64_t i = 0; i < len / 8; i++)
			((uint64_t *)c)[i] = ((const volatile uint64_t *)a)[i];
		return;
	}
	for (uint64_t i = 0; i < len; i++)
		c[i] = a[i];
}

/* Whether [addr, addr + len) lies in one of ok[]. */
static bool inside(uint64_t addr, uint64_t len, const struct span *ok, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		if (addr - ok[i].addr < ok[i].len && ok[i].len - (addr - ok[i].addr) >= len)
			return true;
	return false;
}

static void check_qword(uint64_t i, const struct span *ok, unsigned n)
{
	uint64_t diff = ((const volatile uint64_t *)e.arena)[i] ^ ((const uint64_t *)e.copy)[i];
	uint64_t addr = (uint64_t)(uintptr_t)e.arena + i * 8;

	/* A read's buffer differs all through: no need to look byte by byte. */
	if (!diff || inside(addr, 8, ok, n))
		return;
	for (unsigned b = 0; diff; b++, diff >>= 8)
		if ((diff & 0xff) && !inside(addr + b, 1, ok, n))
			fail("the device wrote outside the buffers it was given, at", addr + b);
}

/*
 * Every byte of the arena that differs from the copy must be in ok[];
 * then what the device wrote there is what the next check expects. Eight
 * qwords at a time, looked at closely only where they differ: this runs
 * a few times per case, on an emulated CPU.
 */
static void check_arena(const struct span *ok, unsigned n)
{
	const volatile uint64_t *a = (const volatile uint64_t *)e.arena;
	const uint64_t *c = (const uint64_t *)e.copy;

	for (uint64_t i = 0; i < ARENA_PAGES * GW_PAGE_QWORDS; i += 8) {
		uint64_t diff = 0;

#pragma GCC unroll 8
		for (unsigned k = 0; k < 8; k++)
			diff |= a[i + k] ^ c[i + k];
		for (unsigned k = 0; diff && k < 8; k++)
			check_qword(i + k, ok, n);
	}
	for (unsigned i = 0; i < n; i++)
		mine(ok[i].addr, ok[i].len);
}

static struct span used_ring(void)
{
	return (struct span){(uint64_t)(uintptr_t)e.q.used,
			     sizeof(struct gw_virtq_used) +
				     QUEUE_SIZE * sizeof(struct gw_virtq_used_elem) + 2};
}

/* --- the device ----------------------------------------------------------- */

/* Reset, negotiate and a queue of QUEUE_SIZE in PG_QUEUE, by the runtime's
 * driver (which ends the guest if the device breaks the protocol there). */
static void start_blk(void)
{
	gw_blk_start(&e.blk, e.base, 2, (void *)(uintptr_t)page(PG_QUEUE));
	if (e.blk.dev.size != QUEUE_SIZE)
		gw_fatal("blkevil: the device gave a queue of %u entries, the cases need %u\n",
			 e.blk.dev.size, QUEUE_SIZE);
	mine(page(PG_QUEUE), gw_virtq_bytes(QUEUE_SIZE));
	e.q = (struct rings){e.blk.dev.desc, e.blk.dev.avail, e.blk.dev.used, 0, 0};
}

/*
 * 2.4: a reset is complete when Status reads 0. It also has to lower the
 * interrupt and forget the queue; and this device waits for every request
 * it took first, so once it reads 0 nothing more may change in memory.
 */
static void reset_device(void)
{
	uint32_t v;

	set_reg(GW_VIRTIO_REG_STATUS, 0);
	for (uint32_t i = 0; (v = reg(GW_VIRTIO_REG_STATUS)) != 0; i++)
		if (i == RESET_POLLS)
			fail("Status does not read 0 after a reset", v);
	v = reg(GW_VIRTIO_REG_INTERRUPT_STATUS) & (GW_VIRTIO_INT_USED | GW_VIRTIO_INT_CONFIG);
	if (v)
		fail("InterruptStatus after a reset", v);
	set_reg(GW_VIRTIO_REG_QUEUE_SEL, 0);
	if (reg(GW_VIRTIO_REG_QUEUE_READY))
		fail("QueueReady after a reset", 1);
}

static void set_desc(unsigned i, enum where w, int64_t off, uint32_t len, uint16_t flags,
		     uint16_t next)
{
	e.q.desc[i] = (struct gw_virtq_desc){address(w, off), len, flags, next};
	mine((uint64_t)(uintptr_t)&e.q.desc[i], sizeof(e.q.desc[i]));
}

static void set_header(enum where hdr, enum where status, uint32_t type, uint64_t sector)
{
	volatile uint32_t *h = (volatile uint32_t *)(uintptr_t)address(hdr, 0);

	h[0] = type;
	h[1] = 0;
	*(volatile uint64_t *)&h[2] = sector;
	*(volatile uint8_t *)(uintptr_t)address(status, 0) = 0xff;
	mine(address(hdr, 0), 16);
	mine(address(status, 0), 1);
}

/* Put head in the avail ring and move avail->idx by step (1 for a driver
 * that follows the rules). */
static void publish(uint16_t head, uint16_t step)
{
	e.q.avail->ring[e.q.avail_idx % QUEUE_SIZE] = head;
	e.q.avail_idx = (uint16_t)(e.q.avail_idx + step);
	/* Release: the descriptors before the index that hands them over. */
	__atomic_store_n(&e.q.avail->idx, e.q.avail_idx, __ATOMIC_RELEASE);
	mine((uint64_t)(uintptr_t)e.q.avail, 4 + 2 * QUEUE_SIZE);
}

/* The device gave up on the ring; it has to say so with a configuration
 * change interrupt (2.1.2), or a driver that sleeps would never know. */
static enum outcome needs_reset(void)
{
	uint32_t isr = reg(GW_VIRTIO_REG_INTERRUPT_STATUS);

	if (!(isr & GW_VIRTIO_INT_CONFIG))
		fail("DEVICE_NEEDS_RESET without a configuration change interrupt", isr);
	return O_RESET;
}

/* A request made available, and what may come of it. */
struct expect {
	const char *what; /* for the failure line */
	uint16_t head;
	enum where status;
	uint32_t ok_len;   /* bytes the device writes when it succeeds */
	unsigned outcomes; /* those allowed, 1 << enum outcome */
};

static enum outcome allowed(const struct expect *x, enum outcome o)
{
	if (!(x->outcomes & (1u << o))) {
		gw_printf("blkevil: %u %s: FAILED: %s: %s\n", e.nr, e.name, x->what,
			  outcome_name[o]);
		failed();
	}
	return o;
}

static enum outcome completion(const struct expect *x, uint16_t idx)
{
	const struct gw_virtq_used_elem *el = &e.q.used->ring[e.q.used_seen % QUEUE_SIZE];
	uint8_t st = *(volatile uint8_t *)(uintptr_t)address(x->status, 0);

	if ((uint16_t)(idx - e.q.used_seen) != 1)
		fail("used->idx moved past the one chain made available", idx);
	if (el->id != x->head)
		fail("the used ring returns a chain that was not made available", el->id);
	e.q.used_seen = idx;
	if (st > GW_BLK_S_UNSUPP)
		fail("completed with a status that is not OK, IOERR or UNSUPP", st);
	allowed(x, (enum outcome)st);
	/* A refused request put nothing in memory but its status byte. */
	if (el->len != (st == GW_BLK_S_OK ? x->ok_len : 1))
		fail("the used length is not the bytes written", el->len);
	return (enum outcome)st;
}

/* Wait until the chain comes back or the device needs a reset. */
static enum outcome wait_outcome(const struct expect *x)
{
	for (uint32_t i = 0; i < WAIT_POLLS; i++) {
		uint16_t idx = __atomic_load_n(&e.q.used->idx, __ATOMIC_ACQUIRE);

		if (idx != e.q.used_seen)
			return completion(x, idx);
		if (reg(GW_VIRTIO_REG_STATUS) & GW_VIRTIO_STATUS_NEEDS_RESET)
			return allowed(x, needs_reset());
		gw_pause();
	}
	fail("neither completed nor set DEVICE_NEEDS_RESET: hung after polls", WAIT_POLLS);
}

/* A FLUSH in descriptors `first` and first + 1, made available. */
static void flush_request(unsigned first)
{
	set_header(AT_HDR2, AT_STATUS2, GW_BLK_T_FLUSH, 0);
	set_desc(first, AT_HDR2, 0, 16, GW_VIRTQ_DESC_F_NEXT, (uint16_t)(first + 1));
	set_desc(first + 1, AT_STATUS2, 0, 1, GW_VIRTQ_DESC_F_WRITE, 0);
	publish((uint16_t)first, 1);
}

/*
 * After a case that the device may have ignored: either it gave up
 * (DEVICE_NEEDS_RESET) or its queue must still work as set up, which a
 * FLUSH proves (published: one is already in the ring). Then the reset
 * and the check that only the used ring and the FLUSH's status changed.
 */
static bool still_works(bool published)
{
	const struct span ok[] = {used_ring(), {address(AT_STATUS2, 0), 1}};
	uint32_t status = reg(GW_VIRTIO_REG_STATUS);
	bool running = !(status & GW_VIRTIO_STATUS_NEEDS_RESET);

	if (!running) {
		needs_reset();
	} else {
		if (status != GW_VIRTIO_STATUS_RUNNING)
			fail("Status changed", status);
		if (!reg(GW_VIRTIO_REG_QUEUE_READY))
			fail("queue 0 is no longer ready", 0);
		if (!published)
			flush_request(0);
		notify(0);
		wait_outcome(&(const struct expect){"a valid FLUSH", 0, AT_STATUS2, 1, 1u << O_OK});
	}
	reset_device();
	check_arena(ok, ARRAY_SIZE(ok));
	return running;
}

/* --- the valid write and read after every case ---------------------------- */

static uint64_t valid_qword(uint64_t i)
{
	return ((uint64_t)e.nr << 32 | i) * GOLDEN;
}

static void valid_request(const char *what, uint32_t type, enum where buf, uint16_t flags,
			  uint32_t ok_len)
{
	set_header(AT_HDR, AT_STATUS, type, VALID_SECTOR);
	set_desc(0, AT_HDR, 0, 16, GW_VIRTQ_DESC_F_NEXT, 1);
	set_desc(1, buf, 0, VALID_BYTES, GW_VIRTQ_DESC_F_NEXT | flags, 2);
	set_desc(2, AT_STATUS, 0, 1, GW_VIRTQ_DESC_F_WRITE, 0);
	publish(0, 1);
	notify(0);
	wait_outcome(&(const struct expect){what, 0, AT_STATUS, ok_len, 1u << O_OK});
}

static void prove_alive(void)
{
	volatile uint64_t *w = (volatile uint64_t *)(uintptr_t)page(PG_WRITE);
	const volatile uint64_t *r = (const volatile uint64_t *)(uintptr_t)page(PG_READ);

	for (uint64_t i = 0; i < VALID_BYTES / 8; i++)
		w[i] = valid_qword(i);
	mine(page(PG_WRITE), VALID_BYTES);
	start_blk();
	valid_request("the valid write after the case", GW_BLK_T_OUT, AT_WRITE, 0, 1);
	valid_request("the valid read after the case", GW_BLK_T_IN, AT_READ, GW_VIRTQ_DESC_F_WRITE,
		      VALID_BYTES + 1);
	for (uint64_t i = 0; i < VALID_BYTES / 8; i++)
		if (r[i] != valid_qword(i))
			fail("a valid read after the case returned other data, at qword", i);
	reset_device();
	const struct span ok[] = {used_ring(),
				  {address(AT_STATUS, 0), 1},
				  {page(PG_READ), VALID_BYTES}};
	check_arena(ok, ARRAY_SIZE(ok));
}

/* --- bad chains ------------------------------------------------------------- */

struct ddesc {
	enum where where;
	int64_t off;
	uint32_t len;
	uint16_t flags, next;
};

/* A case names only what differs from a read (IN, type 0) of sector 0;
 * descriptors it does not name are zero, and are on no chain. */
struct chain_case {
	const char *name;
	uint32_t type;
	int64_t sector;
	bool from_end;              /* sector counts from the capacity */
	struct ddesc d[QUEUE_SIZE]; /* the whole descriptor table */
	uint16_t head;              /* the avail ring's entry */
	uint16_t avail_step;        /* how far avail->idx moves; 0: by 1 */
	unsigned expect;            /* outcomes allowed; 0: X_REFUSALS */
};

#define F_N GW_VIRTQ_DESC_F_NEXT
#define F_W GW_VIRTQ_DESC_F_WRITE
#define F_NW (F_N | F_W)
/* A request as drivers make them: header (0) -> data (1) -> status (2). */
/* clang-format off */
#define HDR {AT_HDR, 0, 16, F_N, 1}
#define DATA_IN(len) {AT_DATA, 0, len, F_NW, 2}
#define DATA_OUT(len) {AT_DATA, 0, len, F_N, 2}
#define STATUS {AT_STATUS, 0, 1, F_W, 0}
/* Writable data that goes on to descriptor next. */
#define DATA_TO(next) {AT_DATA, 0, 512, F_NW, next}
/* clang-format on */

static const struct chain_case chain_cases[] = {
	/* Buffers the device cannot reach. */
	{.name = "desc-beyond-ram", .d = {HDR, {AT_RAM_END, 0, 512, F_NW, 2}, STATUS}},
	{.name = "desc-across-ram-end", .d = {HDR, {AT_RAM_END, -256, 512, F_NW, 2}, STATUS}},
	/* The device's own registers. */
	{.name = "desc-in-mmio-hole",
	 .d = {HDR, {AT_ABS, GW_VIRTIO_MMIO_BASE, 512, F_NW, 2}, STATUS}},
	{.name = "desc-above-4g", .d = {HDR, {AT_ABS, 1ll << 32, 512, F_NW, 2}, STATUS}},
	/* Ends at 0x200, in RAM, for a device that checks only the end. */
	{.name = "desc-wraps-2^64", .d = {HDR, {AT_ABS, -512, 1024, F_NW, 2}, STATUS}},
	{.name = "desc-len-4g-1", .d = {HDR, DATA_IN(0xffffffffu), STATUS}},
	{.name = "header-in-mmio-hole",
	 .d = {{AT_ABS, 0xfee00000, 16, F_N, 1}, DATA_IN(512), STATUS}},
	{.name = "status-beyond-ram", .d = {HDR, DATA_IN(512), {AT_RAM_END, 0, 1, F_W, 0}}},
	{.name = "chain-over-16m",
	 .type = GW_BLK_T_OUT,
	 .d = {HDR, {AT_ABS, 0, BIG_DESC, F_N, 2}, {AT_ABS, 0, BIG_DESC, F_N, 3}, STATUS}},
	/* Chains that do not end. */
	{.name = "chain-loops-back", .d = {HDR, DATA_IN(512), {AT_STATUS, 0, 1, F_NW, 1}}},
	{.name = "chain-self-loop", .d = {HDR, DATA_TO(1)}},
	{.name = "chain-longer-than-queue",
	 .d = {HDR, DATA_TO(2), DATA_TO(3), DATA_TO(4), DATA_TO(5), DATA_TO(6), DATA_TO(7),
	       DATA_TO(1)}},
	{.name = "next-beyond-queue", .d = {HDR, DATA_TO(QUEUE_SIZE)}},
	{.name = "next-0xffff", .d = {HDR, DATA_TO(0xffff)}},
	{.name = "head-beyond-queue", .d = {HDR, DATA_IN(512), STATUS}, .head = QUEUE_SIZE},
	{.name = "avail-idx-jump", .d = {HDR, DATA_IN(512), STATUS}, .avail_step = QUEUE_SIZE + 1},
	/* Chains in the wrong shape. */
	{.name = "readable-after-writable",
	 .d = {HDR, DATA_IN(512), {AT_HDR, 0, 16, F_N, 3}, {AT_STATUS, 0, 1, F_W, 0}}},
	{.name = "indirect-not-offered",
	 .d = {HDR, {AT_TABLE, 0, 16, F_N | GW_VIRTQ_DESC_F_INDIRECT, 2}, STATUS}},
	{.name = "header-short", .d = {{AT_HDR, 0, 8, F_N, 1}, DATA_IN(512), STATUS}},
	{.name = "header-writable", .d = {{AT_HDR, 0, 16, F_NW, 1}, DATA_IN(512), STATUS}},
	{.name = "no-writable-desc", .d = {HDR, {AT_DATA, 0, 512, 0, 0}}},
	{.name = "status-len-0", .d = {HDR, DATA_IN(512), {AT_STATUS, 0, 0, F_W, 0}}},
	/* Well-formed chains asking for what the disk cannot do. */
	{.name = "in-beyond-capacity", .from_end = true, .d = {HDR, DATA_IN(512), STATUS}},
	{.name = "out-across-capacity",
	 .type = GW_BLK_T_OUT,
	 .sector = -1,
	 .from_end = true,
	 .d = {HDR, DATA_OUT(1024), STATUS}},
	/* Sector 2^55 is byte 2^64: 0 for a device that multiplies first. */
	{.name = "out-sector-wraps",
	 .type = GW_BLK_T_OUT,
	 .sector = 1ll << 55,
	 .d = {HDR, DATA_OUT(512), STATUS}},
	{.name = "in-len-not-sectors", .d = {HDR, DATA_IN(100), STATUS}},
	{.name = "out-len-not-sectors", .type = GW_BLK_T_OUT, .d = {HDR, DATA_OUT(1000), STATUS}},
	{.name = "type-unknown",
	 .type = 0x7fffffff,
	 .d = {HDR, DATA_IN(512), STATUS},
	 .expect = 1u << O_UNSUPP},
	/* VIRTIO_BLK_T_DISCARD, whose feature was not offered. */
	{.name = "type-discard",
	 .type = 11,
	 .d = {HDR, DATA_OUT(512), STATUS},
	 .expect = 1u << O_UNSUPP},
};

/*
 * After DEVICE_NEEDS_RESET the device takes nothing more until it is
 * reset: a valid FLUSH made available now must not run. The reset that
 * follows waits for whatever the device took, so if it ran, the check of
 * the arena sees its status byte.
 */
static void takes_nothing_more(void)
{
	flush_request(QUEUE_SIZE - 2);
	notify(0);
}

static const char *run_chain_case(const void *arg)
{
	const struct chain_case *c = arg;
	uint64_t sector = c->from_end ? e.blk.capacity + (uint64_t)c->sector : (uint64_t)c->sector;
	unsigned expect = c->expect ? c->expect : X_REFUSALS;
	volatile struct gw_virtq_desc *table =
		(volatile struct gw_virtq_desc *)(uintptr_t)address(AT_TABLE, 0);
	enum outcome o;

	start_blk();
	*table = (struct gw_virtq_desc){address(AT_DATA, 0), 512, GW_VIRTQ_DESC_F_WRITE, 0};
	mine(address(AT_TABLE, 0), sizeof(*table));
	set_header(AT_HDR, AT_STATUS, c->type, sector);
	for (unsigned i = 0; i < QUEUE_SIZE; i++)
		set_desc(i, c->d[i].where, c->d[i].off, c->d[i].len, c->d[i].flags, c->d[i].next);
	publish(c->head, c->avail_step ? c->avail_step : 1);
	notify(0);
	o = wait_outcome(&(const struct expect){"the bad request", c->head, AT_STATUS, 0, expect});
	if (o == O_RESET)
		takes_nothing_more();
	reset_device();
	const struct span ok[] = {used_ring(), {address(AT_STATUS, 0), 1}};
	check_arena(ok, ARRAY_SIZE(ok));
	return outcome_name[o];
}

/* --- bad queues ------------------------------------------------------------- */

enum part { PART_NONE = -1, PART_DESC, PART_AVAIL, PART_USED };

struct queue_case {
	const char *name;
	uint32_t num; /* QueueNum; 0 with over_max: twice QueueNumMax */
	bool over_max;
	enum part part;   /* the part whose address is wrong */
	enum where where; /* and where it is */
	int64_t off;
};

static const struct queue_case queue_cases[] = {
	{"queue-num-0", 0, false, PART_NONE, AT_RING, 0},
	{"queue-num-6", 6, false, PART_NONE, AT_RING, 0},
	{"queue-num-over-max", 0, true, PART_NONE, AT_RING, 0},
	/* 8 for a device that keeps 16 bits of it. */
	{"queue-num-0x10008", 0x10008, false, PART_NONE, AT_RING, 0},
	{"queue-desc-beyond-ram", 8, false, PART_DESC, AT_RAM_END, 0},
	{"queue-avail-across-ram-end", 8, false, PART_AVAIL, AT_RAM_END, -4},
	{"queue-used-in-mmio-hole", 8, false, PART_USED, AT_ABS, 0xfee00000},
	{"queue-used-wraps-2^64", 8, false, PART_USED, AT_ABS, -16},
	{"queue-desc-above-4g", 8, false, PART_DESC, AT_ABS, 1ll << 32},
	{"queue-desc-misaligned", 8, false, PART_DESC, AT_RING, 8},
	{"queue-avail-misaligned", 8, false, PART_AVAIL, AT_RING, 1},
	{"queue-used-misaligned", 8, false, PART_USED, AT_RING, 2},
};

/*
 * The queue is set up by hand with one thing wrong, over rings that hold
 * a valid FLUSH. QueueReady = 1 must not take: DEVICE_NEEDS_RESET, or the
 * queue stays not ready. The driver then goes on as if it had (DRIVER_OK,
 * a notification), and nothing may be written: not even the FLUSH's
 * status, and no used ring, wherever it was said to be.
 */
static const char *run_queue_case(const void *arg)
{
	const struct queue_case *c = arg;
	uint64_t at[3] = {page(PG_DATA) + QOFF_DESC, page(PG_DATA) + QOFF_AVAIL,
			  page(PG_DATA) + QOFF_USED};
	volatile uint64_t *rings = (volatile uint64_t *)(uintptr_t)at[0];
	uint32_t num = c->num;
	enum outcome o;

	gw_virtio_probe(&e.blk.dev, e.base, GW_VIRTIO_ID_BLOCK);
	gw_virtio_negotiate(&e.blk.dev, 0);
	set_reg(GW_VIRTIO_REG_QUEUE_SEL, 0);
	if (c->over_max)
		num = 2 * reg(GW_VIRTIO_REG_QUEUE_NUM_MAX);
	for (uint64_t i = 0; i < GW_PAGE_SIZE / 8; i++)
		rings[i] = 0;
	mine(at[0], GW_PAGE_SIZE);
	e.q = (struct rings){(struct gw_virtq_desc *)(uintptr_t)at[PART_DESC],
			     (struct gw_virtq_avail *)(uintptr_t)at[PART_AVAIL],
			     (struct gw_virtq_used *)(uintptr_t)at[PART_USED], 0, 0};
	flush_request(0);
	if (c->part != PART_NONE)
		at[c->part] = c->where == AT_RING ? at[c->part] + (uint64_t)c->off :
						    address(c->where, c->off);

	set_reg(GW_VIRTIO_REG_QUEUE_NUM, num);
	set_reg64(GW_VIRTIO_REG_QUEUE_DESC_LOW, at[PART_DESC]);
	set_reg64(GW_VIRTIO_REG_QUEUE_DRIVER_LOW, at[PART_AVAIL]);
	set_reg64(GW_VIRTIO_REG_QUEUE_DEVICE_LOW, at[PART_USED]);
	set_reg(GW_VIRTIO_REG_QUEUE_READY, 1);
	if (reg(GW_VIRTIO_REG_STATUS) & GW_VIRTIO_STATUS_NEEDS_RESET)
		o = needs_reset();
	else if (!reg(GW_VIRTIO_REG_QUEUE_READY))
		o = O_REFUSED;
	else
		fail("the queue was made ready, QueueNum", num);
	set_reg(GW_VIRTIO_REG_STATUS, GW_VIRTIO_STATUS_RUNNING);
	notify(0);
	reset_device();
	check_arena(NULL, 0);
	return outcome_name[o];
}

/* --- registers and the rest ------------------------------------------------ */

static const char *features_not_offered(const void *arg)
{
	/* One the device does not offer; then none, not even VERSION_1. */
	static const uint64_t asked[] = {GW_VIRTIO_F_VERSION_1 | VIRTIO_F_RING_INDIRECT_DESC, 0};

	(void)arg;
	for (unsigned i = 0; i < ARRAY_SIZE(asked); i++) {
		uint32_t status;

		gw_virtio_probe(&e.blk.dev, e.base, GW_VIRTIO_ID_BLOCK);
		set_reg(GW_VIRTIO_REG_DRIVER_FEATURES_SEL, 0);
		set_reg(GW_VIRTIO_REG_DRIVER_FEATURES, (uint32_t)asked[i]);
		set_reg(GW_VIRTIO_REG_DRIVER_FEATURES_SEL, 1);
		set_reg(GW_VIRTIO_REG_DRIVER_FEATURES, (uint32_t)(asked[i] >> 32));
		set_reg(GW_VIRTIO_REG_STATUS, GW_VIRTIO_STATUS_NEGOTIATED);
		status = reg(GW_VIRTIO_REG_STATUS);
		if (status & GW_VIRTIO_STATUS_FEATURES_OK)
			fail("FEATURES_OK took for features not offered", asked[i]);
		reset_device();
	}
	check_arena(NULL, 0);
	return outcome_name[O_REFUSED];
}

/* Queue 1 and queue 0xffffffff do not exist: they have no size and cannot
 * be made ready, whatever is written for them. */
static const char *select_no_such_queue(const void *arg)
{
	static const uint32_t sel[] = {1, 0xffffffffu};

	(void)arg;
	start_blk();
	for (unsigned i = 0; i < ARRAY_SIZE(sel); i++) {
		uint32_t v;

		set_reg(GW_VIRTIO_REG_QUEUE_SEL, sel[i]);
		if ((v = reg(GW_VIRTIO_REG_QUEUE_NUM_MAX)))
			fail("a queue that does not exist has a QueueNumMax", v);
		set_reg(GW_VIRTIO_REG_QUEUE_NUM, QUEUE_SIZE);
		set_reg64(GW_VIRTIO_REG_QUEUE_DESC_LOW, address(AT_RAM_END, 0));
		set_reg64(GW_VIRTIO_REG_QUEUE_DRIVER_LOW, address(AT_ABS, 0xfee00000));
		set_reg64(GW_VIRTIO_REG_QUEUE_DEVICE_LOW, address(AT_ABS, -8));
		set_reg(GW_VIRTIO_REG_QUEUE_READY, 1);
		if (reg(GW_VIRTIO_REG_QUEUE_READY))
			fail("a queue that does not exist became ready", sel[i]);
	}
	set_reg(GW_VIRTIO_REG_QUEUE_SEL, 0);
	return still_works(false) ? "ignored" : outcome_name[O_RESET];
}

/* Without VIRTIO_F_NOTIFICATION_DATA the whole value is the queue's index:
 * 0x10000 is not queue 0. */
static const char *notify_no_such_queue(const void *arg)
{
	static const uint32_t queue[] = {1, 0xffff, 0x10000, 0xffffffffu};

	(void)arg;
	start_blk();
	flush_request(0);
	for (unsigned i = 0; i < ARRAY_SIZE(queue); i++)
		notify(queue[i]);
	return still_works(true) ? "ignored" : outcome_name[O_RESET];
}

/* A queue's layout changes only while it is not ready (4.2.2.3). */
static const char *queue_change_while_ready(const void *arg)
{
	(void)arg;
	start_blk();
	set_reg(GW_VIRTIO_REG_QUEUE_NUM, 3);
	set_reg64(GW_VIRTIO_REG_QUEUE_DESC_LOW, address(AT_RAM_END, 0));
	set_reg64(GW_VIRTIO_REG_QUEUE_DRIVER_LOW, address(AT_ABS, 0xfee00000));
	set_reg64(GW_VIRTIO_REG_QUEUE_DEVICE_LOW, address(AT_ABS, -8));
	return still_works(false) ? "ignored" : outcome_name[O_RESET];
}

/* A read that the device must answer with nothing: MagicValue is read
 * first, so that a device that leaves the answer unwritten returns what
 * was there before, not zeroes. */
static uint64_t unanswered_read(uint64_t off, unsigned size)
{
	reg(GW_VIRTIO_REG_MAGIC);
	return mmio_read(off, size);
}

struct access {
	uint16_t off;
	uint8_t size;
};

/* Registers are 32-bit and aligned (4.2.2.2); anything else must give back
 * nothing (this device reads it as 0: never a byte of host memory). */
static const char *narrow_register_reads(const void *arg)
{
	static const struct access reads[] = {
		{GW_VIRTIO_REG_MAGIC, 1},         {GW_VIRTIO_REG_MAGIC, 2},
		{GW_VIRTIO_REG_MAGIC, 8},         {GW_VIRTIO_REG_MAGIC + 1, 4},
		{GW_VIRTIO_REG_VERSION + 2, 2},   {GW_VIRTIO_REG_STATUS, 1},
		{GW_VIRTIO_REG_QUEUE_READY, 8},   {GW_VIRTIO_REG_INTERRUPT_STATUS + 3, 1},
		{GW_VIRTIO_REG_QUEUE_NUM_MAX, 2},
	};

	(void)arg;
	start_blk();
	for (unsigned i = 0; i < ARRAY_SIZE(reads); i++) {
		uint64_t v = unanswered_read(reads[i].off, reads[i].size);

		if (v)
			fail("a register read of the wrong size or alignment returned", v);
	}
	return still_works(false) ? "read as 0" : outcome_name[O_RESET];
}

/* Each of these, taken as a 32-bit write, would reset the device or take
 * its queue away. */
static const char *narrow_register_writes(const void *arg)
{
	static const struct access writes[] = {
		{GW_VIRTIO_REG_STATUS, 1},      {GW_VIRTIO_REG_STATUS, 2},
		{GW_VIRTIO_REG_STATUS, 8},      {GW_VIRTIO_REG_STATUS + 1, 4},
		{GW_VIRTIO_REG_QUEUE_READY, 1}, {GW_VIRTIO_REG_QUEUE_READY, 2},
		{GW_VIRTIO_REG_QUEUE_READY, 8}, {GW_VIRTIO_REG_QUEUE_SEL + 2, 4},
	};

	(void)arg;
	start_blk();
	for (unsigned i = 0; i < ARRAY_SIZE(writes); i++)
		mmio_write(writes[i].off, writes[i].size, 0);
	return still_works(false) ? "ignored" : outcome_name[O_RESET];
}

/* The config space takes any width (4.2.2.2), is read-only for virtio-blk
 * and holds nothing past its fields. */
static const char *config_odd_accesses(const void *arg)
{
	uint64_t cap, bytes = 0, v;

	(void)arg;
	start_blk();
	cap = e.blk.capacity;
	if ((v = mmio_read(GW_VIRTIO_REG_CONFIG, 8)) != cap)
		fail("capacity read as one 64-bit access", v);
	for (unsigned i = 0; i < 8; i++)
		bytes |= mmio_read(GW_VIRTIO_REG_CONFIG + i, 1) << (8 * i);
	if (bytes != cap)
		fail("capacity read a byte at a time", bytes);
	if ((v = mmio_read(GW_VIRTIO_REG_CONFIG + 2, 2)) != ((cap >> 16) & 0xffff))
		fail("capacity bits 16-31 read as 16 bits", v);
	if ((v = unanswered_read(0xff8, 8)))
		fail("the config space past its fields", v);
	mmio_write(GW_VIRTIO_REG_CONFIG, 8, ~0ull);
	mmio_write(GW_VIRTIO_REG_CONFIG, 4, 0);
	mmio_write(GW_VIRTIO_REG_CONFIG + 1, 1, 0x55);
	if ((v = gw_virtio_config64(&e.blk.dev, 0)) != cap)
		fail("capacity after writes to the config space", v);
	return still_works(false) ? "as the spec says" : outcome_name[O_RESET];
}

/* An access that starts in the register page and ends in the next one:
 * the device gets the part that is its own. */
static const char *access_across_page_end(const void *arg)
{
	(void)arg;
	start_blk();
	mmio_read(0xffc, 8);
	mmio_read(0xffe, 4);
	mmio_write(0xffc, 8, ~0ull);
	mmio_write(0xfff, 2, 0);
	return still_works(false) ? "ignored" : outcome_name[O_RESET];
}

/*
 * A reset with two reads of up to 1 MiB in flight (each long enough to
 * still be running when the reset arrives, on a device that does not wait
 * for it): the device may finish them or drop them, but once Status reads
 * 0 it must never write again, since the driver reuses the buffers at
 * once. Their data goes past the arena (too big to check on every case);
 * their status bytes and the used ring, in it, are what shows a late write.
 */
static const char *reset_in_flight(const void *arg)
{
	uint64_t sectors = e.blk.capacity < IN_FLIGHT_BYTES / GW_BLK_SECTOR_SIZE ?
				   e.blk.capacity :
				   IN_FLIGHT_BYTES / GW_BLK_SECTOR_SIZE;
	static const enum where hdr[] = {AT_HDR, AT_HDR2}, status[] = {AT_STATUS, AT_STATUS2};

	(void)arg;
	start_blk();
	for (unsigned r = 0; r < 2; r++) {
		set_header(hdr[r], status[r], GW_BLK_T_IN, 0);
		set_desc(3 * r, hdr[r], 0, 16, F_N, (uint16_t)(3 * r + 1));
		set_desc(3 * r + 1, AT_BIG, 0, (uint32_t)(sectors * GW_BLK_SECTOR_SIZE), F_NW,
			 (uint16_t)(3 * r + 2));
		set_desc(3 * r + 2, status[r], 0, 1, F_W, 0);
		publish((uint16_t)(3 * r), 1);
	}
	notify(0);
	reset_device();
	/* What the reads did before the reset is theirs; taken at once. */
	mine(used_ring().addr, used_ring().len);
	mine(address(AT_STATUS, 0), 1);
	mine(address(AT_STATUS2, 0), 1);
	for (unsigned i = 0; i < QUIET_POLLS; i++)
		reg(GW_VIRTIO_REG_STATUS);
	check_arena(NULL, 0);
	return "quiet after the reset";
}

struct other_case {
	const char *name;
	const char *(*run)(const void *arg);
};

static const struct other_case other_cases[] = {
	{"features-not-offered", features_not_offered},
	{"select-no-such-queue", select_no_such_queue},
	{"notify-no-such-queue", notify_no_such_queue},
	{"queue-change-while-ready", queue_change_while_ready},
	{"narrow-register-reads", narrow_register_reads},
	{"narrow-register-writes", narrow_register_writes},
	{"config-odd-accesses", config_odd_accesses},
	{"access-across-page-end", access_across_page_end},
	{"reset-in-flight", reset_in_flight},
};

/* --- main ------------------------------------------------------------------- */

static void run_case(const char *name, const char *(*run)(const void *), const void *arg)
{
	const char *what;

	e.nr++;
	e.name = name;
	what = run(arg);
	prove_alive();
	gw_printf("blkevil: %u %s: %s\n", e.nr, name, what);
	gw_testdev(GW_TD_CHECK_OK, e.nr);
}

static void setup(const struct gw_guest_config *cfg)
{
	const struct gw_virtio_slot *slot = gw_virtio_find(cfg, GW_VIRTIO_ID_BLOCK, 0);
	uint64_t arena = gw_default_start(cfg);
	uint64_t end = arena + 2 * ARENA_PAGES * GW_PAGE_SIZE + IN_FLIGHT_BYTES;

	if (!slot)
		gw_fatal("blkevil: no virtio-blk device among the %u virtio slots\n",
			 cfg->nr_virtio);
	/* chain-over-16m names the first BIG_DESC bytes of RAM, twice. */
	if (end > cfg->ram_size || BIG_DESC > cfg->ram_size)
		gw_fatal("blkevil: needs RAM up to 0x%lx and at least 0x%x bytes, the guest has "
			 "0x%lx\n",
			 end, BIG_DESC, cfg->ram_size);
	e.cfg = cfg;
	e.base = slot->base;
	e.arena = (uint8_t *)(uintptr_t)arena;
	e.copy = e.arena + ARENA_PAGES * GW_PAGE_SIZE;
	fill_arena();
	start_blk();
	if (e.blk.capacity < VALID_SECTOR + VALID_BYTES / GW_BLK_SECTOR_SIZE)
		gw_fatal("blkevil: the disk has %lu sectors, the valid write needs %u\n",
			 e.blk.capacity, VALID_SECTOR + VALID_BYTES / GW_BLK_SECTOR_SIZE);
}

int main(unsigned cpu, const struct gw_guest_config *cfg)
{
	unsigned total = ARRAY_SIZE(chain_cases) + ARRAY_SIZE(queue_cases) +
			 ARRAY_SIZE(other_cases);

	if (cpu != 0)
		gw_halt();
	setup(cfg);
	gw_printf("blkevil: virtio-blk at 0x%lx, %lu sectors, %u cases\n", e.base, e.blk.capacity,
		  total);
	for (unsigned i = 0; i < ARRAY_SIZE(chain_cases); i++)
		run_case(chain_cases[i].name, run_chain_case, &chain_cases[i]);
	for (unsigned i = 0; i < ARRAY_SIZE(queue_cases); i++)
		run_case(queue_cases[i].name, run_queue_case, &queue_cases[i]);
	for (unsigned i = 0; i < ARRAY_SIZE(other_cases); i++)
		run_case(other_cases[i].name, other_cases[i].run, NULL);
	gw_testdev(GW_TD_PASS, 1);
	gw_printf("blkevil: all %u cases ok\n", total);
	return GW_EXIT_OK;
}
