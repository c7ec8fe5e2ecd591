/*
 * QMP commands about the machine itself: run state, vCPUs, version, guest
 * RAM, and what the test guest reported. Names, arguments and return
 * shapes are QEMU's wherever QEMU has the command; godwit's own commands
 * carry the x-godwit- prefix, as QEMU marks its unstable ones with x-.
 */
#include "vmm/loop.h"
#include "vmm/migration/migration.h"
#include "vmm/qmp/qmp.h"
#include "vmm/vmm.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* pmemsave copies guest RAM to the file through a buffer of this size. */
#define PMEMSAVE_CHUNK (1u << 20)

static int cmd_query_status(struct vmm *vm, json_t *args, json_t **ret, struct qmp_error *err)
{
	(void)args;
	enum vmm_runstate st = vmm_runstate(vm);
	return qmp_return(json_pack("{s:b,s:b,s:s}", "running", st == VMM_RUNNING, "singlestep", 0,
				    "status", vmm_runstate_name(st)),
			  ret, err);
}

static int cmd_stop(struct vmm *vm, json_t *args, json_t **ret, struct qmp_error *err)
{
	(void)args;
	(void)ret;
	int rc = vmm_stop(vm);
	if (rc < 0)
		return qmp_fail(err, QMP_ERR_GENERIC, "cannot pause the guest: %s", strerror(-rc));
	return 0;
}

static int cmd_cont(struct vmm *vm, json_t *args, json_t **ret, struct qmp_error *err)
{
	(void)args;
	(void)ret;
	int rc = vmm_cont(vm);
	if (rc == -EPERM)
		return qmp_fail(err, QMP_ERR_GENERIC,
				"cannot resume the guest: a local live update handed its RAM to the new process, which runs it; this process can only quit");
	if (rc < 0)
		return qmp_fail(err, QMP_ERR_GENERIC, "cannot resume the guest: %s", strerror(-rc));
	return 0;
}

static void quit_now(void *opaque)
{
	vmm_quit(opaque, "host-qmp-quit");
}

/* The reply must reach the client before the process exits, and QEMU
 * sends it before the SHUTDOWN event, so the quit itself runs on the next
 * loop iteration, after the dispatcher has sent {}. */
static int cmd_quit(struct vmm *vm, json_t *args, json_t **ret, struct qmp_error *err)
{
	(void)args;
	(void)ret;
	int rc = loop_call(vmm_loop(vm), quit_now, vm);
	if (rc < 0)
		return qmp_fail(err, QMP_ERR_GENERIC, "cannot quit: %s", strerror(-rc));
	return 0;
}

static int cmd_query_version(struct vmm *vm, json_t *args, json_t **ret, struct qmp_error *err)
{
	(void)args;
	(void)vm;
	return qmp_return(qmp_version(), ret, err);
}

static int cmd_query_cpus_fast(struct vmm *vm, json_t *args, json_t **ret, struct qmp_error *err)
{
	(void)args;
	json_t *cpus = json_array();
	int bad = 0;
	for (unsigned i = 0; i < vmm_nr_vcpus(vm); i++) {
		char path[64];
		snprintf(path, sizeof(path), "/machine/unattached/device[%u]", i);
		json_t *cpu = json_pack("{s:I,s:s,s:I,s:s,s:{s:I,s:i,s:i}}", "cpu-index",
					(json_int_t)i, "qom-path", path, "thread-id",
					(json_int_t)vmm_vcpu_tid(vm, i), "target", "x86_64",
					"props", "core-id", (json_int_t)i, "thread-id", 0,
					"socket-id", 0);
		bad |= json_array_append_new(cpus, cpu);
	}
	if (bad) {
		json_decref(cpus);
		cpus = NULL;
	}
	return qmp_return(cpus, ret, err);
}

/* Write [addr, addr+size) of guest RAM to fd, a chunk at a time. */
static int save_range(struct vmm *vm, uint64_t addr, uint64_t size, int fd, const char *filename,
		      struct qmp_error *err)
{
	char *buf = malloc(size < PMEMSAVE_CHUNK ? (size ? size : 1) : PMEMSAVE_CHUNK);
	if (!buf)
		return qmp_fail(err, QMP_ERR_GENERIC, "pmemsave: out of memory");
	int rc = 0;
	for (uint64_t done = 0; done < size && rc == 0;) {
		uint64_t n = size - done < PMEMSAVE_CHUNK ? size - done : PMEMSAVE_CHUNK;
		int r = vmm_ram_read(vm, addr + done, buf, n);
		if (r < 0) {
			rc = qmp_fail(err, QMP_ERR_GENERIC,
				      "pmemsave: cannot read guest RAM at 0x%" PRIx64 ": %s",
				      addr + done, strerror(-r));
			break;
		}
		for (uint64_t off = 0; off < n;) {
			ssize_t w = write(fd, buf + off, n - off);
			if (w < 0 && errno == EINTR)
				continue;
			if (w < 0) {
				rc = qmp_fail(err, QMP_ERR_GENERIC,
					      "pmemsave: cannot write '%s': %s", filename,
					      strerror(errno));
				break;
			}
			off += (uint64_t)w;
		}
		done += n;
	}
	free(buf);
	return rc;
}

static const struct qmp_arg cmd_pmemsave_args[] = {
	{"val", QMP_ARG_INT, true},
	{"size", QMP_ARG_INT, true},
	{"filename", QMP_ARG_STR, true},
};

static int cmd_pmemsave(struct vmm *vm, json_t *args, json_t **ret, struct qmp_error *err)
{
	(void)ret;
	json_int_t addr = json_integer_value(json_object_get(args, "val"));
	json_int_t size = json_integer_value(json_object_get(args, "size"));
	const char *filename = json_string_value(json_object_get(args, "filename"));
	if (addr < 0)
		return qmp_fail(err, QMP_ERR_GENERIC,
				"Parameter 'val' expects a non-negative value");
	if (size < 0)
		return qmp_fail(err, QMP_ERR_GENERIC,
				"Parameter 'size' expects a non-negative value");
	uint64_t ram = vmm_ram_size(vm);
	if ((uint64_t)addr > ram || (uint64_t)size > ram - (uint64_t)addr)
		return qmp_fail(err, QMP_ERR_GENERIC,
				"pmemsave: 0x%" PRIx64 " bytes at 0x%" PRIx64
				" are not all guest RAM (guest RAM is 0x%" PRIx64 " bytes from 0)",
				(uint64_t)size, (uint64_t)addr, ram);

	/* O_NONBLOCK only for open(): a FIFO nobody reads would otherwise
	 * block the main loop, and with it every QMP client, forever. */
	int fd = open(filename, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NONBLOCK, 0600);
	if (fd < 0)
		return qmp_fail(err, QMP_ERR_GENERIC, "pmemsave: cannot open '%s': %s", filename,
				strerror(errno));
	int flags = fcntl(fd, F_GETFL);
	int rc = 0;
	if (flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) < 0)
		rc = qmp_fail(err, QMP_ERR_GENERIC, "pmemsave: '%s': %s", filename,
			      strerror(errno));
	if (rc == 0)
		rc = save_range(vm, (uint64_t)addr, (uint64_t)size, fd, filename, err);
	if (close(fd) < 0 && rc == 0)
		rc = qmp_fail(err, QMP_ERR_GENERIC, "pmemsave: cannot write '%s': %s", filename,
			      strerror(errno));
	return rc;
}

static int cmd_ram_hash(struct vmm *vm, json_t *args, json_t **ret, struct qmp_error *err)
{
	(void)args;
	/* Pages not in yet are holes: they would be hashed as zeros. */
	struct migration_info mi;
	migration_query(vm, &mi);
	if (mi.kind == MIGRATION_INCOMING && mi.status == GW_MIG_POSTCOPY_ACTIVE)
		return qmp_fail(err, QMP_ERR_GENERIC,
				"guest RAM is still being restored lazily (query-migrate says postcopy-active): ask again once it completed");
	char hash[33];
	int rc = vmm_ram_hash(vm, hash);
	if (rc < 0)
		return qmp_fail(err, QMP_ERR_GENERIC, "cannot hash guest RAM: %s", strerror(-rc));
	return qmp_return(json_pack("{s:s,s:I}", "hash", hash, "size",
				    (json_int_t)vmm_ram_size(vm)),
			  ret, err);
}

/* jansson's setters fail harmlessly on a NULL object or value, so the
 * result is built unconditionally and checked once. */
static int cmd_query_guest(struct vmm *vm, json_t *args, json_t **ret, struct qmp_error *err)
{
	(void)args;
	struct vmm_guest_status st;
	vmm_guest_status(vm, &st);
	unsigned n = st.nr_vcpus < ARRAY_SIZE(st.passes) ? st.nr_vcpus : ARRAY_SIZE(st.passes);
	json_t *vcpus = json_array();
	int bad = 0;
	for (unsigned i = 0; i < n; i++)
		bad |= json_array_append_new(vcpus,
					     json_pack("{s:I,s:I}", "pass",
						       (json_int_t)st.passes[i], "pages-per-pass",
						       (json_int_t)st.pages_per_pass[i]));
	json_t *o = json_object();
	bad |= json_object_set_new(o, "ready", json_boolean(st.ready));
	bad |= json_object_set_new(o, "check-failed", json_boolean(st.check_failed));
	bad |= json_object_set_new(o, "check-ok", json_integer((json_int_t)st.check_ok));
	if (st.check_failed)
		bad |= json_object_set_new(o, "first-bad-page", json_integer(st.first_bad_page));
	bad |= json_object_set_new(o, "exit-requested", json_boolean(st.exit_requested));
	bad |= json_object_set_new(o, "exit-status", json_integer(st.exit_status));
	bad |= json_object_set_new(o, "vcpus", vcpus);
	if (bad) {
		json_decref(o);
		o = NULL;
	}
	return qmp_return(o, ret, err);
}

static const struct qmp_command machine_commands[] = {
	{"query-status", cmd_query_status},
	{"stop", cmd_stop},
	{"cont", cmd_cont},
	{"quit", cmd_quit},
	{"query-version", cmd_query_version},
	{"query-cpus-fast", cmd_query_cpus_fast},
	{"pmemsave", cmd_pmemsave, QMP_ARGS(cmd_pmemsave_args)},
	{"x-godwit-ram-hash", cmd_ram_hash},
	{"x-godwit-query-guest", cmd_query_guest},
};

int qmp_machine_register(struct qmp_server *s)
{
	return qmp_register(s, machine_commands, ARRAY_SIZE(machine_commands));
}
