#!/usr/bin/env bash
# Boots the arm64 L1 under qemu-system-aarch64 (TCG, with EL2 emulated so L1 has /dev/kvm
# and a GICv3) and lets l1-init.sh boot L2 with hull-vmm. L1's console is this script's
# stdout; results are "HULL-ARM64: ..." lines. L1 powers itself off when done; a hard
# timeout kills it otherwise.
# Usage: run.sh KERNEL L1_INITRD [EXTRA L1 CMDLINE, e.g. hull.seccomp=off hull.vcpus=2]
# Env: HULL_ARM64_TIMEOUT (seconds, default 900).
set -euo pipefail
kernel=${1:?usage: run.sh KERNEL L1_INITRD [EXTRA]}
initrd=${2:?usage: run.sh KERNEL L1_INITRD [EXTRA]}
extra=${3:-}
timeout_s=${HULL_ARM64_TIMEOUT:-900}

exec timeout --kill-after=5 "$timeout_s" qemu-system-aarch64 \
    -M virt,virtualization=on,gic-version=3 -cpu max -smp 2 -m 1024 \
    -nodefaults -no-user-config -display none -no-reboot \
    -serial stdio \
    -kernel "$kernel" -initrd "$initrd" \
    -append "console=ttyAMA0 panic=-1 $extra"
