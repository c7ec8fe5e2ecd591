#include "vmm/dev/io_bus.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

/* At most this many unclaimed-access lines per second: a guest probing
 * hardware in a loop must not flood the log or slow down its vCPU. */
#define LOG_LINES_PER_SEC 10

void io_bus_init(struct io_bus *bus, const char *name, bool debug)
{
	memset(bus, 0, sizeof(*bus));
	bus->name = name;
	bus->debug = debug;
	snprintf(bus->what, sizeof(bus->what), "unclaimed %s accesses", name);
}

int io_bus_register(struct io_bus *bus, uint64_t base, uint64_t len, io_handler fn, void *opaque)
{
	if (bus->nr == IO_BUS_MAX_RANGES || !len)
		return -EINVAL;
	for (unsigned i = 0; i < bus->nr; i++) {
		const struct io_range *r = &bus->ranges[i];
		if (base < r->base + r->len && r->base < base + len)
			return -EBUSY;
	}
	bus->ranges[bus->nr++] = (struct io_range){base, len, fn, opaque};
	return 0;
}

static void log_unclaimed(struct io_bus *bus, uint64_t addr, const uint8_t *data, unsigned len,
			  bool is_write)
{
	if (!ratelog_allow(&bus->log, LOG_LINES_PER_SEC, bus->what))
		return;
	uint64_t v = 0;
	memcpy(&v, data, len);
	if (is_write)
		fprintf(stderr,
			"godwit-vmm: unclaimed %s write 0x%llx <- 0x%llx (%u bytes), ignored\n",
			bus->name, (unsigned long long)addr, (unsigned long long)v, len);
	else
		fprintf(stderr, "godwit-vmm: unclaimed %s read 0x%llx (%u bytes) -> all ones\n",
			bus->name, (unsigned long long)addr, len);
}

void io_bus_access(struct io_bus *bus, unsigned vcpu, uint64_t addr, uint8_t *data, unsigned len,
		   bool is_write)
{
	for (unsigned i = 0; i < bus->nr; i++) {
		const struct io_range *r = &bus->ranges[i];
		if (addr >= r->base && addr - r->base < r->len) {
			r->fn(r->opaque, vcpu, addr - r->base, data, len, is_write);
			return;
		}
	}
	if (!is_write)
		memset(data, 0xff, len);
	if (bus->debug)
		log_unclaimed(bus, addr, data, len, is_write);
}
