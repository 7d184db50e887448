#!/usr/bin/env bash
# Boots the nested harness's L1 (QEMU TCG with emulated AMD SVM) and runs the named checks
# inside it with hull-vmm on L1's real kvm_amd. L1's serial console is this script's
# stdout; results are "HULL-NESTED: ..." lines (see init.sh). L1 powers itself off when
# done; a hard timeout kills it otherwise.
# Usage: run-l1.sh L1_KERNEL L1_INITRD [CHECKS]   CHECKS: comma-separated, default kvm,agent,reset,vsock
# Env: HULL_NESTED_TIMEOUT (seconds, default 120).
set -euo pipefail
kernel=${1:?usage: run-l1.sh L1_KERNEL L1_INITRD [CHECKS]}
initrd=${2:?usage: run-l1.sh L1_KERNEL L1_INITRD [CHECKS]}
checks=${3:-kvm,agent,reset,vsock}
timeout_s=${HULL_NESTED_TIMEOUT:-120}

# L1 must not calibrate its TSC itself: on a busy host that fails and L1's KVM then loops
# in its clock update (NESTED.md). Hand it this machine's TSC frequency.
khz=$(awk -F: '/^cpu MHz/ { printf "%d", $2 * 1000; exit }' /proc/cpuinfo)
[ -n "$khz" ] || { echo "run-l1: cannot read the TSC frequency from /proc/cpuinfo" >&2; exit 1; }

# -cpu max: TCG's AMD SVM with NPT. -erms: `rep movsb` crawls under TCG on reused pages.
exec timeout --kill-after=5 "$timeout_s" qemu-system-x86_64 \
    -M microvm,accel=tcg,acpi=off -cpu max,-erms -smp 2 -m 1024 \
    -nodefaults -no-user-config -display none -no-reboot \
    -serial stdio \
    -kernel "$kernel" -initrd "$initrd" \
    -append "console=ttyS0 tsc_early_khz=$khz tsc=reliable random.trust_cpu=on reboot=t panic=-1 quiet hull.checks=$checks"
