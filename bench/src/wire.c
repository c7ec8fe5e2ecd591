/*
 * A wire between two "hosts" (network namespaces) with a given rate and
 * one-way delay, for the link scenarios of the benchmark.
 *
 * This is what tc's netem would do; the kernels the benchmark runs on may
 * not have netem (nor fq, for BPF-timestamp delays), so the wire is two
 * TUN devices and this process in between: it reads each IP packet from
 * one device, lets it wait for the link to be free (rate) and then for
 * the delay, and writes it into the other device. Per direction the
 * queue waiting for the link is capped (like a switch buffer): beyond it
 * packets are dropped and TCP sees loss, as it would on a real link.
 *
 *   gw-bench-wire DEV0 DEV1 [--mtu N] [--queue BYTES]
 *
 * creates the two TUN devices, prints "ready", then forwards until stdin
 * closes. Lines on stdin set the link: "RATE_BITS_PER_S DELAY_US"
 * (rate 0: unlimited); it answers "ok" to each. The harness moves the
 * devices into the namespaces and addresses them.
 */
#include "common.h"

#include <fcntl.h>
#include <getopt.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <unistd.h>

#define SLOT_SIZE 65536
#define SLOTS 512 /* per direction: 32 MiB, far more than any queue cap */

struct pkt {
	uint64_t due_ns;
	uint32_t len;
	uint8_t *data;
};

/* One direction: packets read from `in`, written to `out` when due. */
struct dir {
	int in, out;
	struct pkt q[SLOTS];
	unsigned head, count;
	uint64_t link_free_ns; /* when the link finishes sending what it has */
	uint64_t forwarded, dropped;
};

static uint64_t rate_bps;  /* 0: unlimited */
static uint64_t delay_ns;
static uint64_t queue_cap = 1u << 20;

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int tun_open(const char *name, int mtu)
{
	int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0)
		die("/dev/net/tun: %s", strerror(errno));
	struct ifreq ifr = {0};
	ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
	snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
	if (ioctl(fd, TUNSETIFF, &ifr))
		die("TUNSETIFF %s: %s", name, strerror(errno));
	int s = socket(AF_INET, SOCK_DGRAM, 0);
	ifr.ifr_mtu = mtu;
	if (s < 0 || ioctl(s, SIOCSIFMTU, &ifr))
		die("set MTU of %s: %s", name, strerror(errno));
	close(s);
	return fd;
}

/* Read every packet waiting on d->in; queue it or drop it. */
static void receive(struct dir *d, uint64_t now)
{
	for (;;) {
		if (d->count == SLOTS) {
			/* Out of slots (only with an enormous queue cap): drop. */
			static uint8_t sink[SLOT_SIZE];
			if (read(d->in, sink, sizeof(sink)) <= 0)
				return;
			d->dropped++;
			continue;
		}
		struct pkt *p = &d->q[(d->head + d->count) % SLOTS];
		ssize_t n = read(d->in, p->data, SLOT_SIZE);
		if (n <= 0)
			return;
		p->len = (uint32_t)n;
		uint64_t start = d->link_free_ns > now ? d->link_free_ns : now;
		if (rate_bps) {
			/* Bytes still waiting for the link, as time at the rate. */
			if ((double)(start - now) * (double)rate_bps / 8e9 > (double)queue_cap) {
				d->dropped++;
				continue;
			}
			d->link_free_ns = start + (uint64_t)n * 8000000000ull / rate_bps;
			p->due_ns = d->link_free_ns + delay_ns;
		} else {
			p->due_ns = now + delay_ns;
		}
		d->count++;
	}
}

/* Write out what is due; returns when the next packet is due (or 0). */
static uint64_t transmit(struct dir *d, uint64_t now)
{
	while (d->count) {
		struct pkt *p = &d->q[d->head];
		if (p->due_ns > now)
			return p->due_ns;
		/* A full TUN queue on the far side drops, as a NIC would. */
		if (write(d->out, p->data, p->len) == (ssize_t)p->len)
			d->forwarded++;
		else
			d->dropped++;
		d->head = (d->head + 1) % SLOTS;
		d->count--;
	}
	return 0;
}

static void command(char *line)
{
	unsigned long long rate, delay_us;
	if (sscanf(line, "%llu %llu", &rate, &delay_us) != 2)
		die("wire: expected \"RATE_BITS_PER_S DELAY_US\", got: %s", line);
	rate_bps = rate;
	delay_ns = delay_us * 1000ull;
	printf("ok\n");
	fflush(stdout);
}

int main(int argc, char **argv)
{
	int mtu = 65520;
	static const struct option opts[] = {
		{"mtu", required_argument, NULL, 'm'},
		{"queue", required_argument, NULL, 'q'},
		{0},
	};
	int c;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (c == 'm')
			mtu = atoi(optarg);
		else if (c == 'q')
			queue_cap = parse_size(optarg);
		else
			return 2;
	}
	if (argc - optind != 2)
		die("usage: gw-bench-wire DEV0 DEV1 [--mtu N] [--queue BYTES]");
	/* Wake-ups at the packets' due times, not 50 µs later. */
	prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
	signal(SIGPIPE, SIG_IGN);

	static struct dir dirs[2];
	int fd0 = tun_open(argv[optind], mtu), fd1 = tun_open(argv[optind + 1], mtu);
	dirs[0].in = fd0, dirs[0].out = fd1;
	dirs[1].in = fd1, dirs[1].out = fd0;
	for (int d = 0; d < 2; d++)
		for (unsigned i = 0; i < SLOTS; i++)
			if (!(dirs[d].q[i].data = malloc(SLOT_SIZE)))
				die("out of memory");
	printf("ready\n");
	fflush(stdout);

	char line[256];
	size_t line_len = 0;
	for (;;) {
		uint64_t now = now_ns(), next = 0;
		for (int d = 0; d < 2; d++) {
			uint64_t due = transmit(&dirs[d], now);
			if (due && (!next || due < next))
				next = due;
		}
		struct pollfd pfd[3] = {
			{.fd = fd0, .events = POLLIN},
			{.fd = fd1, .events = POLLIN},
			{.fd = STDIN_FILENO, .events = POLLIN},
		};
		struct timespec ts, *tsp = NULL;
		if (next) {
			uint64_t wait = next > now ? next - now : 0;
			ts.tv_sec = (time_t)(wait / 1000000000ull);
			ts.tv_nsec = (long)(wait % 1000000000ull);
			tsp = &ts;
		}
		if (ppoll(pfd, 3, tsp, NULL) < 0 && errno != EINTR)
			die("ppoll: %s", strerror(errno));
		now = now_ns();
		if (pfd[0].revents & POLLIN)
			receive(&dirs[0], now);
		if (pfd[1].revents & POLLIN)
			receive(&dirs[1], now);
		if (pfd[2].revents & (POLLIN | POLLHUP)) {
			ssize_t n = read(STDIN_FILENO, line + line_len, sizeof(line) - 1 - line_len);
			if (n <= 0)
				break;
			line_len += (size_t)n;
			line[line_len] = '\0';
			char *nl;
			while ((nl = strchr(line, '\n'))) {
				*nl = '\0';
				command(line);
				line_len -= (size_t)(nl + 1 - line);
				memmove(line, nl + 1, line_len + 1);
			}
			if (line_len == sizeof(line) - 1)
				die("wire: command line too long");
		}
	}
	fprintf(stderr, "wire: forwarded %llu + %llu packets, dropped %llu + %llu\n",
		(unsigned long long)dirs[0].forwarded, (unsigned long long)dirs[1].forwarded,
		(unsigned long long)dirs[0].dropped, (unsigned long long)dirs[1].dropped);
	return 0;
}
