#!/usr/bin/env bash
# Installs what hull needs to build and run on a fresh Debian 12 machine, idempotently:
# Debian packages, the Rust targets, and rust-vmm's vhost-device-vsock from crates.io.
# A second run only checks (no apt-get update when nothing is missing).
set -euo pipefail

log() { echo "setup-host: $*" >&2; }

packages=(
    qemu-system-x86          # the QEMU backend (microvm machine, TCG or KVM)
    linux-source-6.1         # the guest kernel's source
    build-essential flex bison bc libelf-dev libssl-dev   # to build the guest kernel
    file                     # build-initramfs.sh checks that the agent is static
    python3                  # builds the test image; the shim's tests fake a daemon with it
    busybox-static           # the rootfs of test containers
    runc                     # the reference runtime of the conformance tests
    containerd               # the containerd tests and the demo run a private instance
    libcap-ng-dev            # to build virtiofsd (the pod share of the QEMU backend)
    libseccomp-dev pkg-config   # the agent's seccomp support (libcontainer), linked statically
    zlib1g-dev               # libbpf (vendored by libbpf-sys, with libelf-dev above): cgroup v2 device rules in the guest
)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi

targets=(x86_64-unknown-linux-musl aarch64-unknown-linux-gnu)
installed=$(rustup target list --installed)
for t in "${targets[@]}"; do
    grep -qx "$t" <<<"$installed" || { log "adding rust target $t"; rustup target add "$t" >&2; }
done

# vhost-device-vsock 0.3: the version whose hybrid-vsock behaviour docs/protocol.md describes.
# Into /usr/local/bin, not ~/.cargo/bin: the shim starts it as each pod's own uid
# (`jail_ids`), which cannot reach root's home.
vsock_version=0.3.0
if ! /usr/local/bin/vhost-device-vsock --version 2>/dev/null | grep -q " $vsock_version"; then
    log "installing vhost-device-vsock $vsock_version from crates.io into /usr/local/bin"
    cargo install --locked --quiet --root /usr/local vhost-device-vsock@"$vsock_version" >&2
fi
# virtiofsd 1.14: the virtio-fs daemon of the QEMU backend (one per VM with a pod share).
virtiofsd_version=1.14.0
if ! /usr/local/bin/virtiofsd --version 2>/dev/null | grep -q " $virtiofsd_version"; then
    log "installing virtiofsd $virtiofsd_version from crates.io into /usr/local/bin"
    cargo install --locked --quiet --root /usr/local virtiofsd@"$virtiofsd_version" >&2
fi
# cargo-fuzz 0.13: builds and runs the libFuzzer targets of vmm/fuzz (make fuzz).
cargo_fuzz_version=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -q " $cargo_fuzz_version"; then
    log "installing cargo-fuzz $cargo_fuzz_version from crates.io"
    cargo install --locked --quiet cargo-fuzz@"$cargo_fuzz_version" >&2
fi
command -v vhost-device-vsock >/dev/null || {
    log "vhost-device-vsock is not in PATH (add ~/.cargo/bin)"; exit 1; }
