/*
 * gw-bench-blkdev: godwit-vmm's virtio-blk device driven from a host
 * thread, to measure the device and its I/O engine (aio=threads or
 * io_uring) without a guest. The guests of this machine run emulated, so
 * a guest's own requests per second are bounded by its driver's
 * instructions, not by the device; this thread plays the driver at host
 * speed through the same MMIO registers and split virtqueue in memfd
 * guest RAM that a guest uses (vmm/dev/virtio_mmio.c), so what it
 * measures is what a fast guest would get.
 *
 *   gw-bench-blkdev --file IMAGE [--aio threads|io_uring] [--cache none|writeback]
 *                   [--rw randread|randwrite] [--bs 4096] [--depth 32] [--seconds 3]
 *
 * Prints one JSON line: requests, seconds, iops, mbps, and cpu_us: the
 * device's CPU time per request (the process's less this thread's, which
 * spins on the used ring as a polling guest would).
 */
#include "vmm/dev/virtio_blk.h"
#include "vmm/machine.h"

#include <getopt.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* The line goes nowhere: the driver polls the used ring. */
int kvm_irq_line(struct kvm *kvm, unsigned irq, int level)
{
	(void)kvm, (void)irq, (void)level;
	return 0;
}

#define REG_QUEUE_SEL 0x030
#define REG_QUEUE_NUM 0x038
#define REG_QUEUE_READY 0x044
#define REG_QUEUE_NOTIFY 0x050
#define REG_STATUS 0x070
#define REG_DRIVER_FEATURES 0x020
#define REG_DRIVER_FEATURES_SEL 0x024
#define REG_QUEUE_DESC 0x080
#define REG_QUEUE_DRIVER 0x090
#define REG_QUEUE_DEVICE 0x0a0

#define QSIZE 128
#define RING_GPA 0x100000ull
#define HDR_GPA 0x110000ull
#define DATA_GPA 0x200000ull
#define RAM_BYTES (64ull << 20)

struct desc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags, next;
};

static void die(const char *what)
{
	fprintf(stderr, "gw-bench-blkdev: %s\n", what);
	exit(1);
}

static void reg(struct vmm *vm, uint64_t off, uint32_t v)
{
	io_bus_access(&vm->mmio, 0, GW_VIRTIO_MMIO_BASE + off, (uint8_t *)&v, 4, true);
}

static void *at(struct vmm *vm, uint64_t gpa)
{
	return guest_ram_dma(&vm->ram, gpa, 1);
}

static double cpu_seconds(clockid_t clock)
{
	struct timespec ts;
	clock_gettime(clock, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t next_rand(uint64_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 7;
	*x ^= *x << 17;
	return *x;
}

int main(int argc, char **argv)
{
	struct drive_options opt = {.shared = true};
	const char *rw = "randread";
	unsigned bs = 4096, depth = 32;
	double seconds = 3;
	char err[512];
	static const struct option longs[] = {
		{"file", 1, 0, 'f'},    {"aio", 1, 0, 'a'}, {"cache", 1, 0, 'c'},
		{"rw", 1, 0, 'r'},      {"bs", 1, 0, 'b'},  {"depth", 1, 0, 'd'},
		{"seconds", 1, 0, 's'}, {0, 0, 0, 0},
	};
	for (int c; (c = getopt_long(argc, argv, "", longs, NULL)) != -1;) {
		if (c == 'f')
			snprintf(opt.path, sizeof(opt.path), "%s", optarg);
		else if (c == 'a')
			opt.aio = strcmp(optarg, "io_uring") ? DRIVE_AIO_THREADS :
							       DRIVE_AIO_IO_URING;
		else if (c == 'c')
			opt.direct = !strcmp(optarg, "none");
		else if (c == 'r')
			rw = optarg;
		else if (c == 'b')
			bs = (unsigned)strtoul(optarg, NULL, 0);
		else if (c == 'd')
			depth = (unsigned)strtoul(optarg, NULL, 0);
		else if (c == 's')
			seconds = strtod(optarg, NULL);
		else
			die("usage: --file IMAGE [--aio A] [--cache C] [--rw R] [--bs N] [--depth N] [--seconds S]");
	}
	bool write = !strcmp(rw, "randwrite");
	/* Three descriptors a request. */
	if (!opt.path[0] || !bs || bs % 512 || bs > (1u << 20) || !depth || depth > QSIZE / 3)
		die("--file is required; --bs a multiple of 512 up to 1M; --depth 1 to 42");

	static struct vmm vm;
	io_bus_init(&vm.mmio, "mmio", false);
	if (guest_ram_create(&vm.ram, RAM_BYTES, err, sizeof(err)))
		die(err);
	if (DATA_GPA + (uint64_t)depth * bs > RAM_BYTES)
		die("--depth x --bs exceeds the driver's RAM");
	struct virtio_blk *b = &vm.drives[0];
	if (virtio_blk_init(b, &vm, 0, 0, &opt, err, sizeof(err)))
		die(err);

	/* Bring-up as a guest does it (virtio 1.2, 3.1.1). */
	reg(&vm, REG_STATUS, 0);
	reg(&vm, REG_STATUS, 1 | 2);
	reg(&vm, REG_DRIVER_FEATURES_SEL, 1);
	reg(&vm, REG_DRIVER_FEATURES, 1); /* VIRTIO_F_VERSION_1 */
	reg(&vm, REG_STATUS, 1 | 2 | 8);
	reg(&vm, REG_QUEUE_SEL, 0);
	reg(&vm, REG_QUEUE_NUM, QSIZE);
	reg(&vm, REG_QUEUE_DESC, (uint32_t)RING_GPA);
	reg(&vm, REG_QUEUE_DESC + 4, 0);
	reg(&vm, REG_QUEUE_DRIVER, (uint32_t)(RING_GPA + 16 * QSIZE));
	reg(&vm, REG_QUEUE_DRIVER + 4, 0);
	reg(&vm, REG_QUEUE_DEVICE, (uint32_t)(RING_GPA + 0x1000));
	reg(&vm, REG_QUEUE_DEVICE + 4, 0);
	reg(&vm, REG_QUEUE_READY, 1);
	reg(&vm, REG_STATUS, 1 | 2 | 8 | 4);
	virtio_blk_resume(b);

	struct desc *d = at(&vm, RING_GPA);
	volatile uint16_t *avail = at(&vm, RING_GPA + 16 * QSIZE);
	volatile uint16_t *used_idx = at(&vm, RING_GPA + 0x1000 + 2);
	volatile uint32_t *used = at(&vm, RING_GPA + 0x1000 + 4);
	uint64_t blocks = b->capacity * 512 / bs, x = 0x9e3779b97f4a7c15ull;
	uint16_t avail_idx = 0, seen = 0;
	uint64_t done = 0;

	/* Request i: descriptors 3i (header), 3i+1 (data), 3i+2 (status). */
	for (unsigned i = 0; i < depth; i++) {
		uint64_t hdr = HDR_GPA + 32ull * i;
		d[3 * i] = (struct desc){hdr, 16, 1, (uint16_t)(3 * i + 1)};
		d[3 * i + 1] = (struct desc){DATA_GPA + (uint64_t)i * bs, bs,
					     (uint16_t)(write ? 1 : 3), (uint16_t)(3 * i + 2)};
		d[3 * i + 2] = (struct desc){hdr + 16, 1, 2, 0};
	}
	struct timespec t0, t;
	double cpu0 = cpu_seconds(CLOCK_PROCESS_CPUTIME_ID) - cpu_seconds(CLOCK_THREAD_CPUTIME_ID);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	double elapsed = 0;
	unsigned submit[QSIZE], nr = 0;
	for (unsigned i = 0; i < depth; i++)
		submit[nr++] = i;
	for (;;) {
		for (unsigned k = 0; k < nr; k++) {
			unsigned i = submit[k];
			uint32_t *h = at(&vm, HDR_GPA + 32ull * i);
			h[0] = write ? 1 : 0;
			h[1] = 0;
			uint64_t sector = next_rand(&x) % blocks * (bs / 512);
			memcpy(&h[2], &sector, 8);
			avail[2 + avail_idx % QSIZE] = (uint16_t)(3 * i);
			avail_idx++;
		}
		if (nr) {
			atomic_thread_fence(memory_order_release);
			avail[1] = avail_idx;
			reg(&vm, REG_QUEUE_NOTIFY, 0);
		}
		nr = 0;
		if (elapsed >= seconds && done && seen == avail_idx)
			break;
		while (seen == *used_idx)
			;
		atomic_thread_fence(memory_order_acquire);
		for (; seen != *used_idx; seen++) {
			unsigned head = used[2 * (seen % QSIZE)];
			uint8_t *st = at(&vm, HDR_GPA + 32ull * (head / 3) + 16);
			if (*st != 0)
				die("a request failed");
			done++;
			clock_gettime(CLOCK_MONOTONIC, &t);
			elapsed = (double)(t.tv_sec - t0.tv_sec) +
				  (double)(t.tv_nsec - t0.tv_nsec) * 1e-9;
			if (elapsed < seconds)
				submit[nr++] = head / 3;
		}
	}
	double cpu = cpu_seconds(CLOCK_PROCESS_CPUTIME_ID) - cpu_seconds(CLOCK_THREAD_CPUTIME_ID) -
		     cpu0;
	printf("{\"requests\": %llu, \"seconds\": %.3f, \"iops\": %.0f, \"mbps\": %.1f, "
	       "\"cpu_us\": %.2f}\n",
	       (unsigned long long)done, elapsed, done / elapsed, done * (double)bs / elapsed / 1e6,
	       cpu * 1e6 / (double)done);
	virtio_blk_destroy(b);
	guest_ram_destroy(&vm.ram);
	return 0;
}
