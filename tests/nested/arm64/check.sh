#!/usr/bin/env bash
# Runs the arm64 nested check four times and asserts its markers:
#   poweroff:   1 vCPU, L2 powers off (PSCI SYSTEM_OFF), hull-vmm's seccomp filters on;
#   reboot-smp-confined: 2 vCPUs (PSCI CPU_ON), L2 reboots (PSCI SYSTEM_RESET),
#               --seccomp-trap, hull-vmm confined (uid/gid 65534, chrooted);
#   api:        2 vCPUs, L2 ticks while L1 asks hull-vmm's control socket for state, pause
#               (the ticks stop), resume (they go on), metrics and shutdown;
#   agent:      hull-agent as L2's PID 1, probed over vsock (ready line, ttrpc Check).
# Each of the first three: hull-vmm exits 0 with the right reason, L2 printed its marker
# with the vCPU count, read its virtio-blk disk and made a vsock round trip with L1. Logs
# go to $ARM64_LOG_DIR (default target/nested-arm64).
# Usage: check.sh ENV_FILE   (written by build.sh)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
env_file=${1:?usage: check.sh ENV_FILE}
# shellcheck disable=SC1090
source "$env_file"
logs=${ARM64_LOG_DIR:-$(cd "$here/../../.." && pwd)/target/nested-arm64}
mkdir -p "$logs"
fail=0

# Prints check $1's verdict from the caller's `missing` list; on failure, the L1 lines of
# its log $2 (or its tail) too.
report() {
    if [ ${#missing[@]} = 0 ]; then
        echo "arm64 $1: ok"
    else
        echo "arm64 $1: FAIL, missing: ${missing[*]} (log: $2)"
        grep '^HULL-ARM64: ' "$2" | grep -v '^HULL-ARM64: l2: \[' || tail -n 20 "$2"
        fail=1
    fi
}

# name, L1 extra args, expected reason, expected cpus, expected seccomp_installed, then
# any further patterns (grep -E) the log must match.
run() {
    local name=$1 extra=$2 reason=$3 cpus=$4 seccomp=$5 log="$logs/$1.log"
    shift 5
    # The serial consoles end lines with CR LF.
    "$here/run.sh" "$HULL_ARM64_KERNEL" "$HULL_ARM64_INITRD" "$extra" 2>&1 | tr -d '\r' >"$log" || true
    local missing=()
    grep -q "^HULL-ARM64: hull-vmm exit=0 seccomp_installed=$seccomp " "$log" ||
        missing+=("hull-vmm exit=0 seccomp_installed=$seccomp")
    grep -qE "^HULL-ARM64: vmm: hull-vmm: $reason" "$log" || missing+=("$reason")
    grep -q "^HULL-ARM64: l2: HULL-ARM64-L2: up aarch64 cpus=$cpus\$" "$log" || missing+=("L2 up with $cpus vCPUs")
    grep -q '^HULL-ARM64: l2: HULL-ARM64-L2: vda HULL-ARM64-DISK-OK$' "$log" || missing+=("L2 read its disk")
    grep -q '^HULL-ARM64: vsock listener: vsock-got ping-from-l2$' "$log" || missing+=("L1 got L2's vsock line")
    grep -q '^HULL-ARM64: l2: HULL-ARM64-L2: vsock-reply pong-from-l1$' "$log" || missing+=("L2 got L1's vsock reply")
    local pattern
    for pattern in "$@"; do
        grep -qE "$pattern" "$log" || missing+=("$pattern")
    done
    report "$name" "$log"
}

run poweroff "" "guest powered off \(system event\)" 1 1
run reboot-smp-confined "hull.vcpus=2 hull.l2-action=reboot hull.seccomp=trap hull.confined=1" \
    "guest reset \(system event\)" 2 1 \
    '^HULL-ARM64: confined ids=65534/65534/65534/65534 65534/65534/65534/65534 root=/tmp/jail$'
run api "hull.vcpus=2 hull.l2-action=linger" "stopped by the control socket" 2 1 \
    '^HULL-ARM64: api state=\{"ok":true,"state":"running"' \
    '^HULL-ARM64: api pause=\{"ok":true\} state=\{"ok":true,"state":"paused"' \
    '^HULL-ARM64: api resume=\{"ok":true\} state=\{"ok":true,"state":"running"' \
    '^HULL-ARM64: api ticks paused_delta=0 resumed_delta=[1-9]' \
    '^HULL-ARM64: api metrics=\{"ok":true,"metrics":' \
    '^HULL-ARM64: api shutdown=\{"ok":true\}$' \
    '^HULL-ARM64: api socket_left=no$'
# hull-agent as L2's PID 1: it mounts its filesystems and hull-vsock-probe gets its ready
# line and a SERVING answer to a ttrpc Check through hull-vmm's vsock.
run_agent() {
    local log="$logs/agent.log" missing=()
    "$here/run.sh" "$HULL_ARM64_KERNEL" "$HULL_ARM64_INITRD" "hull.l2=agent" 2>&1 | tr -d '\r' >"$log" || true
    grep -q '^HULL-ARM64: agent probe_exit=0 .* seccomp_installed=1$' "$log" ||
        missing+=("probe_exit=0 seccomp_installed=1")
    grep -q '^HULL-ARM64: probe: HULL-VSOCK-PROBE: ok ready="HULL-AGENT-READY ' "$log" ||
        missing+=("the probe's ok")
    grep -q '^HULL-ARM64: l2: .*filesystems mounted' "$log" || missing+=("the agent's mounts")
    report agent "$log"
}
run_agent
exit "$fail"
