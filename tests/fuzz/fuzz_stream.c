/*
 * libFuzzer target for the stream reader: gw_load() into a small test
 * machine and the walker, on arbitrary bytes. Each input is read twice:
 * as it is, which exercises framing and CRC rejection, and "resealed"
 * with every CRC and page hash recomputed, so mutations reach the parsers
 * behind the checksums (CONFIG, section records, page descriptors, device
 * loaders) instead of all dying at the first CRC or page hash.
 *
 * Seeds: tests/fuzz/corpus (written by `test_corpus --write`).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xxhash.h>

#include "check.h"
#include "lib/crc32c.h"
#include "testvm.h"

static const struct test_vm_opts corpus_machine = {
	.ram_size = { 2 * GW_PAGE_SIZE, GW_PAGE_SIZE },
};

static uint64_t get_le(const unsigned char *p, int n)
{
	uint64_t v = 0;

	for (int i = n - 1; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static void put_le32(unsigned char *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = v >> (8 * i);
}

static void put_le64(unsigned char *p, uint64_t v)
{
	put_le32(p, v);
	put_le32(p + 4, v >> 32);
}

/* The page hash of every data page of a RAM_PAGES payload that has one.
 * Hashes of ZERO entries stay as mutated, for the check that they are 0. */
static void reseal_page_hashes(unsigned char *payload, uint64_t pages, uint64_t len)
{
	uint64_t data = GW_PAGES_DESC_SIZE(pages);

	for (uint64_t i = 0; i < pages && data + GW_PAGE_SIZE <= len; i++) {
		if (get_le(payload + 16 + 8 * i, 8) & GW_PAGE_ZERO)
			continue;
		put_le64(payload + 16 + 8 * pages + 8 * i, XXH3_64bits(payload + data, GW_PAGE_SIZE));
		data += GW_PAGE_SIZE;
	}
}

/* Recompute every CRC and page hash of the records that fit, as an honest
 * writer would. */
static void reseal(unsigned char *p, size_t n)
{
	size_t off = GW_STREAM_HEADER_SIZE;

	while (off + GW_RECORD_HEADER_SIZE <= n) {
		unsigned char *h = p + off, *payload = h + GW_RECORD_HEADER_SIZE;
		uint64_t len = get_le(h + 8, 8), covered = len;

		if (len > n - off - GW_RECORD_HEADER_SIZE)
			break;
		if (get_le(h, 2) == GW_REC_RAM_PAGES && len >= 16) {
			uint64_t pages = get_le(payload + 4, 4);

			if (pages <= GW_PAGES_MAX && GW_PAGES_DESC_SIZE(pages) <= len) {
				covered = GW_PAGES_DESC_SIZE(pages);
				reseal_page_hashes(payload, pages, len);
			}
		}
		put_le32(h + 16, gw_crc32c(0, payload, covered));
		put_le32(h + 20, gw_crc32c(0, h, 20));
		off += GW_RECORD_HEADER_SIZE + len;
	}
}

static void read_stream(struct test_vm *vm, const unsigned char *data, size_t size)
{
	struct gw_error err = { 0 };
	struct gw_record_info info;
	struct gw_walker *wk;
	struct gw_reader *r;
	int fd = test_memfd(data, size), ret;

	CHECK_OK(gw_reader_new(fd, &r, &err), &err);
	ret = gw_load(vm->m, r, &err);
	/* Every refusal says why. */
	CHECK(ret == 0 || (ret < 0 && err.code == ret && err.msg[0]));
	gw_reader_free(r);
	CHECK(lseek(fd, 0, SEEK_SET) == 0);
	CHECK_OK(gw_reader_new(fd, &r, &err), &err);
	if (gw_walker_new(r, &wk, &err) == 0) {
		size_t len;

		while (gw_walker_next(wk, &info, &err) == 1)
			gw_walker_data(wk, &len);
		gw_walker_free(wk);
	}
	gw_reader_free(r);
	close(fd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* The fuzzer's process is the test machine's; set up once. */
	static struct test_vm vm;
	static bool ready;
	unsigned char *copy;

	if (!ready) {
		test_vm_init(&vm, &corpus_machine);
		ready = true;
	}
	read_stream(&vm, data, size);
	copy = malloc(size ? size : 1);
	CHECK(copy);
	memcpy(copy, data, size);
	reseal(copy, size);
	read_stream(&vm, copy, size);
	free(copy);
	return 0;
}
