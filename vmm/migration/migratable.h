/*
 * What every file with state to migrate shares. Each such file (a device,
 * the vCPUs, the run state) registers its own sections, with its field
 * table, its checks and its hooks, from one init function it declares
 * with VMM_SECTIONS(). migration_init() runs them all through
 * vmm_sections_register(); nothing lists the devices, so a new device is
 * one new file (kvmtool's device init lists work the same way).
 *
 * The entries are collected by the linker into one read-only array, so
 * whichever of these files a program links are the sections it has: the
 * load fuzzer (tests/fuzz/loadvm.c) gets the very sections of godwit-vmm.
 *
 * Order: an init function registers its sections in the order they go in
 * the stream; between files, by enum vmm_sections_order, and in link
 * order within one (vmm/meson.build lists the files in that order).
 */
#ifndef GW_VMM_MIGRATABLE_H
#define GW_VMM_MIGRATABLE_H

#include <stddef.h>

#include <godwit/migration.h>

struct vmm;

enum vmm_sections_order {
	VMM_SECTIONS_CPU,     /* the vCPUs and the VM-wide KVM state */
	VMM_SECTIONS_DEVICE,  /* devices */
	VMM_SECTIONS_MACHINE, /* the machine around them: its run state */
	VMM_SECTIONS_ORDERS,
};

struct vmm_section_init {
	int (*init)(struct vmm *vm, struct gw_migration *m, struct gw_error *err);
	enum vmm_sections_order order;
};

/* "vmm_section_init" is a C identifier, so the linker defines
 * __start_/__stop_vmm_section_init around the entries, and the
 * sanitizers pad no global placed in a named section. */
#define VMM_SECTIONS(fn, ord)                                      \
	static const struct vmm_section_init vmm_section_init_##fn \
		__attribute__((used, section("vmm_section_init"),  \
			       aligned(__alignof__(struct vmm_section_init)))) = {fn, ord}

/* Run every init function: register all of vm's sections with m. */
int vmm_sections_register(struct vmm *vm, struct gw_migration *m, struct gw_error *err);

/* A section's hooks get the State its vmstate describes; a device that
 * embeds its State finds itself from there. */
/* clang-format off */
#define container_of(p, type, member) ((type *)((char *)(p) - offsetof(type, member)))
/* clang-format on */

/* A validator's refusal: "field 'sregs': cr0 = 0x80000001 ..." with
 * -EBADMSG, worded as the library words its own range failures (the
 * loader adds section and instance). */
int vmm_refuse(struct gw_error *err, const char *field, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#endif
