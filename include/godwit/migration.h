/*
 * The migration object: what a VMM registers with libgodwit so the library
 * can save and load its guest. One object per VMM instance (or per test
 * "machine"); it holds no reference to any global state, so a source and a
 * destination can live in one process.
 *
 * The VMM registers, normally once at start-up:
 *   - its RAM blocks (memfd-backed host mappings),
 *   - its device sections (name, instance, version range, callbacks or a
 *     declarative State description),
 *   - a pause/resume pair the migration engine calls around switchover.
 * Then it hands the object to the save side (gw_save_*) or the load side
 * (gw_load) of <godwit/stream.h>.
 *
 * Ownership: strings and the section/RAM descriptions passed in are
 * copied, except struct gw_vmstate tables, which are borrowed (they are
 * static const in practice). Host memory, memfds and callback opaques are
 * borrowed and must outlive the object.
 *
 * Threads: registration is not thread-safe and must be finished before a
 * save or load starts; during one, the object belongs to the thread
 * running it.
 */
#ifndef GODWIT_MIGRATION_H
#define GODWIT_MIGRATION_H

#include <stdint.h>

#include <godwit/error.h>
#include <godwit/export.h>
#include <godwit/format.h>
#include <godwit/payload.h>
#include <godwit/vmstate.h>

#ifdef __cplusplus
extern "C" {
#endif

struct gw_migration;

/* What the CONFIG record says about the machine (docs/format.md). */
struct gw_machine {
	const char *vmm_name;    /* information, e.g. "godwit-vmm" */
	const char *vmm_version; /* information, e.g. "0.1.0" */
	const char *machine;     /* must match on load, e.g. "godwit-x86" */
	uint32_t nr_vcpus;       /* must match on load, >= 1 */
};

GW_API int gw_migration_new(const struct gw_machine *machine, struct gw_migration **out,
		     struct gw_error *err);
GW_API void gw_migration_free(struct gw_migration *m);

/*
 * A RAM block: guest memory the VMM mapped MAP_SHARED from a memfd.
 * Blocks are numbered in registration order from 0 (the block id of
 * gw_save_pages()). Rejected with -EINVAL: a bad or duplicate name, a NULL
 * or unaligned host address, a size that is zero or not a multiple of
 * GW_PAGE_SIZE, an unaligned fd offset or gpa, a gpa range overlapping
 * another block's, more than GW_MAX_RAM_BLOCKS blocks.
 */
struct gw_ram {
	const char *name;   /* 1..GW_NAME_MAX bytes of 0x21-0x7e, e.g. "pc.ram" */
	void *host;         /* page-aligned mapping of the block */
	uint64_t size;      /* bytes, a non-zero multiple of GW_PAGE_SIZE */
	int fd;             /* the memfd host maps MAP_SHARED, or -1 if the memory has
			     * none; loading zero pages punches holes in it */
	uint64_t fd_offset; /* where host starts in the memfd, page-aligned */
	uint64_t gpa;       /* guest-physical address, or GW_GPA_NONE; information */
};

GW_API int gw_migration_add_ram(struct gw_migration *m, const struct gw_ram *ram,
			 struct gw_error *err);

/* Phases of a progressive section: which record the data goes in. */
/* save_live: the record is written, and there is more to send now. */
#define GW_LIVE_MORE 1

enum gw_phase {
	GW_PHASE_START = 1, /* migration begins, the guest runs */
	GW_PHASE_PART,      /* each iteration, the guest runs */
	GW_PHASE_END,       /* switchover, the guest is paused */
};

/*
 * A device section. Exactly one of the three ways to save it is set:
 *
 *  - vmstate: the library saves and loads the State struct at opaque
 *    and describes it in VMDESC. Preferred.
 *  - save + load: one-shot, opaque data written by hand. Called with the
 *    guest paused; save fills out, load reads in (version is the one in
 *    the stream, already checked to be in [min_version, version]).
 *  - save_live + load_live: progressive (SECTION_START/PART/END): for
 *    state too big to save during downtime. Each save_live call writes
 *    one record; one that has more to send than a record holds returns
 *    GW_LIVE_MORE and is called again: at PART as long as the round's
 *    budget lasts (gw_save_iterate_budget()), at END until it returns 0
 *    (its records but the last go as SECTION_PART, so the section still
 *    ends once; the loader sees phase PART for them). START is one
 *    record: what more there is goes in the PARTs. live_pending (optional) says how many
 *    bytes it still has to send: the pre-copy engine counts them with
 *    the dirty RAM when it decides whether the rest fits the downtime
 *    limit, and keeps sending PART records while there are any.
 *
 * Callbacks return 0 or -errno and may fill err; the library adds the
 * section's name and instance to the message. A load callback must read
 * exactly the data that was saved; leftovers are an error.
 *
 * validate (vmstate sections only; optional): the checks a field range
 * cannot express, on the candidate State decoded from the stream, after
 * every field passed its range and before anything is copied to opaque
 * (<godwit/vmstate.h>, "Bounds"). It must not keep or change the
 * candidate. It returns 0 to accept or -errno (normally -EBADMSG) with a
 * message naming the field, its value and what is accepted; the load
 * then fails and the State at opaque stays as it was. A hand-written
 * load callback checks its own data instead: loaded state is hostile
 * until checked, whichever way it is loaded.
 *
 * pre_save and post_load (vmstate sections only; optional) connect the
 * State at opaque to the live device, so that the State is a copy the
 * library may read and write at its own time while the device goes on
 * changing under its own lock. Both get the section's opaque (a device
 * that embeds its State finds itself with container_of) and return 0 or
 * -errno with err; the library adds the section's name and instance.
 *
 *  - pre_save runs on the source right before the State is encoded into
 *    the section's record (gw_save_devices(): in a live migration on the
 *    gw-precopy thread, after vm_ops.pause), and only then. It fills the
 *    State: copies the device's state in under the device's lock, or
 *    reads it from the hypervisor. It runs inside the downtime and
 *    alongside the VMM's other threads (its main loop goes on), so it
 *    takes the locks they take and nothing that waits for them. A failure
 *    fails the save, and the stream with it; the source keeps its guest.
 *
 *  - post_load runs on the destination right after the section's data
 *    was decoded, passed its ranges and validate and was copied to opaque
 *    (gw_load(): in a live migration on the gw-incoming thread), and only
 *    then: never for a refused section, nor for a GW_SECTION_OPTIONAL one
 *    the stream lacks. version is the stream's. It puts the State into
 *    the device under the device's lock, which is as far as it may go:
 *    sections after this one can still fail the load, and the guest must
 *    not run, so what takes effect in the hypervisor (vCPU registers,
 *    in-kernel devices) waits for vm_ops.prepare, after the whole stream
 *    checked out. A failure fails the load.
 *
 * (name, instance) must be unique. Rejected with -EINVAL: a bad name,
 * version 0, min_version outside 1..version, not exactly one way to save,
 * an invalid vmstate table (field outside state_size, size not a multiple
 * of the element size, duplicate or bad field name, since > version, a
 * bad range), validate, pre_save or post_load without vmstate, more than
 * GW_MAX_SECTIONS sections.
 */
struct gw_section {
	const char *name;     /* 1..GW_NAME_MAX bytes of 0x21-0x7e, e.g. "uart" */
	uint32_t instance;    /* tells apart devices of the same kind, e.g. 0 */
	uint32_t version;     /* what this VMM saves, >= 1 */
	uint32_t min_version; /* the oldest version this VMM loads, 1..version */
	uint32_t flags;       /* GW_SECTION_* */

	const struct gw_vmstate *vmstate;

	int (*save)(void *opaque, struct gw_wbuf *out, struct gw_error *err);
	int (*load)(void *opaque, struct gw_rbuf *in, uint32_t version,
		    struct gw_error *err);

	int (*save_live)(void *opaque, enum gw_phase phase, struct gw_wbuf *out,
			 struct gw_error *err);
	int (*load_live)(void *opaque, enum gw_phase phase, struct gw_rbuf *in,
			 uint32_t version, struct gw_error *err);
	uint64_t (*live_pending)(void *opaque);

	int (*validate)(const void *state, uint32_t version, struct gw_error *err);
	int (*pre_save)(void *opaque, struct gw_error *err);
	int (*post_load)(void *opaque, uint32_t version, struct gw_error *err);

	void *opaque;
};

/*
 * The section may be missing from a stream being loaded (a device this VMM
 * version added, which older sources do not have); it then keeps the
 * state it had. Without this flag a missing section fails the load.
 */
#define GW_SECTION_OPTIONAL 0x1u

GW_API int gw_migration_add_section(struct gw_migration *m, const struct gw_section *s,
			     struct gw_error *err);

/*
 * How the migration engine stops and restarts the guest around
 * switchover. pause returns once no vCPU runs and devices are quiescent;
 * all are called from the migration thread. pause and resume must be
 * set; setting again replaces the ops.
 *
 * prepare (destination, optional): the stream has loaded and checked out;
 * put the loaded state into effect (vCPU registers, in-kernel devices),
 * doing everything that can fail, without running the guest. It runs
 * before the destination says READY, while the source still holds the
 * guest, so a failure here costs nothing; resume then only has to start
 * the vCPUs, after the source's GO.
 */
struct gw_vm_ops {
	int (*pause)(void *opaque, struct gw_error *err);
	int (*resume)(void *opaque, struct gw_error *err);
	int (*prepare)(void *opaque, struct gw_error *err);
};

GW_API int gw_migration_set_vm_ops(struct gw_migration *m, const struct gw_vm_ops *ops,
			    void *opaque, struct gw_error *err);

/*
 * Local live update (CPR, QEMU's "checkpoint and restart"): a new VMM
 * process takes over the guest's RAM where it is, in its memfds, instead
 * of receiving a copy (gw_precopy_params.mode, docs/format.md "Local live
 * update"). The destination VMM says how it takes a block over.
 *
 * adopt (destination): make these blocks the guest's RAM in place of
 * the registered ones: map each memfd MAP_SHARED from fd_offset for size
 * bytes and set host, make it guest memory (a KVM slot at gpa), and let
 * go of the RAM it had. The source's guest still runs on these pages, so
 * the VMM must not write them (pre-faulting its own page tables is fine).
 * On success the fds are the VMM's, and the library registers the blocks
 * (names, sizes, gpas, fds and hosts as adopted) in place of the old
 * ones; on failure the library closes them and the VMM's RAM must be as
 * it was. Called on the incoming thread, before the source pauses.
 */
struct gw_cpr_ram {
	const char *name;
	uint64_t size;
	uint64_t gpa;       /* or GW_GPA_NONE */
	uint64_t fd_offset; /* page-aligned */
	int fd;             /* a memfd, at least fd_offset + size bytes */
	void *host;         /* set by adopt: the mapping */
	/* The source's guest still runs (cpr-transfer): time spent here is
	 * not downtime, so it is the moment to pre-fault page tables. Under
	 * cpr-exec the guest is paused and waits for every microsecond. */
	bool live;
};

struct gw_cpr_ops {
	int (*adopt)(void *opaque, struct gw_cpr_ram *ram, uint32_t n, struct gw_error *err);
};

GW_API int gw_migration_set_cpr_ops(struct gw_migration *m, const struct gw_cpr_ops *ops,
				    void *opaque, struct gw_error *err);

#ifdef __cplusplus
}
#endif

#endif
