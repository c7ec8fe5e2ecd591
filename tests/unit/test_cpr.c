/*
 * Local live update (CPR) inside one process, beyond the hello's own
 * fields (test_cpr_hello.c): a source and a destination test_vm
 * (testvm.h), each with memfd RAM, and a destination adopt op that maps
 * the memfds it is handed (MAP_SHARED) as its guest RAM.
 *
 *  - cpr-transfer end to end over a unix socketpair: the destination maps
 *    the very pages of the source (same memfd, not a copy), its registered
 *    RAM is the adopted mapping, the device state arrives, and the stats
 *    say what crossed; a second update out of the adopted RAM works too,
 *    and so does a source with both blocks in one memfd.
 *  - hostile hellos written by hand into a real incoming engine: fds with
 *    a later byte of the head or the body, more fds than blocks, files
 *    that are not memfds (a tmpfile, a tmpfs file) and a hugetlbfs memfd
 *    that is one, memfds too short or swapped, one fd or the same pages
 *    for two blocks, a pause time, wrong tables and guest addresses. Each
 *    ends FAILED with its reason, adopts nothing and keeps no fd. Every
 *    byte flipped with the CRC left as it was, and every byte of the head
 *    flipped with it resealed.
 *  - what refuses a CPR stream: no cpr ops, plain gw_load(), a stream
 *    without COMMIT or without the CPR flag (or with RAM_PAGES, or a CPR
 *    record) after a hello; and a hello followed by a stream driven by
 *    hand through READY, GO and RUNNING (with the resume time).
 *  - cpr-exec into a file, loaded back in this very process (the fd
 *    numbers of the CPR record are this process's); the same file with its
 *    CPR record pointing at other files or holding no real pause time; the
 *    same state from a socket peer, refused.
 *  - the source's failures: a peer that hangs up or answers wrong, a
 *    cancel while waiting for ADOPTED, channels that cannot carry fds.
 *
 * Outcomes only (status, memory, fds, messages), never durations.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <godwit/godwit.h>
#include <godwit/precopy.h>
#include <godwit/stream.h>

#include "check.h"
#include "lib/cancel.h"
#include "lib/crc32c.h"
#include "lib/format/cpr.h"
#include "lib/internal.h"
#include "lib/transport/fd_pass.h"
#include "lib/transport/return_path.h"
#include "testvm.h"

#define PAGE GW_PAGE_SIZE
#define RAM0_SIZE (1u << 20)
#define RAM1_SIZE (256u << 10)
#define RAM_TOTAL ((uint64_t)RAM0_SIZE + RAM1_SIZE)
#define GPA1 0x100000000ull
/* Upper bound for any wait: only a hang reaches it. */
#define WAIT_MAX_MS 30000
/* The destination's wait for the rest of a hello, or for GO. */
#define GO_TIMEOUT_MS 10000

/* ---- the machine ------------------------------------------------------- */

/* What the adopt op was handed, and what it mapped. */
struct adopted {
	char name[GW_NAME_MAX + 1];
	void *host;
	uint64_t size, fd_offset, gpa;
	int fd;
	bool live;
};

struct vm_opts {
	struct test_vm_opts t; /* ram_size 0: RAM0_SIZE and RAM1_SIZE */
	bool no_cpr_ops;
	int adopt_error; /* the adopt op fails with it */
};

struct vm {
	struct test_vm t; /* its own RAM (t.ram) and devices */
	int adopt_error;
	unsigned pauses, resumes, adopts; /* atomic: the engines' threads count */
	struct adopted ad[GW_MAX_RAM_BLOCKS];
	uint32_t nr_ad;
	/* cpr-exec in one process: the adopted fds are the source's own */
	bool ad_fds_not_ours;
	enum gw_mig_status statuses[16];
	unsigned nr_statuses;
};

static const uint64_t block_size[2] = {RAM0_SIZE, RAM1_SIZE};
static const char *const block_name[2] = {"pc.ram", "vga.vram"};
static const uint64_t block_gpa[2] = {0, GPA1};

static unsigned get(const unsigned *p)
{
	return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

static void bump(unsigned *p)
{
	__atomic_add_fetch(p, 1, __ATOMIC_ACQ_REL);
}

static int vm_pause(void *opaque, struct gw_error *err)
{
	(void)err;
	bump(&((struct vm *)opaque)->pauses);
	return 0;
}

static int vm_resume(void *opaque, struct gw_error *err)
{
	(void)err;
	bump(&((struct vm *)opaque)->resumes);
	return 0;
}

static const struct gw_vm_ops vm_ops = {.pause = vm_pause, .resume = vm_resume};

static int vm_adopt(void *opaque, struct gw_cpr_ram *ram, uint32_t n, struct gw_error *err)
{
	struct vm *v = opaque;

	bump(&v->adopts);
	if (v->adopt_error)
		return gw_error_set(err, v->adopt_error, "the test's adopt op refuses");
	CHECK(v->nr_ad == 0 && n >= 1 && n <= GW_MAX_RAM_BLOCKS);
	for (uint32_t i = 0; i < n; i++) {
		void *p = mmap(NULL, ram[i].size, PROT_READ | PROT_WRITE, MAP_SHARED, ram[i].fd,
			       (off_t)ram[i].fd_offset);

		if (p == MAP_FAILED) {
			int e = errno;

			for (uint32_t j = 0; j < i; j++) {
				munmap(ram[j].host, ram[j].size);
				ram[j].host = NULL;
			}
			return gw_error_set(err, -e, "mmap of block '%s': %s", ram[i].name,
					    strerror(e));
		}
		ram[i].host = p;
	}
	for (uint32_t i = 0; i < n; i++) {
		struct adopted *a = &v->ad[i];

		snprintf(a->name, sizeof(a->name), "%s", ram[i].name);
		a->host = ram[i].host;
		a->size = ram[i].size;
		a->fd_offset = ram[i].fd_offset;
		a->gpa = ram[i].gpa;
		a->fd = ram[i].fd;
		a->live = ram[i].live;
	}
	v->nr_ad = n;
	return 0;
}

static const struct gw_cpr_ops cpr_ops = {.adopt = vm_adopt};

static void on_status(void *opaque, enum gw_mig_status s)
{
	struct vm *v = opaque;
	unsigned i = __atomic_load_n(&v->nr_statuses, __ATOMIC_ACQUIRE);

	CHECK(i < 16);
	v->statuses[i] = s;
	__atomic_store_n(&v->nr_statuses, i + 1, __ATOMIC_RELEASE);
}

static void vm_init(struct vm *v, const struct vm_opts *o)
{
	static const struct vm_opts defaults;
	struct gw_error err = {0};
	struct test_vm_opts to;

	if (!o)
		o = &defaults;
	memset(v, 0, sizeof(*v));
	to = o->t;
	for (int b = 0; b < 2; b++)
		if (!to.ram_size[b])
			to.ram_size[b] = block_size[b];
	test_vm_init(&v->t, &to);
	CHECK_OK(gw_migration_set_vm_ops(v->t.m, &vm_ops, v, &err), &err);
	if (!o->no_cpr_ops)
		CHECK_OK(gw_migration_set_cpr_ops(v->t.m, &cpr_ops, v, &err), &err);
	v->adopt_error = o->adopt_error;
}

static void vm_free(struct vm *v)
{
	for (uint32_t i = 0; i < v->nr_ad; i++) {
		munmap(v->ad[i].host, v->ad[i].size);
		if (!v->ad_fds_not_ours)
			close(v->ad[i].fd);
	}
	test_vm_free(&v->t);
}

static uint64_t ino_of(int fd)
{
	struct stat st;

	CHECK(fstat(fd, &st) == 0);
	return (uint64_t)st.st_ino;
}

/* The device state of dst is the one src saved; the progressive section
 * started before the pause and ended in it, with no round between. */
static void check_state(const struct vm *src, const struct vm *dst)
{
	test_vm_compare_devices(&src->t, &dst->t);
	CHECK(dst->t.live.phases[GW_PHASE_START] == 1 && dst->t.live.phases[GW_PHASE_PART] == 0 &&
	      dst->t.live.phases[GW_PHASE_END] == 1);
}

/*
 * dst adopted src's RAM: the adopt op got each block of src (name, size,
 * gpa, offset, the same memfd by inode), live as said; dst's registered
 * blocks are the adopted mappings; and they are the same memory as the
 * source's, both ways.
 */
static void check_adopted(struct vm *src, struct vm *dst, bool live)
{
	CHECK(get(&dst->adopts) == 1);
	CHECK(dst->nr_ad == 2 && dst->t.m->nr_ram == 2);
	for (int b = 0; b < 2; b++) {
		struct adopted *a = &dst->ad[b];
		const struct gw_ram_block *r = &dst->t.m->ram[b];
		unsigned char *s = src->t.ram[b].host, *d = a->host;

		CHECK(strcmp(a->name, block_name[b]) == 0);
		CHECK(a->size == block_size[b] && a->gpa == block_gpa[b]);
		CHECK(a->fd_offset == src->t.m->ram[b].fd_offset);
		CHECK(a->live == live);
		CHECK(ino_of(a->fd) == ino_of(src->t.ram[b].fd));
		/* The library registered the adopted block in place of dst's own. */
		CHECK(strcmp(r->name, block_name[b]) == 0 && r->size == block_size[b]);
		CHECK(r->host == a->host && r->fd == a->fd && r->fd_offset == a->fd_offset);
		CHECK(r->gpa == block_gpa[b]);
		CHECK(r->host != dst->t.ram[b].host);
		for (uint64_t off = 0; off < block_size[b]; off += PAGE)
			if (memcmp(s + off, d + off, PAGE) != 0)
				FAIL("block %d page %llu: the adopted mapping differs from the source's",
				     b, (unsigned long long)(off / PAGE));
		/* Not a copy: a write on either side is seen on the other. */
		for (uint64_t off = 0; off < block_size[b]; off += 64 * PAGE) {
			uint64_t w = 0x5eed0000ull + off, got;

			memcpy(s + off + 8, &w, 8);
			memcpy(&got, d + off + 8, 8);
			CHECK(got == w);
			w = ~w;
			memcpy(d + off + 16, &w, 8);
			memcpy(&got, s + off + 16, 8);
			CHECK(got == w);
		}
	}
}

/* dst's own RAM was never written: nothing was copied into it. */
static void check_own_ram_untouched(struct vm *dst)
{
	for (int b = 0; b < 2; b++) {
		bool *pop = test_populated(dst->t.ram[b].fd, block_size[b]);

		for (uint64_t i = 0; i < block_size[b] / PAGE; i++)
			if (pop[i])
				FAIL("block %d page %llu of the destination's own RAM was written",
				     b, (unsigned long long)i);
		free(pop);
	}
}

/* Nothing adopted: dst's registered RAM is still its own. */
static void check_not_adopted(struct vm *dst)
{
	CHECK(dst->nr_ad == 0 && dst->t.m->nr_ram == 2);
	for (int b = 0; b < 2; b++)
		CHECK(dst->t.m->ram[b].host == dst->t.ram[b].host);
}

static void check_statuses(struct vm *v, const enum gw_mig_status *want, unsigned n)
{
	unsigned got = __atomic_load_n(&v->nr_statuses, __ATOMIC_ACQUIRE);

	for (unsigned i = 0; i < n || i < got; i++)
		if (i >= n || i >= got || v->statuses[i] != want[i])
			FAIL("status callback %u: got %s, expected %s", i,
			     i < got ? gw_mig_status_name(v->statuses[i]) : "nothing",
			     i < n ? gw_mig_status_name(want[i]) : "nothing");
}

/* ---- plumbing ---------------------------------------------------------- */

static bool fd_open(int fd)
{
	return fcntl(fd, F_GETFD) >= 0;
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void wait_out(struct gw_precopy *p)
{
	for (int ms = 0; !gw_precopy_done(p); ms++) {
		if (ms > WAIT_MAX_MS)
			FAIL("timed out waiting for the source");
		test_sleep_ms(1);
	}
}

static void wait_in(struct gw_incoming *in)
{
	for (int ms = 0; !gw_incoming_done(in); ms++) {
		if (ms > WAIT_MAX_MS)
			FAIL("timed out waiting for the destination");
		test_sleep_ms(1);
	}
}

static struct gw_incoming *start_in(struct vm *v, int fd)
{
	const struct gw_incoming_params params = {.go_timeout_ms = GO_TIMEOUT_MS};
	struct gw_incoming_callbacks cb = {on_status, v};
	struct gw_channel ch = test_channel_of(fd);
	struct gw_error err = {0};
	struct gw_incoming *in = NULL;

	CHECK_OK(gw_incoming_start(v->t.m, &ch, &params, &cb, &in, &err), &err);
	return in;
}

static struct gw_precopy *start_out(struct vm *v, int fd, uint64_t mode)
{
	struct gw_precopy_callbacks cb = {on_status, NULL, NULL, v};
	struct gw_channel ch = test_channel_of(fd);
	struct gw_precopy_params params;
	struct gw_error err = {0};
	struct gw_precopy *out = NULL;

	gw_precopy_params_default(&params);
	params.mode = mode;
	params.ready_timeout_ms = GO_TIMEOUT_MS;
	CHECK_OK(gw_precopy_start(v->t.m, &ch, 1, &params, &cb, &out, &err), &err);
	CHECK(ch.fd == -1);
	return out;
}

static void read_exact(int fd, void *buf, size_t len)
{
	unsigned char *p = buf;

	for (size_t done = 0; done < len;) {
		struct pollfd pf = {fd, POLLIN, 0};
		ssize_t n;

		if (poll(&pf, 1, WAIT_MAX_MS) != 1)
			FAIL("nothing to read for %d ms", WAIT_MAX_MS);
		n = read(fd, p + done, len - done);
		if (n <= 0)
			FAIL("read %zd after %zu of %zu bytes", n, done, len);
		done += (size_t)n;
	}
}

/* The next report on fd; false if the peer hung up first. */
static bool read_report(int fd, struct gw_report *r)
{
	unsigned char buf[GW_REPORT_MAX];
	struct gw_error err = {0};
	struct pollfd pf = {fd, POLLIN, 0};
	uint32_t n;

	if (poll(&pf, 1, WAIT_MAX_MS) != 1)
		FAIL("no report within %d ms", WAIT_MAX_MS);
	if (recv(fd, buf, 1, MSG_PEEK) == 0)
		return false;
	read_exact(fd, buf, GW_REPORT_HEAD_SIZE);
	n = gw_get_le32(buf + 20);
	CHECK(n <= GW_REPORT_MSG_MAX);
	read_exact(fd, buf + GW_REPORT_HEAD_SIZE, n + 4);
	CHECK_OK(gw_report_decode(buf, GW_REPORT_HEAD_SIZE + n + 4, r, &err), &err);
	return true;
}

static void send_report(int fd, enum gw_report_status status)
{
	const struct gw_report r = {status, 0, ""};
	unsigned char buf[GW_REPORT_MAX];
	size_t len = gw_report_encode(&r, buf);

	CHECK(send(fd, buf, len, MSG_NOSIGNAL) == (ssize_t)len);
}

/* ---- hellos by hand ---------------------------------------------------- */

/* A CPR table entry as the hostile source wants it. */
struct tent {
	const char *name;
	uint64_t fd_offset;
	uint32_t fd;
	uint64_t ino;
};

static void table_make(struct gw_wbuf *t, uint64_t pause_ns, uint32_t n, const struct tent *e,
		       uint32_t nr_e, size_t trailing)
{
	gw_wbuf_init(t, GW_CPR_MAX);
	gw_put_u64(t, pause_ns);
	gw_put_u32(t, n);
	for (uint32_t i = 0; i < nr_e; i++) {
		gw_put_str(t, e[i].name);
		gw_put_u64(t, e[i].fd_offset);
		gw_put_u32(t, e[i].fd);
		gw_put_u64(t, e[i].ino);
	}
	for (size_t i = 0; i < trailing; i++)
		gw_put_u8(t, 0);
	CHECK(t->error == 0);
}

/* src's CONFIG with a table of the given entries and pause. */
static void hello_with_table(struct vm *src, struct test_buf *h, uint64_t pause_ns, uint32_t n,
			     const struct tent *e, uint32_t nr_e, size_t trailing)
{
	struct gw_wbuf cfg, table;

	gw_wbuf_init(&cfg, GW_CONFIG_MAX);
	CHECK(gw_config_put(src->t.m, &cfg) == 0);
	table_make(&table, pause_ns, n, e, nr_e, trailing);
	test_hello_make(h, 2, cfg.data, cfg.len, table.data, table.len);
	gw_wbuf_release(&cfg);
	gw_wbuf_release(&table);
}

/* Where the u64 gpa of RAM block i is in a CONFIG payload. */
static size_t config_gpa_at(const unsigned char *cfg, uint32_t i)
{
	size_t at = 8;

	for (int s = 0; s < 3; s++) /* vmm name, version, machine */
		at += 1 + cfg[at];
	at += 4; /* nr_ram */
	for (uint32_t b = 0;; b++) {
		at += 1 + cfg[at] + 8; /* name, size */
		if (b == i)
			return at;
		at += 8;
	}
}

/* ---- hostile hellos ------------------------------------------------------ */

struct hostile {
	const char *what;
	const struct test_buf *h;
	const int *fds;
	unsigned nr_fds;
	size_t fds_at;   /* the byte the fds ride on */
	size_t send_len; /* 0: all of it */
	const char *want, *want2;
	int want_code; /* the FAILED report's code, if not 0 */
	struct vm_opts dst;
};

/*
 * Send the hello, all of it queued (then our half shut down) before the
 * destination reads, so what it can take at once is all there is. It must
 * fail with want in its message, tell us FAILED, never adopt (an adopt op
 * that is set to fail may be called), never resume, keep its own RAM, and
 * end holding none of the fds it received.
 */
static void hostile(const struct hostile *c)
{
	struct gw_incoming_stats st;
	struct gw_incoming *in;
	struct gw_report r;
	struct vm dst;
	size_t len = c->send_len ? c->send_len : c->h->len;
	int sp[2], before, after;
	bool adopted_report = false, failed_report = false;

	vm_init(&dst, &c->dst);
	before = test_open_fds();
	CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) == 0);
	test_send_fds(sp[0], c->h->p, len, c->fds, c->nr_fds, c->fds_at);
	CHECK(shutdown(sp[0], SHUT_WR) == 0);
	in = start_in(&dst, sp[1]);
	close(sp[1]);
	wait_in(in);
	gw_incoming_stats(in, &st);
	while (read_report(sp[0], &r)) {
		adopted_report |= r.status == GW_REPORT_ADOPTED;
		if (r.status == GW_REPORT_FAILED) {
			failed_report = true;
			if (c->want_code && r.code != c->want_code)
				FAIL("%s: FAILED with code %d, expected %d", c->what, r.code,
				     c->want_code);
			break;
		}
	}
	printf("  %-44s %s\n", c->what, st.error);
	if (st.status != GW_MIG_FAILED || !failed_report)
		FAIL("%s: the destination ended %s, %s a FAILED report", c->what,
		     gw_mig_status_name(st.status), failed_report ? "with" : "without");
	if (adopted_report || (get(&dst.adopts) && !c->dst.adopt_error) || dst.nr_ad)
		FAIL("%s: adopted (%u adopt calls, %u blocks)", c->what, get(&dst.adopts),
		     dst.nr_ad);
	if (!strstr(st.error, c->want) || (c->want2 && !strstr(st.error, c->want2)))
		FAIL("%s: message \"%s\" lacks \"%s\"%s%s", c->what, st.error, c->want,
		     c->want2 ? " or " : "", c->want2 ? c->want2 : "");
	CHECK(get(&dst.resumes) == 0 && get(&dst.pauses) == 0);
	check_not_adopted(&dst);
	close(sp[0]);
	gw_incoming_free(in);
	after = test_open_fds();
	if (after != before)
		FAIL("%s: %d fds before, %d after", c->what, before, after);
	vm_free(&dst);
}

/*
 * The control: the same runner with the valid hello and the source's
 * memfds adopts them (then fails at the end of the stream that never
 * comes), so each hostile case fails for its own reason.
 */
static void hello_valid_control(struct vm *src, const struct test_buf *h)
{
	const int fds[2] = {src->t.ram[0].fd, src->t.ram[1].fd};
	struct gw_incoming_stats st;
	struct gw_incoming *in;
	struct gw_report r;
	struct vm dst;
	int sp[2];

	vm_init(&dst, NULL);
	CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) == 0);
	test_send_fds(sp[0], h->p, h->len, fds, 2, 0);
	CHECK(shutdown(sp[0], SHUT_WR) == 0);
	in = start_in(&dst, sp[1]);
	close(sp[1]);
	CHECK(read_report(sp[0], &r) && r.status == GW_REPORT_ADOPTED);
	wait_in(in);
	gw_incoming_stats(in, &st);
	CHECK(st.status == GW_MIG_FAILED && st.adopted_bytes == RAM_TOTAL);
	CHECK(read_report(sp[0], &r) && r.status == GW_REPORT_FAILED);
	printf("  %-44s adopted, then: %s\n", "valid hello, no stream", st.error);
	check_adopted(src, &dst, true);
	CHECK(get(&dst.resumes) == 0);
	close(sp[0]);
	gw_incoming_free(in);
	vm_free(&dst);
}

/* A copy of the hello with its fd count set to n, resealed. */
static void hello_announcing(const struct test_buf *valid, uint32_t n, struct test_buf *h)
{
	h->len = valid->len;
	CHECK((h->p = malloc(h->len)));
	memcpy(h->p, valid->p, h->len);
	gw_le32(h->p + 12, n);
	test_hello_reseal(h);
}

/* The fds: only with the first byte, one per block. */
static void hostile_fds(struct vm *src, const struct test_buf *valid)
{
	const int two[2] = {src->t.ram[0].fd, src->t.ram[1].fd};
	const int three[3] = {two[0], two[1], two[1]};
	struct test_buf h;

	/* A read of the head takes the bytes before a later send's fds and
	 * those fds at once: they must not pass for the first byte's. */
	hostile(&(
		struct hostile){"fds on byte 10 (the head)", valid, two, 2, .fds_at = 10,
				.want = "fds came with bytes 1 to 23 of 24, not with the first byte",
				.want2 = "the hello's first 24 bytes"});
	hostile(&(struct hostile){"fds on byte 1", valid, two, 2, .fds_at = 1,
				  .want = "not with the first byte"});
	hello_announcing(valid, 0, &h);
	hostile(&(struct hostile){"0 announced, fds on byte 30 (the body)", &h, two, 2,
				  .fds_at = 30, .want = "not with the first byte",
				  .want2 = "the hello's bytes 24 to"});
	hostile(&(struct hostile){"no fds at all", &h, NULL, 0,
				  .want = "brought 0 fds for 2 RAM blocks"});
	free(h.p);
	hello_announcing(valid, 3, &h);
	hostile(&(struct hostile){"3 fds for 2 blocks", &h, three, 3,
				  .want = "brought 3 fds for 2 RAM blocks"});
	free(h.p);
	hostile(&(struct hostile){"truncated head, then EOF", valid, two, 2, .send_len = 12,
				  .want = "closed the connection after 12 of 24 bytes"});
}

/* Files that must not pass for the source's memfds, and one that is a
 * memfd though not the source's. */
static void hostile_files(struct vm *src, const struct test_buf *valid)
{
	const int fd0 = src->t.ram[0].fd, fd1 = src->t.ram[1].fd;
	const uint64_t ino0 = ino_of(fd0), ino1 = ino_of(fd1);
	struct test_buf h;
	int small, shm, huge;
	FILE *tmp;

	CHECK((tmp = tmpfile()));
	CHECK(ftruncate(fileno(tmp), RAM1_SIZE) == 0);
	hello_with_table(src, &h, 0, 2,
			 (struct tent[]){{"pc.ram", 0, 0, ino0},
					 {"vga.vram", 0, 1, ino_of(fileno(tmp))}},
			 2, 0);
	hostile(&(struct hostile){"a tmpfile() for vga.vram", &h, (int[]){fd0, fileno(tmp)}, 2,
				  .want = "RAM block 'vga.vram': the hello's fd 1 is not a memfd"});
	free(h.p);
	fclose(tmp);

	/* A file of a tmpfs mount answers F_GET_SEALS as a memfd does. */
	shm = open("/dev/shm", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	if (shm >= 0) {
		CHECK(ftruncate(shm, RAM1_SIZE) == 0);
		hello_with_table(src, &h, 0, 2,
				 (struct tent[]){{"pc.ram", 0, 0, ino0},
						 {"vga.vram", 0, 1, ino_of(shm)}},
				 2, 0);
		hostile(&(struct hostile){"a tmpfs file for vga.vram", &h, (int[]){fd0, shm}, 2,
					  .want = "the hello's fd 1 is not a memfd"});
		free(h.p);
		close(shm);
	} else {
		printf("  %-44s skipped: /dev/shm: %s\n", "a tmpfs file for vga.vram",
		       strerror(errno));
	}
	/* A memfd of huge pages is a memfd (none need be reserved to make
	 * one): refused only for not being the source's. */
	huge = memfd_create("huge", MFD_CLOEXEC | MFD_HUGETLB);
	if (huge >= 0) {
		hostile(&(struct hostile){"a memfd of huge pages for vga.vram", valid,
					  (int[]){fd0, huge}, 2,
					  .want = "the hello's fd 1 is not the source's memfd"});
		close(huge);
	} else {
		printf("  %-44s skipped: memfd_create(MFD_HUGETLB): %s\n",
		       "a memfd of huge pages for vga.vram", strerror(errno));
	}

	small = memfd_create("small", MFD_CLOEXEC);
	CHECK(small >= 0 && ftruncate(small, RAM1_SIZE - PAGE) == 0);
	hello_with_table(src, &h, 0, 2,
			 (struct tent[]){{"pc.ram", 0, 0, ino0}, {"vga.vram", 0, 1, ino_of(small)}},
			 2, 0);
	hostile(&(struct hostile){"a memfd a page short", &h, (int[]){fd0, small}, 2,
				  .want = "its memfd has 258048 bytes"});
	free(h.p);
	close(small);
	/* The source's own memfd, but the block past its end. */
	hello_with_table(src, &h, 0, 2,
			 (struct tent[]){{"pc.ram", 0, 0, ino0}, {"vga.vram", PAGE, 1, ino1}}, 2,
			 0);
	hostile(&(struct hostile){"the block past the memfd's end", &h, (int[]){fd0, fd1}, 2,
				  .want = "the block needs 262144 from offset 4096"});
	free(h.p);
	hostile(&(
		struct hostile){"the two memfds swapped", valid, (int[]){fd1, fd0}, 2,
				.want = "RAM block 'pc.ram': the hello's fd 0 is not the source's memfd"});
}

/* One fd, or the same pages of one memfd, for two blocks. */
static void hostile_sharing(struct vm *src)
{
	const int fd0 = src->t.ram[0].fd;
	const uint64_t ino0 = ino_of(fd0);
	struct test_buf h;
	struct vm one;
	int one_fd;

	hello_with_table(src, &h, 0, 2,
			 (struct tent[]){{"pc.ram", 0, 0, ino0}, {"vga.vram", 0, 0, ino0}}, 2, 0);
	hostile(&(
		struct hostile){"one fd index for both blocks", &h, (int[]){fd0, src->t.ram[1].fd},
				2,
				.want = "RAM block 'vga.vram': the table names the hello's fd 0, which it named for block 'pc.ram' already"});
	free(h.p);
	hello_with_table(src, &h, 0, 2,
			 (struct tent[]){{"pc.ram", 0, 0, ino0}, {"vga.vram", 0, 1, ino0}}, 2, 0);
	hostile(&(
		struct hostile){"one memfd sent twice, both at 0", &h, (int[]){fd0, fd0}, 2,
				.want = "RAM blocks 'pc.ram' and 'vga.vram' overlap in their memfd"});
	free(h.p);
	/* Blocks apart in one memfd, as a source has them, but the table
	 * names one fd for both: the other fd would be nobody's. */
	vm_init(&one, &(struct vm_opts){.t.one_memfd = true});
	one_fd = one.t.ram[0].fd;
	hello_with_table(&one, &h, 0, 2,
			 (struct tent[]){{"pc.ram", 0, 0, ino_of(one_fd)},
					 {"vga.vram", RAM0_SIZE, 0, ino_of(one_fd)}},
			 2, 0);
	hostile(&(struct hostile){"one fd for two blocks apart in its memfd", &h,
				  (int[]){one_fd, one_fd}, 2,
				  .want = "which it named for block 'pc.ram' already"});
	free(h.p);
	vm_free(&one);
	hello_with_table(src, &h, 0, 2,
			 (struct tent[]){{"pc.ram", 0, 0, ino0},
					 {"vga.vram", 0, 7, ino_of(src->t.ram[1].fd)}},
			 2, 0);
	hostile(&(
		struct hostile){"fd index 7 of 2", &h, (int[]){fd0, src->t.ram[1].fd}, 2,
				.want = "the table names the hello's fd 7, but the hello brought 2"});
	free(h.p);
}

/* The CPR table: each field wrong. */
static void hostile_tables(struct vm *src)
{
	const int two[2] = {src->t.ram[0].fd, src->t.ram[1].fd};
	const uint64_t ino0 = ino_of(two[0]), ino1 = ino_of(two[1]);
	/* One row a case; ino 0 and 1 stand for the source's memfds' inodes. */
	/* clang-format off */
	static const struct {
		const char *what;
		uint64_t pause_ns;
		uint32_t n, nr_e;
		struct tent e[2];
		size_t trailing;
		const char *want;
	} cases[] = {
		{"table: a pause time", 1, 2, 2,
		 {{"pc.ram", 0, 0, 0}, {"vga.vram", 0, 1, 1}}, 0,
		 "its CPR table has a pause time (1 ns), where a hello has 0"},
		{"table: a wrong name", 0, 2, 2,
		 {{"pc.rom", 0, 0, 0}, {"vga.vram", 0, 1, 1}}, 0,
		 "CPR table: entry 0 is malformed or not block 'pc.ram'"},
		{"table: blocks in another order", 0, 2, 2,
		 {{"vga.vram", 0, 1, 1}, {"pc.ram", 0, 0, 0}}, 0,
		 "entry 0 is malformed or not block 'pc.ram'"},
		{"table: an unaligned fd_offset", 0, 2, 2,
		 {{"pc.ram", 0, 0, 0}, {"vga.vram", 100, 1, 1}}, 0,
		 "entry 1 is malformed or not block 'vga.vram'"},
		{"table: an fd_offset that wraps", 0, 2, 2,
		 {{"pc.ram", 0, 0, 0}, {"vga.vram", UINT64_MAX - PAGE + 1, 1, 1}}, 0,
		 "entry 1 is malformed"},
		{"table: 3 trailing bytes", 0, 2, 2,
		 {{"pc.ram", 0, 0, 0}, {"vga.vram", 0, 1, 1}}, 3,
		 "CPR table: 3 trailing bytes"},
		{"table: one entry for two blocks", 0, 1, 1,
		 {{"pc.ram", 0, 0, 0}}, 0,
		 "1 entries for the 2 RAM blocks"},
		{"table: two announced, one there", 0, 2, 1,
		 {{"pc.ram", 0, 0, 0}}, 0,
		 "CPR table: 2 entries for the 2 RAM blocks"},
	};
	/* clang-format on */

	for (size_t i = 0; i < GW_ARRAY_SIZE(cases); i++) {
		struct tent e[2];
		struct test_buf h;

		for (uint32_t k = 0; k < cases[i].nr_e; k++) {
			e[k] = cases[i].e[k];
			e[k].ino = e[k].ino ? ino1 : ino0;
		}
		hello_with_table(src, &h, cases[i].pause_ns, cases[i].n, e, cases[i].nr_e,
				 cases[i].trailing);
		hostile(&(struct hostile){cases[i].what, &h, two, 2, .want = cases[i].want});
		free(h.p);
	}
}

/* The CONFIG: guest memory this VMM cannot lay out, a malformed one. */
static void hostile_configs(struct vm *src)
{
	const int two[2] = {src->t.ram[0].fd, src->t.ram[1].fd};
	static const struct {
		const char *what;
		uint64_t gpa1; /* 0: the CONFIG's last byte made wrong instead */
		const char *want;
	} cases[] = {
		{"CONFIG: guest addresses overlap", RAM0_SIZE - PAGE, "overlap in guest memory"},
		{"CONFIG: an unaligned guest address", GPA1 + 100, "unaligned or wraps"},
		{"CONFIG: a block that wraps", UINT64_MAX - PAGE + 1, "unaligned or wraps"},
		{"CONFIG: malformed", 0, "malformed CONFIG record"},
	};
	struct gw_wbuf cfg, table;
	struct gw_error err = {0};

	gw_wbuf_init(&cfg, GW_CONFIG_MAX);
	CHECK(gw_config_put(src->t.m, &cfg) == 0);
	gw_wbuf_init(&table, GW_CPR_MAX);
	CHECK_OK(gw_cpr_table_put(src->t.m, 0, false, &table, &err), &err);
	CHECK(gw_get_le64(cfg.data + config_gpa_at(cfg.data, 1)) == GPA1);
	for (size_t i = 0; i < GW_ARRAY_SIZE(cases); i++) {
		unsigned char *c = malloc(cfg.len);
		struct test_buf h;

		CHECK(c);
		memcpy(c, cfg.data, cfg.len);
		if (cases[i].gpa1)
			gw_le64(c + config_gpa_at(c, 1), cases[i].gpa1);
		else
			c[cfg.len - 1] = 0x7f; /* last section's flags: unknown bits */
		test_hello_make(&h, 2, c, cfg.len, table.data, table.len);
		hostile(&(struct hostile){cases[i].what, &h, two, 2, .want = cases[i].want});
		free(h.p);
		free(c);
	}
	gw_wbuf_release(&cfg);
	gw_wbuf_release(&table);
}

static void test_hostile_hellos(void)
{
	struct test_buf valid;
	struct vm src;

	printf("hostile hellos:\n");
	vm_init(&src, NULL);
	test_vm_fill(&src.t, 3);
	test_hello_of(src.t.m, &valid);
	hello_valid_control(&src, &valid);
	hostile_fds(&src, &valid);
	hostile_files(&src, &valid);
	hostile_sharing(&src);
	hostile_tables(&src);
	hostile_configs(&src);
	free(valid.p);
	vm_free(&src);
}

/*
 * One byte of a valid hello flipped, the CRC resealed or not, into a
 * destination: it must end FAILED (no stream follows), never resume, and
 * if it adopted (a field no check covers), then only the source's very
 * memfds, whole. True if it adopted.
 */
static bool flipped(struct vm *src, const struct test_buf *valid, size_t i, unsigned char mask,
		    bool reseal)
{
	const int fds[2] = {src->t.ram[0].fd, src->t.ram[1].fd};
	struct gw_incoming_stats st;
	struct gw_incoming *in;
	struct gw_report r;
	struct test_buf h = {malloc(valid->len), valid->len};
	struct vm dst;
	int sp[2], before;
	bool got_adopted = false, adopted;

	CHECK(h.p);
	memcpy(h.p, valid->p, h.len);
	h.p[i] ^= mask;
	if (reseal)
		test_hello_reseal(&h);
	vm_init(&dst, NULL);
	before = test_open_fds();
	CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) == 0);
	test_send_fds(sp[0], h.p, h.len, fds, 2, 0);
	CHECK(shutdown(sp[0], SHUT_WR) == 0);
	in = start_in(&dst, sp[1]);
	close(sp[1]);
	wait_in(in);
	gw_incoming_stats(in, &st);
	while (read_report(sp[0], &r) && r.status != GW_REPORT_FAILED)
		got_adopted |= r.status == GW_REPORT_ADOPTED;
	if (st.status != GW_MIG_FAILED)
		FAIL("byte %zu ^ 0x%02x%s: destination %s", i, mask, reseal ? " (resealed)" : "",
		     gw_mig_status_name(st.status));
	CHECK(get(&dst.resumes) == 0);
	adopted = get(&dst.adopts) > 0;
	CHECK(got_adopted == adopted);
	if (!reseal && adopted)
		FAIL("byte %zu ^ 0x%02x, CRC not resealed: adopted (%s)", i, mask, st.error);
	if (adopted)
		check_adopted(src, &dst, true);
	else
		check_not_adopted(&dst);
	close(sp[0]);
	gw_incoming_free(in);
	if (test_open_fds() != before + (int)dst.nr_ad)
		FAIL("byte %zu ^ 0x%02x%s: %d fds before, %d after", i, mask,
		     reseal ? " (resealed)" : "", before, test_open_fds());
	vm_free(&dst);
	free(h.p);
	return adopted;
}

/*
 * Every byte of a valid hello flipped, CRC not resealed: the head's checks
 * or the CRC refuse each. The head's bytes flipped and resealed: its own
 * checks refuse them (test_cpr_hello.c does CONFIG's and the table's).
 */
static void test_flipped_hellos(void)
{
	static const unsigned char masks[] = {0x01, 0x80};
	struct test_buf valid;
	unsigned runs = 0, adopted = 0;
	struct vm src;

	vm_init(&src, NULL);
	test_vm_fill(&src.t, 4);
	test_hello_of(src.t.m, &valid);
	for (size_t i = 0; i < valid.len; i++, runs++)
		flipped(&src, &valid, i, masks[0], false);
	for (size_t i = 0; i < GW_CPR_HELLO_HEAD; i++)
		for (size_t k = 0; k < GW_ARRAY_SIZE(masks); k++, runs++)
			adopted += flipped(&src, &valid, i, masks[k], true);
	printf("flipped hellos: %u runs over %zu bytes, %u adopted after a resealed flip of the head\n",
	       runs, valid.len, adopted);
	CHECK(adopted == 0);
	free(valid.p);
	vm_free(&src);
}

/* ---- cpr-transfer end to end --------------------------------------------- */

static void check_transfer_completed(struct vm *src, struct vm *dst, struct gw_precopy *out,
				     struct gw_incoming *in)
{
	static const enum gw_mig_status src_want[] = {GW_MIG_SETUP, GW_MIG_ACTIVE, GW_MIG_DEVICE,
						      GW_MIG_COMPLETED};
	static const enum gw_mig_status dst_want[] = {GW_MIG_COMPLETED};
	struct gw_precopy_stats st;
	struct gw_incoming_stats is;

	gw_precopy_stats(out, &st);
	gw_incoming_stats(in, &is);
	printf("cpr-transfer: %llu state bytes, downtime %llu us, adopted %llu bytes in %llu us, handshake %llu us\n",
	       (unsigned long long)st.state_bytes, (unsigned long long)st.downtime_us,
	       (unsigned long long)is.adopted_bytes, (unsigned long long)is.adopt_us,
	       (unsigned long long)st.handshake_us);
	if (st.status != GW_MIG_COMPLETED)
		FAIL("source %s: %s", gw_mig_status_name(st.status), st.error);
	if (is.status != GW_MIG_COMPLETED)
		FAIL("destination %s: %s", gw_mig_status_name(is.status), is.error);
	check_statuses(src, src_want, 4);
	check_statuses(dst, dst_want, 1);
	CHECK(st.error[0] == '\0' && !st.unconfirmed);
	CHECK(st.state_bytes > 0 && st.state_bytes < 64 * 1024);
	CHECK(st.transferred == 0 && st.normal == 0 && st.duplicate == 0 && st.normal_bytes == 0);
	CHECK(st.total == RAM_TOTAL && st.page_size == PAGE);
	CHECK(st.downtime_us > 0 && st.downtime_ms == st.downtime_us / 1000);
	CHECK(is.adopted_bytes == RAM_TOTAL);
	CHECK(is.received == st.state_bytes);
	CHECK(get(&src->pauses) == 1 && get(&src->resumes) == 0 && get(&src->adopts) == 0);
	CHECK(get(&dst->pauses) == 0 && get(&dst->resumes) == 1);
	check_state(src, dst);
	check_adopted(src, dst, true);
	check_own_ram_untouched(dst);
}

/* An update from src to a fresh dst over a socketpair, both engines run
 * to their end. */
static void transfer(struct vm *src, struct vm *dst, struct gw_precopy **out,
		     struct gw_incoming **in)
{
	int sp[2];

	CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) == 0);
	*in = start_in(dst, sp[1]);
	*out = start_out(src, sp[0], GW_MODE_CPR_TRANSFER);
	close(sp[0]);
	close(sp[1]);
	wait_out(*out);
	wait_in(*in);
}

static void test_transfer(bool one_memfd)
{
	struct vm src, dst, dst2;
	struct gw_precopy *out;
	struct gw_incoming *in;
	int before;

	vm_init(&src, &(struct vm_opts){.t.one_memfd = one_memfd});
	vm_init(&dst, NULL);
	test_vm_fill(&src.t, 1);
	before = test_open_fds();
	transfer(&src, &dst, &out, &in);
	check_transfer_completed(&src, &dst, out, in);
	gw_precopy_free(out);
	gw_incoming_free(in);
	/* Two memfds came and are the destination's. */
	CHECK(test_open_fds() == before + 2);
	CHECK(dst.ad[0].fd != src.t.ram[0].fd && dst.ad[1].fd != src.t.ram[1].fd);

	/* The destination updates again, out of the RAM it adopted: the third
	 * process maps the first one's memfd. */
	vm_init(&dst2, NULL);
	dst.t.uart[0].scratch++;
	transfer(&dst, &dst2, &out, &in);
	{
		struct gw_precopy_stats st;
		struct gw_incoming_stats is;

		gw_precopy_stats(out, &st);
		gw_incoming_stats(in, &is);
		if (st.status != GW_MIG_COMPLETED || is.status != GW_MIG_COMPLETED)
			FAIL("second update: source %s (%s), destination %s (%s)",
			     gw_mig_status_name(st.status), st.error, gw_mig_status_name(is.status),
			     is.error);
		CHECK(is.adopted_bytes == RAM_TOTAL);
	}
	CHECK(dst2.nr_ad == 2);
	for (int b = 0; b < 2; b++) {
		CHECK(ino_of(dst2.ad[b].fd) == ino_of(src.t.ram[b].fd));
		CHECK(dst2.ad[b].fd_offset == src.t.m->ram[b].fd_offset);
		CHECK(memcmp(dst2.ad[b].host, src.t.ram[b].host, block_size[b]) == 0);
	}
	test_vm_compare_devices(&dst.t, &dst2.t);
	gw_precopy_free(out);
	gw_incoming_free(in);
	vm_free(&dst2);
	vm_free(&dst);
	vm_free(&src);
}

/* ---- what refuses a CPR stream -------------------------------------------- */

/* A stream of m's sections only (no RAM) with these header flags, and
 * with a CPR record (cpr, cpr_len) after CONFIG if cpr is set. */
static void stream_of(struct gw_migration *m, uint32_t flags, const void *cpr, size_t cpr_len,
		      bool with_page, struct test_buf *out)
{
	struct gw_error err = {0};
	struct gw_writer *w;
	int fd = test_memfd(NULL, 0);

	CHECK_OK(gw_writer_new(fd, &w, &err), &err);
	CHECK_OK(gw_save_begin_cpr(m, w, flags, cpr, cpr_len, &err), &err);
	if (with_page) {
		const uint64_t entry = 0;

		CHECK_OK(gw_save_pages(m, w, 0, &entry, 1, 0, &err), &err);
	}
	CHECK_OK(gw_save_devices(m, w, &err), &err);
	CHECK_OK(gw_save_finish(m, w, &err), &err);
	gw_writer_free(w);
	test_slurp(fd, out);
	close(fd);
}

/* A stream of m's sections with a CPR record of m's fd numbers. */
static void stream_with_cpr_record(struct gw_migration *m, uint32_t flags, struct test_buf *out)
{
	struct gw_error err = {0};
	struct gw_wbuf t;

	gw_wbuf_init(&t, GW_CPR_MAX);
	CHECK_OK(gw_cpr_table_put(m, now_ns(), true, &t, &err), &err);
	stream_of(m, flags, t.data, t.len, false, out);
	gw_wbuf_release(&t);
}

/*
 * The valid hello with src's memfds, ADOPTED back, then the given stream.
 * want NULL: the stream must load, and the handshake is played by hand
 * (READY, GO, RUNNING with the destination's resume time).
 */
static void after_hello(struct vm *src, const struct test_buf *stream, const char *what,
			const char *want)
{
	const int fds[2] = {src->t.ram[0].fd, src->t.ram[1].fd};
	struct gw_incoming_stats st;
	struct gw_incoming *in;
	struct test_buf h;
	struct gw_report r;
	struct vm dst;
	int sp[2], before;

	vm_init(&dst, NULL);
	test_hello_of(src->t.m, &h);
	before = test_open_fds();
	CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) == 0);
	in = start_in(&dst, sp[1]);
	close(sp[1]);
	test_send_fds(sp[0], h.p, h.len, fds, 2, 0);
	CHECK(read_report(sp[0], &r) && r.status == GW_REPORT_ADOPTED);
	CHECK(get(&dst.adopts) == 1 && get(&dst.pauses) == 0);
	CHECK(send(sp[0], stream->p, stream->len, MSG_NOSIGNAL) == (ssize_t)stream->len);
	if (!want) {
		uint64_t t0, resumed;

		CHECK(read_report(sp[0], &r) && r.status == GW_REPORT_READY);
		CHECK(get(&dst.resumes) == 0);
		t0 = now_ns();
		send_report(sp[0], GW_REPORT_GO);
		CHECK(read_report(sp[0], &r) && r.status == GW_REPORT_RUNNING);
		/* Its text: the destination's resume, on this host's monotonic
		 * clock, in decimal nanoseconds. */
		resumed = strtoull(r.msg, NULL, 10);
		CHECK(resumed > t0 && resumed <= now_ns());
		CHECK(shutdown(sp[0], SHUT_WR) == 0);
		wait_in(in);
		gw_incoming_stats(in, &st);
		if (st.status != GW_MIG_COMPLETED)
			FAIL("%s: destination %s: %s", what, gw_mig_status_name(st.status),
			     st.error);
		CHECK(get(&dst.resumes) == 1 && st.adopted_bytes == RAM_TOTAL);
		CHECK(st.go_wait_us > 0);
		check_state(src, &dst);
		check_adopted(src, &dst, true);
		printf("  %-44s completed, RUNNING says resumed at %llu ns\n", what,
		       (unsigned long long)resumed);
	} else {
		CHECK(shutdown(sp[0], SHUT_WR) == 0);
		wait_in(in);
		gw_incoming_stats(in, &st);
		printf("  %-44s %s: %s\n", what, gw_mig_status_name(st.status), st.error);
		if (!read_report(sp[0], &r) || r.status != GW_REPORT_FAILED)
			FAIL("%s: no FAILED report", what);
		if (st.status != GW_MIG_FAILED || !strstr(st.error, want))
			FAIL("%s: destination %s: \"%s\" (wanted \"%s\")", what,
			     gw_mig_status_name(st.status), st.error, want);
		/* Its source still runs the guest, on the same memory. */
		CHECK(get(&dst.resumes) == 0);
	}
	close(sp[0]);
	gw_incoming_free(in);
	CHECK(test_open_fds() == before + 2); /* the two adopted memfds, the VMM's */
	free(h.p);
	vm_free(&dst);
}

static void test_refusals(void)
{
	struct gw_error err = {0};
	struct test_buf s, valid;
	struct vm src, dst;

	printf("what refuses a CPR stream:\n");
	vm_init(&src, NULL);
	test_vm_fill(&src.t, 5);
	test_hello_of(src.t.m, &valid);

	/* A VMM that cannot adopt says so in its answer to the hello. */
	hostile(&(struct hostile){"destination without cpr ops", &valid,
				  (int[]){src.t.ram[0].fd, src.t.ram[1].fd}, 2,
				  .want = "cannot adopt RAM (no gw_migration_set_cpr_ops)",
				  .want_code = -ENOTSUP, .dst = {.no_cpr_ops = true}});
	/* ... and an adopt op that fails: the fds it was given are closed. */
	hostile(&(struct hostile){"adopt op fails", &valid,
				  (int[]){src.t.ram[0].fd, src.t.ram[1].fd}, 2,
				  .want = "adopting RAM: the test's adopt op refuses",
				  .want_code = -ENOMEM, .dst = {.adopt_error = -ENOMEM}});
	free(valid.p);

	/* After a hello only a local live update's stream will do, and one
	 * that waits for the handshake: its source still runs the guest. */
	stream_of(src.t.m, GW_HDRF_CPR, NULL, 0, false, &s);
	after_hello(&src, &s, "no COMMIT after a hello", "(no COMMIT flag)");
	free(s.p);
	stream_of(src.t.m, GW_HDRF_COMMIT, NULL, 0, false, &s);
	after_hello(&src, &s, "no CPR flag after a hello", "not a local live update (no CPR flag)");
	free(s.p);
	stream_of(src.t.m, GW_HDRF_COMMIT | GW_HDRF_CPR, NULL, 0, true, &s);
	after_hello(&src, &s, "RAM_PAGES after a hello",
		    "in a local live update, whose RAM was adopted");
	free(s.p);
	stream_with_cpr_record(src.t.m, GW_HDRF_COMMIT | GW_HDRF_CPR, &s);
	after_hello(&src, &s, "a CPR record after a hello",
		    "not right after CONFIG of a cpr-exec state");
	free(s.p);
	stream_of(src.t.m, GW_HDRF_COMMIT | GW_HDRF_CPR, NULL, 0, false, &s);
	after_hello(&src, &s, "the stream by hand after a hello", NULL);

	/* The stream of a cpr-transfer, loaded as a file: refused. */
	vm_init(&dst, NULL);
	CHECK_ERR(test_load(dst.t.m, s.p, s.len, &err), -EPROTO, &err, "switchover handshake");
	free(s.p);
	stream_of(src.t.m, GW_HDRF_CPR, NULL, 0, false, &s);
	CHECK_ERR(test_load(dst.t.m, s.p, s.len, &err), -EPROTO, &err,
		  "local live update (cpr-transfer or cpr-exec): it holds no RAM");
	printf("  %-44s %s\n", "gw_load() of a CPR stream", err.msg);
	free(s.p);
	CHECK(get(&dst.adopts) == 0 && get(&dst.resumes) == 0);
	vm_free(&dst);
	vm_free(&src);
}

/* ---- cpr-exec ------------------------------------------------------------ */

/* src's engine in cpr-exec mode into a fresh file: it completes with the
 * guest paused; the file is in out. */
static void exec_save(struct vm *src, struct test_buf *out)
{
	struct gw_precopy_stats st;
	struct gw_precopy *p;
	FILE *f = tmpfile();
	unsigned pauses = get(&src->pauses);

	CHECK(f);
	p = start_out(src, fileno(f), GW_MODE_CPR_EXEC);
	wait_out(p);
	gw_precopy_stats(p, &st);
	if (st.status != GW_MIG_COMPLETED)
		FAIL("cpr-exec save: %s: %s", gw_mig_status_name(st.status), st.error);
	CHECK(st.state_bytes > 0 && st.transferred == 0 && st.normal == 0);
	CHECK(get(&src->pauses) == pauses + 1 && get(&src->resumes) == 0);
	gw_precopy_free(p);
	test_slurp(fileno(f), out);
	CHECK(out->len == st.state_bytes);
	CHECK(gw_get_le32(out->p + 12) == GW_HDRF_CPR); /* no COMMIT: a file */
	fclose(f);
}

/* The CPR record of a cpr-exec state (its header; the payload follows). */
static unsigned char *cpr_record(struct test_buf *f, uint64_t *len)
{
	uint64_t at = GW_STREAM_HEADER_SIZE;

	CHECK(gw_get_le16(f->p + at) == GW_REC_CONFIG);
	at += GW_RECORD_HEADER_SIZE + gw_get_le64(f->p + at + 8);
	CHECK(gw_get_le16(f->p + at) == GW_REC_CPR);
	*len = gw_get_le64(f->p + at + 8);
	return f->p + at;
}

/* The record's pause time. */
static unsigned char *cpr_pause(struct test_buf *f)
{
	uint64_t len;

	return cpr_record(f, &len) + GW_RECORD_HEADER_SIZE;
}

/* Entry i of the record: fd_offset, then fd at +8, ino at +12. */
static unsigned char *cpr_entry(struct test_buf *f, uint32_t i)
{
	unsigned char *p = cpr_pause(f) + 12;

	for (uint32_t k = 0; k < i; k++)
		p += 1 + p[0] + 20;
	return p + 1 + p[0];
}

/* The record's CRCs again, as a source would have written them. */
static void cpr_reseal(struct test_buf *f)
{
	uint64_t len;
	unsigned char *h = cpr_record(f, &len);

	gw_le32(h + 16, gw_crc32c(0, h + GW_RECORD_HEADER_SIZE, len));
	gw_le32(h + 20, gw_crc32c(0, h, 20));
}

/* Load a cpr-exec state from a file, as the exec'd image does. */
static void exec_load(struct vm *dst, const struct test_buf *f, struct gw_incoming_stats *st)
{
	int fd = test_memfd(f->p, f->len);
	struct gw_incoming *in = start_in(dst, fd);

	close(fd);
	wait_in(in);
	gw_incoming_stats(in, st);
	gw_incoming_free(in);
}

/* A refused cpr-exec state: nothing adopted, the source's fds left open. */
static void exec_refused(struct vm *src, const struct test_buf *f, const struct vm_opts *o,
			 const char *what, const char *want)
{
	struct gw_incoming_stats st;
	struct vm dst;
	int before;

	vm_init(&dst, o);
	before = test_open_fds();
	exec_load(&dst, f, &st);
	printf("  %-44s %s\n", what, st.error);
	if (st.status != GW_MIG_FAILED || !strstr(st.error, want))
		FAIL("%s: destination %s: \"%s\" (wanted \"%s\")", what,
		     gw_mig_status_name(st.status), st.error, want);
	if (get(&dst.adopts) && !dst.adopt_error)
		FAIL("%s: adopted", what);
	CHECK(get(&dst.resumes) == 0);
	check_not_adopted(&dst);
	CHECK(test_open_fds() == before);
	CHECK(fd_open(src->t.ram[0].fd) && fd_open(src->t.ram[1].fd));
	vm_free(&dst);
}

/* The CPR record pointing at other files, or at no pause. */
static void exec_records(struct vm *src, const struct test_buf *f)
{
	struct test_buf g = {malloc(f->len), f->len};
	int other, pipefd[2];

	CHECK(g.p);
	memcpy(g.p, f->p, f->len);
	gw_le64(cpr_entry(&g, 0) + 12, gw_get_le64(cpr_entry(&g, 0) + 12) + 1);
	cpr_reseal(&g);
	exec_refused(src, &g, NULL, "CPR record: another inode", "not the source's memfd");
	other = memfd_create("other", MFD_CLOEXEC);
	CHECK(other >= 0 && ftruncate(other, RAM1_SIZE) == 0);
	memcpy(g.p, f->p, f->len);
	gw_le32(cpr_entry(&g, 1) + 8, (uint32_t)other);
	cpr_reseal(&g);
	exec_refused(src, &g, NULL, "CPR record: fd of another memfd", "not the source's memfd");
	close(other);
	memcpy(g.p, f->p, f->len);
	gw_le32(cpr_entry(&g, 1) + 8, 1000000);
	cpr_reseal(&g);
	exec_refused(src, &g, NULL, "CPR record: an fd that is not open",
		     "RAM block 'vga.vram': the CPR record's fd 1000000 is not open in this process");
	memcpy(g.p, f->p, f->len);
	gw_le32(cpr_entry(&g, 1) + 8, 0x80000000u);
	cpr_reseal(&g);
	exec_refused(src, &g, NULL, "CPR record: fd 0x80000000", "entry 1 is malformed");
	CHECK(pipe2(pipefd, O_CLOEXEC) == 0);
	memcpy(g.p, f->p, f->len);
	gw_le32(cpr_entry(&g, 0) + 8, (uint32_t)pipefd[0]);
	cpr_reseal(&g);
	exec_refused(src, &g, NULL, "CPR record: fd of a pipe", "is not a memfd");
	close(pipefd[0]);
	close(pipefd[1]);
	memcpy(g.p, f->p, f->len);
	gw_le32(cpr_entry(&g, 1) + 8, (uint32_t)src->t.ram[0].fd);
	gw_le64(cpr_entry(&g, 1) + 12, ino_of(src->t.ram[0].fd));
	cpr_reseal(&g);
	exec_refused(src, &g, NULL, "CPR record: one memfd's pages for both blocks",
		     "RAM blocks 'pc.ram' and 'vga.vram' overlap in their memfd");
	memcpy(g.p, f->p, f->len);
	cpr_entry(&g, 1)[-2] ^= 0x20; /* a letter of "vga.vram" */
	cpr_reseal(&g);
	exec_refused(src, &g, NULL, "CPR record: a wrong name", "entry 1 is malformed");
	memcpy(g.p, f->p, f->len);
	gw_le64(cpr_entry(&g, 1) + 12, gw_get_le64(cpr_entry(&g, 1) + 12) ^ 1);
	exec_refused(src, &g, NULL, "CPR record: CRC not resealed", "CRC");
	/* The pause happened before this process read the state, on its clock. */
	memcpy(g.p, f->p, f->len);
	gw_le64(cpr_pause(&g), 0);
	cpr_reseal(&g);
	exec_refused(src, &g, NULL, "CPR record: pause time 0",
		     "its pause time 0 ns is not a past time of this host's CLOCK_MONOTONIC");
	memcpy(g.p, f->p, f->len);
	gw_le64(cpr_pause(&g), now_ns() + 3600 * 1000000000ull);
	cpr_reseal(&g);
	exec_refused(src, &g, NULL, "CPR record: a pause an hour ahead",
		     "is not a past time of this host's CLOCK_MONOTONIC");
	free(g.p);
}

/* The state of a cpr-exec from a socket peer, without a hello: its fd
 * numbers are another process's, and nobody handed fds over. */
static void exec_from_peer(const struct test_buf *f)
{
	struct gw_incoming_stats st;
	struct gw_incoming *in;
	struct vm dst;
	int sp[2];

	vm_init(&dst, NULL);
	CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) == 0);
	CHECK(send(sp[0], f->p, f->len, MSG_NOSIGNAL) == (ssize_t)f->len);
	CHECK(shutdown(sp[0], SHUT_WR) == 0);
	in = start_in(&dst, sp[1]);
	close(sp[1]);
	wait_in(in);
	gw_incoming_stats(in, &st);
	printf("  %-44s %s\n", "a cpr-exec state from a socket peer", st.error);
	if (st.status != GW_MIG_FAILED || !strstr(st.error, "from a peer that sent no hello first"))
		FAIL("a cpr-exec state from a socket peer: destination %s: %s",
		     gw_mig_status_name(st.status), st.error);
	CHECK(get(&dst.adopts) == 0 && get(&dst.resumes) == 0);
	check_not_adopted(&dst);
	close(sp[0]);
	gw_incoming_free(in);
	vm_free(&dst);
}

static void test_exec(void)
{
	struct gw_incoming_stats st;
	struct gw_error err = {0};
	struct test_buf f, g;
	struct vm src, dst;

	printf("cpr-exec:\n");
	vm_init(&src, NULL);
	test_vm_fill(&src.t, 6);
	exec_save(&src, &f);

	/* Plain gw_load() refuses it, as does a VMM without cpr ops. */
	vm_init(&dst, NULL);
	CHECK_ERR(test_load(dst.t.m, f.p, f.len, &err), -EPROTO, &err, "local live update");
	CHECK(get(&dst.adopts) == 0);
	vm_free(&dst);
	exec_refused(&src, &f, &(struct vm_opts){.no_cpr_ops = true}, "destination without cpr ops",
		     "gw_migration_set_cpr_ops");
	exec_refused(&src, &f, &(struct vm_opts){.t.nr_vcpus = 4}, "destination with 4 vCPUs",
		     "stream has 2 vCPUs, this VMM has 4");
	exec_refused(&src, &f, &(struct vm_opts){.adopt_error = -ENOMEM}, "adopt op fails",
		     "the test's adopt op refuses");
	exec_records(&src, &f);
	/* Without the record, and the record in a stream without the flag. */
	stream_of(src.t.m, GW_HDRF_CPR, NULL, 0, false, &g);
	exec_refused(&src, &g, NULL, "no CPR record", "must have its CPR record after CONFIG");
	free(g.p);
	stream_with_cpr_record(src.t.m, 0, &g);
	exec_refused(&src, &g, NULL, "a CPR record without the CPR flag", "a CPR record at offset");
	free(g.p);
	exec_from_peer(&f);

	/* The real thing: the record's fd numbers are this process's. */
	vm_init(&dst, NULL);
	exec_load(&dst, &f, &st);
	printf("  loaded: adopted %llu bytes in %llu us, downtime %llu us\n",
	       (unsigned long long)st.adopted_bytes, (unsigned long long)st.adopt_us,
	       (unsigned long long)st.downtime_us);
	if (st.status != GW_MIG_COMPLETED)
		FAIL("cpr-exec load: %s: %s", gw_mig_status_name(st.status), st.error);
	CHECK(st.adopted_bytes == RAM_TOTAL && st.downtime_us > 0 && st.received == f.len);
	CHECK(get(&dst.resumes) == 1 && get(&dst.pauses) == 0);
	check_state(&src, &dst);
	check_adopted(&src, &dst, false);
	check_own_ram_untouched(&dst);
	/* The very fds of the source: they are the new image's now. */
	CHECK(dst.ad[0].fd == src.t.ram[0].fd && dst.ad[1].fd == src.t.ram[1].fd);
	src.t.ram[0].fd = src.t.ram[1].fd = -1;
	vm_free(&dst);
	free(f.p);
	vm_free(&src);

	/* Two blocks in one memfd (what fd_offset is for): one fd number for
	 * both, at their offsets. */
	vm_init(&src, &(struct vm_opts){.t.one_memfd = true});
	test_vm_fill(&src.t, 7);
	exec_save(&src, &f);
	vm_init(&dst, NULL);
	dst.ad_fds_not_ours = true;
	exec_load(&dst, &f, &st);
	printf("  %-44s %s %s\n", "two blocks in one memfd", gw_mig_status_name(st.status),
	       st.error);
	if (st.status != GW_MIG_COMPLETED)
		FAIL("two blocks in one memfd: %s", st.error);
	check_adopted(&src, &dst, false);
	vm_free(&dst);
	free(f.p);
	vm_free(&src);
}

/* ---- the source's failures ----------------------------------------------- */

static void check_source_failed(struct vm *src, struct gw_precopy *p, enum gw_mig_status want,
				const char *what, const char *msg)
{
	struct gw_precopy_stats st;
	unsigned n = __atomic_load_n(&src->nr_statuses, __ATOMIC_ACQUIRE);

	gw_precopy_stats(p, &st);
	printf("  %-44s %s: %s\n", what, gw_mig_status_name(st.status), st.error);
	if (st.status != want)
		FAIL("%s: source %s, expected %s (%s)", what, gw_mig_status_name(st.status),
		     gw_mig_status_name(want), st.error);
	if (msg && !strstr(st.error, msg))
		FAIL("%s: \"%s\" lacks \"%s\"", what, st.error, msg);
	CHECK(!st.unconfirmed);
	/* The guest runs: each of these fails before the pause. */
	CHECK(get(&src->pauses) == 0);
	CHECK(n >= 1 && src->statuses[n - 1] == want);
	CHECK(st.transferred == 0);
}

/* The source's hello, read as its peer: what test_hello_of() builds, with
 * the source's memfds attached. */
static void read_hello(struct vm *src, int sock)
{
	int fds[GW_MAX_RAM_BLOCKS];
	struct gw_error err = {0};
	struct test_buf want;
	struct gw_cancel c;
	unsigned char *got;
	unsigned n;

	test_hello_of(src->t.m, &want);
	CHECK((got = malloc(want.len)));
	CHECK_OK(gw_cancel_init(&c, sock, &err), &err);
	CHECK_OK(gw_fds_recv(&c, WAIT_MAX_MS, got, want.len, fds, GW_MAX_RAM_BLOCKS, &n, &err),
		 &err);
	gw_cancel_fini(&c);
	CHECK(memcmp(got, want.p, want.len) == 0);
	CHECK(n == 2);
	for (unsigned i = 0; i < n; i++) {
		CHECK(ino_of(fds[i]) == ino_of(src->t.ram[i].fd));
		close(fds[i]);
	}
	free(got);
	free(want.p);
}

static bool source_active(struct gw_precopy *p)
{
	struct gw_precopy_stats st;

	gw_precopy_stats(p, &st);
	return st.status == GW_MIG_ACTIVE;
}

/* src's cpr-transfer on one end of a socketpair; *peer is the other end,
 * ours, with the source's hello read off it. */
static struct gw_precopy *start_to_peer(struct vm *src, int *peer)
{
	struct gw_precopy *p;
	int sp[2];

	CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) == 0);
	p = start_out(src, sp[0], GW_MODE_CPR_TRANSFER);
	close(sp[0]);
	read_hello(src, sp[1]);
	*peer = sp[1];
	return p;
}

static void test_source_failures(void)
{
	struct gw_precopy_params params;
	struct gw_error err = {0};
	struct gw_precopy *p;
	struct gw_incoming *in;
	struct gw_channel ch;
	struct vm src, dst;
	int sp[2], pipefd[2], peer, before;

	printf("source failures:\n");
	/* The peer takes the hello and hangs up. */
	vm_init(&src, NULL);
	before = test_open_fds();
	p = start_to_peer(&src, &peer);
	close(peer);
	wait_out(p);
	check_source_failed(&src, p, GW_MIG_FAILED, "peer hangs up after the hello",
			    "closed the connection instead of sending the new process's ADOPTED");
	gw_precopy_free(p);
	CHECK(test_open_fds() == before);
	vm_free(&src);

	/* The peer is gone before the hello. */
	vm_init(&src, NULL);
	CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) == 0);
	close(sp[1]);
	p = start_out(&src, sp[0], GW_MODE_CPR_TRANSFER);
	close(sp[0]);
	wait_out(p);
	check_source_failed(&src, p, GW_MIG_FAILED, "peer gone before the hello", "cpr-transfer");
	gw_precopy_free(p);
	vm_free(&src);

	/* The peer answers something else than ADOPTED. */
	vm_init(&src, NULL);
	p = start_to_peer(&src, &peer);
	send_report(peer, GW_REPORT_READY);
	wait_out(p);
	check_source_failed(&src, p, GW_MIG_FAILED, "READY instead of ADOPTED",
			    "sent READY where the new process's ADOPTED");
	gw_precopy_free(p);
	close(peer);
	vm_free(&src);

	/* Cancelled while it waits for ADOPTED. */
	vm_init(&src, NULL);
	p = start_to_peer(&src, &peer);
	for (int ms = 0; !source_active(p); ms++) {
		if (ms > WAIT_MAX_MS)
			FAIL("the source never became active");
		test_sleep_ms(1);
	}
	test_sleep_ms(20);
	CHECK(gw_precopy_cancel(p));
	wait_out(p);
	check_source_failed(&src, p, GW_MIG_CANCELLED, "cancel while waiting for ADOPTED", NULL);
	{
		unsigned n = src.nr_statuses;

		CHECK(n >= 2 && src.statuses[n - 2] == GW_MIG_CANCELLING);
	}
	/* The source shut the socket down: the peer sees the end. */
	{
		char c;
		struct pollfd pf = {peer, POLLIN, 0};

		CHECK(poll(&pf, 1, WAIT_MAX_MS) == 1 && read(peer, &c, 1) == 0);
	}
	gw_precopy_free(p);
	close(peer);
	vm_free(&src);

	/* Real destinations that refuse: the source keeps its guest, unpaused. */
	for (int k = 0; k < 3; k++) {
		const struct vm_opts o[3] = {{.no_cpr_ops = true},
					     {.adopt_error = -ENOMEM},
					     {.t.uart_version = 1}};
		const char *want[3] = {"gw_migration_set_cpr_ops", "the test's adopt op refuses",
				       "this VMM accepts versions 1..1"};
		const char *what[3] = {"destination without cpr ops", "destination's adopt fails",
				       "destination loads uart 1..1 only"};
		struct gw_incoming_stats is;

		vm_init(&src, NULL);
		vm_init(&dst, &o[k]);
		before = test_open_fds();
		CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) == 0);
		in = start_in(&dst, sp[1]);
		p = start_out(&src, sp[0], GW_MODE_CPR_TRANSFER);
		close(sp[0]);
		close(sp[1]);
		wait_out(p);
		wait_in(in);
		check_source_failed(&src, p, GW_MIG_FAILED, what[k], "the destination failed: ");
		{
			struct gw_precopy_stats st;

			gw_precopy_stats(p, &st);
			if (!strstr(st.error, want[k]))
				FAIL("%s: \"%s\" lacks \"%s\"", what[k], st.error, want[k]);
		}
		gw_incoming_stats(in, &is);
		CHECK(is.status == GW_MIG_FAILED && strstr(is.error, want[k]));
		CHECK(get(&dst.resumes) == 0);
		check_not_adopted(&dst);
		CHECK(get(&dst.adopts) == (k == 1 ? 1u : 0u));
		gw_precopy_free(p);
		gw_incoming_free(in);
		CHECK(test_open_fds() == before);
		vm_free(&dst);
		vm_free(&src);
	}

	/* Channels that cannot carry fds, and starts that make no sense:
	 * refused at once, the channel still the caller's. */
	vm_init(&src, NULL);
	gw_precopy_params_default(&params);
	params.mode = GW_MODE_CPR_TRANSFER;
	CHECK(pipe2(pipefd, O_CLOEXEC) == 0);
	ch = test_channel_of(pipefd[1]);
	CHECK_ERR(gw_precopy_start(src.t.m, &ch, 1, &params, NULL, &p, &err), -EINVAL, &err,
		  "cpr-transfer", "is not a unix socket");
	printf("  %-44s %s\n", "cpr-transfer into a pipe", err.msg);
	CHECK(ch.fd >= 0);
	CHECK_OK(gw_channel_close(&ch, &err), &err);
	CHECK(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sp) == 0);
	ch = test_channel_of(sp[0]);
	CHECK_ERR(gw_precopy_start(src.t.m, &ch, 1, &params, NULL, &p, &err), -EINVAL, &err,
		  "is not a unix socket");
	CHECK_OK(gw_channel_close(&ch, &err), &err);
	close(sp[0]);
	close(sp[1]);
	params.mode = GW_MODE_CPR_EXEC;
	CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) == 0);
	ch = test_channel_of(sp[0]);
	CHECK_ERR(gw_precopy_start(src.t.m, &ch, 1, &params, NULL, &p, &err), -EINVAL, &err,
		  "cpr-exec", "is a socket");
	printf("  %-44s %s\n", "cpr-exec into a socket", err.msg);
	CHECK(ch.fd >= 0);
	params.mode = 3;
	CHECK_ERR(gw_precopy_start(src.t.m, &ch, 1, &params, NULL, &p, &err), -EINVAL, &err,
		  "migration mode 3 is unknown");
	params.mode = GW_MODE_CPR_TRANSFER;
	params.mapped_ram = true;
	CHECK_ERR(gw_precopy_start(src.t.m, &ch, 1, &params, NULL, &p, &err), -EINVAL, &err,
		  "neither a background snapshot nor a mapped-ram save");
	params.mapped_ram = false;
	params.background_snapshot = true;
	CHECK_ERR(gw_precopy_start(src.t.m, &ch, 1, &params, NULL, &p, &err), -EINVAL, &err,
		  "neither a background snapshot nor a mapped-ram save");
	CHECK_OK(gw_channel_close(&ch, &err), &err);
	close(sp[0]);
	close(sp[1]);
	close(pipefd[0]);
	close(pipefd[1]);
	CHECK(get(&src.pauses) == 0 && src.nr_statuses == 0);
	vm_free(&src);

	/* RAM without a memfd cannot be handed over. */
	{
		const struct gw_machine mach = {"godwit-test", "1", "test-machine", 2};
		struct gw_migration *m;
		void *mem = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
				 -1, 0);
		struct vm dummy;

		CHECK(mem != MAP_FAILED);
		CHECK_OK(gw_migration_new(&mach, &m, &err), &err);
		CHECK_OK(gw_migration_add_ram(m,
					      &(struct gw_ram){"anon", mem, PAGE, -1, 0,
							       GW_GPA_NONE},
					      &err),
			 &err);
		CHECK_OK(gw_migration_set_vm_ops(m, &vm_ops, &dummy, &err), &err);
		CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) == 0);
		ch = test_channel_of(sp[0]);
		params.background_snapshot = false;
		params.mode = GW_MODE_CPR_TRANSFER;
		CHECK_ERR(gw_precopy_start(m, &ch, 1, &params, NULL, &p, &err), -EINVAL, &err,
			  "RAM block 'anon' has no memfd to hand over");
		CHECK_OK(gw_channel_close(&ch, &err), &err);
		close(sp[0]);
		close(sp[1]);
		gw_migration_free(m);
		munmap(mem, PAGE);
	}
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	setvbuf(stdout, NULL, _IOLBF, 0);
	test_transfer(false);
	test_transfer(true);
	test_hostile_hellos();
	test_flipped_hellos();
	test_refusals();
	test_exec();
	test_source_failures();
	printf("cpr: all tests passed\n");
	return 0;
}
