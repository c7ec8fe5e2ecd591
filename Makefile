# Thin wrapper around meson. Every target installs the Debian packages it
# needs first, so the README's two commands work on a fresh Debian 12.
#   make demo    boot a guest and live-migrate it (release build)
#   make check   build with ASan/UBSan and run every test
#   make build   just the release build
#   make bench   godwit against QEMU and the machine's limits (QUICK=1: < 5 min)
#   make fuzz    run the stream and load fuzzers (clang, libFuzzer; FUZZ_SECONDS=60 each)

DEPS := meson ninja-build pkg-config gcc libc6-dev python3 libjansson-dev \
        libxxhash-dev liburing-dev libgnutls28-dev gnutls-bin clang-format
BUILD := build-release
TESTBUILD := build

.PHONY: all build deps check demo bench fuzz clean

all: build

deps:
	@./scripts/install-deps $(DEPS)

$(BUILD)/build.ninja:
	meson setup $(BUILD) --buildtype=release -Dwerror=true

$(TESTBUILD)/build.ninja:
	meson setup $(TESTBUILD) --buildtype=debugoptimized -Db_sanitize=address,undefined -Db_lundef=false

build: deps $(BUILD)/build.ninja
	ninja -C $(BUILD)

check: deps $(TESTBUILD)/build.ninja
	ninja -C $(TESTBUILD)
	./scripts/run-tests $(TESTBUILD)

demo: build
	./scripts/demo $(BUILD)

# Writes docs/benchmarks.md, its plots and bench/results/<date>.jsonl.
BENCH_DEPS := qemu-system-x86 gnuplot-nox iproute2 fio

bench:
	@./scripts/install-deps $(BENCH_DEPS)
	$(MAKE) build
	GW_BENCH_COMMAND="make bench$(if $(QUICK), QUICK=1)" \
		python3 bench/run.py --build $(BUILD) $(if $(QUICK),--quick)

FUZZBUILD := build-fuzz
FUZZ_SECONDS ?= 60

$(FUZZBUILD)/build.ninja:
	CC=clang meson setup $(FUZZBUILD) --buildtype=debugoptimized -Db_sanitize=address,undefined -Db_lundef=false

# Each fuzzer works on a copy so the checked-in seed corpora stay small:
# fuzz_stream on tests/fuzz/corpus, fuzz_load (the destination path with
# godwit-vmm's sections) on tests/fuzz/corpus-load. A crash leaves its
# input as $(FUZZBUILD)/crash-*.
fuzz:
	@./scripts/install-deps $(DEPS) clang
	$(MAKE) $(FUZZBUILD)/build.ninja
	ninja -C $(FUZZBUILD) tests/fuzz/fuzz_stream tests/fuzz/fuzz_load
	mkdir -p $(FUZZBUILD)/corpus && cp tests/fuzz/corpus/* $(FUZZBUILD)/corpus/
	mkdir -p $(FUZZBUILD)/corpus-load && cp tests/fuzz/corpus-load/* $(FUZZBUILD)/corpus-load/
	$(FUZZBUILD)/tests/fuzz/fuzz_stream -max_total_time=$(FUZZ_SECONDS) \
		-artifact_prefix=$(FUZZBUILD)/ $(FUZZBUILD)/corpus
	$(FUZZBUILD)/tests/fuzz/fuzz_load -max_total_time=$(FUZZ_SECONDS) \
		-artifact_prefix=$(FUZZBUILD)/ $(FUZZBUILD)/corpus-load

clean:
	rm -rf $(BUILD) $(TESTBUILD) $(FUZZBUILD)
