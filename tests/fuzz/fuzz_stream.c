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
#include <unistd.h>

#include "check.h"
#include "reseal.h"
#include "testvm.h"

static const struct test_vm_opts corpus_machine = {
	.ram_size = { 2 * GW_PAGE_SIZE, GW_PAGE_SIZE },
};

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
