# hull — two entry points do everything on a fresh Debian 12 machine (as root):
#   make demo   set up, build, install, boot a microVM and show it runs the guest kernel
#   make test   set up, build, and run the whole test suite (what CI runs)
# Everything expensive (guest kernel) is cached in $(HULL_CACHE_DIR), keyed by its inputs.

SHELL := /bin/bash
export HULL_CACHE_DIR ?= /var/cache/hull
export PATH := $(HOME)/.cargo/bin:$(PATH)
PREFIX ?= /usr/local
SYSCONFDIR ?= /etc
IMAGE_ENV := target/guest-image.env
NESTED_ENV := target/nested.env

.PHONY: all setup guest-image build install demo bench test lint unit integration nested fuzz clean

all: build

setup:
	./scripts/setup-host.sh

guest-image: setup
	./guest-image/build.sh $(IMAGE_ENV)

build: setup
	cargo build --release --locked -p hull-shim -p hull-vmm

install: build guest-image
	install -D -m 0755 target/release/hull $(PREFIX)/bin/hull
	install -D -m 0755 target/release/containerd-shim-hull-v2 $(PREFIX)/bin/containerd-shim-hull-v2
	install -D -m 0755 target/release/hull-vmm $(PREFIX)/bin/hull-vmm
	install -D -m 0755 target/release/hull-vmm-ctl $(PREFIX)/bin/hull-vmm-ctl
	source $(IMAGE_ENV) && \
	install -D -m 0644 "$$HULL_KERNEL" $(PREFIX)/share/hull/vmlinux && \
	install -D -m 0644 "$$HULL_INITRD" $(PREFIX)/share/hull/initramfs.cpio && \
	install -D -m 0644 "$$(dirname $$HULL_KERNEL)/release" $(PREFIX)/share/hull/release
	test -e $(SYSCONFDIR)/hull/config.toml || install -D -m 0644 config/config.toml $(SYSCONFDIR)/hull/config.toml

demo: install
	@echo "== hull check: what this host can run =="
	$(PREFIX)/bin/hull check
	@echo
	PREFIX=$(PREFIX) ./scripts/demo.sh

# Benchmarks (not tests): VM boot, ctr run hull vs runc, PSS per pod. See scripts/bench.sh.
bench: install
	PREFIX=$(PREFIX) ./scripts/bench.sh

lint: setup
	cargo fmt --all -- --check
	cargo clippy --locked --workspace --all-targets -- -D warnings
	cargo clippy --locked --workspace --all-targets --target aarch64-unknown-linux-gnu -- -D warnings

unit: setup
	cargo test --locked --workspace --exclude hull-tests

integration: guest-image
	cargo build --locked -p hull-shim
	source $(IMAGE_ENV) && export HULL_KERNEL HULL_INITRD HULL_SHIM_DIR=$(CURDIR)/target/debug && \
	cargo test --locked -p hull-tests --test boot --test containers_vm --test conformance_vm -- --test-threads=2 && \
	cargo test --locked -p hull-tests --test containerd -- --test-threads=1

# hull-vmm boots the guest image on a real KVM inside an L1 Linux under QEMU TCG with
# emulated SVM (tests/nested/README.md). The L1 kernel build is cached like the guest's.
nested: guest-image
	./tests/nested/build.sh $(IMAGE_ENV) $(NESTED_ENV)
	source $(NESTED_ENV) && export HULL_NESTED_KERNEL HULL_NESTED_INITRD && \
	cargo test --locked -p hull-vmm --test nested -- --ignored --nocapture

# make test ends with a brief run of every fuzz target (TEST_FUZZ_SECONDS each): a crash found
# since the last change fails the suite; long runs are `make fuzz`.
TEST_FUZZ_SECONDS ?= 15
test: lint unit integration nested
	./vmm/fuzz/run.sh $(TEST_FUZZ_SECONDS)

# libFuzzer targets for hull-vmm's guest-input parsers, FUZZ_SECONDS each (vmm/fuzz/README.md).
FUZZ_SECONDS ?= 30
fuzz: setup
	./vmm/fuzz/run.sh $(FUZZ_SECONDS)

clean:
	cargo clean
