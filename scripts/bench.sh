#!/usr/bin/env bash
# make bench: hull's benchmarks on this machine (not tests; nothing is asserted).
#  1. hull bench boot: launch -> agent Check answered, N boots (QEMU backend).
#  2. hull bench ctr: ctr run --rm busybox true, hull vs runc, through the same private
#     containerd (medians and ratio), and the PSS of one running pod's host processes
#     (shim, QEMU, vhost-device-vsock, virtiofsd), guest memory shown apart.
# Writes target/bench/*.json. Figures measured here under TCG are TCG figures: never quote
# them as KVM boot times.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
prefix=${PREFIX:-/usr/local}
runs=${HULL_BENCH_RUNS:-10}
out="$top/target/bench"
mkdir -p "$out"

echo "== 1. VM boot: launch -> agent Check answered ($runs boots) =="
"$prefix/bin/hull" bench boot -n "$runs" --json "$out/boot.json" --state-root /run/hull-bench 2>/dev/null

dir=$(mktemp -d /tmp/hull-bench.XXXXXX)
trap '"$top/scripts/containerd-private.sh" stop "$dir"' EXIT
"$top/scripts/containerd-private.sh" start "$dir" "$prefix/bin"
python3 "$top/tests/images/build-busybox-image.py" "$dir/busybox.tar" docker.io/hull/busybox:latest
ctr -a "$dir/containerd.sock" -n hull-bench images import "$dir/busybox.tar" >/dev/null

echo
echo "== 2+3. hull bench ctr: ctr run --rm busybox true, hull vs runc ($runs runs each); PSS per pod =="
"$prefix/bin/hull" bench ctr --address "$dir/containerd.sock" -n "$runs" --json "$out/ctr.json" 2>/dev/null
