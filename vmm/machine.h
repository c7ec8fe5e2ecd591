/*
 * The machine: everything one godwit-vmm process runs. main.c builds it
 * from the command line; machine.c implements vmm.h on top of it.
 */
#ifndef GW_VMM_MACHINE_H
#define GW_VMM_MACHINE_H

#include <stdbool.h>
#include <stdint.h>

#include "dev_testdev.h"
#include "dev_uart.h"
#include "guest_ram.h"
#include "io_bus.h"
#include "kvm.h"
#include "vcpu.h"
#include "vmm.h"

struct vmm {
	struct loop *loop;
	struct kvm kvm;
	struct guest_ram ram;
	struct io_bus pio, mmio;
	struct vcpu_set vcpus;
	struct uart uart;
	struct testdev testdev;
	struct qmp_server *qmp;

	enum vmm_runstate state;
	bool quitting;
	bool fatal; /* a vCPU stopped for good */
};

/* Exit status of the process: a failed self-check or a dead vCPU is a
 * failure whatever the guest asked for. */
int vmm_exit_status(struct vmm *vm);

/* The callbacks devices and vCPUs use to reach the main loop. */
void vmm_on_guest_exit(void *opaque, int status);
void vmm_on_vcpu_fatal(void *opaque, unsigned index, const char *msg);

#endif
