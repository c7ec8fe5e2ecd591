/*
 * toyvmm: how a VMM adopts libgodwit, from the installed headers alone.
 *
 *     cc -o toyvmm toyvmm.c $(pkg-config --cflags --libs godwit)
 *     ./toyvmm [STREAM]
 *
 * A toy machine (two RAM blocks in memfds and one device whose State
 * struct is described by a field table) registers with a migration
 * object, saves itself into a godwit stream (into the file STREAM, for
 * `godwit analyze STREAM`, or into a memfd), and a second, empty machine
 * loads that stream. The program then checks that the memory and the
 * device state arrived, and exits 0.
 *
 * A real VMM registers the same way and saves the same way to snapshot
 * a stopped guest; for a live migration it hands the migration object to
 * the pre-copy engine (<godwit/precopy.h>) instead of calling gw_save_*()
 * itself.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <godwit/godwit.h>

/* The device: a timer whose whole migratable state is one plain struct. */
struct timer_state {
	uint64_t count;
	uint32_t period_ns;
	uint8_t mode; /* 0 one-shot, 1 periodic, 2 stopped */
	bool irq_pending;
	uint8_t regs[8];
};

static const struct gw_field timer_fields[] = {
	GW_FIELD(U64, struct timer_state, count),
	GW_FIELD(U32, struct timer_state, period_ns),
	GW_FIELD_RANGE(U8, struct timer_state, mode, 0, 2), /* a load refuses 3..255 */
	GW_FIELD(BOOL, struct timer_state, irq_pending),
	GW_FIELD(BYTES, struct timer_state, regs),
};

static const struct gw_vmstate timer_vmstate = GW_VMSTATE(struct timer_state, timer_fields);

struct toy_ram {
	const char *name;
	uint64_t size;
	uint64_t gpa;
	int fd;
	unsigned char *host;
};

struct toy_machine {
	struct gw_migration *m;
	struct toy_ram ram[2];
	struct timer_state timer;
};

static int fail(const char *what, const struct gw_error *err)
{
	fprintf(stderr, "toyvmm: %s: %s\n", what, err->msg);
	return -1;
}

static int ram_map(struct toy_ram *r)
{
	r->fd = memfd_create(r->name, MFD_CLOEXEC);
	if (r->fd < 0 || ftruncate(r->fd, (off_t)r->size) < 0) {
		perror("toyvmm: memfd");
		return -1;
	}
	r->host = mmap(NULL, r->size, PROT_READ | PROT_WRITE, MAP_SHARED, r->fd, 0);
	if (r->host == MAP_FAILED) {
		perror("toyvmm: mmap");
		r->host = NULL;
		return -1;
	}
	return 0;
}

/* What a VMM does once at start-up, on the source and the destination alike. */
static int machine_init(struct toy_machine *t)
{
	const struct gw_machine machine = {
		.vmm_name = "toyvmm",
		.vmm_version = gw_version(),
		.machine = "toy",   /* the destination must be a "toy" too */
		.nr_vcpus = 1,
	};
	struct gw_error err = { 0 };

	memset(t, 0, sizeof(*t));
	t->ram[0] = (struct toy_ram){ .name = "toy.ram", .size = 4 << 20, .gpa = 0, .fd = -1 };
	t->ram[1] = (struct toy_ram){ .name = "toy.vram", .size = 64 << 10, .gpa = 0xfd000000,
				      .fd = -1 };
	if (gw_migration_new(&machine, &t->m, &err) < 0)
		return fail("gw_migration_new", &err);
	for (int i = 0; i < 2; i++) {
		struct toy_ram *r = &t->ram[i];

		if (ram_map(r) < 0)
			return -1;
		const struct gw_ram ram = {
			.name = r->name, .host = r->host, .size = r->size,
			.fd = r->fd, .fd_offset = 0, .gpa = r->gpa,
		};
		if (gw_migration_add_ram(t->m, &ram, &err) < 0)
			return fail("gw_migration_add_ram", &err);
	}
	const struct gw_section timer = {
		.name = "timer", .instance = 0, .version = 1, .min_version = 1,
		.vmstate = &timer_vmstate, .opaque = &t->timer,
	};
	if (gw_migration_add_section(t->m, &timer, &err) < 0)
		return fail("gw_migration_add_section", &err);
	return 0;
}

static void machine_free(struct toy_machine *t)
{
	gw_migration_free(t->m);
	for (int i = 0; i < 2; i++) {
		if (t->ram[i].host)
			munmap(t->ram[i].host, t->ram[i].size);
		if (t->ram[i].fd >= 0)
			close(t->ram[i].fd);
	}
}

/* Some guest activity: a few written pages in a mostly empty RAM block,
 * a framebuffer written all over, a timer in the middle of its work. */
static void machine_run(struct toy_machine *t)
{
	for (uint64_t off = 0; off < t->ram[0].size; off += 37 * 4096)
		memset(t->ram[0].host + off, (int)(off >> 12) | 1, 4096);
	for (uint64_t i = 0; i < t->ram[1].size; i++)
		t->ram[1].host[i] = (unsigned char)(i * 7 + 3);
	t->timer = (struct timer_state){ .count = 0x123456789abcull, .period_ns = 1000000,
					 .mode = 1, .irq_pending = true,
					 .regs = { 1, 2, 3, 4, 5, 6, 7, 8 } };
}

/* Every page of block `id`, a batch of up to GW_PAGES_MAX at a time; a
 * zero page goes as a flag, without its data. */
static int save_block(struct toy_machine *t, uint32_t id, struct gw_writer *w,
		      struct gw_error *err)
{
	const struct toy_ram *r = &t->ram[id];
	uint64_t entries[GW_PAGES_MAX];
	uint32_t n = 0;

	for (uint64_t off = 0; off < r->size; off += GW_PAGE_SIZE) {
		entries[n++] = off | (gw_page_is_zero(r->host + off) ? GW_PAGE_ZERO : 0);
		if (n < GW_PAGES_MAX && off + GW_PAGE_SIZE < r->size)
			continue;
		/* Nothing runs while we save, so the pages cannot change:
		 * GW_SAVE_DATA_CRC lets the loader check each one at once. */
		if (gw_save_pages(t->m, w, id, entries, n, GW_SAVE_DATA_CRC, err) < 0)
			return -1;
		n = 0;
	}
	return 0;
}

/* The stream, in the order <godwit/stream.h> gives. */
static int machine_save(struct toy_machine *t, int fd)
{
	struct gw_error err = { 0 };
	struct gw_writer *w;
	int ret = -1;

	if (gw_writer_new(fd, &w, &err) < 0)
		return fail("gw_writer_new", &err);
	if (gw_save_begin(t->m, w, &err) < 0)
		fail("gw_save_begin", &err);
	else if (save_block(t, 0, w, &err) < 0 || save_block(t, 1, w, &err) < 0)
		fail("gw_save_pages", &err);
	else if (gw_save_devices(t->m, w, &err) < 0)
		fail("gw_save_devices", &err);
	else if (gw_save_finish(t->m, w, &err) < 0)
		fail("gw_save_finish", &err);
	else
		ret = 0;
	gw_writer_free(w);
	return ret;
}

static int machine_load(struct toy_machine *t, int fd)
{
	struct gw_error err = { 0 };
	struct gw_reader *r;
	int ret;

	if (gw_reader_new(fd, &r, &err) < 0)
		return fail("gw_reader_new", &err);
	ret = gw_load(t->m, r, &err);
	gw_reader_free(r);
	return ret < 0 ? fail("gw_load", &err) : 0;
}

static int machine_compare(const struct toy_machine *a, const struct toy_machine *b)
{
	const struct timer_state *x = &a->timer, *y = &b->timer;

	for (int i = 0; i < 2; i++)
		if (memcmp(a->ram[i].host, b->ram[i].host, a->ram[i].size) != 0) {
			fprintf(stderr, "toyvmm: RAM block '%s' differs after the load\n",
				a->ram[i].name);
			return -1;
		}
	if (x->count != y->count || x->period_ns != y->period_ns || x->mode != y->mode ||
	    x->irq_pending != y->irq_pending || memcmp(x->regs, y->regs, sizeof(x->regs)) != 0) {
		fprintf(stderr, "toyvmm: the timer state differs after the load\n");
		return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct toy_machine src, dst;
	int fd, ret = 1;

	if (argc > 2) {
		fprintf(stderr, "usage: toyvmm [STREAM]\n");
		return 2;
	}
	fd = argc == 2 ? open(argv[1], O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)
		       : memfd_create("toyvmm-stream", MFD_CLOEXEC);
	if (fd < 0) {
		perror("toyvmm: stream");
		return 1;
	}
	/* Both always, so that machine_free() may follow either failing. */
	int src_ret = machine_init(&src), dst_ret = machine_init(&dst);

	if (src_ret == 0 && dst_ret == 0) {
		machine_run(&src);
		if (machine_save(&src, fd) == 0 && lseek(fd, 0, SEEK_SET) == 0 &&
		    machine_load(&dst, fd) == 0 && machine_compare(&src, &dst) == 0) {
			printf("toyvmm: libgodwit %s: saved and loaded 2 RAM blocks and 1 device "
			       "section in %lld bytes; memory and state match\n",
			       gw_version(), (long long)lseek(fd, 0, SEEK_END));
			ret = 0;
		}
	}
	machine_free(&dst);
	machine_free(&src);
	close(fd);
	return ret;
}
