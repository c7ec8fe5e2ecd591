/*
 * The migration object and what the VMM registers on it. Validation of
 * each kind of registration lives with its concept (ram.c, section.c,
 * vmstate.c); this file owns the object's memory.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <godwit/migration.h>
#include <godwit/tracking.h>

#include "lib/internal.h"

/*
 * Room for element n of an array of n elements: capacity doubles at each
 * power of two, so registering thousands of sections stays linear.
 */
static void *grow(void *array, uint32_t n, size_t size)
{
	if (n & (n - 1))
		return array; /* not a power of two: there is room */
	return realloc(array, (n ? 2 * (size_t)n : 1) * size);
}

int gw_migration_new(const struct gw_machine *machine, struct gw_migration **out,
		     struct gw_error *err)
{
	struct gw_migration *m;
	int ret;

	if (!machine)
		return gw_error_set(err, -EINVAL, "migration: no machine description");
	ret = gw_check_text("VMM name", machine->vmm_name, err);
	if (ret == 0)
		ret = gw_check_text("VMM version", machine->vmm_version, err);
	if (ret == 0)
		ret = gw_check_text("machine", machine->machine, err);
	if (ret < 0)
		return ret;
	if (machine->nr_vcpus == 0)
		return gw_error_set(err, -EINVAL, "migration: a machine needs at least one vCPU");
	m = calloc(1, sizeof(*m));
	if (!m)
		return gw_error_set(err, -ENOMEM, "migration: out of memory");
	strcpy(m->vmm_name, machine->vmm_name);
	strcpy(m->vmm_version, machine->vmm_version);
	strcpy(m->machine, machine->machine);
	m->nr_vcpus = machine->nr_vcpus;
	*out = m;
	return 0;
}

void gw_migration_free(struct gw_migration *m)
{
	if (!m)
		return;
	gw_migration_end_tracking(m);
	gw_wbuf_release(&m->vmdesc);
	free(m->ram);
	free(m->sections);
	free(m);
}

int gw_migration_add_ram(struct gw_migration *m, const struct gw_ram *ram, struct gw_error *err)
{
	struct gw_ram_block *b;
	int ret;

	ret = gw_ram_check(m, ram, err);
	if (ret < 0)
		return ret;
	b = grow(m->ram, m->nr_ram, sizeof(*b));
	if (!b)
		return gw_error_set(err, -ENOMEM, "RAM block '%s': out of memory", ram->name);
	m->ram = b;
	b = &m->ram[m->nr_ram++];
	strcpy(b->name, ram->name);
	b->host = ram->host;
	b->size = ram->size;
	b->fd = ram->fd;
	b->fd_offset = ram->fd_offset;
	b->gpa = ram->gpa;
	return 0;
}

int gw_migration_add_section(struct gw_migration *m, const struct gw_section *s,
			     struct gw_error *err)
{
	struct gw_section_reg *sec;
	int ret;

	ret = gw_section_check(s, err);
	if (ret < 0)
		return ret;
	for (uint32_t i = 0; i < m->nr_sections; i++)
		if (m->sections[i].s.instance == s->instance &&
		    strcmp(m->sections[i].name, s->name) == 0)
			return gw_error_set(err, -EINVAL,
					    "section '%s' instance %u is already registered",
					    s->name, s->instance);
	if (m->nr_sections >= GW_MAX_SECTIONS)
		return gw_error_set(err, -EINVAL, "section '%s' instance %u: more than %u sections",
				    s->name, s->instance, GW_MAX_SECTIONS);
	sec = grow(m->sections, m->nr_sections, sizeof(*sec));
	if (!sec)
		return gw_error_set(err, -ENOMEM, "section '%s': out of memory", s->name);
	m->sections = sec;
	sec = &m->sections[m->nr_sections++];
	sec->s = *s;
	strcpy(sec->name, s->name);
	sec->s.name = NULL; /* the caller's string; the copy is sec->name */
	m->vmdesc_ready = false;
	return 0;
}

int gw_migration_set_cpr_ops(struct gw_migration *m, const struct gw_cpr_ops *ops, void *opaque,
			     struct gw_error *err)
{
	if (!ops || !ops->adopt)
		return gw_error_set(err, -EINVAL, "CPR ops: adopt is required");
	m->cpr_ops = *ops;
	m->cpr_opaque = opaque;
	return 0;
}

int gw_migration_set_vm_ops(struct gw_migration *m, const struct gw_vm_ops *ops, void *opaque,
			    struct gw_error *err)
{
	if (!ops || !ops->pause || !ops->resume)
		return gw_error_set(err, -EINVAL, "pause/resume: both callbacks are required");
	m->vm_ops = *ops;
	m->vm_opaque = opaque;
	return 0;
}
