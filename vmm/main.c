/*
 * godwit-vmm: a small KVM virtual machine monitor, the reference user of
 * libgodwit. This file turns the command line into a machine and runs the
 * main loop until quit, a signal or the guest asks to exit.
 */
#include "vmm/x86/boot.h"
#include "gw_version.h"
#include "vmm/loop.h"
#include "vmm/machine.h"
#include "vmm/sched_slice.h"
#include "vmm/migration/cpr_exec.h"
#include "vmm/migration/migration.h"
#include "vmm/objects.h"
#include "vmm/qmp/qmp.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

struct options {
	uint64_t memory;
	unsigned vcpus;
	const char *kernel;
	const char *bootsector;
	const char *append;
	const char *serial;
	const char *qmp;
	struct qmp_address qmp_addr;
	const char *incoming;
	bool paused;
	bool debug;
	bool memory_given;
	const char *cpr_return_to; /* --x-godwit-cpr-return-to URI (cpr_exec.h) */
	struct drive_options drives[VIRTIO_BLK_MAX_DRIVES]; /* --drive */
	unsigned nr_drives;
	const char *stop_at; /* --x-godwit-stop-at POINT */
};

static void usage(FILE *f)
{
	fprintf(f,
		"usage: godwit-vmm (--kernel FILE.elf | --bootsector FILE | --incoming URI) [options]\n"
		"\n"
		"  -m, --memory SIZE      guest RAM, e.g. 256M or 2G (plain number: MiB;\n"
		"                         default 128M, at most 16G, a multiple of 2M)\n"
		"  -c, --vcpus N          number of vCPUs (default 1, at most %d)\n"
		"  -k, --kernel FILE      64-bit ELF guest, started in long mode\n"
		"  -b, --bootsector FILE  512-byte PC boot sector, started in real mode\n"
		"  -a, --append STRING    parameters for the guest (key=value ...)\n"
		"  -s, --serial WHERE     COM1: stdio (default), file:PATH or none\n"
		"  -q, --qmp unix:PATH    QMP control socket, mode 0600 (only this user)\n"
		"      --qmp unix:NAME,abstract=on\n"
		"                         an abstract socket: no file and no mode, so ANY\n"
		"                         local user can connect and control the VM\n"
		"  -i, --incoming URI     wait for an incoming migration instead of booting:\n"
		"                         tcp:HOST:PORT,\n"
		"                         unix:PATH, fd:N, exec:CMD, file:PATH, or defer\n"
		"                         (then QMP migrate-incoming gives the URI)\n"
		"                         A new process for a local live update (cpr-transfer)\n"
		"                         is started with --incoming unix:PATH; it takes the\n"
		"                         guest's memory size from the old one unless -m is given\n"
		"      --drive file=PATH[,format=raw][,cache=none|writeback][,shared=on|off]\n"
		"              [,aio=threads|io_uring]\n"
		"                         a virtio-blk disk (virtio-mmio) on a raw image; up to %d.\n"
		"                         cache=none: O_DIRECT. shared=on (default): both hosts\n"
		"                         of a migration see the image (it is flushed at the\n"
		"                         switchover, not copied). aio: the requests run on a\n"
		"                         pool of I/O threads or one io_uring (the default,\n"
		"                         threads where the kernel refuses a ring)\n"
		"  -S, --paused           start with the vCPUs stopped (QMP 'cont' runs them)\n"
		"  -d, --debug            log unclaimed port and MMIO accesses\n"
		"  -h, --help             this text\n"
		"  -V, --version          print the version\n"
		"\n"
		"Exit status: the guest's requested status; 1 if its self-check failed;\n"
		"3 if a vCPU stopped on a fatal error; 2 for a usage or set-up error;\n"
		"4 if shutting down took longer than 30 s and was cut short.\n",
		GW_MAX_VCPUS, VIRTIO_BLK_MAX_DRIVES);
}

/* Decimal digits up to *end, nothing before them: strtoull() would skip
 * leading blanks and take a sign, and then ' 64M' would pass where '64M '
 * does not. */
static int parse_decimal(const char *s, unsigned long long *v, char **end)
{
	if (*s < '0' || *s > '9')
		return -EINVAL;
	errno = 0;
	*v = strtoull(s, end, 10);
	return errno ? -errno : 0;
}

static int parse_size(const char *s, uint64_t *out)
{
	unsigned long long v;
	char *end;
	if (parse_decimal(s, &v, &end))
		return -EINVAL;
	unsigned shift = 20; /* as QEMU's -m: a bare number is MiB */
	switch (*end) {
	case 'k':
	case 'K':
		shift = 10;
		end++;
		break;
	case 'm':
	case 'M':
		shift = 20;
		end++;
		break;
	case 'g':
	case 'G':
		shift = 30;
		end++;
		break;
	case 'b':
	case 'B':
		shift = 0;
		end++;
		break;
	case '\0':
		break;
	default:
		return -EINVAL;
	}
	if (*end || v > (UINT64_MAX >> shift))
		return -EINVAL;
	*out = (uint64_t)v << shift;
	return 0;
}

static int parse_options(int argc, char **argv, struct options *o)
{
	static const struct option longopts[] = {
		{"memory", required_argument, NULL, 'm'},
		{"vcpus", required_argument, NULL, 'c'},
		{"kernel", required_argument, NULL, 'k'},
		{"bootsector", required_argument, NULL, 'b'},
		{"append", required_argument, NULL, 'a'},
		{"serial", required_argument, NULL, 's'},
		{"qmp", required_argument, NULL, 'q'},
		{"incoming", required_argument, NULL, 'i'},
		{"paused", no_argument, NULL, 'S'},
		{"debug", no_argument, NULL, 'd'},
		{"drive", required_argument, NULL, 'D'},
		{"help", no_argument, NULL, 'h'},
		{"version", no_argument, NULL, 'V'},
		/* a cpr-exec's stand-in: where it gives the guest back */
		{CPR_RETURN_OPTION, required_argument, NULL, 'X'},
		/* fault tests: stop this process at a point of an incoming update */
		{"x-godwit-stop-at", required_argument, NULL, 'Z'},
		{0},
	};
	*o = (struct options){.memory = 128ull << 20, .vcpus = 1, .serial = "stdio"};
	int c;
	while ((c = getopt_long(argc, argv, "m:c:k:b:a:s:q:i:SdhV", longopts, NULL)) != -1) {
		switch (c) {
		case 'm':
			if (parse_size(optarg, &o->memory)) {
				fprintf(stderr,
					"godwit-vmm: --memory '%s': not a size (decimal digits and an "
					"optional K, M, G or B suffix, no blanks)\n",
					optarg);
				return -1;
			}
			o->memory_given = true;
			break;
		case 'c': {
			unsigned long long n;
			char *end;
			if (parse_decimal(optarg, &n, &end) || *end || !n || n > GW_MAX_VCPUS) {
				fprintf(stderr,
					"godwit-vmm: --vcpus '%s': must be a number from 1 to %d\n",
					optarg, GW_MAX_VCPUS);
				return -1;
			}
			o->vcpus = (unsigned)n;
			break;
		}
		case 'k':
			o->kernel = optarg;
			break;
		case 'b':
			o->bootsector = optarg;
			break;
		case 'a':
			o->append = optarg;
			break;
		case 's':
			o->serial = optarg;
			break;
		case 'q':
			o->qmp = optarg;
			break;
		case 'i':
			o->incoming = optarg;
			break;
		case 'S':
			o->paused = true;
			break;
		case 'd':
			o->debug = true;
			break;
		case 'h':
			usage(stdout);
			exit(0);
		case 'V':
			printf("godwit-vmm %s\n", GW_VERSION);
			exit(0);
		case 'X':
			o->cpr_return_to = optarg;
			break;
		case 'D': {
			char why[256];
			if (o->nr_drives == VIRTIO_BLK_MAX_DRIVES) {
				fprintf(stderr, "godwit-vmm: at most %d --drive\n",
					VIRTIO_BLK_MAX_DRIVES);
				return -1;
			}
			if (drive_parse(optarg, &o->drives[o->nr_drives], why, sizeof(why))) {
				fprintf(stderr, "godwit-vmm: %s\n", why);
				return -1;
			}
			o->nr_drives++;
			break;
		}
		case 'Z':
			if (strcmp(optarg, "adopted") && strcmp(optarg, "loaded") &&
			    strcmp(optarg, "go")) {
				fprintf(stderr,
					"godwit-vmm: --x-godwit-stop-at '%s': adopted, loaded or go\n",
					optarg);
				return -1;
			}
			o->stop_at = optarg;
			break;
		default:
			usage(stderr);
			return -1;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "godwit-vmm: unexpected argument '%s'\n", argv[optind]);
		return -1;
	}
	if (o->kernel && o->bootsector) {
		fprintf(stderr, "godwit-vmm: give only one of --kernel and --bootsector\n");
		return -1;
	}
	if (!o->kernel && !o->bootsector && !o->incoming) {
		fprintf(stderr, "godwit-vmm: give --kernel, --bootsector or --incoming\n");
		usage(stderr);
		return -1;
	}
	char why[512];
	if (o->qmp && qmp_parse_address(o->qmp, &o->qmp_addr, why, sizeof(why))) {
		fprintf(stderr, "godwit-vmm: --qmp '%s': %s\n", o->qmp, why);
		return -1;
	}
	return 0;
}

/* Where COM1's output goes; -1 discards it. */
static int open_serial(const char *spec, bool *input)
{
	*input = false;
	if (!strcmp(spec, "none"))
		return -1;
	if (!strcmp(spec, "stdio")) {
		*input = true;
		return STDOUT_FILENO;
	}
	if (!strncmp(spec, "file:", 5)) {
		/* The new image of a cpr-exec goes on with the old one's log. */
		int trunc = getenv(CPR_EXEC_ENV) || getenv(CPR_STAND_IN_ENV) ? 0 : O_TRUNC;
		int fd = open(spec + 5, O_WRONLY | O_CREAT | trunc | O_APPEND | O_CLOEXEC, 0644);
		if (fd < 0)
			fprintf(stderr, "godwit-vmm: --serial %s: %s\n", spec, strerror(errno));
		return fd < 0 ? -2 : fd;
	}
	fprintf(stderr, "godwit-vmm: --serial %s: expected stdio, file:PATH or none\n", spec);
	return -2;
}

static void on_stdin(void *opaque, uint32_t events)
{
	struct vmm *vm = opaque;
	uint8_t buf[64];
	ssize_t n = read(STDIN_FILENO, buf, sizeof(buf));
	if (n > 0) {
		uart_receive(&vm->uart, buf, (size_t)n);
		return;
	}
	if (n == 0 || (events & (EPOLLHUP | EPOLLERR)) || (errno != EAGAIN && errno != EINTR))
		loop_del_fd(vm->loop, STDIN_FILENO); /* EOF: the guest just gets no input */
}

static int sigfd = -1;

static void on_signal(void *opaque, uint32_t events)
{
	struct vmm *vm = opaque;
	struct signalfd_siginfo si;
	(void)events;
	while (read(sigfd, &si, sizeof(si)) == sizeof(si))
		vmm_quit(vm, "host-signal");
}

/* Signals are read from a signalfd on the main loop: block them before
 * any thread exists so that every thread inherits the mask. */
static int setup_signals(struct vmm *vm)
{
	signal(SIGPIPE, SIG_IGN);
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	if (pthread_sigmask(SIG_BLOCK, &set, NULL))
		return -1;
	sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	if (sigfd < 0)
		return -1;
	return loop_add_fd(vm->loop, sigfd, EPOLLIN, on_signal, vm);
}

/*
 * Once the main loop has stopped, shutting down is bounded by design
 * (migration_destroy() says how), but some waits are the kernel's and no
 * cancel reaches them: open() of a path on a hung NFS server, a vCPU stuck
 * in an ioctl. SIGTERM must still end the VMM, so past this the process
 * exits without tidying up; the exit status says so.
 */
#define SHUTDOWN_DEADLINE_S 30

static void *shutdown_watchdog(void *opaque)
{
	(void)opaque;
	sleep(SHUTDOWN_DEADLINE_S);
	static const char msg[] = "godwit-vmm: shutdown did not finish within 30 s; exiting now\n";
	ssize_t n = write(STDERR_FILENO, msg, sizeof(msg) - 1);
	(void)n;
	_exit(4);
}

static int build_machine(struct vmm *vm, const struct options *o, int serial_fd, char *err,
			 size_t errlen)
{
	int ret = kvm_create(&vm->kvm, err, errlen);
	if (!ret)
		ret = guest_ram_create(&vm->ram, o->memory, err, errlen);
	if (!ret)
		ret = kvm_map_ram(&vm->kvm, &vm->ram, err, errlen);
	if (ret)
		return ret;
	io_bus_init(&vm->pio, "pio", o->debug);
	io_bus_init(&vm->mmio, "mmio", o->debug);
	if (uart_init(&vm->uart, &vm->kvm, &vm->pio, serial_fd) ||
	    testdev_init(&vm->testdev, &vm->pio, vmm_on_guest_exit, vm)) {
		snprintf(err, errlen, "device set-up failed");
		return -EINVAL;
	}
	/* The virtio devices take the slots in order; the guest finds them
	 * in its config block (abi.h), a Linux guest on its command line. */
	struct gw_virtio_slot slots[VIRTIO_BLK_MAX_DRIVES];
	for (unsigned i = 0; i < o->nr_drives; i++, vm->nr_drives++) {
		ret = virtio_blk_init(&vm->drives[i], vm, i, i, &o->drives[i], err, errlen);
		if (ret)
			return ret;
		slots[i] = (struct gw_virtio_slot){GW_VIRTIO_MMIO_BASE + i * GW_VIRTIO_MMIO_SIZE,
						   GW_VIRTIO_IRQ_BASE + i, 2};
		if (o->debug)
			fprintf(stderr, "godwit-vmm: %s: %s, virtio_mmio.device=4K@0x%llx:%u\n",
				vm->drives[i].t.name, o->drives[i].path,
				(unsigned long long)slots[i].base, slots[i].irq);
	}
	ret = vcpus_create(&vm->vcpus, &vm->kvm, o->vcpus, &vm->pio, &vm->mmio, vmm_on_vcpu_fatal,
			   vm, err, errlen);
	if (ret)
		return ret;
	/* An incoming guest arrives whole: booting would leave pages the
	 * source never had, which the stream would not overwrite. */
	if (o->incoming)
		return 0;
	if (o->kernel)
		return boot_elf(&vm->ram, &vm->vcpus, o->kernel, o->append, slots, vm->nr_drives,
				err, errlen);
	return boot_sector(&vm->ram, &vm->vcpus, o->bootsector, err, errlen);
}

int main(int argc, char **argv)
{
	struct options o;
	if (parse_options(argc, argv, &o))
		return 2;

	static struct vmm vm;
	char err[512] = "";
	bool serial_input;
	int serial_fd = open_serial(o.serial, &serial_input);
	if (serial_fd == -2)
		return 2;
	if (loop_new(&vm.loop) || setup_signals(&vm)) {
		fprintf(stderr, "godwit-vmm: cannot set up the main loop: %s\n", strerror(errno));
		return 2;
	}
	int ret = build_machine(&vm, &o, serial_fd, err, sizeof(err));
	if (!ret && !(vm.objects = objects_new()))
		ret = -ENOMEM;
	if (!ret && o.qmp)
		ret = qmp_server_start(&vm, vm.loop, &o.qmp_addr, &vm.qmp, err, sizeof(err));
	if (!ret && vm.qmp)
		ret = qmp_machine_register(vm.qmp) || qmp_migration_register(vm.qmp) ||
				      qmp_objects_register(vm.qmp) || qmp_fds_register(vm.qmp) ||
				      qmp_discovery_register(vm.qmp) ?
			      -EINVAL :
			      0;
	if (!ret && serial_input)
		loop_add_fd(vm.loop, STDIN_FILENO, EPOLLIN, on_stdin, &vm);
	pthread_mutex_init(&vm.run_lock, NULL);
	pthread_mutex_init(&vm.ram_lock, NULL);
	vm.main_thread = pthread_self();
	vm.user_paused = o.paused;
	vm.memory_given = o.memory_given;
	vm.test_stop_at = o.stop_at;
	vm.cpr_return_to = o.cpr_return_to;
	vm.incoming = o.incoming != NULL;
	vm.vcpus_paused = vm.user_paused || vm.incoming;
	if (!ret)
		ret = migration_init(&vm, err, sizeof(err));
	if (!ret)
		ret = vcpus_start(&vm.vcpus, vm.vcpus_paused, err, sizeof(err));
	if (!ret && !vm.vcpus_paused)
		vmm_devices_run(&vm, true);
	/* After the vCPU threads exist, so only the threads that must run the
	 * moment they wake (this loop, the migration and connect threads it
	 * starts) get the short slice (vmm/sched_slice.c). Not fatal: it
	 * costs only latency. */
	char why[160];
	if (!ret && sched_short_slice(why, sizeof(why)))
		fprintf(stderr,
			"godwit-vmm: warning: %s; a wake-up may wait for a vCPU's time slice\n",
			why);
	if (!ret && o.incoming && strcmp(o.incoming, "defer"))
		ret = migration_listen(&vm, o.incoming, err, sizeof(err));
	/* A stand-in listens: the old image, reading its first words, may
	 * connect now, and what it says from here goes where that one's does. */
	if (!ret && o.cpr_return_to)
		cpr_stand_in_ready();

	if (ret) {
		fprintf(stderr, "godwit-vmm: %s\n", err[0] ? err : strerror(-ret));
		/* A cpr-exec's new image that cannot start gives the guest back. */
		if (getenv(CPR_EXEC_ENV) && vm.mig)
			cpr_exec_fall_back(&vm, err[0] ? err : strerror(-ret));
		qmp_server_free(vm.qmp); /* removes the socket file */
		return 2;
	}

	ret = loop_run(vm.loop);
	if (ret)
		fprintf(stderr, "godwit-vmm: main loop: %s\n", strerror(-ret));

	pthread_t watchdog;
	if (pthread_create(&watchdog, NULL, shutdown_watchdog, NULL) == 0)
		pthread_detach(watchdog);
	migration_destroy(&vm);
	objects_free(vm.objects);
	pthread_mutex_lock(&vm.run_lock);
	vm.shut_down = true;
	pthread_mutex_unlock(&vm.run_lock);
	vcpus_destroy(&vm.vcpus);
	int status = vmm_exit_status(&vm);
	qmp_server_free(vm.qmp);
	if (o.cpr_return_to)
		cpr_stand_in_exit();
	for (unsigned i = 0; i < vm.nr_drives; i++)
		virtio_blk_destroy(&vm.drives[i]);
	uart_destroy(&vm.uart);
	testdev_destroy(&vm.testdev);
	guest_ram_destroy(&vm.ram);
	kvm_destroy(&vm.kvm);
	loop_free(vm.loop);
	if (serial_fd > STDERR_FILENO)
		close(serial_fd);
	return status;
}
