#!/usr/bin/env bash
# The arm64 kernel of the nested arm64 check: guest-image/build-kernel.sh cross-building
# Debian's linux-source-6.1 for arm64 (ARCH=arm64 CROSS_COMPILE=aarch64-linux-gnu-) from
# allnoconfig + kernel.config (here) instead of the x86 guest's fragments. Cached in
#   $HULL_CACHE_DIR/kernel-arm64-<hash>/   (Image, config, the host's gen_init_cpio, release)
# Prints that directory on stdout. A cold build takes several minutes at -j2.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
HULL_KERNEL_ARCH=arm64 HULL_KERNEL_BASE="$here" HULL_JOBS=${HULL_JOBS:-2} \
    exec "$here/../../../guest-image/build-kernel.sh"
