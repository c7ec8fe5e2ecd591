#include "dev_testdev.h"
#include "io_bus.h"

#include <stdio.h>
#include <string.h>

static void command(struct testdev *t, unsigned cpu, uint32_t v)
{
	unsigned cmd = v >> 24, arg = v & GW_TESTDEV_ARG_MASK;
	struct testdev_state *s = &t->st;
	bool do_exit = false;
	int status = 0;

	pthread_mutex_lock(&t->lock);
	switch (cmd) {
	case GW_TD_READY:
		s->ready = 1;
		break;
	case GW_TD_PAGES:
		s->pages_per_pass[cpu] = arg;
		break;
	case GW_TD_PASS:
		/* The argument wraps at 24 bits; keep a full 64-bit count. */
		if (arg < (s->passes[cpu] & GW_TESTDEV_ARG_MASK))
			s->passes[cpu] += GW_TESTDEV_ARG_MASK + 1ull;
		s->passes[cpu] = (s->passes[cpu] & ~(uint64_t)GW_TESTDEV_ARG_MASK) | arg;
		break;
	case GW_TD_CHECK_OK:
		s->check_ok++;
		break;
	case GW_TD_CHECK_FAIL:
		if (!s->check_failed)
			s->first_bad_page = arg;
		s->check_failed = 1;
		fprintf(stderr, "godwit-vmm: guest self-check FAILED on vCPU %u (page index %u)\n",
			cpu, arg);
		break;
	case GW_TD_EXIT:
		s->exit_requested = 1;
		s->exit_status = (uint8_t)arg;
		do_exit = true;
		status = (int)(arg & 0xff);
		break;
	default:
		fprintf(stderr, "godwit-vmm: test device: unknown command %u from vCPU %u\n", cmd,
			cpu);
		break;
	}
	pthread_mutex_unlock(&t->lock);
	if (do_exit)
		t->on_exit(t->opaque, status);
}

static void testdev_io(void *opaque, unsigned vcpu, uint64_t offset, uint8_t *data, unsigned len, bool is_write)
{
	struct testdev *t = opaque;
	if (!is_write) {
		uint32_t id = GW_TESTDEV_ID;
		memcpy(data, (uint8_t *)&id + (offset & 3), len <= 4 ? len : 4);
		return;
	}
	if (offset != 0 || len != 4)
		return; /* commands are single 32-bit writes */
	uint32_t v;
	memcpy(&v, data, 4);
	command(t, vcpu < GW_MAX_VCPUS ? vcpu : 0, v);
}

int testdev_init(struct testdev *t, struct io_bus *pio, testdev_exit_fn on_exit, void *opaque)
{
	memset(t, 0, sizeof(*t));
	pthread_mutex_init(&t->lock, NULL);
	t->on_exit = on_exit;
	t->opaque = opaque;
	return io_bus_register(pio, GW_TESTDEV_PORT, 4, testdev_io, t);
}

void testdev_destroy(struct testdev *t)
{
	pthread_mutex_destroy(&t->lock);
}

void testdev_snapshot(struct testdev *t, struct testdev_state *out)
{
	pthread_mutex_lock(&t->lock);
	*out = t->st;
	pthread_mutex_unlock(&t->lock);
}
