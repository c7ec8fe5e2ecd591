/*
 * The test machine of testvm.h.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "lib/cancel.h"
#include "lib/crc32c.h"
#include "lib/format/cpr.h"
#include "lib/internal.h"
#include "lib/transport/fd_pass.h"
#include "testvm.h"

/* A send to a peer that does not read: only a hang reaches it. */
#define TEST_SEND_TIMEOUT_MS 30000

static const struct gw_field uart_fields_v1[] = {
	GW_FIELD(U8, struct uart_state, ier),      GW_FIELD(U8, struct uart_state, lcr),
	GW_FIELD(U16, struct uart_state, divisor), GW_FIELD(U32, struct uart_state, regs),
	GW_FIELD(BYTES, struct uart_state, fifo),  GW_FIELD(BOOL, struct uart_state, irq),
	GW_FIELD(I64, struct uart_state, delta),   GW_FIELD(U64, struct uart_state, big),
};

static const struct gw_field uart_fields[] = {
	GW_FIELD(U8, struct uart_state, ier),           GW_FIELD(U8, struct uart_state, lcr),
	GW_FIELD(U16, struct uart_state, divisor),      GW_FIELD(U32, struct uart_state, regs),
	GW_FIELD(BYTES, struct uart_state, fifo),       GW_FIELD(BOOL, struct uart_state, irq),
	GW_FIELD(I64, struct uart_state, delta),        GW_FIELD(U64, struct uart_state, big),
	GW_FIELD_V(U32, struct uart_state, scratch, 2),
};

static const struct gw_vmstate uart_vmstate_v1 = GW_VMSTATE(struct uart_state, uart_fields_v1);
static const struct gw_vmstate uart_vmstate = GW_VMSTATE(struct uart_state, uart_fields);

static int blob_save(void *opaque, struct gw_wbuf *out, struct gw_error *err)
{
	struct blob_dev *b = opaque;

	(void)err;
	gw_put_u32(out, b->len);
	return gw_put_bytes(out, b->data, b->len);
}

static int blob_load(void *opaque, struct gw_rbuf *in, uint32_t version, struct gw_error *err)
{
	struct blob_dev *b = opaque;
	uint32_t len;

	(void)version;
	if (gw_get_u32(in, &len) < 0)
		return -EBADMSG;
	if (len > sizeof(b->data))
		return gw_error_set(err, -EINVAL, "blob of %u bytes is too big", len);
	b->len = len;
	return gw_get_bytes(in, b->data, len);
}

static int live_save(void *opaque, enum gw_phase phase, struct gw_wbuf *out, struct gw_error *err)
{
	struct live_dev *d = opaque;
	uint32_t n;

	(void)err;
	if (phase == GW_PHASE_START) {
		d->sent = 0;
		return gw_put_u32(out, LIVE_SIZE);
	}
	n = LIVE_SIZE - d->sent;
	if (phase == GW_PHASE_PART && n > LIVE_CHUNK)
		n = LIVE_CHUNK;
	gw_put_u32(out, n);
	gw_put_bytes(out, d->data + d->sent, n);
	d->sent += n;
	return 0;
}

static int live_load(void *opaque, enum gw_phase phase, struct gw_rbuf *in, uint32_t version,
		     struct gw_error *err)
{
	struct live_dev *d = opaque;
	uint32_t n;

	(void)version;
	d->phases[phase]++;
	if (gw_get_u32(in, &n) < 0)
		return -EBADMSG;
	if (phase == GW_PHASE_START) {
		d->received = 0;
		return n == LIVE_SIZE ? 0 : gw_error_set(err, -EINVAL, "size %u", n);
	}
	if (n > LIVE_SIZE - d->received)
		return gw_error_set(err, -EINVAL, "chunk of %u bytes overflows", n);
	gw_get_bytes(in, d->data + d->received, n);
	d->received += n;
	if (phase == GW_PHASE_END && d->received != LIVE_SIZE)
		return gw_error_set(err, -EINVAL, "only %u bytes at the end", d->received);
	return 0;
}

void test_ram_create(struct test_ram *r, uint64_t size)
{
	r->size = size;
	r->fd = memfd_create("test-ram", MFD_CLOEXEC);
	CHECK(r->fd >= 0);
	CHECK(ftruncate(r->fd, size) == 0);
	r->host = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, r->fd, 0);
	CHECK(r->host != MAP_FAILED);
}

void test_vm_init(struct test_vm *vm, const struct test_vm_opts *opts)
{
	static const struct test_vm_opts defaults;
	static const char *const ram_names[2] = {"pc.ram", "vga.vram"};
	struct gw_error err = {0};

	if (!opts)
		opts = &defaults;
	memset(vm, 0, sizeof(*vm));
	struct gw_machine mc = {
		.vmm_name = "godwit-test",
		.vmm_version = "0.0.1",
		.machine = opts->machine ? opts->machine : "test-machine",
		.nr_vcpus = opts->nr_vcpus ? opts->nr_vcpus : 2,
	};
	CHECK_OK(gw_migration_new(&mc, &vm->m, &err), &err);

	for (int i = 0; i < 2; i++) {
		uint64_t size = opts->ram_size[i] ? opts->ram_size[i] : (i ? 4 : 8) * GW_PAGE_SIZE;
		uint64_t fd_offset = 0;
		struct gw_ram ram;

		if (opts->one_memfd && i == 0) {
			uint64_t size1 = opts->ram_size[1] ? opts->ram_size[1] : 4 * GW_PAGE_SIZE;

			test_ram_create(&vm->ram[0], size + size1);
			vm->ram[0].size = size;
		} else if (opts->one_memfd) {
			fd_offset = vm->ram[0].size;
			vm->ram[1] = (struct test_ram){vm->ram[0].host + fd_offset, size,
						       vm->ram[0].fd};
		} else {
			test_ram_create(&vm->ram[i], size);
		}
		ram = (struct gw_ram){ram_names[i],  vm->ram[i].host, size,
				      vm->ram[i].fd, fd_offset,       i ? 0x100000000ull : 0};
		if (i == 1 && opts->ram1_name)
			ram.name = opts->ram1_name;
		CHECK_OK(gw_migration_add_ram(vm->m, &ram, &err), &err);
	}
	if (opts->extra_ram) {
		struct gw_ram ram;

		test_ram_create(&vm->ram[2], GW_PAGE_SIZE);
		ram = (struct gw_ram){"extra.ram", vm->ram[2].host, GW_PAGE_SIZE, vm->ram[2].fd,
				      0,           GW_GPA_NONE};
		CHECK_OK(gw_migration_add_ram(vm->m, &ram, &err), &err);
	}

	uint32_t version = opts->uart_version ? opts->uart_version : 2;
	for (uint32_t i = 0; i < 2; i++) {
		struct gw_section s = {
			.name = "uart",
			.instance = i,
			.version = version,
			.min_version = opts->uart_min_version ? opts->uart_min_version : 1,
			.vmstate = version >= 2 ? &uart_vmstate : &uart_vmstate_v1,
			.opaque = &vm->uart[i],
		};
		CHECK_OK(gw_migration_add_section(vm->m, &s, &err), &err);
	}
	if (!opts->no_blob) {
		struct gw_section s = {.name = "blob",
				       .version = 1,
				       .min_version = 1,
				       .save = blob_save,
				       .load = blob_load,
				       .opaque = &vm->blob};
		CHECK_OK(gw_migration_add_section(vm->m, &s, &err), &err);
	}
	struct gw_section live = {.name = "live",
				  .version = 1,
				  .min_version = 1,
				  .save_live = live_save,
				  .load_live = live_load,
				  .opaque = &vm->live};
	CHECK_OK(gw_migration_add_section(vm->m, &live, &err), &err);
	if (opts->extra || opts->extra_optional || opts->extra_live) {
		struct gw_section s = {.name = "extra",
				       .version = 2,
				       .min_version = 1,
				       .flags = opts->extra_optional ? GW_SECTION_OPTIONAL : 0,
				       .vmstate = &uart_vmstate,
				       .opaque = &vm->extra};
		if (opts->extra_live) {
			s.vmstate = NULL;
			s.save_live = live_save;
			s.load_live = live_load;
			s.opaque = &vm->live; /* never saved: only registered */
		}
		CHECK_OK(gw_migration_add_section(vm->m, &s, &err), &err);
	}
}

void test_vm_free(struct test_vm *vm)
{
	gw_migration_free(vm->m);
	for (int i = 0; i < 3; i++) {
		if (!vm->ram[i].size)
			continue;
		munmap(vm->ram[i].host, vm->ram[i].size);
		/* one_memfd: block 1 is the rest of block 0's memfd. */
		if (i == 0 || vm->ram[i].fd != vm->ram[0].fd)
			close(vm->ram[i].fd);
	}
}

static uint32_t next(uint32_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 17;
	*s ^= *s << 5;
	return *s;
}

void test_vm_fill(struct test_vm *vm, uint32_t seed)
{
	uint32_t s = seed * 2654435761u + 1;

	for (int b = 0; b < 2; b++)
		for (uint64_t off = 0; off < vm->ram[b].size; off += GW_PAGE_SIZE) {
			unsigned char *p = vm->ram[b].host + off;

			if ((off / GW_PAGE_SIZE) % 3 == 1) {
				memset(p, 0, GW_PAGE_SIZE);
				continue;
			}
			for (unsigned i = 0; i < GW_PAGE_SIZE; i += 4) {
				uint32_t v = next(&s);

				memcpy(p + i, &v, 4);
			}
		}
	for (int i = 0; i < 2; i++) {
		struct uart_state *u = &vm->uart[i];

		u->ier = next(&s);
		u->lcr = next(&s);
		u->divisor = next(&s);
		for (int j = 0; j < 4; j++)
			u->regs[j] = next(&s);
		for (int j = 0; j < 16; j++)
			u->fifo[j] = next(&s);
		u->irq = next(&s) & 1;
		u->delta = -(int64_t)next(&s) * 1000;
		u->big = 0xfedcba9876543210ull ^ next(&s);
		u->scratch = next(&s);
	}
	vm->blob.len = 17 + seed % 200;
	for (uint32_t i = 0; i < vm->blob.len; i++)
		vm->blob.data[i] = next(&s);
	for (int i = 0; i < LIVE_SIZE; i++)
		vm->live.data[i] = next(&s);
	vm->extra = vm->uart[0];
}

static void compare_uart(const struct uart_state *a, const struct uart_state *b)
{
	CHECK(a->ier == b->ier && a->lcr == b->lcr && a->divisor == b->divisor);
	CHECK(memcmp(a->regs, b->regs, sizeof(a->regs)) == 0);
	CHECK(memcmp(a->fifo, b->fifo, sizeof(a->fifo)) == 0);
	CHECK(a->irq == b->irq && a->delta == b->delta && a->big == b->big);
	CHECK(a->scratch == b->scratch);
}

void test_vm_compare(const struct test_vm *a, const struct test_vm *b)
{
	for (int i = 0; i < 2; i++) {
		CHECK(a->ram[i].size == b->ram[i].size);
		for (uint64_t off = 0; off < a->ram[i].size; off += GW_PAGE_SIZE)
			if (memcmp(a->ram[i].host + off, b->ram[i].host + off, GW_PAGE_SIZE))
				FAIL("RAM block %d differs at offset 0x%llx", i,
				     (unsigned long long)off);
	}
	test_vm_compare_devices(a, b);
}

void test_vm_compare_devices(const struct test_vm *a, const struct test_vm *b)
{
	for (int i = 0; i < 2; i++)
		compare_uart(&a->uart[i], &b->uart[i]);
	CHECK(a->blob.len == b->blob.len);
	CHECK(memcmp(a->blob.data, b->blob.data, a->blob.len) == 0);
	CHECK(b->live.received == LIVE_SIZE);
	CHECK(memcmp(a->live.data, b->live.data, LIVE_SIZE) == 0);
}

/* Pages [first, last) of block b as batch entries, zero pages flagged. */
static void save_range(struct test_vm *vm, struct gw_writer *w, uint32_t b, uint64_t first,
		       uint64_t last, unsigned flags)
{
	uint64_t entries[GW_PAGES_MAX];
	struct gw_error err = {0};
	uint32_t n = 0;

	for (uint64_t p = first; p < last; p++) {
		uint64_t off = p * GW_PAGE_SIZE;

		entries[n++] = off | (gw_page_is_zero(vm->ram[b].host + off) ? GW_PAGE_ZERO : 0);
	}
	CHECK_OK(gw_save_pages(vm->m, w, b, entries, n,
			       flags & SAVE_DATA_CRC ? GW_SAVE_DATA_CRC : 0, &err),
		 &err);
}

void test_save_sections(struct gw_migration *m, struct test_buf *out)
{
	struct gw_error err = {0};
	struct gw_writer *w;
	int fd = test_memfd(NULL, 0);

	CHECK_OK(gw_writer_new(fd, &w, &err), &err);
	CHECK_OK(gw_save_begin(m, w, &err), &err);
	CHECK_OK(gw_save_devices(m, w, &err), &err);
	CHECK_OK(gw_save_finish(m, w, &err), &err);
	gw_writer_free(w);
	test_slurp(fd, out);
	close(fd);
}

void test_save(struct test_vm *vm, unsigned flags, struct test_buf *out)
{
	struct gw_error err = {0};
	struct gw_writer *w;
	uint64_t pages0 = vm->ram[0].size / GW_PAGE_SIZE;
	uint64_t half = flags & SAVE_ONE_BATCH ? pages0 : pages0 / 2;
	int fd = test_memfd(NULL, 0);

	CHECK_OK(gw_writer_new(fd, &w, &err), &err);
	CHECK_OK(gw_save_begin(vm->m, w, &err), &err);
	save_range(vm, w, 0, 0, half, flags);
	CHECK_OK(gw_save_iterate(vm->m, w, &err), &err);
	save_range(vm, w, 1, 0, vm->ram[1].size / GW_PAGE_SIZE, flags);
	CHECK_OK(gw_save_iterate(vm->m, w, &err), &err);
	if (half < pages0)
		save_range(vm, w, 0, half, pages0, flags);
	CHECK_OK(gw_save_devices(vm->m, w, &err), &err);
	CHECK_OK(gw_save_finish(vm->m, w, &err), &err);
	CHECK(gw_writer_offset(w) == (uint64_t)lseek(fd, 0, SEEK_CUR));
	gw_writer_free(w);
	test_slurp(fd, out);
	close(fd);
}

int test_memfd(const void *p, size_t len)
{
	int fd = memfd_create("test-stream", MFD_CLOEXEC);

	CHECK(fd >= 0);
	if (len)
		CHECK(write(fd, p, len) == (ssize_t)len);
	CHECK(lseek(fd, 0, SEEK_SET) == 0);
	return fd;
}

void test_slurp(int fd, struct test_buf *out)
{
	off_t len = lseek(fd, 0, SEEK_END);

	CHECK(len >= 0);
	out->len = len;
	out->p = malloc(len ? len : 1);
	CHECK(out->p);
	CHECK(pread(fd, out->p, len, 0) == len);
}

int test_load(struct gw_migration *m, const void *p, size_t len, struct gw_error *err)
{
	int fd = test_memfd(p, len);
	struct gw_reader *r;
	int ret;

	CHECK_OK(gw_reader_new(fd, &r, err), err);
	ret = gw_load(m, r, err);
	gw_reader_free(r);
	close(fd);
	return ret;
}

uint64_t test_rnd(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

void test_sleep_ms(unsigned ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};

	nanosleep(&ts, NULL);
}

struct gw_channel test_channel_of(int fd)
{
	struct gw_error err = {0};
	struct gw_channel ch;
	char uri[32];

	snprintf(uri, sizeof(uri), "fd:%d", fd);
	CHECK_OK(gw_channel_connect(uri, &ch, &err), &err);
	return ch;
}

bool test_page_zero(const unsigned char *p)
{
	for (unsigned i = 0; i < GW_PAGE_SIZE; i++)
		if (p[i])
			return false;
	return true;
}

bool *test_populated(int fd, uint64_t size)
{
	bool *p = calloc(size / GW_PAGE_SIZE, 1);
	off_t at = 0;

	CHECK(p);
	for (;;) {
		off_t data = lseek(fd, at, SEEK_DATA), hole;

		if (data < 0 || (uint64_t)data >= size)
			break;
		hole = lseek(fd, data, SEEK_HOLE);
		for (off_t o = data; o < hole && (uint64_t)o < size; o += GW_PAGE_SIZE)
			p[o / GW_PAGE_SIZE] = true;
		at = hole;
	}
	return p;
}

int test_open_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	CHECK(d);
	while ((e = readdir(d)))
		n += e->d_name[0] != '.';
	closedir(d);
	return n;
}

void test_hello_make(struct test_buf *out, uint32_t nr_fds, const void *cfg, size_t cfg_len,
		     const void *table, size_t table_len)
{
	out->len = GW_CPR_HELLO_HEAD + cfg_len + table_len + 4;
	CHECK((out->p = calloc(1, out->len)));
	memcpy(out->p, GW_CPR_HELLO_MAGIC, GW_CPR_HELLO_MAGIC_LEN);
	gw_le32(out->p + 8, GW_CPR_HELLO_VERSION);
	gw_le32(out->p + 12, nr_fds);
	gw_le32(out->p + 16, (uint32_t)cfg_len);
	gw_le32(out->p + 20, (uint32_t)table_len);
	memcpy(out->p + GW_CPR_HELLO_HEAD, cfg, cfg_len);
	memcpy(out->p + GW_CPR_HELLO_HEAD + cfg_len, table, table_len);
	test_hello_reseal(out);
}

void test_hello_of(struct gw_migration *m, struct test_buf *out)
{
	struct gw_wbuf cfg, table;
	struct gw_error err = {0};

	gw_wbuf_init(&cfg, GW_CONFIG_MAX);
	gw_wbuf_init(&table, GW_CPR_MAX);
	CHECK(gw_config_put(m, &cfg) == 0);
	CHECK_OK(gw_cpr_table_put(m, 0, false, &table, &err), &err);
	test_hello_make(out, m->nr_ram, cfg.data, cfg.len, table.data, table.len);
	gw_wbuf_release(&cfg);
	gw_wbuf_release(&table);
}

void test_hello_reseal(struct test_buf *h)
{
	gw_le32(h->p + h->len - 4, gw_crc32c(0, h->p, h->len - 4));
}

void test_send_fds(int sock, const void *p, size_t len, const int *fds, unsigned n, size_t fds_at)
{
	struct gw_error err = {0};
	struct gw_cancel c;

	CHECK_OK(gw_cancel_init(&c, sock, &err), &err);
	if (fds_at)
		CHECK_OK(gw_fds_send(&c, TEST_SEND_TIMEOUT_MS, p, fds_at, NULL, 0, &err), &err);
	CHECK_OK(gw_fds_send(&c, TEST_SEND_TIMEOUT_MS, (const unsigned char *)p + fds_at,
			     len - fds_at, fds, n, &err),
		 &err);
	gw_cancel_fini(&c);
}
