#!/usr/bin/env bash
# make demo: hull as containerd's runtime. Starts a private containerd (its own root, state
# and socket; a system containerd is not touched) with containerd-shim-hull-v2 in its PATH,
# imports a locally built busybox image, runs
#     ctr run --runtime io.containerd.hull.v2 --rm <image> demo uname -a
# and shows that the container ran under hull's guest kernel, not the host's. Then it tears
# everything down. Expects `make install` to have run (the Makefile's demo target does).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
prefix=${PREFIX:-/usr/local}
dir=$(mktemp -d /tmp/hull-demo.XXXXXX)
trap '"$top/scripts/containerd-private.sh" stop "$dir"' EXIT

echo "== a private containerd with the hull runtime =="
"$top/scripts/containerd-private.sh" start "$dir" "$prefix/bin"
ctr() { command ctr -a "$dir/containerd.sock" -n hull-demo "$@"; }
python3 "$top/tests/images/build-busybox-image.py" "$dir/busybox.tar" docker.io/hull/busybox:latest
ctr images import "$dir/busybox.tar" >/dev/null
echo "image: docker.io/hull/busybox:latest (busybox-static, built locally)"
echo
echo "== ctr run --runtime io.containerd.hull.v2 --rm docker.io/hull/busybox:latest demo uname -a =="
start=$(date +%s%N)
out=$(ctr run --runtime io.containerd.hull.v2 --rm docker.io/hull/busybox:latest demo uname -a)
end=$(date +%s%N)
echo "$out"
echo
guest=$(cat "$prefix/share/hull/release")
host=$(uname -r)
echo "container saw kernel: $(awk '{print $3}' <<<"$out")"
echo "hull guest kernel:    $guest"
echo "host kernel:          $host"
echo "ctr run wall time:    $(( (end - start) / 1000000 )) ms (accelerator: $(hull check --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["backend"]["Ok"]["accel"])'))"
if [ "$(awk '{print $3}' <<<"$out")" = "$guest" ] && [ "$guest" != "$host" ]; then
    echo "OK: the container ran inside a hull microVM, under the guest kernel."
else
    echo "FAILED: the container did not run under hull's guest kernel" >&2
    exit 1
fi
