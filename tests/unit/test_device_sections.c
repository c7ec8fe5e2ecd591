/*
 * godwit-vmm's device sections while the devices are busy: a thread types
 * into the UART (uart_receive(), as the main loop does with host input)
 * and a guest driver drains it through its ports, while this thread saves
 * every section and loads the stream back, over and over, into the same
 * machine (tests/fuzz/loadvm.h). Each save must be one instant of the
 * UART, which the uart section's checks then accept (rx_count, LSR and
 * IIR agree), and each load must hand the state to the UART whole: the
 * section's hooks copy under the UART's lock both ways. Without them the
 * save would read rx_count from one moment and LSR or IIR from another.
 *
 *   test_device_sections STREAM    (a stream of a real godwit-vmm: the
 *                                   vCPU and VM state to start from)
 */
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "tests/fuzz/loadvm.h"

#define ROUNDS 1000

enum { RBR = 0, IER = 1, LSR = 5 };

static atomic_bool stop;
static atomic_ulong typed;

static void *type_and_drain(void *opaque)
{
	struct loadvm *vm = opaque;
	uint8_t v;

	while (!atomic_load(&stop)) {
		/* A burst of one to three bytes, then the driver reads until
		 * the FIFO is empty: rx_count, LSR.DR and IIR go to and fro. */
		uart_receive(&vm->machine.uart, (const uint8_t *)"abc", 1 + atomic_load(&typed) % 3);
		do {
			io_bus_access(&vm->machine.pio, 0, UART_COM1_BASE + RBR, &v, 1, false);
			io_bus_access(&vm->machine.pio, 0, UART_COM1_BASE + LSR, &v, 1, false);
		} while (v & UART_LSR_DR);
		atomic_fetch_add(&typed, 1);
	}
	return NULL;
}

static void save_and_load(struct loadvm *vm, unsigned round)
{
	struct gw_error err = { 0 };
	struct gw_reader *r;
	int fd = memfd_create("device-sections", MFD_CLOEXEC);

	CHECK(fd >= 0);
	loadvm_save(vm, fd);
	CHECK_OK(gw_reader_new(fd, &r, &err), &err);
	if (gw_load(vm->m, r, &err) < 0)
		FAIL("round %u: a state saved while the UART was busy is refused: %s", round,
		     err.msg);
	gw_reader_free(r);
	close(fd);
}

static void load_file(struct loadvm *vm, const char *path)
{
	struct gw_error err = { 0 };
	struct stat st;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	unsigned char *p;

	CHECK(fd >= 0 && fstat(fd, &st) == 0);
	p = malloc((size_t)st.st_size + 1);
	CHECK(p && read(fd, p, (size_t)st.st_size) == st.st_size);
	close(fd);
	CHECK_OK(loadvm_load(vm, p, (size_t)st.st_size, &err), &err);
	free(p);
}

int main(int argc, char **argv)
{
	static struct loadvm vm;
	uint8_t ier = 0x01; /* received-data interrupt: IIR follows rx_count */
	pthread_t t;

	if (argc != 2)
		FAIL("usage: test_device_sections STREAM");
	loadvm_init(&vm);
	load_file(&vm, argv[1]);
	io_bus_access(&vm.machine.pio, 0, UART_COM1_BASE + IER, &ier, 1, true);
	CHECK(pthread_create(&t, NULL, type_and_drain, &vm) == 0);
	for (unsigned i = 0; i < ROUNDS; i++)
		save_and_load(&vm, i);
	atomic_store(&stop, true);
	CHECK(pthread_join(t, NULL) == 0);
	/* The typist ran alongside, or nothing was proven. */
	CHECK(atomic_load(&typed) > ROUNDS);
	loadvm_free(&vm);
	printf("device sections: %u saves and loads beside %lu bursts of input, all consistent\n",
	       ROUNDS, atomic_load(&typed));
	return 0;
}
