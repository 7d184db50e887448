#!/usr/bin/env bash
# Builds the arm64 nested check: the arm64 kernel Image (build-kernel.sh, cached; the same
# Image is L1 and L2), static aarch64-musl hull-vmm, hull-vmm-ctl and hull-vsock-probe, a
# static aarch64-glibc hull-agent, vsock-ping.c (static, both ends of the vsock round trip), an L2 initramfs
# (busybox, l2-init.sh, vsock-ping), the agent initramfs (hull-agent as /init) and the L1
# initramfs (busybox, l1-init.sh as /init, the host-side binaries, the Image, both L2
# initramfs). busybox is Debian's busybox-static:arm64, downloaded and unpacked (not
# installed). Writes a sourceable env file ($1):
#   HULL_ARM64_KERNEL=<Image>   HULL_ARM64_INITRD=<L1 initramfs>
# Needs: qemu-system-arm gcc-aarch64-linux-gnu (apt), `dpkg --add-architecture arm64`,
# `rustup target add aarch64-unknown-linux-musl`.
# Usage: build.sh ENV_FILE
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../../.." && pwd)
env_file=${1:?usage: build.sh ENV_FILE}
log() { echo "nested/arm64/build: $*" >&2; }

kdir=$("$here/build-kernel.sh")
out="$top/target/nested-arm64"
mkdir -p "$out"

if [ ! -x "$out/busybox/bin/busybox" ]; then
    log "fetching busybox-static:arm64"
    rm -rf "$out/busybox" "$out/deb" && mkdir -p "$out/deb"
    (cd "$out/deb" && apt-get download busybox-static:arm64 >&2)
    dpkg-deb -x "$out"/deb/busybox-static_*_arm64.deb "$out/busybox"
fi
busybox="$out/busybox/bin/busybox"

CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc \
CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc \
    cargo build --quiet --release --locked -p hull-vmm \
    --bin hull-vmm --bin hull-vmm-ctl --bin hull-vsock-probe \
    --target aarch64-unknown-linux-musl --manifest-path "$top/Cargo.toml"
vmm="$top/target/aarch64-unknown-linux-musl/release/hull-vmm"
ctl="$top/target/aarch64-unknown-linux-musl/release/hull-vmm-ctl"
probe="$top/target/aarch64-unknown-linux-musl/release/hull-vsock-probe"

# hull-agent as guest-image/build.sh builds it for x86_64: static glibc, because
# libcontainer links libseccomp.a, here Debian's libseccomp-dev:arm64 (downloaded and
# unpacked, not installed).
if [ ! -f "$out/libseccomp/usr/lib/aarch64-linux-gnu/libseccomp.a" ]; then
    log "fetching libseccomp-dev:arm64"
    rm -rf "$out/libseccomp" "$out/deb-seccomp" && mkdir -p "$out/deb-seccomp"
    (cd "$out/deb-seccomp" && apt-get download libseccomp-dev:arm64 >&2)
    dpkg-deb -x "$out"/deb-seccomp/libseccomp-dev_*_arm64.deb "$out/libseccomp"
fi
RUSTFLAGS="-C target-feature=+crt-static" \
LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH="$out/libseccomp/usr/lib/aarch64-linux-gnu" \
CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc \
    cargo build --quiet --release --locked -p hull-agent --target aarch64-unknown-linux-gnu \
    --manifest-path "$top/Cargo.toml"
agent="$top/target/aarch64-unknown-linux-gnu/release/hull-agent"
aarch64-linux-gnu-gcc -static -O2 -Wall -Wextra -Werror -o "$out/vsock-ping" "$here/vsock-ping.c"

cat >"$out/l2.list" <<LIST
dir /dev 0755 0 0
nod /dev/console 0600 0 0 c 5 1
dir /proc 0555 0 0
dir /bin 0755 0 0
file /bin/busybox $busybox 0755 0 0
file /init $here/l2-init.sh 0755 0 0
file /bin/vsock-ping $out/vsock-ping 0755 0 0
LIST
"$kdir/gen_init_cpio" "$out/l2.list" >"$out/l2.cpio"

# hull's own guest userland: the initramfs guest-image/build-initramfs.sh makes for x86_64
# (hull-agent as /init, its mount points), here from the aarch64 agent.
idir=$(HULL_STRIP=aarch64-linux-gnu-strip "$top/guest-image/build-initramfs.sh" "$agent" "$kdir")
cp "$idir/initramfs.cpio" "$out/agent.cpio"

cat >"$out/l1.list" <<LIST
dir /dev 0755 0 0
nod /dev/console 0600 0 0 c 5 1
dir /proc 0555 0 0
dir /sys 0555 0 0
dir /tmp 1777 0 0
dir /bin 0755 0 0
file /bin/busybox $busybox 0755 0 0
file /init $here/l1-init.sh 0755 0 0
file /bin/hull-vmm $vmm 0755 0 0
file /bin/hull-vmm-ctl $ctl 0755 0 0
file /bin/hull-vsock-probe $probe 0755 0 0
file /bin/vsock-ping $out/vsock-ping 0755 0 0
file /Image $kdir/Image 0644 0 0
file /l2.cpio $out/l2.cpio 0644 0 0
file /agent.cpio $out/agent.cpio 0644 0 0
LIST
"$kdir/gen_init_cpio" "$out/l1.list" >"$out/l1.cpio"

cat >"$env_file" <<ENV
HULL_ARM64_KERNEL=$kdir/Image
HULL_ARM64_INITRD=$out/l1.cpio
ENV
log "L1 kernel $kdir/Image, initramfs $out/l1.cpio ($(du -h "$out/l1.cpio" | cut -f1))"
