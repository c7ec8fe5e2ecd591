/*
 * The device-state sections of godwit-vmm: what each vCPU and device
 * saves (the vmstate field tables), which values each field may hold, and
 * the validators for what a range cannot say. A destination runs these
 * checks on the state it loads before any of it reaches a device or KVM.
 *
 * Nothing here calls KVM, so the load fuzzer (tests/fuzz/fuzz_load.c)
 * links the very tables and checks a destination uses.
 */
#ifndef GW_VMM_SECTIONS_H
#define GW_VMM_SECTIONS_H

#include <godwit/migration.h>
#include <stdint.h>

#include "cpu_state.h"
#include "dev_testdev.h"
#include "dev_uart.h"

/* Whether the guest ran on the source before the migration paused it, so
 * that a guest paused by `stop` arrives paused (QEMU's global state does
 * the same). */
struct run_state {
	uint8_t running; /* 0 or 1 */
};

/* Where the state of each section lives: what a save reads, and what a
 * load replaces once the loaded values passed their checks. */
struct sections_state {
	struct cpu_state *cpus; /* section "cpu", instance = vCPU index */
	unsigned nr_cpus;
	struct vm_state *kvm_vm;
	struct uart_state *uart;
	struct testdev_state *testdev;
	struct run_state *run;
};

/* Register every section of the machine with m. */
int sections_register(struct gw_migration *m, const struct sections_state *st,
		      struct gw_error *err);

#endif
