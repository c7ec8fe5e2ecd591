/*
 * The seed corpus of the stream fuzzer (tests/fuzz/corpus), replayed
 * through the loader and the walker as a regression test: files named
 * ok-* are streams this library wrote and must keep loading, files named
 * bad-* must be refused with a message. Neither may crash the reader.
 *
 *   test_corpus DIR           check every file of DIR
 *   test_corpus --write DIR   write the seeds (after a deliberate format change)
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "lib/crc32c.h"
#include "testvm.h"

/* The machine of the corpus and of the fuzzer: as small as the format allows. */
static const struct test_vm_opts corpus_machine = {
	.ram_size = { 2 * GW_PAGE_SIZE, GW_PAGE_SIZE },
};

static void write_file(const char *dir, const char *name, const void *p, size_t len)
{
	char path[4096];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "wb");
	CHECK(f && fwrite(p, 1, len, f) == len && fclose(f) == 0);
}

/* Stream offset of the first record of type in s. */
static size_t first_record(const struct test_buf *s, uint16_t type)
{
	size_t off = GW_STREAM_HEADER_SIZE;

	for (;;) {
		uint16_t t;
		uint64_t len;

		CHECK(off + GW_RECORD_HEADER_SIZE <= s->len);
		memcpy(&t, s->p + off, 2);
		memcpy(&len, s->p + off + 8, 8);
		if (t == type)
			return off;
		off += GW_RECORD_HEADER_SIZE + len;
	}
}

static void write_seeds(const char *dir)
{
	struct test_vm_opts v3 = corpus_machine;
	struct test_vm vm;
	struct test_buf s;

	test_vm_init(&vm, &corpus_machine);
	test_vm_fill(&vm, 1);
	test_save(&vm, 0, &s);
	write_file(dir, "ok-stream", s.p, s.len);
	write_file(dir, "bad-truncated", s.p, s.len / 2);
	/* The last byte of the first RAM_PAGES record is page data. Sent while
	 * the guest ran and never sent again, it fails at EOF. */
	size_t pages = first_record(&s, GW_REC_RAM_PAGES);
	uint64_t len;

	memcpy(&len, s.p + pages + 8, 8);
	s.p[pages + GW_RECORD_HEADER_SIZE + len - 1] ^= 0x20;
	write_file(dir, "bad-page-hash", s.p, s.len);
	s.p[pages + GW_RECORD_HEADER_SIZE + len - 1] ^= 0x20;
	s.p[GW_STREAM_HEADER_SIZE + 9] ^= 0x10; /* CONFIG length: header CRC */
	write_file(dir, "bad-header-crc", s.p, s.len);
	free(s.p);

	test_save(&vm, SAVE_DATA_CRC | SAVE_ONE_BATCH, &s);
	write_file(dir, "ok-data-crc", s.p, s.len);
	s.p[s.len - 3000] ^= 1; /* somewhere in the live section's data */
	write_file(dir, "bad-payload-crc", s.p, s.len);
	free(s.p);
	test_vm_free(&vm);

	v3.uart_version = 3;
	test_vm_init(&vm, &v3);
	test_vm_fill(&vm, 2);
	test_save(&vm, 0, &s);
	write_file(dir, "bad-section-version", s.p, s.len);
	free(s.p);
	test_vm_free(&vm);
}

static void check_file(struct test_vm *vm, const char *dir, const char *name)
{
	struct gw_error err = { 0 }, load_err;
	struct gw_record_info info;
	struct gw_walker *wk;
	struct gw_reader *r;
	struct test_buf s;
	char path[4096];
	int fd, ret, records = 0;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	CHECK(fd >= 0);
	test_slurp(fd, &s);
	ret = test_load(vm->m, s.p, s.len, &err);
	if (strncmp(name, "ok-", 3) == 0 && ret < 0)
		FAIL("%s: %s", name, err.msg);
	if (strncmp(name, "bad-", 4) == 0 && (ret == 0 || strlen(err.msg) < 20))
		FAIL("%s: loaded (%d, '%s')", name, ret, err.msg);
	load_err = err;
	CHECK(lseek(fd, 0, SEEK_SET) == 0);
	CHECK_OK(gw_reader_new(fd, &r, &err), &err);
	if (gw_walker_new(r, &wk, &err) == 0) {
		while ((ret = gw_walker_next(wk, &info, &err)) == 1)
			records++;
		gw_walker_free(wk);
	}
	printf("corpus: %s: %zu bytes, %s, %d records walked\n", name, s.len,
	       strncmp(name, "ok-", 3) ? load_err.msg : "loaded", records);
	gw_reader_free(r);
	free(s.p);
	close(fd);
}

int main(int argc, char **argv)
{
	struct test_vm vm;
	struct dirent **names;
	int n;

	if (argc == 3 && strcmp(argv[1], "--write") == 0) {
		write_seeds(argv[2]);
		return 0;
	}
	if (argc != 2)
		FAIL("usage: test_corpus DIR | --write DIR");
	n = scandir(argv[1], &names, NULL, alphasort);
	CHECK(n >= 0);
	test_vm_init(&vm, &corpus_machine);
	for (int i = 0; i < n; i++) {
		if (names[i]->d_name[0] != '.')
			check_file(&vm, argv[1], names[i]->d_name);
		free(names[i]);
	}
	free(names);
	test_vm_free(&vm);
	printf("corpus: all tests passed\n");
	return 0;
}
