/*
 * A test "machine" for the unit tests: memfd-backed RAM blocks and a few
 * devices covering each way a section can be saved (vmstate, hand-written
 * callbacks, progressive), plus helpers that save a machine to bytes and
 * load bytes into a machine. Source and destination are two test_vm in
 * one process, which is exactly what the library's lack of global state
 * allows.
 */
#ifndef GW_TEST_TESTVM_H
#define GW_TEST_TESTVM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <godwit/godwit.h>

struct test_ram {
	unsigned char *host;
	uint64_t size;
	int fd;
};

/* The state of the "uart" device; scratch exists from version 2 on. */
struct uart_state {
	uint8_t ier;
	uint8_t lcr;
	uint16_t divisor;
	uint32_t regs[4];
	uint8_t fifo[16];
	bool irq;
	int64_t delta;
	uint64_t big;
	uint32_t scratch;
};

/* A device saved by hand: a variable-length blob. */
struct blob_dev {
	uint32_t len;
	unsigned char data[300];
};

/* A progressive device: data sent in chunks while the guest "runs". */
#define LIVE_SIZE 5000
#define LIVE_CHUNK 1024
struct live_dev {
	unsigned char data[LIVE_SIZE];
	uint32_t sent;      /* source: bytes sent so far */
	uint32_t received;  /* destination: bytes received so far */
	unsigned phases[4]; /* destination: calls per enum gw_phase */
};

struct test_vm_opts {
	uint32_t uart_version;     /* 0: 2 */
	uint32_t uart_min_version; /* 0: 1 */
	uint64_t ram_size[2];      /* 0: 8 and 4 pages */
	const char *ram1_name;     /* NULL: "vga.vram" */
	bool extra_ram;            /* add a third RAM block, "extra.ram" */
	bool one_memfd;            /* blocks 0 and 1 in one memfd, 1 right after 0 */
	uint32_t nr_vcpus;         /* 0: 2 */
	const char *machine;       /* NULL: "test-machine" */
	bool no_blob;              /* leave out the "blob" section */
	bool extra;                /* add section "extra" (one-shot, vmstate) */
	bool extra_optional;       /* ... marked GW_SECTION_OPTIONAL */
	bool extra_live;           /* ... progressive instead */
};

struct test_vm {
	struct gw_migration *m;
	struct test_ram ram[3];
	struct uart_state uart[2];
	struct blob_dev blob;
	struct live_dev live;
	struct uart_state extra;
};

void test_vm_init(struct test_vm *vm, const struct test_vm_opts *opts);
void test_vm_free(struct test_vm *vm);
/* Fill RAM and devices with a pattern derived from seed; some pages stay zero. */
void test_vm_fill(struct test_vm *vm, uint32_t seed);
/* Fail the test unless a and b hold the same RAM and device state. */
void test_vm_compare(const struct test_vm *a, const struct test_vm *b);
/* The same for the device state alone (b's RAM may be a's, adopted). */
void test_vm_compare_devices(const struct test_vm *a, const struct test_vm *b);

#define SAVE_DATA_CRC 0x1u  /* pass GW_SAVE_DATA_CRC for every batch */
#define SAVE_ONE_BATCH 0x2u /* all pages of a block in one batch */

/* A stream in memory. */
struct test_buf {
	unsigned char *p;
	size_t len;
};

/*
 * Save vm with RAM batches and section PARTs interleaved:
 * begin, pages, iterate, pages, iterate, pages, devices, finish.
 */
void test_save(struct test_vm *vm, unsigned flags, struct test_buf *out);
/* Save m's sections (no RAM: begin, devices, finish) into a new buffer. */
void test_save_sections(struct gw_migration *m, struct test_buf *out);
/* Load bytes into m through a memfd and a gw_reader. */
int test_load(struct gw_migration *m, const void *p, size_t len, struct gw_error *err);
/* A memfd holding len bytes of p, positioned at 0. */
int test_memfd(const void *p, size_t len);
/* Everything written to fd (a memfd or file) so far. */
void test_slurp(int fd, struct test_buf *out);

/* size bytes of memfd RAM, mapped MAP_SHARED; untouched, so all holes. */
void test_ram_create(struct test_ram *r, uint64_t size);

/* Helpers of the in-process engine tests (test_precopy.c, test_background.c). */
/* xorshift64: the next pseudo-random value of *s. */
uint64_t test_rnd(uint64_t *s);
void test_sleep_ms(unsigned ms);
/* The engines own their channels: a channel of its own for fd (a dup, as
 * fd:N makes), so that the test keeps fd to shut down or read. */
struct gw_channel test_channel_of(int fd);
bool test_page_zero(const unsigned char *p);
/* Which pages of [0, size) of fd hold data, asked of the kernel (SEEK_DATA),
 * not of the library; malloc'd, one bool per page. */
bool *test_populated(int fd, uint64_t size);
/* How many fds this process has open. */
int test_open_fds(void);

/* Helpers of the local live update tests (test_cpr.c, test_cpr_hello.c). */
/* A hello of cpr-transfer (lib/format/cpr.h) into out, malloc'd: the head
 * announcing nr_fds, the CONFIG payload and CPR table given, its CRC. */
void test_hello_make(struct test_buf *out, uint32_t nr_fds, const void *cfg, size_t cfg_len,
		     const void *table, size_t table_len);
/* The hello m's engine sends: its CONFIG and CPR table, one fd a block. */
void test_hello_of(struct gw_migration *m, struct test_buf *out);
/* The hello's CRC again, after a byte of it was changed. */
void test_hello_reseal(struct test_buf *h);
/* Send len bytes of p on sock with the n fds attached to byte fds_at
 * (the bytes before it go first, in a sendmsg of their own). */
void test_send_fds(int sock, const void *p, size_t len, const int *fds, unsigned n, size_t fds_at);

#endif
