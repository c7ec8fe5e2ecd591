/*
 * cpr-exec, the VMM's half: this process becomes a new binary and keeps
 * its pid, but the guest does not wait through the exec.
 *
 * Before any pause, the new binary is started as a *stand-in* (a second
 * process, on a private unix socket), and the guest goes to it by
 * cpr-transfer: the memfds cross with SCM_RIGHTS while the guest runs,
 * the pause holds only the device state. This process then execs the
 * new binary, and the new image takes the guest back from the stand-in
 * the same way: the stand-in connects to a unix socket that this process
 * listens on before the exec and its next image accepts on after it;
 * the stand-in then exits. The guest is paused twice
 * for a fraction of a millisecond, instead of once for the exec, the new
 * image's start and its first memory slot (6-20 ms here), and each hop
 * keeps cpr-transfer's rule of who holds the guest: until a process has
 * said it runs the guest, the one before it can take it back.
 *
 * If the new binary cannot be executed, or its image cannot take the
 * guest, this binary is executed again (from an fd, so the same file)
 * and takes the guest back from the stand-in instead: same pid, old
 * version. Should that fail too, the stand-in keeps running the guest
 * and says where its own QMP socket is.
 */
#ifndef GW_VMM_CPR_EXEC_H
#define GW_VMM_CPR_EXEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct vmm;

/* The environment of the images that follow the exec: the socket to the
 * stand-in and the first pause, how to execute the old binary again, and
 * (in the stand-in) its directory and the stderr it switches to. */
#define CPR_EXEC_ENV "GODWIT_CPR_EXEC"
#define CPR_FALLBACK_ENV "GODWIT_CPR_FALLBACK"
#define CPR_STAND_IN_ENV "GODWIT_CPR_STAND_IN"

/* The stand-in's argument: where to give the guest back, once it runs it. */
#define CPR_RETURN_OPTION "x-godwit-cpr-return-to"

struct cpr_stand_in {
	char dir[108 - 16]; /* its sockets (sun_path holds 108 bytes) */
	int back;           /* listening at DIR/back.sock: the new image's way to the stand-in */
	pid_t pid;
	int pidfd;
};

/*
 * Start argv (cpr-exec-command, whose --incoming URI is rewritten) as the
 * stand-in and connect to it: *conn is a socket for a cpr-transfer of the
 * guest to it. Waits until it listens, it ends (its error output is the
 * reason given), cancel_efd is readable or timeout_ms passes.
 */
int cpr_stand_in_start(struct cpr_stand_in *s, char *const argv[], const char *uri, int cancel_efd,
		       uint64_t timeout_ms, int *conn, char *errmsg, size_t errlen);

/* The guest did not go to the stand-in: end it and remove its files. */
void cpr_stand_in_end(struct cpr_stand_in *s);

/*
 * The stand-in runs the guest: replace this process with argv, its
 * --incoming URI rewritten to the socket to the stand-in, keeping the QMP
 * listener; or, if argv cannot be executed, this binary again. Returns
 * only if neither can, with the reason; the guest then runs on in the
 * stand-in. first_pause_us is the pause of the hop to the stand-in.
 */
int cpr_exec(struct vmm *vm, char *const argv[], const char *uri, struct cpr_stand_in *s,
	     uint64_t first_pause_us, char *errmsg, size_t errlen);

/* In an image that follows the exec: the pause of the first hop, or 0. */
uint64_t cpr_exec_first_pause_us(void);

/*
 * In an image that follows the exec and cannot take the guest: execute
 * the old binary, which takes it from the stand-in instead. Returns only
 * if there is no way back (already taken once) or the exec failed.
 */
void cpr_exec_fall_back(struct vmm *vm, const char *why);

/* The image runs the guest: the socket and the way back are let go. */
void cpr_exec_done(void);

/* In the stand-in, once it listens: its error output goes where the old
 * image's goes, and the old image, reading the first part, knows it is
 * ready. */
void cpr_stand_in_ready(void);

/* In the stand-in: its directory (its QMP socket is qmp.sock there), or
 * NULL in any other process. */
const char *cpr_stand_in_dir(void);

/* In the stand-in, as it exits having given the guest back. */
void cpr_stand_in_exit(void);

#endif
