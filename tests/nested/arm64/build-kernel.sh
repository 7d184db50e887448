#!/usr/bin/env bash
# Cross-builds the arm64 kernel of the nested arm64 check from Debian's linux-source-6.1:
# allnoconfig + kernel.config, ARCH=arm64 CROSS_COMPILE=aarch64-linux-gnu-. The result
# (Image, .config, the host's gen_init_cpio) is cached in
#   $HULL_CACHE_DIR/kernel-arm64-<hash>/   (default HULL_CACHE_DIR=/var/cache/hull)
# where <hash> covers the source tarball, the cross compiler, kernel.config and this script.
# Prints the artifact directory on stdout. Same structure as guest-image/build-kernel.sh.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${HULL_CACHE_DIR:-/var/cache/hull}
tarball=${HULL_LINUX_TARBALL:-/usr/src/linux-source-6.1.tar.xz}
jobs=${HULL_JOBS:-2}
cross=aarch64-linux-gnu-

log() { echo "build-kernel-arm64: $*" >&2; }

[ -f "$tarball" ] || { log "no kernel source at $tarball (apt-get install linux-source-6.1)"; exit 1; }
command -v "${cross}gcc" >/dev/null || { log "no ${cross}gcc (apt-get install gcc-aarch64-linux-gnu)"; exit 1; }
mkdir -p "$cache"

# The tarball's content hash, remembered by (path, size, mtime) as guest-image/build-kernel.sh does.
stamp=$(stat -c '%n %s %Y' "$tarball")
srcsum_file="$cache/.tarball-sums"
srcsum=$(grep -F "$stamp " "$srcsum_file" 2>/dev/null | tail -n1 | awk '{print $NF}' || true)
if [ -z "$srcsum" ]; then
    srcsum=$(sha256sum "$tarball" | cut -c1-16)
    echo "$stamp $srcsum" >>"$srcsum_file"
fi

hash=$( {
    echo "src $srcsum"
    "${cross}gcc" --version | head -n1
    sha256sum <"$here/kernel.config"
    sha256sum <"$here/build-kernel.sh"
} | sha256sum | cut -c1-16)
out="$cache/kernel-arm64-$hash"

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

build="$cache/kbuild-arm64-$srcsum"
mkdir -p "$build"
cp "$here/kernel.config" "$build/hull.config"
mk() { make -s -C "$src" O="$build" ARCH=arm64 CROSS_COMPILE="$cross" "$@"; }
log "configuring (allnoconfig + kernel.config)"
mk KCONFIG_ALLCONFIG="$build/hull.config" allnoconfig >&2

# Every option asked for must survive Kconfig's dependency resolution.
missing=0
while IFS= read -r line; do
    key=${line%%=*}; val=${line#*=}
    if ! grep -qxF "$key=$val" "$build/.config"; then
        log "wanted $key=$val, got: $(grep -E "^(# )?$key[= ]" "$build/.config" || echo 'not present')"
        missing=1
    fi
done < <(grep -vE '^[[:space:]]*(#|$)' "$build/hull.config")
[ "$missing" = 0 ] || { log "kernel config does not match kernel.config"; exit 1; }

log "building Image with -j$jobs (a cold build takes several minutes)"
start=$(date +%s)
{ mk -j"$jobs" Image && { [ -x "$build/usr/gen_init_cpio" ] || mk usr/; }; } >"$build/build.log" 2>&1 ||
    { tail -n 40 "$build/build.log" >&2; log "kernel build failed; full log in $build/build.log"; exit 1; }
log "built in $(( $(date +%s) - start )) s"

tmp="$out.tmp"
rm -rf "$tmp" && mkdir -p "$tmp"
cp "$build/arch/arm64/boot/Image" "$tmp/Image"
cp "$build/.config" "$tmp/config"
cp "$build/usr/gen_init_cpio" "$tmp/gen_init_cpio"
mk kernelrelease >"$tmp/release"
touch "$tmp/.done"
rm -rf "$out" && mv "$tmp" "$out"
echo "$out"
