/*
 * godwit-vmm's side of live migration: registers the machine with
 * libgodwit (RAM blocks, vCPU and device sections, pause/resume, KVM dirty
 * log), runs the outgoing and incoming migrations and decides what the
 * guest does when one ends. The library drives the protocol; this file
 * only connects it to the machine. The QMP commands that drive it are in
 * vmm/qmp/qmp_migration.c, and reach it only through this header.
 *
 * Every function here is called on the main loop, takes the glue's lock
 * itself where it must, and does not block.
 */
#ifndef GW_VMM_MIGRATION_H
#define GW_VMM_MIGRATION_H

#include "vmm/migration/mig_tls.h"

#include <godwit/error.h>
#include <godwit/precopy.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct vmm;

int migration_init(struct vmm *vm, char *errmsg, size_t errlen);
/* Cancel what runs, wait for the threads, free. */
void migration_destroy(struct vmm *vm);
/* --incoming URI: start listening (the guest stays in "inmigrate"). */
int migration_listen(struct vmm *vm, const char *uri, char *errmsg, size_t errlen);

/* migrate: start an outgoing migration to uri. -EBUSY or -EINVAL with a
 * message when the guest cannot migrate now. passed_fd (or -1) is an fd
 * the URI names as fd:NUM (vmm/qmp/qmp_fds.c); the migration owns it and
 * closes it once its channel holds a dup, or at once if it fails. */
int migration_start(struct vmm *vm, const char *uri, int passed_fd, bool blk, char *errmsg,
		    size_t errlen);
/* migrate-cancel: before the engine runs, end the connect; after, the
 * engine takes the cancel or refuses it (after GO). */
void migration_cancel(struct vmm *vm);
/* migrate-continue: let an outgoing migration in pre-switchover go on.
 * -EINVAL with a message in any other status. */
int migration_continue(struct vmm *vm, char *errmsg, size_t errlen);
/* migrate-start-postcopy: switch at the next round boundary. */
int migration_start_postcopy(struct vmm *vm, char *errmsg, size_t errlen);
/* Post-copy recovery: the source connects to uri to resume (QEMU's
 * migrate with resume=true); the destination listens on uri for it
 * (migrate-recover). Both only in postcopy-paused. */
int migration_resume(struct vmm *vm, const char *uri, int passed_fd, char *errmsg, size_t errlen);
int migration_recover(struct vmm *vm, const char *uri, char *errmsg, size_t errlen);
/* migrate-incoming on a VMM started with --incoming defer; passed_fd as
 * for migration_start(), closed before it returns. */
int migration_incoming(struct vmm *vm, const char *uri, int passed_fd, char *errmsg, size_t errlen);

/* What migrate-set-parameters and -capabilities change. */
struct migration_settings {
	struct gw_precopy_params precopy;
	uint64_t go_timeout_ms; /* destination: READY until GO */
	/* destination, a lazy restore: the background's bytes/s (0 = no
	 * limit), and UFFDIO_COPY instead of UFFDIO_CONTINUE */
	uint64_t postcopy_bandwidth;
	bool lazy_copy;
	/* capabilities */
	bool events, auto_converge, verify_hash, mapped_ram, incremental, background_snapshot;
	bool block;        /* copy the disks that are not shared (QEMU's block migration) */
	bool multifd;      /* pages over multifd-channels more connections (tcp:, unix:) */
	bool lazy_restore; /* destination: run before RAM is in (x-godwit-lazy-restore) */
	bool pause_before_switchover; /* stop, guest paused, until migrate-continue */
	bool postcopy; /* both sides: migrate-start-postcopy may switch (postcopy-ram) */
	/* tls-creds, tls-hostname, tls-authz: checked when a migration starts */
	struct mig_tls_settings tls;
};

void migration_get_settings(struct vmm *vm, struct migration_settings *out);
/* Parameters apply at once, to a running migration too. */
void migration_set_params(struct vmm *vm, const struct migration_settings *s);
/* The capabilities of want, only between outgoing migrations: -EBUSY
 * otherwise. */
int migration_set_caps(struct vmm *vm, const struct migration_settings *want, char *errmsg,
		       size_t errlen);

/* cpr-exec-command: copied; -EBUSY while a cpr-exec runs. */
int migration_set_exec_command(struct vmm *vm, const char *const *argv, size_t n);
/* A copy (*out NULL-terminated, freed with migration_free_exec_command). */
size_t migration_get_exec_command(struct vmm *vm, char ***out);
void migration_free_exec_command(char **argv);

enum migration_kind { MIGRATION_NONE, MIGRATION_OUTGOING, MIGRATION_INCOMING };

#define MIGRATION_MAX_BLOCKERS 8

/* What query-migrate shows: the latest migration, a copy. */
struct migration_info {
	enum migration_kind kind; /* NONE before the first migration */
	enum gw_mig_status status;
	char error[GW_ERROR_MSG_MAX];
	bool auto_converge;
	bool tls;        /* its connections go through TLS */
	bool background; /* the outgoing one is a background snapshot */
	uint64_t mode;   /* ... and its GW_MODE_* */
	/* outgoing: the engine's figures, while it runs and after */
	bool have_stats;
	struct gw_precopy_stats out;
	/* incoming */
	struct gw_incoming_stats in;
	char dest_hash[33]; /* "" unless x-godwit-verify-hash */
	bool lazy;          /* the incoming one is a lazy restore */
	/* a lazy restore's or a post-copy's faults by vCPU (vCPU i's, for
	 * i < nr_fault_vcpus) */
	struct gw_fault_thread_stats fault_vcpus[GW_FAULT_THREADS_MAX];
	unsigned nr_fault_vcpus;
	/* a background snapshot with x-godwit-verify-hash: RAM at its instant */
	char snapshot_hash[33];
	char listening[256]; /* the address still listened on, or "" */
	uint64_t ram_total;  /* bytes of guest RAM */
	/* the image after a cpr-exec: the first of the guest's two pauses
	 * (to the stand-in); in.downtime_us is both */
	uint64_t cpr_first_pause_us;
	/* the disks: how long the switchover's fdatasync of their images took
	 * (the source's latest pause), -1 without a disk */
	int64_t disk_sync_us;
	/* block migration: the bytes of the images the outgoing one copies */
	uint64_t disk_total;
	/* QEMU's blocked-reasons: why a migrate would be refused now,
	 * whatever its URI (none: it may start) */
	char blocked[MIGRATION_MAX_BLOCKERS][512];
	unsigned nr_blocked;
};

void migration_query(struct vmm *vm, struct migration_info *out);

#endif
