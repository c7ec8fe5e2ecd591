/*
 * The seed corpus of the load fuzzer (tests/fuzz/corpus-load), replayed
 * through godwit-vmm's real sections as a regression test
 * (tests/fuzz/loadvm.h):
 *
 *   ok-*     streams of a real godwit-vmm, or hand-made but valid: they
 *            load, the devices work through their ports, and what they
 *            hold then saves and loads again;
 *   bad-*    hostile state with valid checksums: refused with a message
 *            naming section, instance and field (the words below);
 *   crash-*  inputs the fuzzer once crashed on: whatever they do now,
 *            they do it without crashing, and a refusal says why.
 *
 *   test_corpus_load DIR
 */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "lib/format/mapped.h"
#include "tests/fuzz/loadvm.h"

static const struct {
	const char *file;
	const char *words[3];
} refusals[] = {
	{ "bad-cpu-nr_msrs-0x100000", { "section 'cpu' instance 0", "field 'nr_msrs' = 1048576 (0x100000) is outside 0..256" } },
	{ "bad-cpu-nr_msrs-0x10000000", { "section 'cpu' instance 0", "field 'nr_msrs' = 268435456 (0x10000000)" } },
	{ "bad-cpu-nr_msrs-0xffffffff", { "section 'cpu' instance 0", "field 'nr_msrs' = 4294967295 (0xffffffff)" } },
	{ "bad-cpu-rflags", { "section 'cpu' instance 0", "field 'regs.rflags'", "bit 1 clear" } },
	{ "bad-cpu-mp_state", { "section 'cpu' instance 0", "field 'mp.mp_state'", "not an x86 MP state" } },
	{ "bad-kvm-vm-ioapic", { "section 'kvm-vm' instance 0", "field 'ioapic'", "ioregsel" } },
	{ "bad-uart-rx_head-255", { "section 'uart' instance 0", "field 'rx_head' = 255 is outside 0..15" } },
	{ "bad-uart-rx_count-17", { "section 'uart' instance 0", "field 'rx_count' = 17 is outside 0..16" } },
	{ "bad-uart-lsr", { "section 'uart' instance 0", "field 'lsr'" } },
	{ "bad-testdev-ready-2", { "section 'testdev' instance 0", "field 'ready' = 2 is outside 0..1" } },
	{ "bad-run-state-running-7", { "section 'run-state' instance 0", "field 'running' = 7 is outside 0..1" } },
};

static void slurp(const char *path, unsigned char **p, size_t *len)
{
	struct stat st;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	CHECK(fd >= 0 && fstat(fd, &st) == 0);
	*len = (size_t)st.st_size;
	*p = malloc(*len ? *len : 1);
	CHECK(*p && read(fd, *p, *len) == (ssize_t)*len);
	close(fd);
}

static void check_refusal(const char *name, const struct gw_error *err)
{
	for (size_t i = 0; i < sizeof(refusals) / sizeof(refusals[0]); i++) {
		if (strcmp(refusals[i].file, name) != 0)
			continue;
		for (int w = 0; w < 3 && refusals[i].words[w]; w++)
			if (!strstr(err->msg, refusals[i].words[w]))
				FAIL("%s: message \"%s\" lacks \"%s\"", name, err->msg,
				     refusals[i].words[w]);
		return;
	}
	FAIL("%s: no expected message listed for it", name);
}

/* The guest RAM the loadvm machine holds now. */
static unsigned char *ram_copy(struct loadvm *vm)
{
	const struct ram_block *b = &vm->machine.ram.blocks[0];
	unsigned char *c = malloc(b->size);

	CHECK(c && vm->machine.ram.nr_blocks == 1);
	memcpy(c, b->host, b->size);
	return c;
}

/*
 * A mapped-ram file damaged one byte at a time, at chosen points of each
 * of its parts: every byte of the header's fixed part and of the block
 * entry's fields, the first bytes of the bitmap and the hash table, bytes
 * spread over the embedded stream, a byte of each of the first present
 * pages, a byte of a slot the bitmap marks absent, and the padding after
 * the header. Each load must either be refused with a message or, where
 * the byte is one no reader uses (an absent page's slot, padding), load
 * exactly what the good file loads: never different RAM.
 */
static void flip_mapped(struct loadvm *vm, const char *name, unsigned char *p, size_t len)
{
	struct gw_error err = { 0 };
	uint64_t offs[160];
	size_t n = 0, refused = 0;
	unsigned char *good;
	struct gw_mapped_hdr *h = calloc(1, sizeof(*h));
	uint32_t hl;

	CHECK(h);
	CHECK_OK(gw_mapped_peek_length(p, &hl, &err), &err);
	CHECK_OK(gw_mapped_decode(p, hl, len, h, &err), &err);
	const struct gw_mapped_block *b = &h->blocks[0];
	loadvm_reset(vm);
	CHECK_OK(loadvm_load(vm, p, len, &err), &err);
	good = ram_copy(vm);
	for (uint64_t i = 0; i < 64; i++)
		offs[n++] = i;
	for (uint64_t i = 0; i < 64; i += 2)
		offs[n++] = GW_MAPPED_FIXED_SIZE + i;
	offs[n++] = GW_MAPPED_FIXED_SIZE + 64; /* the name */
	for (uint64_t i = 0; i < 8; i++) {
		offs[n++] = b->bitmap_offset + i;
		offs[n++] = b->hashes_offset + i;
	}
	for (uint64_t i = 0; i < 24; i++)
		offs[n++] = h->stream_offset + i * h->stream_length / 24;
	uint64_t absent = UINT64_MAX, present = 0;
	for (uint64_t pg = 0; pg < b->size / 4096 && n < 150; pg++) {
		bool set = p[b->bitmap_offset + pg / 8] >> (pg % 8) & 1;

		if (set && present++ < 4)
			offs[n++] = b->pages_offset + pg * 4096 + 777;
		if (!set && absent == UINT64_MAX)
			absent = pg;
	}
	CHECK(present > 0 && absent != UINT64_MAX);
	offs[n++] = b->pages_offset + absent * 4096 + 5; /* not read: must not matter */
	offs[n++] = h->header_length + 100;             /* padding before the region */
	for (size_t i = 0; i < n; i++) {
		int ret;

		CHECK(offs[i] < len);
		p[offs[i]] ^= 0x20;
		loadvm_reset(vm);
		ret = loadvm_load(vm, p, len, &err);
		if (ret < 0) {
			refused++;
			CHECK(err.msg[0]);
		} else if (memcmp(good, vm->machine.ram.blocks[0].host,
				  vm->machine.ram.blocks[0].size)) {
			FAIL("%s: a flipped byte at 0x%llx loaded different RAM", name,
			     (unsigned long long)offs[i]);
		}
		p[offs[i]] ^= 0x20;
	}
	/* Only the absent slot and the padding are unread. */
	if (refused < n - 2)
		FAIL("%s: %zu of %zu flipped bytes were refused, expected %zu", name, refused, n,
		     n - 2);
	printf("corpus-load: %s: %zu flipped bytes, %zu refused, the rest loaded the same RAM\n",
	       name, n, refused);
	free(good);
	free(h);
}

static void check_file(struct loadvm *vm, const char *dir, const char *name)
{
	struct gw_error err = { 0 };
	char path[4096];
	unsigned char *p;
	size_t len;
	int ret;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	slurp(path, &p, &len);
	loadvm_reset(vm);
	ret = loadvm_load(vm, p, len, &err);
	loadvm_drive(vm);
	if (ret == 0)
		loadvm_round_trip(vm);
	if (strncmp(name, "ok-", 3) == 0 && ret < 0)
		FAIL("%s: %s", name, err.msg);
	if (strncmp(name, "bad-", 4) == 0) {
		if (ret == 0)
			FAIL("%s: loaded", name);
		check_refusal(name, &err);
	}
	printf("corpus-load: %s: %zu bytes, %s\n", name, len, ret ? err.msg : "loaded");
	if (strncmp(name, "ok-mapped", 9) == 0)
		flip_mapped(vm, name, p, len);
	free(p);
}

int main(int argc, char **argv)
{
	struct dirent **names;
	struct loadvm vm;
	int n, ok = 0;

	if (argc != 2)
		FAIL("usage: test_corpus_load DIR");
	n = scandir(argv[1], &names, NULL, alphasort);
	CHECK(n >= 0);
	loadvm_init(&vm);
	for (int i = 0; i < n; i++) {
		if (names[i]->d_name[0] != '.') {
			check_file(&vm, argv[1], names[i]->d_name);
			ok += strncmp(names[i]->d_name, "ok-", 3) == 0;
		}
		free(names[i]);
	}
	free(names);
	loadvm_free(&vm);
	/* An empty directory would prove nothing. */
	CHECK(ok > 0);
	printf("corpus-load: all tests passed\n");
	return 0;
}
