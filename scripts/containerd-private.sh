#!/usr/bin/env bash
# A private containerd for hull's demo and tests: own root, state and sockets under DIR, the
# CRI plugin off, nothing shared with a system containerd except /run/containerd/{fifo,s}
# (where ctr and shims always put FIFOs and shim sockets).
#   containerd-private.sh start DIR [SHIM_DIR]   start it; SHIM_DIR (holding
#                                               containerd-shim-hull-v2) goes first in PATH
#   containerd-private.sh restart DIR [SHIM_DIR] stop containerd alone (its shims and tasks
#                                               live on, as in a real restart) and start it again
#   containerd-private.sh stop DIR               stop it and remove DIR
# The socket is DIR/containerd.sock (ctr -a DIR/containerd.sock ...).
set -euo pipefail
cmd=${1:?usage: containerd-private.sh start|restart|stop DIR [SHIM_DIR]}
dir=${2:?usage: containerd-private.sh start|restart|stop DIR [SHIM_DIR]}

stop_containerd() {
    if [ -f "$dir/containerd.pid" ]; then
        pid=$(cat "$dir/containerd.pid")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
}

if [ "$cmd" = restart ]; then
    stop_containerd
    cmd=start
fi

case "$cmd" in
start)
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    cat >"$dir/config.toml" <<TOML
version = 2
root = "$dir/root"
state = "$dir/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$dir/containerd.sock"
[ttrpc]
  address = "$dir/containerd.sock.ttrpc"
TOML
    shim_dir=${3:-}
    PATH="${shim_dir:+$shim_dir:}$PATH" setsid containerd --config "$dir/config.toml" \
        >"$dir/containerd.log" 2>&1 </dev/null &
    echo $! >"$dir/containerd.pid"
    for _ in $(seq 100); do
        [ -S "$dir/containerd.sock" ] && ctr -a "$dir/containerd.sock" version >/dev/null 2>&1 && exit 0
        sleep 0.1
    done
    echo "containerd did not come up; log:" >&2
    tail -n 20 "$dir/containerd.log" >&2
    exit 1
    ;;
stop)
    [ -d "$dir" ] || exit 0
    stop_containerd
    # Snapshot mounts, deepest first.
    { grep -F " $dir/" /proc/self/mountinfo || true; } | awk '{print $5}' | sort -r | while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done
    rm -rf "$dir"
    ;;
*)
    echo "usage: containerd-private.sh start|restart|stop DIR [SHIM_DIR]" >&2
    exit 2
    ;;
esac
