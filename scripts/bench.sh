#!/usr/bin/env bash
# make bench: hull's benchmarks on this machine (not tests; nothing is asserted).
#  1. hull bench boot: launch -> agent Check answered, N boots (QEMU backend).
#  2. ctr run --rm busybox true, hull vs runc, through the same private containerd: medians
#     and ratio.
#  3. PSS of one running pod's host processes (shim, QEMU, vhost-device-vsock, virtiofsd).
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
ctr() { command ctr -a "$dir/containerd.sock" -n hull-bench "$@"; }
python3 "$top/tests/images/build-busybox-image.py" "$dir/busybox.tar" docker.io/hull/busybox:latest
ctr images import "$dir/busybox.tar" >/dev/null

echo
echo "== 2. ctr run --rm busybox true: hull vs runc ($runs runs each) =="
time_runs() { # runtime
    for i in $(seq "$runs"); do
        s=$(date +%s%N)
        ctr run --runtime "$1" --rm docker.io/hull/busybox:latest "bench-$i" true >/dev/null
        e=$(date +%s%N)
        echo $(( (e - s) / 1000 ))
    done
}
time_runs io.containerd.hull.v2 >"$dir/hull.us"
time_runs io.containerd.runc.v2 >"$dir/runc.us"

echo
echo "== 3. PSS of one running hull pod =="
ctr run -d --runtime io.containerd.hull.v2 docker.io/hull/busybox:latest bench-pss sleep 1000 >/dev/null
sleep 2
pss() { awk '/^Pss:/ {print $2}' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0; }
shim=$(pgrep -f "containerd-shim-hull-v2 .*-id bench-pss" | head -n1)
qemu=$(pgrep -f "qemu-system-x86_64 -name bench-pss" | head -n1)
vsock=$(pgrep -f "vhost-device-vsock .*/run/hull/bench-pss/" | head -n1)
vfs=$(pgrep -f "virtiofsd .*/run/hull/bench-pss/" | head -n1)
printf '%s %s\n' shim "$(pss "$shim")" qemu "$(pss "$qemu")" vhost-device-vsock "$(pss "$vsock")" \
    virtiofsd "$(pss "$vfs")" >"$dir/pss.kb"
ctr task kill -s SIGKILL bench-pss >/dev/null
for _ in $(seq 50); do ctr task ls | grep -q 'bench-pss.*STOPPED' && break; sleep 0.1; done
ctr task rm bench-pss >/dev/null
ctr container rm bench-pss >/dev/null

python3 - "$dir" "$out" "$(hull check --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["backend"]["Ok"]["accel"])')" <<'PY'
import json, statistics, sys
d, out, accel = sys.argv[1:4]
ms = lambda f: [int(x) / 1000 for x in open(f"{d}/{f}").read().split()]
hull, runc = ms("hull.us"), ms("runc.us")
pss = {k: int(v) for k, v in (l.split() for l in open(f"{d}/pss.kb"))}
res = {
    "accel": accel,
    "ctr_run_rm_true_ms": {"hull": hull, "runc": runc},
    "median_ms": {"hull": statistics.median(hull), "runc": statistics.median(runc)},
    "ratio_hull_over_runc": statistics.median(hull) / statistics.median(runc),
    "pss_kib": pss,
}
json.dump(res, open(f"{out}/ctr.json", "w"), indent=2)
print(f"| runtime | median | min | max |")
print(f"|---|---|---|---|")
for k, v in (("hull", hull), ("runc", runc)):
    print(f"| {k} | {statistics.median(v):.0f} ms | {min(v):.0f} ms | {max(v):.0f} ms |")
print(f"ratio hull/runc: {res['ratio_hull_over_runc']:.1f}x  (guest accelerator: {accel})")
print("PSS per running pod (KiB): " + ", ".join(f"{k} {v}" for k, v in pss.items())
      + " (QEMU's includes the guest memory it touched: the shared memfd)")
PY
