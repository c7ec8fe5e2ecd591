/*
 * The status of a migration job, with QEMU's MigrationStatus names so that
 * existing tooling understands them. Every engine (pre-copy, incoming, and
 * those to come) reports through it.
 */
#ifndef GODWIT_STATUS_H
#define GODWIT_STATUS_H

#include <stdbool.h>

#include <godwit/export.h>

#ifdef __cplusplus
extern "C" {
#endif

enum gw_mig_status {
	GW_MIG_NONE,
	GW_MIG_SETUP,
	GW_MIG_ACTIVE,     /* rounds, guest running */
	GW_MIG_DEVICE,     /* guest paused, final pages and device state */
	GW_MIG_COMPLETED,
	GW_MIG_FAILED,
	GW_MIG_CANCELLING,
	GW_MIG_CANCELLED,
	/* destination: the guest runs while RAM still arrives (a lazy restore
	 * of a mapped-ram file), QEMU's post-copy phase */
	GW_MIG_POSTCOPY_ACTIVE,
	/* Guest paused at the switchover, nothing of the final state sent:
	 * waiting for gw_precopy_continue() (QEMU's pause-before-switchover). */
	GW_MIG_PRE_SWITCHOVER,
	/* Post-copy broke (the link broke, the source died, a page failed
	 * its check): the destination's vCPUs wait for the pages they touch,
	 * the source keeps its paused copy and the pages still owed, until a
	 * new connection resumes it (gw_precopy_resume, gw_incoming_recover;
	 * QEMU's migrate-recover and migrate resume=true). If the source is
	 * gone, the guest is lost. */
	GW_MIG_POSTCOPY_PAUSED,
	/* A new connection of a paused post-copy, in its resume handshake. */
	GW_MIG_POSTCOPY_RECOVER,
};

/* "setup", "active", ... as QEMU spells them; "unknown" for anything else. */
GW_API const char *gw_mig_status_name(enum gw_mig_status s);

/* completed, failed or cancelled: nothing follows. */
GW_API bool gw_mig_status_is_final(enum gw_mig_status s);

#ifdef __cplusplus
}
#endif

#endif
