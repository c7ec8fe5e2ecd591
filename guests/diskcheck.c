/*
 * diskcheck: proves that a virtio-blk disk arrives intact across a
 * migration. Pass after pass, vCPU 0 writes every block of a range with
 * the pass number, flushes, reads the range back and checks every block:
 * a write lost, misplaced or torn on the way shows up as a block of the
 * wrong pass, at the wrong place, or failing its checksum. Restarted on the
 * same image, it first checks the pass it finds there. Parameters, the
 * block format (which a host can check without the guest) and the reports
 * are described in README.md.
 */
#include "rt/virtio_blk.h"

#define BLOCK_MAGIC 0x31304b5349445747ull /* "GWDISK01" */
#define FNV_OFFSET 0xcbf29ce484222325ull
#define FNV_PRIME 0x100000001b3ull
#define GOLDEN 0x9e3779b97f4a7c15ull
/* Fills a buffer before it is read into: a read the device did not carry
 * out in full cannot pass for the data the buffer held before. */
#define POISON 0xdeadbeefdeadbeefull

#define MAX_BS (64u << 10)
#define MAX_DEPTH 64
#define DEFAULT_MAX_BLOCKS 4096

/* The qwords of a block before its pattern. */
enum { Q_MAGIC, Q_LBA, Q_PASS, Q_CHECKSUM, Q_PATTERN };

/* load=: no pattern and no check, only requests, for a throughput figure
 * that is the device's and not this guest's arithmetic. */
enum load { LOAD_NONE, LOAD_READ, LOAD_WRITE };
static const char *const load_names[] = { "none", "read", "write" };

static struct {
	unsigned disk;
	uint64_t start;  /* first sector */
	uint64_t blocks; /* in the range */
	uint32_t bs;     /* bytes per block and per request */
	unsigned depth;
	uint64_t flush; /* writes between flushes, 0: only at the end of a pass */
	uint64_t passes;
	bool verify;
	enum load load;
	uint64_t ops;  /* load: requests per pass */
	bool random;   /* load: blocks drawn at random, else in order */
} opt;

static struct gw_blk blk;

/* blk.depth buffers of opt.bs bytes, each carrying one block at a time. */
static uint64_t *buffers;
static uint8_t free_buffers[MAX_DEPTH];
static unsigned nr_free_buffers;
static uint64_t buffer_block[MAX_DEPTH];

/* The pass being written. */
static struct {
	uint64_t written, flushes;
	uint64_t unflushed; /* writes completed since the last flush */
} stats;

/* What check_block found wrong; field is NULL if nothing. */
struct fault {
	const char *field;
	unsigned qword;
	uint64_t found, want;
};

static void parse_options(const struct gw_guest_config *cfg)
{
	static const char *const known[] = {
		"disk", "start", "blocks", "bs", "depth", "flush", "passes", "verify",
		"load", "ops", "random", NULL,
	};
	uint64_t disk, bs, depth;
	const char *load;
	size_t len;

	gw_param_warn_unknown(cfg, known);
	disk = gw_param_u64(cfg, "disk", 0);
	opt.start = gw_param_u64(cfg, "start", 0);
	opt.blocks = gw_param_u64(cfg, "blocks", 0);
	bs = gw_param_u64(cfg, "bs", 4096);
	depth = gw_param_u64(cfg, "depth", 4);
	opt.flush = gw_param_u64(cfg, "flush", 0);
	opt.passes = gw_param_u64(cfg, "passes", 0);
	opt.verify = gw_param_u64(cfg, "verify", 1) != 0;
	opt.ops = gw_param_u64(cfg, "ops", 0);
	opt.random = gw_param_u64(cfg, "random", 1) != 0;
	load = gw_param(cfg, "load", &len);
	if (load) {
		while (opt.load <= LOAD_WRITE && !gw_param_is(load, len, load_names[opt.load]))
			opt.load++;
		if (opt.load > LOAD_WRITE)
			gw_fatal("diskcheck: load=%.*s: expected none, read or write\n", (int)len,
				 load);
	}
	if (disk >= GW_VIRTIO_MMIO_MAX)
		gw_fatal("diskcheck: disk=%lu: there are at most %u virtio devices\n", disk,
			 GW_VIRTIO_MMIO_MAX);
	if (bs == 0 || bs % GW_BLK_SECTOR_SIZE || bs > MAX_BS)
		gw_fatal("diskcheck: bs=%lu: expected a multiple of 512 up to 64K\n", bs);
	if (depth == 0 || depth > MAX_DEPTH)
		gw_fatal("diskcheck: depth=%lu: expected 1 to %u\n", depth, MAX_DEPTH);
	opt.disk = (unsigned)disk;
	opt.bs = (uint32_t)bs;
	opt.depth = (unsigned)depth;
}

static uint64_t lba_of(uint64_t block)
{
	return opt.start + block * (opt.bs / GW_BLK_SECTOR_SIZE);
}

static uint64_t *buffer(unsigned i)
{
	return buffers + (uint64_t)i * (opt.bs / sizeof(uint64_t));
}

/* Whole blocks from start to the end of the disk, the default at most. */
static void set_range(void)
{
	uint64_t room;

	if (opt.start >= blk.capacity)
		gw_fatal("diskcheck: start=%lu is beyond the disk (%lu sectors)\n", opt.start,
			 blk.capacity);
	room = (blk.capacity - opt.start) / (opt.bs / GW_BLK_SECTOR_SIZE);
	if (!room)
		gw_fatal("diskcheck: no block of %u bytes fits between sector %lu and the end of "
			 "the disk (%lu sectors)\n",
			 opt.bs, opt.start, blk.capacity);
	if (!opt.blocks)
		opt.blocks = room < DEFAULT_MAX_BLOCKS ? room : DEFAULT_MAX_BLOCKS;
	if (opt.blocks > room)
		gw_fatal("diskcheck: blocks=%lu: only %lu blocks of %u bytes fit from sector %lu\n",
			 opt.blocks, room, opt.bs, opt.start);
	/* GW_TD_CHECK_FAIL names the block in 24 bits. */
	if (opt.blocks > GW_TESTDEV_ARG_MASK + 1ull)
		gw_fatal("diskcheck: blocks=%lu: at most %u\n", opt.blocks,
			 GW_TESTDEV_ARG_MASK + 1);
}

/* The queue and request headers, then the buffers, from the first 2 MiB
 * boundary after the image. */
static void setup(const struct gw_guest_config *cfg)
{
	const struct gw_virtio_slot *slot = gw_virtio_find(cfg, GW_VIRTIO_ID_BLOCK, opt.disk);
	uint64_t mem = gw_default_start(cfg);
	uint64_t bufs = mem + GW_ALIGN_UP(gw_blk_mem_bytes(opt.depth), GW_PAGE_SIZE);
	uint64_t end = bufs + (uint64_t)opt.depth * opt.bs;

	if (!slot)
		gw_fatal("diskcheck: disk=%u: no such virtio-blk device among the %u virtio slots\n",
			 opt.disk, cfg->nr_virtio);
	if (end > cfg->ram_size)
		gw_fatal("diskcheck: the queue and buffers need RAM up to 0x%lx, the guest has "
			 "0x%lx bytes\n",
			 end, cfg->ram_size);
	gw_blk_start(&blk, slot->base, opt.depth, (void *)(uintptr_t)mem);
	buffers = (uint64_t *)(uintptr_t)bufs;
	for (unsigned i = 0; i < blk.depth; i++)
		free_buffers[i] = (uint8_t)i;
	nr_free_buffers = blk.depth;
	set_range();
}

/* --- the block format (README.md) --------------------------------------- */

/* xorshift64 never leaves 0, so 0 is replaced. */
static uint64_t pattern_seed(uint64_t lba, uint64_t pass)
{
	uint64_t seed = lba * GOLDEN ^ pass;

	return seed ? seed : GOLDEN;
}

/* FNV-1a, one qword at a time. */
static uint64_t fnv(uint64_t h, uint64_t q)
{
	return (h ^ q) * FNV_PRIME;
}

static uint64_t header_hash(const uint64_t *q)
{
	return fnv(fnv(fnv(FNV_OFFSET, q[Q_MAGIC]), q[Q_LBA]), q[Q_PASS]);
}

static void fill_block(uint64_t *q, uint64_t lba, uint64_t pass)
{
	uint64_t x = pattern_seed(lba, pass), h;

	q[Q_MAGIC] = BLOCK_MAGIC;
	q[Q_LBA] = lba;
	q[Q_PASS] = pass;
	h = header_hash(q);
	for (uint64_t i = Q_PATTERN; i < opt.bs / sizeof(uint64_t); i++) {
		q[i] = gw_xorshift64(&x);
		h = fnv(h, q[i]);
	}
	q[Q_CHECKSUM] = h;
}

static struct fault fault(const char *field, unsigned qword, uint64_t found, uint64_t want)
{
	return (struct fault){.field = field, .qword = qword, .found = found, .want = want};
}

/*
 * One walk over the pattern both hashes it and compares it; a bad checksum
 * (a torn or corrupted block) is reported before a bad pattern, which with
 * a good checksum would mean a block written by some other program.
 */
static struct fault check_block(const uint64_t *q, uint64_t lba, uint64_t pass)
{
	uint64_t x = pattern_seed(lba, pass), h;
	struct fault pattern = {NULL, 0, 0, 0};

	if (q[Q_MAGIC] != BLOCK_MAGIC)
		return fault("magic", Q_MAGIC, q[Q_MAGIC], BLOCK_MAGIC);
	if (q[Q_LBA] != lba)
		return fault("lba", Q_LBA, q[Q_LBA], lba);
	if (q[Q_PASS] != pass)
		return fault("pass", Q_PASS, q[Q_PASS], pass);
	h = header_hash(q);
	for (uint64_t i = Q_PATTERN; i < opt.bs / sizeof(uint64_t); i++) {
		uint64_t want = gw_xorshift64(&x);

		if (q[i] != want && !pattern.field)
			pattern = fault("pattern", (unsigned)i, q[i], want);
		h = fnv(h, q[i]);
	}
	if (q[Q_CHECKSUM] != h)
		return fault("checksum", Q_CHECKSUM, q[Q_CHECKSUM], h);
	return pattern;
}

static void poison(uint64_t *q)
{
	for (uint64_t i = 0; i < opt.bs / sizeof(uint64_t); i++)
		q[i] = POISON;
}

/* --- failures ------------------------------------------------------------- */

__attribute__((noreturn)) static void fail(uint64_t block)
{
	gw_testdev(GW_TD_CHECK_FAIL, (uint32_t)block);
	gw_exit(GW_EXIT_CHECK_FAILED);
}

__attribute__((noreturn, cold)) static void bad_block(uint64_t block, uint64_t pass,
						      const struct fault *f)
{
	gw_printf("diskcheck: block %lu (lba %lu), pass %lu: %s (qword %u) is 0x%lx, expected "
		  "0x%lx\n",
		  block, lba_of(block), pass, f->field, f->qword, f->found, f->want);
	fail(block);
}

__attribute__((noreturn, cold)) static void request_failed(const char *what, uint64_t block,
							   uint8_t status)
{
	gw_printf("diskcheck: %s of block %lu (lba %lu) failed: status %u (%s)\n", what, block,
		  lba_of(block), status, gw_blk_status_name(status));
	fail(block);
}

/* A flush covers no block in particular: no GW_TD_CHECK_FAIL. */
static void check_flush(uint8_t status)
{
	if (status == GW_BLK_S_OK)
		return;
	gw_printf("diskcheck: flush failed: status %u (%s)\n", status, gw_blk_status_name(status));
	gw_exit(GW_EXIT_CHECK_FAILED);
}

/* --- streaming the range through the queue -------------------------------- */

static void start_request(enum gw_blk_type type, uint64_t block, uint64_t pass)
{
	unsigned b = free_buffers[--nr_free_buffers];
	uint64_t *q = buffer(b);

	if (type == GW_BLK_T_OUT)
		fill_block(q, lba_of(block), pass);
	else
		poison(q);
	buffer_block[b] = block;
	gw_blk_submit(&blk, type, lba_of(block), q, opt.bs, b);
}

/* A completed write may be what makes a flush due; the flush takes the
 * slot the write just left. */
static void count_write(void)
{
	stats.written++;
	if (!opt.flush || ++stats.unflushed < opt.flush)
		return;
	stats.unflushed = 0;
	stats.flushes++;
	gw_blk_submit(&blk, GW_BLK_T_FLUSH, 0, NULL, 0, 0);
}

static void finish_request(const struct gw_blk_done *done, uint64_t pass)
{
	unsigned b = (unsigned)done->tag;
	uint64_t block;

	if (done->type == GW_BLK_T_FLUSH) {
		check_flush(done->status);
		return;
	}
	block = buffer_block[b];
	if (done->status != GW_BLK_S_OK)
		request_failed(done->type == GW_BLK_T_OUT ? "write" : "read", block, done->status);
	if (done->type == GW_BLK_T_OUT) {
		count_write();
	} else {
		struct fault f = check_block(buffer(b), lba_of(block), pass);

		if (f.field)
			bad_block(block, pass, &f);
	}
	free_buffers[nr_free_buffers++] = (uint8_t)b;
}

/* Every block of the range, written with pass (OUT) or read and checked
 * against it (IN), keeping blk.depth requests in flight. */
static void stream(enum gw_blk_type type, uint64_t pass)
{
	struct gw_blk_done done[MAX_DEPTH];
	uint64_t next = 0;

	while (next < opt.blocks || blk.in_flight) {
		unsigned n;

		while (next < opt.blocks && blk.in_flight < blk.depth)
			start_request(type, next++, pass);
		n = gw_blk_reap(&blk, done, MAX_DEPTH);
		for (unsigned k = 0; k < n; k++)
			finish_request(&done[k], pass);
	}
}

static void run_pass(uint64_t pass)
{
	stats.written = stats.flushes = stats.unflushed = 0;
	stream(GW_BLK_T_OUT, pass);
	/* Sent once every write has completed, so it makes them all stable. */
	check_flush(gw_blk_run(&blk, GW_BLK_T_FLUSH, 0, NULL, 0));
	stats.flushes++;
	if (opt.verify) {
		stream(GW_BLK_T_IN, pass);
		gw_testdev(GW_TD_CHECK_OK, (uint32_t)pass);
	}
	gw_testdev(GW_TD_PASS, (uint32_t)pass);
	gw_printf("diskcheck: pass %lu: %lu blocks written, %lu flushes%s\n", pass, stats.written,
		  stats.flushes, opt.verify ? ", verified" : "");
}

/* --- load: requests only ------------------------------------------------- */

/* opt.ops requests of the load's type, blk.depth in flight, on blocks of
 * the range drawn at random or in order; the buffers' contents are left
 * as they are. */
static void load_pass(uint64_t pass, uint64_t *rng)
{
	enum gw_blk_type type = opt.load == LOAD_WRITE ? GW_BLK_T_OUT : GW_BLK_T_IN;
	struct gw_blk_done done[MAX_DEPTH];
	uint64_t issued = 0, next = 0;

	while (issued < opt.ops || blk.in_flight) {
		unsigned n;

		while (issued < opt.ops && blk.in_flight < blk.depth) {
			unsigned b = free_buffers[--nr_free_buffers];
			uint64_t block = opt.random ? gw_xorshift64(rng) % opt.blocks : next++ % opt.blocks;

			gw_blk_submit(&blk, type, lba_of(block), buffer(b), opt.bs, b);
			buffer_block[b] = block;
			issued++;
		}
		n = gw_blk_reap(&blk, done, MAX_DEPTH);
		for (unsigned k = 0; k < n; k++) {
			if (done[k].status != GW_BLK_S_OK)
				request_failed(type == GW_BLK_T_OUT ? "write" : "read",
					       buffer_block[done[k].tag], done[k].status);
			free_buffers[nr_free_buffers++] = (uint8_t)done[k].tag;
		}
	}
	gw_testdev(GW_TD_PASS, (uint32_t)pass);
}

static int run_load(void)
{
	uint64_t rng = GOLDEN;

	if (!opt.ops)
		opt.ops = opt.blocks;
	for (uint64_t pass = 1; !opt.passes || pass <= opt.passes; pass++)
		load_pass(pass, &rng);
	gw_printf("diskcheck: %lu passes of %lu %s requests\n", opt.passes, opt.ops,
		  load_names[opt.load]);
	return GW_EXIT_OK;
}

/* --- start-up ------------------------------------------------------------- */

static void read_id(char *id)
{
	uint8_t *raw = (uint8_t *)buffer(0);
	uint8_t status;
	unsigned i;

	for (i = 0; i < GW_BLK_ID_BYTES; i++)
		raw[i] = 0;
	status = gw_blk_run(&blk, GW_BLK_T_GET_ID, 0, raw, GW_BLK_ID_BYTES);
	if (status == GW_BLK_S_UNSUPP)
		raw[0] = '-';
	else if (status != GW_BLK_S_OK)
		gw_fatal("diskcheck: GET_ID failed: status %u (%s)\n", status,
			 gw_blk_status_name(status));
	for (i = 0; i < GW_BLK_ID_BYTES && raw[i]; i++)
		id[i] = raw[i] >= ' ' && raw[i] <= '~' ? (char)raw[i] : '?';
	id[i] = '\0';
}

/* The pass the range already holds, judged by its first block: 0 if that
 * is not a block of this format at all. */
static uint64_t pass_on_disk(void)
{
	uint64_t *q = buffer(0);
	uint8_t status;
	struct fault f;

	poison(q);
	status = gw_blk_run(&blk, GW_BLK_T_IN, lba_of(0), q, opt.bs);
	if (status != GW_BLK_S_OK)
		request_failed("read", 0, status);
	if (q[Q_MAGIC] != BLOCK_MAGIC)
		return 0;
	f = check_block(q, lba_of(0), q[Q_PASS]);
	if (f.field)
		bad_block(0, q[Q_PASS], &f);
	return q[Q_PASS];
}

int main(unsigned cpu, const struct gw_guest_config *cfg)
{
	char id[GW_BLK_ID_BYTES + 1];
	uint64_t found;

	if (cpu != 0)
		gw_halt();
	parse_options(cfg);
	setup(cfg);
	read_id(id);
	gw_printf("diskcheck: disk %u \"%s\", %lu sectors: %lu blocks of %u bytes from lba %lu, "
		  "depth %u\n",
		  opt.disk, id, blk.capacity, opt.blocks, opt.bs, opt.start, blk.depth);
	gw_testdev(GW_TD_READY, 0);
	if (opt.load != LOAD_NONE)
		return run_load();

	found = pass_on_disk();
	if (found) {
		stream(GW_BLK_T_IN, found);
		gw_testdev(GW_TD_CHECK_OK, (uint32_t)found);
		gw_printf("diskcheck: the disk holds pass %lu, verified\n", found);
	}
	for (uint64_t pass = found + 1; !opt.passes || pass - found <= opt.passes; pass++)
		run_pass(pass);
	return GW_EXIT_OK;
}
