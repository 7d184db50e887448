#!/usr/bin/env bash
# Builds hull's guest kernel from Debian's linux-source-6.1 with the fragments in kernel/,
# merged onto allnoconfig. The result (vmlinux = PVH ELF, bzImage, .config) goes into
#   $HULL_CACHE_DIR/kernel-<hash>/     (default HULL_CACHE_DIR=/var/cache/hull)
# where <hash> covers every input: the fragments, this script, the source tarball and the
# compiler. Unchanged inputs mean no rebuild. Prints the artifact directory on stdout.
#
# HULL_KERNEL_EXTRA=<dir> (optional) adds <dir>/*.config after kernel/*.config (a later
# fragment overrides an earlier one) and builds a separate kernel, cached as
#   $HULL_CACHE_DIR/kernel-<basename dir>-<hash>/
# The nested test harness uses it for its L1 KVM host kernel (guest-image/l1). Unset, the
# inputs and the cache key are exactly the guest kernel's.
#
# HULL_KERNEL_ARCH=arm64 (optional; default x86_64) cross-builds an arm64 `Image` with
# aarch64-linux-gnu-gcc, cached as $HULL_CACHE_DIR/kernel-arm64-<hash>/; with it,
# HULL_KERNEL_BASE=<dir> names the fragments to start from instead of kernel/ (the x86
# guest's). tests/nested/arm64/build-kernel.sh uses both.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${HULL_CACHE_DIR:-/var/cache/hull}
tarball=${HULL_LINUX_TARBALL:-/usr/src/linux-source-6.1.tar.xz}
jobs=${HULL_JOBS:-$(nproc)}
extra=${HULL_KERNEL_EXTRA:-}
arch=${HULL_KERNEL_ARCH:-x86_64}
base=$(cd "${HULL_KERNEL_BASE:-$here/kernel}" && pwd)
case "$arch" in
    x86_64) cross=; karch=(); targets=(vmlinux bzImage); variant=kernel ;;
    arm64) cross=aarch64-linux-gnu-; karch=(ARCH=arm64 CROSS_COMPILE="$cross"); targets=(Image)
           variant=kernel-arm64 ;;
    *) echo "build-kernel: HULL_KERNEL_ARCH=$arch: expected x86_64 or arm64" >&2; exit 1 ;;
esac
fragments=("$base"/*.config)
[ -f "${fragments[0]}" ] || { echo "build-kernel: no *.config in $base" >&2; exit 1; }
if [ -n "$extra" ]; then
    extra=$(cd "$extra" && pwd)
    extra_fragments=("$extra"/*.config)
    [ -f "${extra_fragments[0]}" ] || { echo "build-kernel: no *.config in $extra" >&2; exit 1; }
    fragments+=("${extra_fragments[@]}")
    variant="$variant-$(basename "$extra")"
fi

log() { echo "build-kernel: $*" >&2; }
kmake() { make -s -C "$src" O="$build" "${karch[@]}" "$@"; }

[ -f "$tarball" ] || { log "no kernel source at $tarball (apt-get install linux-source-6.1)"; exit 1; }
command -v "${cross}gcc" >/dev/null || { log "no ${cross}gcc (apt-get install gcc-aarch64-linux-gnu)"; exit 1; }
mkdir -p "$cache"

# The tarball is hashed by content once and remembered by (path, size, mtime): hashing
# 130 MiB on every make invocation would cost a second each time.
stamp=$(stat -c '%n %s %Y' "$tarball")
srcsum_file="$cache/.tarball-sums"
srcsum=$(grep -F "$stamp " "$srcsum_file" 2>/dev/null | tail -n1 | awk '{print $NF}' || true)
if [ -z "$srcsum" ]; then
    srcsum=$(sha256sum "$tarball" | cut -c1-16)
    echo "$stamp $srcsum" >>"$srcsum_file"
fi

# cfghash names the build tree (what the compiler sees); hash names the artifacts (adds
# this script), so editing the script reuses the compiled tree incrementally.
cfghash=$( {
    echo "src $srcsum"
    "${cross}gcc" --version | head -n1
    # The guest's own fragments by their path in the checkout (the key the x86 guest
    # kernel always had); another base by file name, like the extra fragments.
    for f in "$base"/*.config; do
        if [ "$base" = "$here/kernel" ]; then sha256sum "$f"; else echo "base $(basename "$f") $(sha256sum <"$f")"; fi
    done
    # Extra fragments are named by file name only, so the key does not depend on where
    # the checkout lives.
    if [ -n "$extra" ]; then
        for f in "${extra_fragments[@]}"; do echo "extra $(basename "$f") $(sha256sum <"$f")"; done
    fi
} | sed "s#$here/##" | sha256sum | cut -c1-16)
hash=$( { echo "$cfghash"; sha256sum <"$here/build-kernel.sh"; } | sha256sum | cut -c1-16)
out="$cache/$variant-$hash"

if [ -f "$out/.done" ]; then
    log "cached: $out"
    echo "$out"
    exit 0
fi

exec 9>"$cache/.kernel.lock"
flock 9
if [ -f "$out/.done" ]; then echo "$out"; exit 0; fi

src="$cache/src/linux-$srcsum"
if [ ! -f "$src/.extracted" ]; then
    log "extracting $tarball"
    rm -rf "$src" && mkdir -p "$src"
    tar -xf "$tarball" -C "$src" --strip-components=1
    touch "$src/.extracted"
fi

# One build tree per variant and source: a changed fragment rebuilds incrementally in it.
build="$cache/kbuild-$variant-$srcsum"
mkdir -p "$build"
cat "${fragments[@]}" >"$build/hull.config"
log "configuring $arch (allnoconfig + fragments)"
kmake KCONFIG_ALLCONFIG="$build/hull.config" allnoconfig >&2

# Every option a fragment asks for must survive Kconfig's dependency resolution: a
# silently dropped option would otherwise surface much later as a missing guest feature.
# Only the last assignment of an option counts (an extra fragment may override one).
missing=0
while IFS= read -r line; do
    key=${line%%=*}; val=${line#*=}
    if [ "$val" = n ]; then
        if grep -q "^$key=" "$build/.config"; then log "wanted $key=n, got $(grep "^$key=" "$build/.config")"; missing=1; fi
    elif ! grep -qxF "$key=$val" "$build/.config"; then
        log "wanted $key=$val, got: $(grep -E "^(# )?$key[= ]" "$build/.config" || echo 'not present')"
        missing=1
    fi
done < <(grep -vE '^[[:space:]]*(#|$)' "$build/hull.config" | tac | awk -F= '!seen[$1]++' | tac)
[ "$missing" = 0 ] || { log "kernel config does not match the fragments"; exit 1; }

log "building ${targets[*]} with -j$jobs (a cold build takes minutes)"
start=$(date +%s)
# gen_init_cpio is a host program of usr/ (built with vmlinux when BLK_DEV_INITRD=y).
# It cannot be a make goal of its own: a cold tree has no rule for it ("No rule to make
# target 'usr/gen_init_cpio'"), so build the usr/ directory if vmlinux did not.
{ kmake -j"$jobs" "${targets[@]}" &&
  { [ -x "$build/usr/gen_init_cpio" ] || kmake usr/; }
} >"$build/build.log" 2>&1 ||
    { tail -n 40 "$build/build.log" >&2; log "kernel build failed; full log in $build/build.log"; exit 1; }
log "built in $(( $(date +%s) - start )) s"

tmp="$out.tmp"
rm -rf "$tmp" && mkdir -p "$tmp"
if [ "$arch" = arm64 ]; then
    cp "$build/arch/arm64/boot/Image" "$tmp/Image"
else
    cp "$build/vmlinux" "$tmp/vmlinux"
    cp "$build/arch/x86/boot/bzImage" "$tmp/bzImage"
fi
cp "$build/.config" "$tmp/config"
# The kernel's own cpio writer: builds the initramfs (with its /dev/console node) without root.
cp "$build/usr/gen_init_cpio" "$tmp/gen_init_cpio"
kmake kernelrelease >"$tmp/release"
touch "$tmp/.done"
rm -rf "$out" && mv "$tmp" "$out"
echo "$out"
