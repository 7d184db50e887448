#!/usr/bin/env bash
# Builds the nested harness's L1: a KVM-host kernel (guest fragments + guest-image/l1, cached
# by build-kernel.sh) and an L1 initramfs holding busybox, init.sh as /init, a static
# hull-vmm (with hull-vsock-probe), the L2 guest image, an L2 test initramfs (busybox +
# l2-init.sh) and the bare garbage guest (garbage-guest.S). Writes a sourceable env file ($2):
#   HULL_NESTED_KERNEL=<L1 bzImage>   HULL_NESTED_INITRD=<L1 initramfs>
# Usage: build.sh GUEST_IMAGE_ENV NESTED_ENV   (GUEST_IMAGE_ENV from guest-image/build.sh)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
image_env=${1:?usage: build.sh GUEST_IMAGE_ENV NESTED_ENV}
nested_env=${2:?usage: build.sh GUEST_IMAGE_ENV NESTED_ENV}
log() { echo "nested/build: $*" >&2; }

# shellcheck disable=SC1090
source "$image_env"
# The bzImage check boots the same kernel's bzImage, which build-kernel.sh keeps beside it.
l2_bzimage="$(dirname "$HULL_KERNEL")/bzImage"
for f in "$HULL_KERNEL" "$l2_bzimage" "$HULL_INITRD"; do
    [ -f "$f" ] || { log "L2 image file $f missing (run guest-image/build.sh)"; exit 1; }
done

kdir=$(HULL_KERNEL_EXTRA="$top/guest-image/l1" "$top/guest-image/build-kernel.sh")

cargo build --quiet --release --locked -p hull-vmm --target x86_64-unknown-linux-musl \
    --manifest-path "$top/Cargo.toml"
vmm="$top/target/x86_64-unknown-linux-musl/release/hull-vmm"
probe="$top/target/x86_64-unknown-linux-musl/release/hull-vsock-probe"
ctl="$top/target/x86_64-unknown-linux-musl/release/hull-vmm-ctl"

busybox=${HULL_BUSYBOX:-/bin/busybox}
if ! file "$busybox" 2>/dev/null | grep -q 'statically linked'; then
    log "$busybox is not a static busybox (apt-get install busybox-static)"; exit 1
fi

out="$top/target/nested"
mkdir -p "$out"

# L2 test initramfs for the blk/net/virtiofs checks (the guest image's /init is hull-agent):
# busybox and l2-init.sh as /init, booting the guest image's kernel.
cat >"$out/l2-test.list" <<LIST
dir /dev 0755 0 0
nod /dev/console 0600 0 0 c 5 1
dir /proc 0555 0 0
dir /sys 0555 0 0
dir /tmp 1777 0 0
dir /mnt 0755 0 0
dir /bin 0755 0 0
file /bin/busybox $busybox 0755 0 0
file /init $here/l2-init.sh 0755 0 0
LIST
"$kdir/gen_init_cpio" "$out/l2-test.list" >"$out/l2-test.cpio"

# The garbage check's hostile guest: a bare PVH ELF (see garbage-guest.S).
gcc -c -m64 "$here/garbage-guest.S" -o "$out/garbage-guest.o"
ld -m elf_x86_64 -N -static -nostdlib --no-warn-rwx-segments -Ttext=0x100000 -e _start \
    -o "$out/garbage-guest" "$out/garbage-guest.o"

# shim-hullvmm check: the shim's own (ignored) test that boots the guest image through the
# hull-vmm backend, built static so it runs in L1.
shim_tests=$(cargo test --quiet --release --locked -p hull-shim --lib \
    --target x86_64-unknown-linux-musl --no-run --message-format=json \
    --manifest-path "$top/Cargo.toml" | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)
[ -x "$shim_tests" ] || { log "building the hull-shim test binary failed"; exit 1; }

# virtiofs check: virtiofsd (dynamically linked; its libraries come along); the guest
# side is l2-init.sh's hull.l2=virtiofs in the L2 test initramfs above.
virtiofsd=$(command -v "${HULL_VIRTIOFSD:-virtiofsd}" || true)
[ -n "$virtiofsd" ] || { log "virtiofsd not found (cargo install virtiofsd)"; exit 1; }
virtiofsd_files() {
    echo "file /bin/virtiofsd $(readlink -f "$virtiofsd") 0755 0 0"
    local lib dirs=""
    for lib in $(ldd "$virtiofsd" | grep -o '/[^ ]*'); do
        local d="" part
        for part in $(dirname "$lib" | tr / ' '); do  # every ancestor, parents first
            d="$d/$part"
            case " $dirs " in *" $d "*) ;; *) dirs="$dirs $d"; echo "dir $d 0755 0 0" ;; esac
        done
        echo "file $lib $(readlink -f "$lib") 0755 0 0"
    done
}
cat >"$out/l1.list" <<LIST
dir /dev 0755 0 0
nod /dev/console 0600 0 0 c 5 1
dir /proc 0555 0 0
dir /sys 0555 0 0
dir /tmp 1777 0 0
dir /bin 0755 0 0
dir /l2 0755 0 0
file /bin/busybox $busybox 0755 0 0
file /init $here/init.sh 0755 0 0
file /bin/hull-vmm $vmm 0755 0 0
file /bin/hull-vsock-probe $probe 0755 0 0
file /bin/hull-vmm-ctl $ctl 0755 0 0
file /l2/vmlinux $HULL_KERNEL 0644 0 0
file /l2/bzImage $l2_bzimage 0644 0 0
file /l2/initramfs.cpio $HULL_INITRD 0644 0 0
file /l2/test.cpio $out/l2-test.cpio 0644 0 0
file /l2/garbage-guest $out/garbage-guest 0644 0 0
file /bin/hull-shim-tests $shim_tests 0755 0 0
LIST
virtiofsd_files >>"$out/l1.list"
"$kdir/gen_init_cpio" "$out/l1.list" >"$out/l1-initramfs.cpio.tmp"
mv "$out/l1-initramfs.cpio.tmp" "$out/l1-initramfs.cpio"
printf 'HULL_NESTED_KERNEL=%s\nHULL_NESTED_INITRD=%s\n' "$kdir/bzImage" "$out/l1-initramfs.cpio" >"$nested_env"
log "L1 kernel $(cat "$kdir/release") $kdir/bzImage; initramfs $out/l1-initramfs.cpio ($(stat -c %s "$out/l1-initramfs.cpio") bytes)"
