/*
 * The test device: one I/O port through which a guest reports progress
 * and the result of its self-check, and asks the VMM to exit (protocol in
 * guests/abi.h). Tests read what it saw over QMP. It registers its own
 * migration section ("testdev", vmm/migration/migratable.h).
 */
#ifndef GW_VMM_DEV_TESTDEV_H
#define GW_VMM_DEV_TESTDEV_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "guests/abi.h"

struct io_bus;

/* Everything guest-visible or reported: what a migration saves. */
struct testdev_state {
	uint8_t ready;
	uint8_t check_failed;
	uint8_t exit_requested;
	uint8_t exit_status;
	uint32_t first_bad_page;
	uint64_t check_ok;
	uint64_t passes[GW_MAX_VCPUS];
	uint64_t pages_per_pass[GW_MAX_VCPUS];
};

/* Called on the reporting vCPU thread. */
typedef void (*testdev_exit_fn)(void *opaque, int status);

struct testdev {
	struct testdev_state st; /* under lock: vCPU threads report into it */
	pthread_mutex_t lock;
	testdev_exit_fn on_exit;
	void *opaque;
	/* What the testdev section saves and loads: a copy of st, taken and
	 * put back under lock by the section's hooks. */
	struct testdev_state mig;
};

int testdev_init(struct testdev *t, struct io_bus *pio, testdev_exit_fn on_exit, void *opaque);
void testdev_destroy(struct testdev *t);
/* Consistent copy of the state. */
void testdev_snapshot(struct testdev *t, struct testdev_state *out);

#endif
