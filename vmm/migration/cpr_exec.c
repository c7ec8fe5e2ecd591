/*
 * cpr-exec, the VMM's half (cpr_exec.h).
 */
#include "vmm/migration/cpr_exec.h"
#include "vmm/machine.h"
#include "vmm/qmp/qmp.h"

#include <errno.h>
#include <sched.h>
#include <fcntl.h>
#include <godwit/io.h>
#include <godwit/stream.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* The probe's verdict is one line on stderr. */
#define CHECK_OUT_MAX 1024

static int wait_child(pid_t pid, int out_fd, int cancel_efd, uint64_t timeout_ms, char *buf,
		      size_t cap, int *status)
{
	int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	size_t len = 0;
	int ret = 0;

	if (pidfd < 0)
		return -errno;
	uint64_t left = timeout_ms;
	for (;;) {
		struct pollfd p[3] = {{.fd = pidfd, .events = POLLIN},
				      {.fd = cancel_efd, .events = POLLIN},
				      {.fd = out_fd, .events = POLLIN}};
		int n = poll(p, out_fd >= 0 ? 3 : 2, left > 1000 ? 1000 : (int)left);
		if (n < 0 && errno == EINTR)
			continue;
		if (p[2].revents) {
			ssize_t k = read(out_fd, buf + len, cap - 1 - len);
			if (k > 0)
				len += (size_t)k;
			else
				out_fd = -1;
			if (len == cap - 1)
				out_fd = -1;
		}
		if (p[0].revents)
			break;
		if (p[1].revents) {
			ret = -ECANCELED;
			break;
		}
		if (n == 0 && (left -= left > 1000 ? 1000 : left) == 0) {
			ret = -ETIMEDOUT;
			break;
		}
	}
	if (ret)
		kill(pid, SIGKILL);
	waitpid(pid, status, 0);
	close(pidfd);
	buf[len] = '\0';
	return ret;
}

int cpr_exec_check(char *const argv[], struct gw_migration *m, int cancel_efd, uint64_t timeout_ms,
		   char *errmsg, size_t errlen)
{
	struct gw_error err = {0};
	struct gw_writer *w = NULL;
	int probe = memfd_create("godwit-cpr-probe", MFD_CLOEXEC);
	int pipefd[2] = {-1, -1};
	int ret = probe < 0 ? -errno : gw_writer_new(probe, &w, &err);
	if (!ret)
		ret = gw_save_probe(m, w, &err);
	gw_writer_free(w);
	if (ret) {
		snprintf(errmsg, errlen, "cpr-exec: writing the probe: %s",
			 err.msg[0] ? err.msg : strerror(-ret));
		goto out;
	}
	if (pipe2(pipefd, O_CLOEXEC) < 0) {
		ret = -errno;
		snprintf(errmsg, errlen, "cpr-exec: pipe: %s", strerror(errno));
		goto out;
	}
	size_t n = 0;
	while (argv[n])
		n++;
	char path[32];
	const char **args = calloc(n + 3, sizeof(*args));
	if (!args) {
		ret = -ENOMEM;
		snprintf(errmsg, errlen, "cpr-exec: out of memory");
		goto out;
	}
	for (size_t i = 0; i < n; i++)
		args[i] = argv[i];
	args[n] = "--x-godwit-cpr-check";
	args[n + 1] = path;
	pid_t pid = fork();
	if (pid == 0) {
		/* A dup has no close-on-exec: the probe reaches the child. */
		int fd = dup(probe);
		snprintf(path, sizeof(path), "/dev/fd/%d", fd);
		dup2(pipefd[1], STDERR_FILENO);
		int null = open("/dev/null", O_RDWR);
		dup2(null, STDIN_FILENO);
		dup2(null, STDOUT_FILENO);
		execv(args[0], (char *const *)args);
		fprintf(stderr, "cannot execute %s: %s\n", args[0], strerror(errno));
		_exit(127);
	}
	free(args);
	if (pid < 0) {
		ret = -errno;
		snprintf(errmsg, errlen, "cpr-exec: fork: %s", strerror(errno));
		goto out;
	}
	close(pipefd[1]);
	pipefd[1] = -1;
	char out[CHECK_OUT_MAX];
	int status = 0;
	ret = wait_child(pid, pipefd[0], cancel_efd, timeout_ms, out, sizeof(out), &status);
	out[strcspn(out, "\n")] = '\0';
	if (ret == -ETIMEDOUT)
		snprintf(errmsg, errlen,
			 "cpr-exec: the new binary %s did not answer the probe within %llu ms",
			 argv[0], (unsigned long long)timeout_ms);
	else if (ret == -ECANCELED)
		snprintf(errmsg, errlen, "cancelled");
	else if (ret)
		snprintf(errmsg, errlen, "cpr-exec: waiting for the probe: %s", strerror(-ret));
	else if (!WIFEXITED(status) || WEXITSTATUS(status)) {
		ret = -EPROTO;
		snprintf(errmsg, errlen,
			 "cpr-exec: the new binary %s refuses this guest's state (%s): %s", argv[0],
			 WIFEXITED(status) ? "it exited with an error" : "it was killed",
			 out[0] ? out : "no reason given");
	}
out:
	if (probe >= 0)
		close(probe);
	if (pipefd[0] >= 0)
		close(pipefd[0]);
	if (pipefd[1] >= 0)
		close(pipefd[1]);
	return ret;
}

static int set_cloexec(int fd, bool on)
{
	int flags = fcntl(fd, F_GETFD);
	if (flags < 0)
		return -errno;
	flags = on ? flags | FD_CLOEXEC : flags & ~FD_CLOEXEC;
	return fcntl(fd, F_SETFD, flags) < 0 ? -errno : 0;
}

/*
 * The way back: this binary (an fd, so it is the same file even if the
 * path now holds the new one) and its command line, with the state to
 * load, in a memfd of NUL-separated arguments. Both survive the exec.
 */
static int leave_way_back(const char *state_uri, int *exe_fd, int *argv_fd)
{
	*exe_fd = open("/proc/self/exe", O_RDONLY);
	*argv_fd = memfd_create("godwit-cpr-argv", 0);
	if (*exe_fd < 0 || *argv_fd < 0)
		return -errno;
	int cmd = open("/proc/self/cmdline", O_RDONLY | O_CLOEXEC);
	if (cmd < 0)
		return -errno;
	char buf[65536];
	ssize_t n = read(cmd, buf, sizeof(buf));
	close(cmd);
	if (n <= 0 || n == (ssize_t)sizeof(buf))
		return -E2BIG;
	/* Its own --incoming, if it had one, is over: the state is the one. */
	int ret = 0;
	for (char *a = buf; a < buf + n && !ret; a += strlen(a) + 1) {
		if (!strcmp(a, "--incoming") || !strcmp(a, "-i")) {
			a += strlen(a) + 1;
			continue;
		}
		if (!strncmp(a, "--incoming=", 11))
			continue;
		if (write(*argv_fd, a, strlen(a) + 1) < 0)
			ret = -errno;
	}
	const char tail[] = "--incoming";
	if (!ret && (write(*argv_fd, tail, sizeof(tail)) < 0 ||
		     write(*argv_fd, state_uri, strlen(state_uri) + 1) < 0))
		ret = -errno;
	char env[64];
	snprintf(env, sizeof(env), "%d,%d", *exe_fd, *argv_fd);
	if (!ret && setenv(CPR_FALLBACK_ENV, env, 1) < 0)
		ret = -errno;
	return ret;
}

/*
 * The exec tears the old image down before the new one runs: its address
 * space (the page tables of every guest page it touched) and, as its fds
 * close, its KVM VM (the shadow pages of that memory). With a GiB touched
 * that is 35-45 ms of the guest's pause here. A holder that shares the
 * address space (CLONE_VM) and keeps the VM's fds in its own copy of the
 * fd table makes the exec leave both alive; they are torn down when the
 * holder exits, while the new image runs the guest. It is a grandchild,
 * so init reaps it and the new image has no child to wait for, and it
 * closes every other fd at once, so no client waits on a socket it holds.
 */
#define HOLD_MS 500
#define HOLDER_STACK (64 << 10)

struct holder_args {
	const int *keep;
	unsigned nr_keep;
	void *stack2;
};

/* Only system calls: it runs on the old image's memory, after the exec
 * with nothing else of it left. */
__attribute__((no_sanitize("address", "undefined"))) static int holder(void *opaque)
{
	const struct holder_args *a = opaque;
	struct timespec ts = {HOLD_MS / 1000, (HOLD_MS % 1000) * 1000000L};

	/* keep is sorted: close the ranges around it. */
	unsigned lo = 3;
	for (unsigned i = 0; i < a->nr_keep; i++) {
		if ((unsigned)a->keep[i] > lo)
			syscall(SYS_close_range, lo, (unsigned)a->keep[i] - 1, 0);
		lo = (unsigned)a->keep[i] + 1;
	}
	syscall(SYS_close_range, lo, ~0u, 0);
	syscall(SYS_nanosleep, &ts, NULL);
	syscall(SYS_exit, 0);
	return 0;
}

__attribute__((no_sanitize("address", "undefined"))) static int holder_parent(void *opaque)
{
	struct holder_args *a = opaque;

	clone(holder, (char *)a->stack2 + HOLDER_STACK, CLONE_VM | SIGCHLD, a);
	syscall(SYS_exit, 0);
	return 0;
}

static void start_holder(struct vmm *vm)
{
	static int keep[2 + GW_MAX_VCPUS];
	static struct holder_args a;
	unsigned n = 0;

	keep[n++] = vm->kvm.vm_fd;
	keep[n++] = vm->kvm.sys_fd;
	for (unsigned i = 0; i < vm->vcpus.nr; i++)
		keep[n++] = vm->vcpus.vcpus[i].fd;
	for (unsigned i = 1; i < n; i++)
		for (unsigned j = i; j > 0 && keep[j - 1] > keep[j]; j--) {
			int t = keep[j];
			keep[j] = keep[j - 1];
			keep[j - 1] = t;
		}
	/* Two stacks, on the old image's memory: they go with it. */
	char *stacks = mmap(NULL, 2 * HOLDER_STACK, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (stacks == MAP_FAILED)
		return; /* only the teardown stays in the pause */
	a = (struct holder_args){keep, n, stacks + HOLDER_STACK};
	pid_t pid = clone(holder_parent, stacks + HOLDER_STACK, CLONE_VM | SIGCHLD, &a);
	if (pid > 0)
		waitpid(pid, NULL, 0);
}

int cpr_exec(struct vmm *vm, char *const argv[], const char *state_uri, char *errmsg, size_t errlen)
{
	int qmp_fd = vm->qmp ? qmp_server_listen_fd(vm->qmp) : -1;
	int exe_fd = -1, argv_fd = -1;
	int ret = leave_way_back(state_uri, &exe_fd, &argv_fd);
	char num[16];

	for (unsigned i = 0; !ret && i < vm->ram.nr_blocks; i++)
		ret = set_cloexec(vm->ram.blocks[i].memfd, false);
	if (!ret && qmp_fd >= 0) {
		snprintf(num, sizeof(num), "%d", qmp_fd);
		ret = set_cloexec(qmp_fd, false);
		if (!ret && setenv(QMP_INHERIT_ENV, num, 1) < 0)
			ret = -errno;
	}
	if (!ret && setenv(CPR_EXEC_ENV, "1", 1) < 0)
		ret = -errno;
	if (!ret) {
		fflush(stdout);
		fflush(stderr);
		start_holder(vm);
		execv(argv[0], argv);
		ret = -errno;
	}
	/* Still here: the old image goes on, as it was. */
	snprintf(errmsg, errlen, "cpr-exec: cannot execute %s: %s", argv[0], strerror(-ret));
	for (unsigned i = 0; i < vm->ram.nr_blocks; i++)
		set_cloexec(vm->ram.blocks[i].memfd, true);
	if (qmp_fd >= 0)
		set_cloexec(qmp_fd, true);
	unsetenv(QMP_INHERIT_ENV);
	unsetenv(CPR_EXEC_ENV);
	unsetenv(CPR_FALLBACK_ENV);
	if (exe_fd >= 0)
		close(exe_fd);
	if (argv_fd >= 0)
		close(argv_fd);
	return ret;
}

void cpr_exec_done(void)
{
	const char *v = getenv(CPR_FALLBACK_ENV);
	int exe_fd, argv_fd;
	if (v && sscanf(v, "%d,%d", &exe_fd, &argv_fd) == 2) {
		close(exe_fd);
		close(argv_fd);
	}
	unsetenv(CPR_FALLBACK_ENV);
	unsetenv(CPR_EXEC_ENV);
}

void cpr_exec_fall_back(struct vmm *vm, const char *why)
{
	const char *v = getenv(CPR_FALLBACK_ENV);
	int exe_fd, argv_fd;
	if (!v || sscanf(v, "%d,%d", &exe_fd, &argv_fd) != 2)
		return;
	off_t len = lseek(argv_fd, 0, SEEK_END);
	char *buf = len > 0 && len < (1 << 20) ? malloc((size_t)len + 1) : NULL;
	if (!buf || pread(argv_fd, buf, (size_t)len, 0) != len) {
		free(buf);
		return;
	}
	buf[len] = '\0';
	size_t n = 0;
	for (off_t i = 0; i < len; i++)
		n += buf[i] == '\0';
	char **args = calloc(n + 1, sizeof(*args));
	if (!args)
		return;
	char *a = buf;
	for (size_t i = 0; i < n; i++, a += strlen(a) + 1)
		args[i] = a;
	fprintf(stderr,
		"godwit-vmm: the new binary cannot take the guest (%s); executing the old one again\n",
		why);
	/* The old image takes the way back only once. What it needs stays
	 * open: the memfds (adopted here or not yet) and the QMP listener. */
	unsetenv(CPR_FALLBACK_ENV);
	close(argv_fd);
	for (unsigned i = 0; i < vm->ram.nr_blocks; i++)
		set_cloexec(vm->ram.blocks[i].memfd, false);
	char num[16];
	int qmp_fd = vm->qmp ? qmp_server_listen_fd(vm->qmp) : -1;
	snprintf(num, sizeof(num), "%d", qmp_fd);
	if (qmp_fd >= 0 && !set_cloexec(qmp_fd, false))
		setenv(QMP_INHERIT_ENV, num, 1);
	fflush(stderr);
	fexecve(exe_fd, args, environ);
	fprintf(stderr, "godwit-vmm: executing the old binary again failed: %s\n", strerror(errno));
}
