/*
 * godwit-vmm's side of live migration: registers the machine with
 * libgodwit (RAM blocks, vCPU and device sections, pause/resume, KVM dirty
 * log) and offers QEMU's migration commands over QMP. The library drives
 * the protocol; this file only connects it to the machine.
 */
#ifndef GW_VMM_MIGRATION_H
#define GW_VMM_MIGRATION_H

#include <stddef.h>

struct vmm;

int migration_init(struct vmm *vm, char *errmsg, size_t errlen);
/* Cancel what runs, wait for the threads, free. */
void migration_destroy(struct vmm *vm);
/* --incoming URI: start listening (the guest stays in "inmigrate"). */
int migration_listen(struct vmm *vm, const char *uri, char *errmsg, size_t errlen);

#endif
