/*
 * libFuzzer target for the whole destination path of godwit-vmm: gw_load()
 * of arbitrary bytes into the VMM's RAM layout and its real sections
 * (registered by the files of vmm_state_sources, with their ranges,
 * validators and hooks), then the loaded UART and test device driven
 * through their ports the way a guest drives them, and after a complete
 * load a save and reload of what they hold
 * (tests/fuzz/loadvm.h). State that gets past the checks but should not
 * have shows up as a device reading or writing outside its State (ASan,
 * UBSan), as a device that misbehaves, or as a check that refuses what
 * the devices produce themselves.
 *
 * As in fuzz_stream.c each input is loaded as it is and once more
 * resealed, so that mutations of device state get past the CRCs. Half
 * the mutations are libFuzzer's own; the other half write one value into
 * one record picked at random (see LLVMFuzzerCustomMutator).
 *
 * Seeds: tests/fuzz/corpus-load (streams of a real godwit-vmm, and the
 * hand-made hostile ones; tests/fuzz/make_corpus_load.py writes them).
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "lib/internal.h"
#include "loadvm.h"
#include "reseal.h"

size_t LLVMFuzzerMutate(uint8_t *data, size_t size, size_t max_size);

/* Edges of the ranges and validators, and of the types. */
static const uint64_t interesting[] = {
	0, 1, 2, 3, 4, 7, 8, 9, 15, 16, 17, 0x1f, 0x20, 0x7f, 0x80, 0xff, 0x100, 0x101,
	0xffff, 0x10000, 0xffffff, 0x1000000, 0x7fffffff, 0x80000000, 0xffffffff,
	0x100000000ull, 0xfec00000, 0x8000000000000000ull, UINT64_MAX,
};

static uint64_t next(uint64_t *x)
{
	/* splitmix64: libFuzzer hands us the seed, we only spread it. */
	uint64_t z = (*x += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/*
 * Record by record rather than byte by byte: the 29 bytes of the UART's
 * state get as many changes as the 10 KiB of a vCPU's, and a value lands
 * whole (1, 2, 4 or 8 bytes, little-endian) where a field may be, so a
 * count or an index is as likely to be 0x100000 as 0x13. The length of
 * the input stays, and the second load of run() reseals the record.
 */
size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned int seed)
{
	size_t recs[64], n = 0, off = GW_STREAM_HEADER_SIZE;
	uint64_t x = seed;

	while (off + GW_RECORD_HEADER_SIZE <= size && n < GW_ARRAY_SIZE(recs)) {
		uint64_t len = gw_get_le64(data + off + 8);

		if (len > size - off - GW_RECORD_HEADER_SIZE)
			break;
		if (len)
			recs[n++] = off;
		off += GW_RECORD_HEADER_SIZE + len;
	}
	if (n == 0 || next(&x) & 1)
		return LLVMFuzzerMutate(data, size, max_size);

	size_t rec = recs[next(&x) % n];
	uint64_t len = gw_get_le64(data + rec + 8);
	unsigned width = 1u << (next(&x) % 4);
	uint64_t v = next(&x) & 1 ? interesting[next(&x) % GW_ARRAY_SIZE(interesting)] : next(&x);

	while (width > len)
		width /= 2;
	unsigned char *p = data + rec + GW_RECORD_HEADER_SIZE + next(&x) % (len - width + 1);
	for (unsigned i = 0; i < width; i++)
		p[i] = (unsigned char)(v >> (8 * i));
	return size;
}

static void run(struct loadvm *vm, const unsigned char *p, size_t len)
{
	struct gw_error err = { 0 };
	int ret;

	loadvm_reset(vm);
	ret = loadvm_load(vm, p, len, &err);
	loadvm_drive(vm);
	if (ret == 0)
		loadvm_round_trip(vm);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* The fuzzer's process is the destination; set up once. */
	static struct loadvm vm;
	static bool ready;
	unsigned char *copy;

	if (!ready) {
		loadvm_init(&vm);
		ready = true;
	}
	run(&vm, data, size);
	copy = malloc(size ? size : 1);
	CHECK(copy);
	memcpy(copy, data, size);
	reseal(copy, size);
	run(&vm, copy, size);
	free(copy);
	return 0;
}
