/*
 * Port I/O and MMIO dispatch for vCPU exits. Devices claim ranges at
 * start-up; what nobody claims behaves as on a PC (writes vanish, reads
 * return all ones), so a boot sector written for real hardware runs
 * unchanged. Handlers run on vCPU threads and must do their own locking.
 */
#ifndef GW_VMM_IO_BUS_H
#define GW_VMM_IO_BUS_H

#include <stdbool.h>
#include <stdint.h>

#include "vmm/ratelog.h"

/* data is len (1, 2, 4 or 8) bytes, little-endian; fill it on reads.
 * vcpu is the index of the vCPU making the access. */
typedef void (*io_handler)(void *opaque, unsigned vcpu, uint64_t offset, uint8_t *data,
			   unsigned len, bool is_write);

#define IO_BUS_MAX_RANGES 32

struct io_range {
	uint64_t base, len;
	io_handler fn;
	void *opaque;
};

struct io_bus {
	const char *name; /* "pio" or "mmio", for the log */
	unsigned nr;
	struct io_range ranges[IO_BUS_MAX_RANGES];
	bool debug; /* log unclaimed accesses (rate-limited) */
	struct ratelog log;
	char what[40]; /* "unclaimed pio accesses" */
};

void io_bus_init(struct io_bus *bus, const char *name, bool debug);
int io_bus_register(struct io_bus *bus, uint64_t base, uint64_t len, io_handler fn, void *opaque);
void io_bus_access(struct io_bus *bus, unsigned vcpu, uint64_t addr, uint8_t *data, unsigned len,
		   bool is_write);

#endif
