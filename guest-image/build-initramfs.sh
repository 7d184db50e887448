#!/usr/bin/env bash
# Builds hull's initramfs: hull-agent as /init plus the directories it mounts on, and
# /dev/console (the kernel opens it for init's stdio before devtmpfs is mounted).
# Usage: build-initramfs.sh AGENT_BINARY KERNEL_DIR
#   KERNEL_DIR is build-kernel.sh's output (for the kernel's gen_init_cpio, which writes the
#   archive, device node included, without needing root).
#   HULL_STRIP (optional, default strip): the strip for the agent's architecture
#   (tests/nested/arm64 passes aarch64-linux-gnu-strip).
# Output: $HULL_CACHE_DIR/initramfs-<hash>/initramfs.cpio (uncompressed: nothing to
# decompress at boot), keyed by the agent binary and this script. Prints the directory.
set -euo pipefail

agent=${1:?usage: build-initramfs.sh AGENT_BINARY KERNEL_DIR}
kdir=${2:?usage: build-initramfs.sh AGENT_BINARY KERNEL_DIR}
here=$(cd "$(dirname "$0")" && pwd)
cache=${HULL_CACHE_DIR:-/var/cache/hull}

[ -x "$agent" ] || { echo "build-initramfs: agent binary $agent not found" >&2; exit 1; }
[ -x "$kdir/gen_init_cpio" ] || { echo "build-initramfs: $kdir/gen_init_cpio not found (run build-kernel.sh)" >&2; exit 1; }
# The agent must be static: the initramfs has no dynamic loader.
if file "$agent" 2>/dev/null | grep -q 'dynamically linked'; then
    echo "build-initramfs: $agent is dynamically linked; build it for x86_64-unknown-linux-musl" >&2
    exit 1
fi

hash=$( { sha256sum <"$agent"; sha256sum <"$here/build-initramfs.sh"; } | sha256sum | cut -c1-16)
out="$cache/initramfs-$hash"
if [ -f "$out/.done" ]; then echo "$out"; exit 0; fi

tmp=$(mktemp -d "$cache/initramfs-$hash.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# Symbols stripped: the unpacked /init lives in guest RAM for the VM's lifetime, and every
# VM start copies the archive into guest memory (about 20% smaller; panics in the guest
# then print addresses, which `addr2line -e <the unstripped agent>` resolves).
"${HULL_STRIP:-strip}" -o "$tmp/init" "$agent"
cat >"$tmp/list" <<LIST
dir /dev 0755 0 0
nod /dev/console 0600 0 0 c 5 1
dir /proc 0555 0 0
dir /sys 0555 0 0
dir /run 0755 0 0
dir /tmp 1777 0 0
dir /etc 0755 0 0
file /init $tmp/init 0755 0 0
LIST
"$kdir/gen_init_cpio" "$tmp/list" >"$tmp/initramfs.cpio"
chmod 0755 "$tmp"
touch "$tmp/.done"
rm -f "$tmp/list" "$tmp/init"
rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
echo "$out"
