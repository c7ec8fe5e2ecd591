/*
 * cpr-exec, the VMM's half (cpr_exec.h): the stand-in, the exec, and the
 * way back to the old binary.
 */
#include "vmm/migration/cpr_exec.h"
#include "vmm/machine.h"
#include "vmm/qmp/qmp.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

/* What the stand-in says before it listens: its reason, if it stops. */
#define EARLY_OUT_MAX 1024

static int set_cloexec(int fd, bool on)
{
	int flags = fcntl(fd, F_GETFD);
	if (flags < 0)
		return -errno;
	flags = on ? flags | FD_CLOEXEC : flags & ~FD_CLOEXEC;
	return fcntl(fd, F_SETFD, flags) < 0 ? -errno : 0;
}

static size_t argv_len(char *const argv[])
{
	size_t n = 0;
	while (argv[n])
		n++;
	return n;
}

static bool is_opt(const char *a, const char *name, char shortname)
{
	return !strcmp(a, name) || (shortname && a[0] == '-' && a[1] == shortname && !a[2]);
}

/*
 * argv with its --incoming URI (or --incoming=URI) changed to incoming
 * and, if qmp is given, its --qmp changed to it; then extra (NULL-ended).
 * The strings are argv's, incoming's, qmp's and extra's: free only the
 * array. All is built before a fork, so the child only executes it.
 */
static char **rewrite_args(char *const argv[], const char *uri, const char *incoming,
			   const char *qmp, const char *const extra[])
{
	size_t n = argv_len(argv), k = 0, e = 0;
	while (extra && extra[e])
		e++;
	char **out = calloc(n + e + 1, sizeof(*out));
	if (!out)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		const char *a = argv[i];
		if (i + 1 < n && is_opt(a, "--incoming", 'i') && !strcmp(argv[i + 1], uri)) {
			out[k++] = (char *)a;
			out[k++] = (char *)incoming;
			i++;
		} else if (!strncmp(a, "--incoming=", 11) && !strcmp(a + 11, uri)) {
			out[k++] = "--incoming";
			out[k++] = (char *)incoming;
		} else if (qmp && i + 1 < n && is_opt(a, "--qmp", 'q')) {
			out[k++] = (char *)a;
			out[k++] = (char *)qmp;
			i++;
		} else if (qmp && !strncmp(a, "--qmp=", 6)) {
			out[k++] = "--qmp";
			out[k++] = (char *)qmp;
		} else {
			out[k++] = (char *)a;
		}
	}
	/* "--incoming=URI" became two words: room was counted for one. */
	if (k > n) {
		char **bigger = realloc(out, (k + e + 1) * sizeof(*out));
		if (!bigger) {
			free(out);
			return NULL;
		}
		out = bigger;
	}
	for (size_t i = 0; i < e; i++)
		out[k++] = (char *)extra[i];
	out[k] = NULL;
	return out;
}

/* environ and one more NAME=VALUE in front (an earlier one is hidden). */
static char **env_with(const char *var)
{
	size_t n = argv_len(environ);
	char **env = calloc(n + 2, sizeof(*env));
	if (!env)
		return NULL;
	env[0] = (char *)var;
	memcpy(env + 1, environ, n * sizeof(*env));
	return env;
}

static void remove_dir(const char *dir)
{
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	snprintf(path, sizeof(path), "%s/in.sock", dir);
	unlink(path);
	snprintf(path, sizeof(path), "%s/qmp.sock", dir);
	unlink(path);
	snprintf(path, sizeof(path), "%s/back.sock", dir);
	unlink(path);
	rmdir(dir);
}

/* The stand-in's pid from the middle child, which exits at once so that
 * init reaps the stand-in: this image execs and the next one would not. */
static pid_t spawn(char *const args[], char *const env[], int err_w, int *pid_pipe)
{
	pid_t mid = fork();
	if (mid == 0) {
		pid_t pid = fork();
		if (pid == 0) {
			/* Only async-signal-safe calls after a fork. */
			int null = open("/dev/null", O_RDWR);
			dup2(null, STDIN_FILENO); /* the guest's input stays with us */
			dup2(err_w, STDERR_FILENO);
			execve(args[0], args, env);
			static const char msg[] = "cannot execute the new binary\n";
			ssize_t n = write(STDERR_FILENO, msg, sizeof(msg) - 1);
			(void)n;
			_exit(127);
		}
		ssize_t n = write(pid_pipe[1], &pid, sizeof(pid));
		(void)n;
		_exit(0);
	}
	if (mid < 0)
		return -1;
	pid_t pid = -1;
	ssize_t n = read(pid_pipe[0], &pid, sizeof(pid));
	waitpid(mid, NULL, 0);
	return n == (ssize_t)sizeof(pid) ? pid : -1;
}

/* Until the stand-in's early output ends (it listens, or it is gone),
 * cancel_efd is readable or timeout_ms passes. Relays what it says. */
static int await_listening(int err_r, int cancel_efd, uint64_t timeout_ms, char *out, size_t cap)
{
	size_t len = 0;
	uint64_t left = timeout_ms;
	for (;;) {
		struct pollfd p[2] = {{.fd = err_r, .events = POLLIN},
				      {.fd = cancel_efd, .events = POLLIN}};
		int step = left > 1000 ? 1000 : (int)left;
		int n = poll(p, 2, step);
		if (n < 0 && errno == EINTR)
			continue;
		if (p[1].revents)
			return -ECANCELED;
		if (p[0].revents) {
			char buf[512];
			ssize_t k = read(err_r, buf, sizeof(buf));
			if (k <= 0)
				return 0;
			ssize_t w = write(STDERR_FILENO, buf, (size_t)k);
			(void)w;
			size_t take = (size_t)k < cap - 1 - len ? (size_t)k : cap - 1 - len;
			memcpy(out + len, buf, take);
			len += take;
			out[len] = '\0';
			continue;
		}
		if (n == 0 && (left -= (uint64_t)step) == 0)
			return -ETIMEDOUT;
	}
}

/* A socket connected to (listening at) DIR/NAME, or -errno. */
static int unix_socket(const char *dir, const char *name, bool listening)
{
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s/%s", dir, name);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	int ret = listening ? bind(fd, (struct sockaddr *)&sun, sizeof(sun)) : 0;
	if (ret == 0)
		ret = listening ? listen(fd, 8) : connect(fd, (struct sockaddr *)&sun, sizeof(sun));
	if (ret < 0) {
		ret = -errno;
		close(fd);
		return ret;
	}
	return fd;
}

int cpr_stand_in_start(struct cpr_stand_in *s, char *const argv[], const char *uri, int cancel_efd,
		       uint64_t timeout_ms, int *conn, char *errmsg, size_t errlen)
{
	int err_pipe[2] = {-1, -1}, pid_pipe[2] = {-1, -1}, child_err = -1;
	char **args = NULL, **env = NULL;
	int ret = 0;

	*s = (struct cpr_stand_in){.back = -1, .pid = -1, .pidfd = -1};
	const char *tmp = getenv("TMPDIR");
	if (!tmp || strlen(tmp) > sizeof(s->dir) - 32)
		tmp = "/tmp";
	snprintf(s->dir, sizeof(s->dir), "%s/godwit-cpr-XXXXXX", tmp);
	if (!mkdtemp(s->dir)) {
		ret = -errno;
		snprintf(errmsg, errlen, "cpr-exec: cannot make a directory for the stand-in: %s",
			 strerror(errno));
		s->dir[0] = '\0';
		return ret;
	}
	/* The way back listens before the stand-in may connect to it; it is
	 * a listener, not a connection, so that an image that refuses the
	 * guest leaves it whole for the old binary's (the stand-in connects
	 * again). The stand-in's stderr, without close-on-exec, is the one it
	 * switches to once it listens. */
	s->back = unix_socket(s->dir, "back.sock", true);
	if (s->back < 0) {
		ret = s->back;
		snprintf(errmsg, errlen, "cpr-exec: cannot listen in %s: %s", s->dir,
			 strerror(-ret));
		goto out;
	}
	if (pipe2(err_pipe, O_CLOEXEC) < 0 || pipe2(pid_pipe, O_CLOEXEC) < 0 ||
	    (child_err = dup(STDERR_FILENO)) < 0) {
		ret = -errno;
		snprintf(errmsg, errlen, "cpr-exec: setting up the stand-in: %s", strerror(errno));
		goto out;
	}
	char incoming[sizeof(s->dir) + 16], qmp[sizeof(s->dir) + 16], back[sizeof(s->dir) + 16],
		var[256];
	snprintf(incoming, sizeof(incoming), "unix:%s/in.sock", s->dir);
	snprintf(qmp, sizeof(qmp), "unix:%s/qmp.sock", s->dir);
	snprintf(back, sizeof(back), "unix:%s/back.sock", s->dir);
	snprintf(var, sizeof(var), CPR_STAND_IN_ENV "=%d,%s", child_err, s->dir);
	const char *extra[] = {"--" CPR_RETURN_OPTION, back, NULL};
	args = rewrite_args(argv, uri, incoming, qmp, extra);
	env = env_with(var);
	if (!args || !env) {
		ret = -ENOMEM;
		snprintf(errmsg, errlen, "cpr-exec: out of memory");
		goto out;
	}
	s->pid = spawn(args, env, err_pipe[1], pid_pipe);
	if (s->pid < 0) {
		ret = -errno ? -errno : -ECHILD;
		snprintf(errmsg, errlen, "cpr-exec: cannot start the stand-in: %s", strerror(-ret));
		goto out;
	}
	s->pidfd = (int)syscall(SYS_pidfd_open, s->pid, 0);
	close(err_pipe[1]);
	err_pipe[1] = -1;
	close(child_err);
	child_err = -1;

	char early[EARLY_OUT_MAX] = "";
	ret = await_listening(err_pipe[0], cancel_efd, timeout_ms, early, sizeof(early));
	if (ret == 0 && (ret = unix_socket(s->dir, "in.sock", false)) >= 0) {
		*conn = ret;
		ret = 0;
	} else if (ret == -ECANCELED) {
		snprintf(errmsg, errlen, "cancelled");
	} else if (ret == -ETIMEDOUT) {
		snprintf(errmsg, errlen,
			 "cpr-exec: the new binary %s did not get ready within %llu ms "
			 "(x-godwit-ready-timeout)",
			 argv[0], (unsigned long long)timeout_ms);
	} else {
		early[strcspn(early, "\n")] = '\0';
		snprintf(errmsg, errlen,
			 "cpr-exec: the new binary %s refuses to take the guest: it stopped before it was ready: %s",
			 argv[0], early[0] ? early : "no reason given");
		ret = -EPROTO;
	}
out:
	free(args);
	free(env);
	for (int i = 0; i < 2; i++) {
		if (err_pipe[i] >= 0)
			close(err_pipe[i]);
		if (pid_pipe[i] >= 0)
			close(pid_pipe[i]);
	}
	if (child_err >= 0)
		close(child_err);
	if (ret)
		cpr_stand_in_end(s);
	return ret;
}

void cpr_stand_in_end(struct cpr_stand_in *s)
{
	if (s->pidfd >= 0) {
		syscall(SYS_pidfd_send_signal, s->pidfd, SIGKILL, NULL, 0);
		/* Gone before its files are: it may be removing them itself. */
		struct pollfd p = {.fd = s->pidfd, .events = POLLIN};
		poll(&p, 1, 5000);
		close(s->pidfd);
	}
	if (s->back >= 0)
		close(s->back);
	if (s->dir[0])
		remove_dir(s->dir);
	*s = (struct cpr_stand_in){.back = -1, .pid = -1, .pidfd = -1};
}

/*
 * The way back: this binary (an fd, so it is the same file even if the
 * path now holds the new one) and its own command line with incoming as
 * its --incoming, in a memfd of NUL-separated arguments. Both survive the
 * exec; CPR_FALLBACK_ENV names them.
 */
static int leave_way_back(const char *incoming, int *exe_fd, int *argv_fd)
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
	/* Its own --incoming, if it had one, is over: the stand-in is the one. */
	int ret = 0;
	for (char *a = buf; a < buf + n && !ret; a += strlen(a) + 1) {
		if (is_opt(a, "--incoming", 'i')) {
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
		     write(*argv_fd, incoming, strlen(incoming) + 1) < 0))
		ret = -errno;
	char env[64];
	snprintf(env, sizeof(env), "%d,%d", *exe_fd, *argv_fd);
	if (!ret && setenv(CPR_FALLBACK_ENV, env, 1) < 0)
		ret = -errno;
	return ret;
}

/* The QMP listener survives the exec, under QMP_INHERIT_ENV. */
static int keep_qmp_listener(struct vmm *vm)
{
	int qmp_fd = vm->qmp ? qmp_server_listen_fd(vm->qmp) : -1;
	char num[16];
	if (qmp_fd < 0)
		return 0;
	snprintf(num, sizeof(num), "%d", qmp_fd);
	int ret = set_cloexec(qmp_fd, false);
	if (!ret && setenv(QMP_INHERIT_ENV, num, 1) < 0)
		ret = -errno;
	return ret;
}

/* Executes the old binary with the way back; returns only if it cannot. */
static int take_way_back(void)
{
	const char *v = getenv(CPR_FALLBACK_ENV);
	int exe_fd, argv_fd;
	if (!v || sscanf(v, "%d,%d", &exe_fd, &argv_fd) != 2)
		return -ENOENT;
	off_t len = lseek(argv_fd, 0, SEEK_END);
	char *buf = len > 0 && len < (1 << 20) ? malloc((size_t)len + 1) : NULL;
	if (!buf || pread(argv_fd, buf, (size_t)len, 0) != len) {
		free(buf);
		return -EIO;
	}
	buf[len] = '\0';
	size_t n = 0;
	for (off_t i = 0; i < len; i++)
		n += buf[i] == '\0';
	char **args = calloc(n + 1, sizeof(*args));
	if (!args) {
		free(buf);
		return -ENOMEM;
	}
	char *a = buf;
	for (size_t i = 0; i < n; i++, a += strlen(a) + 1)
		args[i] = a;
	/* The old image takes the way back only once. */
	unsetenv(CPR_FALLBACK_ENV);
	close(argv_fd);
	fflush(stderr);
	fexecve(exe_fd, args, environ);
	int ret = -errno;
	free(args);
	free(buf);
	return ret;
}

int cpr_exec(struct vmm *vm, char *const argv[], const char *uri, struct cpr_stand_in *s,
	     uint64_t first_pause_us, char *errmsg, size_t errlen)
{
	int back = s->back;
	int exe_fd = -1, argv_fd = -1;
	char incoming[32], var[64];
	snprintf(incoming, sizeof(incoming), "fd:%d", back);
	snprintf(var, sizeof(var), "%d,%llu", back, (unsigned long long)first_pause_us);
	char **args = rewrite_args(argv, uri, incoming, NULL, NULL);
	int ret = args ? 0 : -ENOMEM;
	if (!ret)
		ret = leave_way_back(incoming, &exe_fd, &argv_fd);
	if (!ret)
		ret = set_cloexec(back, false);
	if (!ret)
		ret = keep_qmp_listener(vm);
	if (!ret && setenv(CPR_EXEC_ENV, var, 1) < 0)
		ret = -errno;
	if (ret) {
		snprintf(errmsg, errlen, "cpr-exec: preparing the exec: %s", strerror(-ret));
	} else {
		fflush(stdout);
		fflush(stderr);
		execv(args[0], args);
		ret = -errno;
		fprintf(stderr,
			"godwit-vmm: cpr-exec: cannot execute %s (%s); executing this binary again to take the guest back\n",
			args[0], strerror(-ret));
		int again = take_way_back();
		snprintf(errmsg, errlen,
			 "cpr-exec: cannot execute %s (%s), nor this binary again (%s): the guest runs on in the stand-in, pid %d, QMP at unix:%s/qmp.sock",
			 args[0], strerror(-ret), strerror(-again), (int)s->pid, s->dir);
	}
	free(args);
	/* Still here: the stand-in keeps the guest; this image only reports. */
	unsetenv(QMP_INHERIT_ENV);
	unsetenv(CPR_EXEC_ENV);
	unsetenv(CPR_FALLBACK_ENV);
	if (exe_fd >= 0)
		close(exe_fd);
	if (argv_fd >= 0)
		close(argv_fd);
	return ret;
}

/* CPR_EXEC_ENV: "FD,FIRST_PAUSE_US". */
static bool exec_env(int *fd, unsigned long long *pause_us)
{
	const char *v = getenv(CPR_EXEC_ENV);
	return v && sscanf(v, "%d,%llu", fd, pause_us) == 2;
}

uint64_t cpr_exec_first_pause_us(void)
{
	int fd;
	unsigned long long us;
	return exec_env(&fd, &us) ? us : 0;
}

void cpr_exec_done(void)
{
	const char *v = getenv(CPR_FALLBACK_ENV);
	int exe_fd, argv_fd, back;
	unsigned long long us;
	if (v && sscanf(v, "%d,%d", &exe_fd, &argv_fd) == 2) {
		close(exe_fd);
		close(argv_fd);
	}
	if (exec_env(&back, &us))
		close(back);
	unsetenv(CPR_FALLBACK_ENV);
	unsetenv(CPR_EXEC_ENV);
}

void cpr_exec_fall_back(struct vmm *vm, const char *why)
{
	if (!getenv(CPR_FALLBACK_ENV))
		return;
	fprintf(stderr,
		"godwit-vmm: the new binary cannot take the guest (%s); executing the old one again\n",
		why);
	if (keep_qmp_listener(vm) == 0) {
		int ret = take_way_back();
		fprintf(stderr, "godwit-vmm: executing the old binary again failed: %s\n",
			strerror(-ret));
	}
	unsetenv(QMP_INHERIT_ENV);
}

/* CPR_STAND_IN_ENV: "STDERR_FD,DIR". */
void cpr_stand_in_ready(void)
{
	const char *v = getenv(CPR_STAND_IN_ENV);
	int fd;
	if (!v || sscanf(v, "%d,", &fd) != 1 || fd < 0)
		return;
	dup2(fd, STDERR_FILENO);
	close(fd);
}

const char *cpr_stand_in_dir(void)
{
	const char *v = getenv(CPR_STAND_IN_ENV);
	const char *comma = v ? strchr(v, ',') : NULL;
	return comma ? comma + 1 : NULL;
}

void cpr_stand_in_exit(void)
{
	const char *dir = cpr_stand_in_dir();
	if (dir)
		remove_dir(dir);
}
