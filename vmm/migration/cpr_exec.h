/*
 * cpr-exec, the VMM's half (the library writes the state: lib/engine/
 * cpr.c): before the pause, ask the new binary whether it can take the
 * state; after the state is saved, exec it with the memfds and the QMP
 * listening socket kept open; and in the new image, if the state cannot
 * be loaded after all, exec the old binary again so that it takes its
 * guest back.
 */
#ifndef GW_VMM_CPR_EXEC_H
#define GW_VMM_CPR_EXEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct gw_migration;
struct vmm;

/* The environment of an exec'd image: set while it is a cpr-exec's new
 * image, and (GODWIT_CPR_FALLBACK) how to exec the old binary back. */
#define CPR_EXEC_ENV "GODWIT_CPR_EXEC"
#define CPR_FALLBACK_ENV "GODWIT_CPR_FALLBACK"

/*
 * Run argv (the new binary's command line) with --x-godwit-cpr-check on
 * the probe of m's state; 0 if it says it can load it, else -errno with
 * its reason. Ends when cancel_efd is readable or after timeout_ms (the
 * child is killed then).
 */
int cpr_exec_check(char *const argv[], struct gw_migration *m, int cancel_efd, uint64_t timeout_ms,
		   char *errmsg, size_t errlen);

/*
 * Replace this process with argv, keeping the memfds of the guest's RAM
 * and the QMP listener open, and leaving the way back to this binary
 * (state_uri is where the state is). Returns only on failure, with
 * everything as it was.
 */
int cpr_exec(struct vmm *vm, char *const argv[], const char *state_uri, char *errmsg,
	     size_t errlen);

/*
 * In a cpr-exec's new image whose state did not load: exec the old
 * binary on the same state, if the old image left the way. Returns only
 * if it cannot (no way back, or the exec failed).
 */
void cpr_exec_fall_back(struct vmm *vm, const char *why);
/* The new image runs the guest: the way back is not needed any more. */
void cpr_exec_done(void);

#endif
