# Thin wrapper around meson. Every target installs the Debian packages it
# needs first, so the README's two commands work on a fresh Debian 12.
#   make demo    boot a guest and live-migrate it (release build)
#   make check   build with ASan/UBSan and run every test
#   make build   just the release build

DEPS := meson ninja-build pkg-config gcc libc6-dev python3 libjansson-dev \
        libxxhash-dev
BUILD := build-release
TESTBUILD := build

.PHONY: all build deps check demo clean

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

clean:
	rm -rf $(BUILD) $(TESTBUILD)
