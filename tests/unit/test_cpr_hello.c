/*
 * The hello of cpr-transfer, hostile: a destination (gw_incoming_start on
 * one end of a unix socketpair) is sent hellos that are wrong in every
 * field the format has, with fds that are not what the table says. Each
 * must end FAILED with a message that says what was wrong, adopt nothing
 * (the adopt op is never called) and keep no fd it was sent. A valid one
 * must be adopted: the destination maps the very memfd the source sent.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <godwit/precopy.h>

#include "check.h"
#include "lib/format/cpr.h"
#include "lib/internal.h"
#include "lib/transport/return_path.h"
#include "testvm.h"

#define RAM_SIZE (1u << 20)

struct cpu_state {
	uint64_t counter;
};

struct side {
	struct gw_migration *m;
	struct test_ram ram;
	struct cpu_state cpu; /* the one section's state */
	int adopts;           /* adopt op calls */
	void *adopted;        /* its mapping */
	int adopted_fd;       /* and its memfd, ours once adopted */
};

static const struct gw_field fields[] = {
	GW_FIELD(U64, struct cpu_state, counter),
};
static const struct gw_vmstate vmstate = GW_VMSTATE(struct cpu_state, fields);

static int nop(void *opaque, struct gw_error *err)
{
	(void)opaque;
	(void)err;
	return 0;
}

static const struct gw_vm_ops vm_ops = {.pause = nop, .resume = nop};

static int adopt(void *opaque, struct gw_cpr_ram *ram, uint32_t n, struct gw_error *err)
{
	struct side *s = opaque;
	void *p;

	s->adopts++;
	CHECK(n == 1);
	p = mmap(NULL, ram[0].size, PROT_READ | PROT_WRITE, MAP_SHARED, ram[0].fd,
		 (off_t)ram[0].fd_offset);
	if (p == MAP_FAILED)
		return gw_error_set(err, -errno, "mmap: %s", strerror(errno));
	ram[0].host = s->adopted = p;
	s->adopted_fd = ram[0].fd;
	return 0;
}

static const struct gw_cpr_ops cpr_ops = {.adopt = adopt};

static void side_init(struct side *s, uint32_t vcpus, uint32_t version)
{
	const struct gw_machine mach = {"godwit-test", "1", "test-machine", vcpus};
	struct gw_error err = {0};

	memset(s, 0, sizeof(*s));
	CHECK_OK(gw_migration_new(&mach, &s->m, &err), &err);
	test_ram_create(&s->ram, RAM_SIZE);
	CHECK_OK(gw_migration_add_ram(s->m,
				      &(struct gw_ram){"pc.ram", s->ram.host, RAM_SIZE, s->ram.fd,
						       0, 0},
				      &err),
		 &err);
	CHECK_OK(gw_migration_add_section(s->m,
					  &(struct gw_section){.name = "cpu",
							       .version = version,
							       .min_version = 1,
							       .vmstate = &vmstate,
							       .opaque = &s->cpu},
					  &err),
		 &err);
	CHECK_OK(gw_migration_set_vm_ops(s->m, &vm_ops, s, &err), &err);
	CHECK_OK(gw_migration_set_cpr_ops(s->m, &cpr_ops, s, &err), &err);
}

static void side_free(struct side *s)
{
	if (s->adopted) {
		munmap(s->adopted, RAM_SIZE);
		close(s->adopted_fd);
	}
	gw_migration_free(s->m);
	munmap(s->ram.host, RAM_SIZE);
	close(s->ram.fd);
}

struct outcome {
	enum gw_mig_status status;
	char error[GW_ERROR_MSG_MAX];
	bool adopted_reply; /* the destination answered ADOPTED */
};

/* Offer the destination a hello (len bytes, the fds), then close. */
static struct outcome offer(struct side *dst, const void *p, size_t len, const int *fds, int nfds,
			    size_t fds_at)
{
	const struct gw_incoming_params params = {.go_timeout_ms = 2000};
	struct gw_incoming_stats st;
	struct gw_incoming *in;
	struct gw_error err = {0};
	struct outcome o = {0};
	struct gw_channel ch;
	unsigned char buf[GW_REPORT_MAX];
	int sv[2];
	ssize_t n;

	CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	ch = test_channel_of(sv[1]);
	close(sv[1]);
	CHECK_OK(gw_incoming_start(dst->m, &ch, &params, NULL, &in, &err), &err);
	test_send_fds(sv[0], p, len, fds, (unsigned)nfds, fds_at);
	/* The stream after a hello never comes: the peer hangs up. */
	shutdown(sv[0], SHUT_WR);
	while (!gw_incoming_done(in))
		test_sleep_ms(2);
	gw_incoming_stats(in, &st);
	n = read(sv[0], buf, sizeof(buf));
	if (n >= (ssize_t)GW_REPORT_HEAD_SIZE && gw_get_le32(buf + 12) == GW_REPORT_ADOPTED)
		o.adopted_reply = true;
	gw_incoming_free(in);
	close(sv[0]);
	o.status = st.status;
	snprintf(o.error, sizeof(o.error), "%s", st.error);
	return o;
}

static void refused(struct side *dst, const struct outcome *o, const char *what, const char *word)
{
	if (o->status != GW_MIG_FAILED || o->adopted_reply)
		FAIL("%s: status %s%s, expected a refusal", what, gw_mig_status_name(o->status),
		     o->adopted_reply ? " after ADOPTED" : "");
	if (!strstr(o->error, word))
		FAIL("%s: message \"%s\" lacks \"%s\"", what, o->error, word);
	if (dst->adopts)
		FAIL("%s: adopt was called", what);
}

int main(void)
{
	struct side src, dst, other;
	struct test_buf h;
	int fds_before, pipefd[2], small, two[2];
	struct outcome o;

	side_init(&src, 1, 1);
	side_init(&dst, 1, 1);
	test_hello_of(src.m, &h);
	fds_before = test_open_fds();

	/* The valid hello is adopted: the very memfd, not a copy. */
	o = offer(&dst, h.p, h.len, &src.ram.fd, 1, 0);
	CHECK(o.adopted_reply);
	CHECK(dst.adopts == 1 && dst.adopted);
	src.ram.host[4096] = 0x5a;
	CHECK(((unsigned char *)dst.adopted)[4096] == 0x5a);
	/* The stream that should follow did not: failed, but only after. */
	CHECK(o.status == GW_MIG_FAILED);
	side_free(&dst);
	side_init(&dst, 1, 1);
	fds_before = test_open_fds();

	struct {
		const char *what, *word;
		size_t at; /* byte to set */
		unsigned char value;
	} fields_bad[] = {
		{"version 2", "version 2 is not supported", 8, 2},
		{"fd count 2 announced", "malformed", 12, 2},
		{"CONFIG length absurd", "malformed", 19, 0xff},
		{"table length absurd", "malformed", 23, 0xff},
	};
	for (size_t i = 0; i < sizeof(fields_bad) / sizeof(fields_bad[0]); i++) {
		unsigned char *c = malloc(h.len);

		CHECK(c);
		memcpy(c, h.p, h.len);
		c[fields_bad[i].at] = fields_bad[i].value;
		o = offer(&dst, c, h.len, &src.ram.fd, 1, 0);
		refused(&dst, &o, fields_bad[i].what, fields_bad[i].word);
		free(c);
	}

	/* The CRC: any byte of the body flipped without resealing. */
	h.p[GW_CPR_HELLO_HEAD + 3] ^= 0x10;
	o = offer(&dst, h.p, h.len, &src.ram.fd, 1, 0);
	refused(&dst, &o, "flipped byte", "CRC mismatch");
	h.p[GW_CPR_HELLO_HEAD + 3] ^= 0x10;

	/* Truncated, then the peer hangs up. */
	o = offer(&dst, h.p, h.len - 9, &src.ram.fd, 1, 0);
	refused(&dst, &o, "truncated", "closed the connection");

	/* No fd, two fds, fds with a later byte. */
	o = offer(&dst, h.p, h.len, NULL, 0, 0);
	refused(&dst, &o, "no fd", "0 came");
	two[0] = two[1] = src.ram.fd;
	o = offer(&dst, h.p, h.len, two, 2, 0);
	refused(&dst, &o, "two fds", "2 came");
	o = offer(&dst, h.p, h.len, &src.ram.fd, 1, GW_CPR_HELLO_HEAD);
	refused(&dst, &o, "fd with a later byte", "malformed");

	/* fds that are not the source's memfd. */
	CHECK(pipe2(pipefd, O_CLOEXEC) == 0);
	o = offer(&dst, h.p, h.len, &pipefd[0], 1, 0);
	refused(&dst, &o, "a pipe", "not a memfd");
	close(pipefd[0]);
	close(pipefd[1]);
	small = memfd_create("small", MFD_CLOEXEC);
	CHECK(small >= 0 && ftruncate(small, 4096) == 0);
	o = offer(&dst, h.p, h.len, &small, 1, 0);
	refused(&dst, &o, "another memfd", "not the source's memfd");
	close(small);
	side_init(&other, 1, 1);
	o = offer(&dst, h.p, h.len, &other.ram.fd, 1, 0);
	refused(&dst, &o, "another guest's memfd", "not the source's memfd");
	side_free(&other);

	/* Machines the destination cannot take: refused before adopting. */
	{
		struct side two_vcpus, newer;
		struct test_buf h2;

		side_init(&two_vcpus, 2, 1);
		test_hello_of(two_vcpus.m, &h2);
		o = offer(&dst, h2.p, h2.len, &two_vcpus.ram.fd, 1, 0);
		refused(&dst, &o, "2 vCPUs", "vCPUs");
		free(h2.p);
		side_free(&two_vcpus);
		side_init(&newer, 1, 3);
		test_hello_of(newer.m, &h2);
		o = offer(&dst, h2.p, h2.len, &newer.ram.fd, 1, 0);
		refused(&dst, &o, "section version 3", "accepts versions 1..1");
		free(h2.p);
		side_free(&newer);
	}

	/* Every byte of CONFIG and the table flipped and resealed: refused, or
	 * (a byte the format does not check, such as the VMM's name) the very
	 * memfd adopted; never another, never a crash. */
	unsigned refusals = 0, adoptions = 0;
	for (size_t i = GW_CPR_HELLO_HEAD; i < h.len - 4; i++) {
		h.p[i] ^= 0x41;
		test_hello_reseal(&h);
		o = offer(&dst, h.p, h.len, &src.ram.fd, 1, 0);
		if (o.adopted_reply) {
			CHECK(dst.adopts == 1);
			src.ram.host[8192] = (unsigned char)i;
			CHECK(((unsigned char *)dst.adopted)[8192] == (unsigned char)i);
			adoptions++;
			side_free(&dst);
			side_init(&dst, 1, 1);
		} else {
			CHECK(o.status == GW_MIG_FAILED && o.error[0] && dst.adopts == 0);
			refusals++;
		}
		h.p[i] ^= 0x41;
	}
	test_hello_reseal(&h);
	printf("resealed flips of %zu bytes: %u refused, %u adopted the right memfd\n",
	       h.len - 4 - GW_CPR_HELLO_HEAD, refusals, adoptions);
	CHECK(refusals > 0);

	/* Nothing the destination was sent stays open. */
	CHECK(test_open_fds() == fds_before);
	free(h.p);
	side_free(&dst);
	side_free(&src);
	printf("cpr hello: all tests passed\n");
	return 0;
}
