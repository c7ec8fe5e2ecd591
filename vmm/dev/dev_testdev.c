#include "vmm/dev/dev_testdev.h"
#include "vmm/dev/io_bus.h"
#include "vmm/machine.h"
#include "vmm/migration/migratable.h"

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

static void testdev_io(void *opaque, unsigned vcpu, uint64_t offset, uint8_t *data, unsigned len,
		       bool is_write)
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

/* ---- migration: the testdev section --------------------------------- */

/* Arguments of test-device commands are 24 bits wide (guests/abi.h). */
static const struct gw_field testdev_fields[] = {
	GW_FIELD_RANGE(U8, struct testdev_state, ready, 0, 1),
	GW_FIELD_RANGE(U8, struct testdev_state, check_failed, 0, 1),
	GW_FIELD_RANGE(U8, struct testdev_state, exit_requested, 0, 1),
	GW_FIELD(U8, struct testdev_state, exit_status),
	GW_FIELD_RANGE(U32, struct testdev_state, first_bad_page, 0, GW_TESTDEV_ARG_MASK),
	GW_FIELD(U64, struct testdev_state, check_ok),
	GW_FIELD(U64, struct testdev_state, passes),
	GW_FIELD_RANGE(U64, struct testdev_state, pages_per_pass, 0, GW_TESTDEV_ARG_MASK),
};
static const struct gw_vmstate testdev_vmstate = GW_VMSTATE(struct testdev_state, testdev_fields);

static int testdev_pre_save(void *opaque, struct gw_error *err)
{
	struct testdev *t = container_of(opaque, struct testdev, mig);
	(void)err;
	testdev_snapshot(t, &t->mig);
	return 0;
}

/* QMP reads the state while a destination loads. */
static int testdev_post_load(void *opaque, uint32_t version, struct gw_error *err)
{
	struct testdev *t = container_of(opaque, struct testdev, mig);
	(void)version, (void)err;
	pthread_mutex_lock(&t->lock);
	t->st = t->mig;
	pthread_mutex_unlock(&t->lock);
	return 0;
}

static int testdev_sections_init(struct vmm *vm, struct gw_migration *m, struct gw_error *err)
{
	struct testdev *t = &vm->testdev;
	const struct gw_section testdev = {
		.name = "testdev",
		.version = 1,
		.min_version = 1,
		.vmstate = &testdev_vmstate,
		.pre_save = testdev_pre_save,
		.post_load = testdev_post_load,
		.opaque = &t->mig,
	};
	/* A field an older stream lacks keeps its reset value. */
	testdev_snapshot(t, &t->mig);
	return gw_migration_add_section(m, &testdev, err);
}
VMM_SECTIONS(testdev_sections_init, VMM_SECTIONS_DEVICE);
