#!/usr/bin/env bash
# Builds the whole guest image (kernel + static hull-agent + initramfs) into the cache and
# writes the paths as a sourceable env file ($1, default target/guest-image.env):
#   HULL_KERNEL=<cache>/kernel-<hash>/vmlinux
#   HULL_INITRD=<cache>/initramfs-<hash>/initramfs.cpio
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
envfile=${1:-$top/target/guest-image.env}

kdir=$("$here/build-kernel.sh")
# The agent is PID 1 of a guest without a dynamic loader: a static binary. Static glibc
# (not musl) because libcontainer's seccomp support links Debian's libseccomp.a. An explicit
# --target keeps these RUSTFLAGS away from build scripts and proc macros.
RUSTFLAGS="-C target-feature=+crt-static" \
LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=/usr/lib/x86_64-linux-gnu \
    cargo build --quiet --release --locked -p hull-agent --target x86_64-unknown-linux-gnu \
    --manifest-path "$top/Cargo.toml"
agent="$top/target/x86_64-unknown-linux-gnu/release/hull-agent"
idir=$("$here/build-initramfs.sh" "$agent" "$kdir")

mkdir -p "$(dirname "$envfile")"
printf 'HULL_KERNEL=%s\nHULL_INITRD=%s\n' "$kdir/vmlinux" "$idir/initramfs.cpio" >"$envfile"
echo "guest image: kernel $(cat "$kdir/release"): $kdir/vmlinux ($(stat -c %s "$kdir/vmlinux") bytes)," \
     "bzImage $(stat -c %s "$kdir/bzImage") bytes; initramfs $idir/initramfs.cpio ($(stat -c %s "$idir/initramfs.cpio") bytes)" >&2
