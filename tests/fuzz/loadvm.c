#include "loadvm.h"
#include "lib/format/mapped.h"
#include "lib/format/mapped_load.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "check.h"
#include "vmm/migration/migratable.h"

/* The UART raises its interrupt through KVM. Here the line goes nowhere,
 * but what the device asks for must still be a line and a level. */
int kvm_irq_line(struct kvm *kvm, unsigned irq, int level)
{
	(void)kvm;
	CHECK(irq == UART_COM1_IRQ && (level == 0 || level == 1));
	return 0;
}

/*
 * The cpu sections reach KVM through vmm/x86/cpu_state.c, which this
 * destination replaces: its KVM keeps what it was given, so a save after
 * a load saves what was loaded, and what is put into it must have got
 * past the checks whole (cpu_state_load() itself refuses such an
 * nr_msrs once more, and KVM_SET_IRQCHIP writes whichever chip the blob
 * names).
 */
int cpu_state_check_host(struct kvm *kvm, char *errmsg, size_t errlen)
{
	(void)kvm, (void)errmsg, (void)errlen;
	return 0;
}

int msr_list_probe(struct kvm *kvm, int vcpu_fd, struct msr_list *out, char *errmsg,
		   size_t errlen)
{
	(void)kvm, (void)vcpu_fd, (void)errmsg, (void)errlen;
	out->nr = 0;
	return 0;
}

int cpu_state_save(struct kvm *kvm, int vcpu_fd, const struct msr_list *msrs,
		   struct cpu_state *s, char *errmsg, size_t errlen)
{
	(void)kvm, (void)vcpu_fd, (void)msrs, (void)s, (void)errmsg, (void)errlen;
	return 0;
}

int cpu_state_load(struct kvm *kvm, int vcpu_fd, const struct cpu_state *s, char *errmsg,
		   size_t errlen)
{
	(void)kvm, (void)vcpu_fd, (void)errmsg, (void)errlen;
	CHECK(s->nr_msrs <= CPU_STATE_MAX_MSRS);
	return 0;
}

int vm_state_save(struct kvm *kvm, struct vm_state *s, char *errmsg, size_t errlen)
{
	(void)kvm, (void)s, (void)errmsg, (void)errlen;
	return 0;
}

int vm_state_load(struct kvm *kvm, const struct vm_state *s, char *errmsg, size_t errlen)
{
	(void)kvm, (void)errmsg, (void)errlen;
	CHECK(s->pic_master.chip_id == KVM_IRQCHIP_PIC_MASTER &&
	      s->pic_slave.chip_id == KVM_IRQCHIP_PIC_SLAVE &&
	      s->ioapic.chip_id == KVM_IRQCHIP_IOAPIC);
	return 0;
}

static void on_guest_exit(void *opaque, int status)
{
	(void)opaque, (void)status;
}

/* The devices as godwit-vmm's main() creates them. */
static void init_devices(struct vmm *mc)
{
	io_bus_init(&mc->pio, "pio", false);
	CHECK(uart_init(&mc->uart, &mc->kvm, &mc->pio, -1) == 0);
	CHECK(testdev_init(&mc->testdev, &mc->pio, on_guest_exit, mc) == 0);
}

void loadvm_init(struct loadvm *vm)
{
	static const struct gw_machine machine = {
		.vmm_name = "godwit-vmm", .vmm_version = "fuzz", .machine = "godwit-x86",
		.nr_vcpus = LOADVM_VCPUS,
	};
	struct vmm *mc = &vm->machine;
	struct gw_error err = { 0 };
	char msg[256];

	memset(vm, 0, sizeof(*vm));
	mc->kvm = (struct kvm){ .sys_fd = -1, .vm_fd = -1 };
	mc->vcpus.nr = LOADVM_VCPUS;
	for (unsigned i = 0; i < LOADVM_VCPUS; i++)
		mc->vcpus.vcpus[i].fd = -1;
	pthread_mutex_init(&mc->run_lock, NULL);
	if (guest_ram_create(&mc->ram, LOADVM_MEMORY, msg, sizeof(msg)))
		FAIL("%s", msg);
	init_devices(mc);
	CHECK_OK(gw_migration_new(&machine, &vm->m, &err), &err);
	for (unsigned i = 0; i < mc->ram.nr_blocks; i++) {
		const struct ram_block *b = &mc->ram.blocks[i];
		const struct gw_ram r = {
			.name = b->name, .host = b->host, .size = b->size, .fd = b->memfd,
			.gpa = b->gpa,
		};
		CHECK_OK(gw_migration_add_ram(vm->m, &r, &err), &err);
	}
	CHECK_OK(vmm_sections_register(mc, vm->m, &err), &err);
}

void loadvm_free(struct loadvm *vm)
{
	struct vmm *mc = &vm->machine;

	gw_migration_free(vm->m);
	uart_destroy(&mc->uart);
	testdev_destroy(&mc->testdev);
	guest_ram_destroy(&mc->ram);
	pthread_mutex_destroy(&mc->run_lock);
}

void loadvm_reset(struct loadvm *vm)
{
	struct vmm *mc = &vm->machine;
	struct cpu_sections *cs = &mc->cpu_state;

	uart_destroy(&mc->uart);
	testdev_destroy(&mc->testdev);
	init_devices(mc);
	for (unsigned i = 0; i < cs->nr; i++)
		memset(&cs->cpu[i].st, 0, sizeof(cs->cpu[i].st));
	memset(&cs->vm.st, 0, sizeof(cs->vm.st));
	mc->user_paused = false;
	for (unsigned i = 0; i < mc->ram.nr_blocks; i++)
		CHECK(fallocate(mc->ram.blocks[i].memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
				0, (off_t)mc->ram.blocks[i].size) == 0);
}

static int memfd_of(const void *p, size_t len)
{
	int fd = memfd_create("loadvm-stream", MFD_CLOEXEC);

	CHECK(fd >= 0);
	CHECK(len == 0 || write(fd, p, len) == (ssize_t)len);
	CHECK(lseek(fd, 0, SEEK_SET) == 0);
	return fd;
}

/* A mapped-ram file is read by offset, as the incoming engine does; any
 * other input as a stream. */
static int load_fd(struct loadvm *vm, int fd, struct gw_error *err)
{
	const struct gw_mapped_load_params mp = { .readers = 2 };
	unsigned char h[GW_STREAM_HEADER_SIZE];
	struct gw_reader *r;
	int ret;

	if (pread(fd, h, sizeof(h), 0) == (ssize_t)sizeof(h) && gw_mapped_sniff(h, NULL) != -ENOMSG) {
		ret = gw_mapped_load(vm->m, fd, &mp, NULL, NULL, err);
		CHECK(ret == 0 || (ret < 0 && err->code == ret && err->msg[0]));
		return ret;
	}
	CHECK_OK(gw_reader_new(fd, &r, err), err);
	ret = gw_load(vm->m, r, err);
	/* Every refusal says why. */
	CHECK(ret == 0 || (ret < 0 && err->code == ret && err->msg[0]));
	gw_reader_free(r);
	return ret;
}

int loadvm_load(struct loadvm *vm, const void *p, size_t len, struct gw_error *err)
{
	int fd = memfd_of(p, len);
	int ret = load_fd(vm, fd, err);

	close(fd);
	if (ret == 0)
		CHECK_OK(cpu_sections_apply(&vm->machine.cpu_state, err), err);
	return ret;
}

static uint8_t in8(struct loadvm *vm, uint64_t port)
{
	uint8_t v;

	io_bus_access(&vm->machine.pio, 0, port, &v, 1, false);
	return v;
}

static void out8(struct loadvm *vm, uint64_t port, uint8_t v)
{
	io_bus_access(&vm->machine.pio, 0, port, &v, 1, true);
}

enum { RBR = 0, IER = 1, FCR = 2, LCR = 3, MCR = 4, LSR = 5 };

/*
 * What a guest driver does with a UART it finds: read every register as
 * it is (the FIFO first, at the loaded rx_head), the divisor latch, drain
 * the FIFO, then send bytes through the loopback and read them back.
 */
static void drive_uart(struct loadvm *vm)
{
	const uint64_t base = UART_COM1_BASE;
	uint8_t lcr = in8(vm, base + LCR), wide[8];

	for (unsigned r = 0; r < 8; r++)
		(void)in8(vm, base + r);
	io_bus_access(&vm->machine.pio, 0, base, wide, sizeof(wide), false);
	out8(vm, base + LCR, lcr | 0x80);
	(void)in8(vm, base + RBR);
	(void)in8(vm, base + IER);
	out8(vm, base + LCR, lcr & 0x7f);
	for (unsigned i = 0; i <= UART_FIFO_SIZE; i++)
		(void)in8(vm, base + RBR);
	CHECK(!(in8(vm, base + LSR) & UART_LSR_DR));

	/* Loopback wraps the FIFO around from wherever rx_head was left. */
	out8(vm, base + MCR, 0x10);
	out8(vm, base + FCR, 0x01);
	out8(vm, base + IER, 0x0f);
	for (unsigned i = 0; i < UART_FIFO_SIZE + 2; i++)
		out8(vm, base + RBR, (uint8_t)(0xa0 + i));
	for (unsigned i = 0; i < UART_FIFO_SIZE; i++)
		CHECK(in8(vm, base + RBR) == (uint8_t)(0xa0 + i));
	CHECK(!(in8(vm, base + LSR) & UART_LSR_DR));
	out8(vm, base + MCR, 0);
	uart_receive(&vm->machine.uart, (const uint8_t *)"fuzz", 4);
	(void)in8(vm, base + FCR);
}

/* Report through the test device as the dirtier guest does. */
static void drive_testdev(struct loadvm *vm)
{
	uint32_t id = 0;
	struct testdev_state st;

	io_bus_access(&vm->machine.pio, 0, GW_TESTDEV_PORT, (uint8_t *)&id, 4, false);
	CHECK(id == GW_TESTDEV_ID);
	testdev_snapshot(&vm->machine.testdev, &st);
	const uint32_t cmds[] = {
		GW_TESTDEV_CMD(GW_TD_READY, 0),
		GW_TESTDEV_CMD(GW_TD_PAGES, st.pages_per_pass[0] + 1),
		GW_TESTDEV_CMD(GW_TD_PASS, st.passes[0] + 1),
		GW_TESTDEV_CMD(GW_TD_CHECK_OK, 0),
	};
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
		uint32_t v = cmds[i];

		io_bus_access(&vm->machine.pio, 0, GW_TESTDEV_PORT, (uint8_t *)&v, 4, true);
	}
}

struct saved_state {
	struct cpu_state cpus[LOADVM_VCPUS];
	struct vm_state kvm_vm;
	struct uart_state uart;
	struct testdev_state testdev;
	bool user_paused;
};

/* What the machine holds: the devices' live state (not their sections'
 * copies), the vCPU and VM state as its KVM has it, the user's pause. */
static void snapshot(struct loadvm *vm, struct saved_state *s)
{
	const struct vmm *mc = &vm->machine;

	memset(s, 0, sizeof(*s));
	for (unsigned i = 0; i < LOADVM_VCPUS; i++)
		memcpy(&s->cpus[i], &mc->cpu_state.cpu[i].st, sizeof(s->cpus[i]));
	memcpy(&s->kvm_vm, &mc->cpu_state.vm.st, sizeof(s->kvm_vm));
	memcpy(&s->uart, &mc->uart.st, sizeof(s->uart));
	memcpy(&s->testdev, &mc->testdev.st, sizeof(s->testdev));
	s->user_paused = mc->user_paused;
}

void loadvm_save(struct loadvm *vm, int fd)
{
	struct gw_error err = { 0 };
	struct gw_writer *w;

	CHECK_OK(gw_writer_new(fd, &w, &err), &err);
	CHECK_OK(gw_save_begin(vm->m, w, &err), &err);
	CHECK_OK(gw_save_devices(vm->m, w, &err), &err);
	CHECK_OK(gw_save_finish(vm->m, w, &err), &err);
	gw_writer_free(w);
	CHECK(lseek(fd, 0, SEEK_SET) == 0);
}

void loadvm_round_trip(struct loadvm *vm)
{
	static struct saved_state before, after;
	struct gw_error err = { 0 };
	int fd = memfd_of(NULL, 0);

	snapshot(vm, &before);
	loadvm_save(vm, fd);
	CHECK_OK(load_fd(vm, fd, &err), &err);
	close(fd);
	snapshot(vm, &after);
	CHECK(memcmp(&before, &after, sizeof(before)) == 0);
}

void loadvm_drive(struct loadvm *vm)
{
	drive_uart(vm);
	drive_testdev(vm);
}
