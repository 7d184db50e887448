#!/usr/bin/env bash
# Runs the arm64 nested check twice and asserts its markers:
#   1 vCPU, L2 powers off (PSCI SYSTEM_OFF), hull-vmm's seccomp filters on;
#   2 vCPUs (PSCI CPU_ON), L2 reboots (PSCI SYSTEM_RESET), --seccomp-trap.
# Each run: hull-vmm exits 0 with the right reason, L2 printed its marker with the vCPU
# count, read its virtio-blk disk and made a vsock round trip with L1. Logs go to
# $ARM64_LOG_DIR (default target/nested-arm64).
# Usage: check.sh ENV_FILE   (written by build.sh)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
env_file=${1:?usage: check.sh ENV_FILE}
# shellcheck disable=SC1090
source "$env_file"
logs=${ARM64_LOG_DIR:-$(cd "$here/../../.." && pwd)/target/nested-arm64}
mkdir -p "$logs"
fail=0

run() { # name, L1 extra args, expected reason, expected cpus, expected seccomp_installed
    local name=$1 extra=$2 reason=$3 cpus=$4 seccomp=$5 log="$logs/$1.log"
    # The serial consoles end lines with CR LF.
    "$here/run.sh" "$HULL_ARM64_KERNEL" "$HULL_ARM64_INITRD" "$extra" 2>&1 | tr -d '\r' >"$log" || true
    local missing=()
    grep -q "^HULL-ARM64: hull-vmm exit=0 seccomp_installed=$seccomp " "$log" ||
        missing+=("hull-vmm exit=0 seccomp_installed=$seccomp")
    grep -q "^HULL-ARM64: vmm: hull-vmm: guest $reason (system event)" "$log" || missing+=("guest $reason")
    grep -q "^HULL-ARM64: l2: HULL-ARM64-L2: up aarch64 cpus=$cpus\$" "$log" || missing+=("L2 up with $cpus vCPUs")
    grep -q '^HULL-ARM64: l2: HULL-ARM64-L2: vda HULL-ARM64-DISK-OK$' "$log" || missing+=("L2 read its disk")
    grep -q '^HULL-ARM64: vsock listener: vsock-got ping-from-l2$' "$log" || missing+=("L1 got L2's vsock line")
    grep -q '^HULL-ARM64: l2: HULL-ARM64-L2: vsock-reply pong-from-l1$' "$log" || missing+=("L2 got L1's vsock reply")
    if [ ${#missing[@]} = 0 ]; then
        echo "arm64 $name: ok"
    else
        echo "arm64 $name: FAIL, missing: ${missing[*]} (log: $log)"
        grep '^HULL-ARM64: ' "$log" | grep -v '^HULL-ARM64: l2: \[' || tail -n 20 "$log"
        fail=1
    fi
}

run poweroff "" "powered off" 1 1
run reboot-smp "hull.vcpus=2 hull.l2-action=reboot hull.seccomp=trap" reset 2 1
exit "$fail"
