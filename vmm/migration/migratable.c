#include "vmm/migration/migratable.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>

extern const struct vmm_section_init __start_vmm_section_init[];
extern const struct vmm_section_init __stop_vmm_section_init[];

int vmm_sections_register(struct vmm *vm, struct gw_migration *m, struct gw_error *err)
{
	for (enum vmm_sections_order order = 0; order < VMM_SECTIONS_ORDERS; order++)
		for (const struct vmm_section_init *i = __start_vmm_section_init;
		     i < __stop_vmm_section_init; i++) {
			if (i->order != order)
				continue;
			int ret = i->init(vm, m, err);
			if (ret)
				return ret;
		}
	return 0;
}

int vmm_refuse(struct gw_error *err, const char *field, const char *fmt, ...)
{
	char what[GW_ERROR_MSG_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	return gw_error_set(err, -EBADMSG, "field '%s': %s", field, what);
}
