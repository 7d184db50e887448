#!/bin/busybox sh
# /init of the arm64 L1 (under qemu-system-aarch64 with TCG-emulated EL2): boots L2 with
# hull-vmm on L1's /dev/kvm, then prints hull-vmm's exit status and L2's console, each line
# prefixed "HULL-ARM64: ", and powers L1 off (QEMU exits, -no-reboot).
# L1's command line may add hull.seccomp=off (--no-seccomp) or hull.seccomp=trap
# (--seccomp-trap: a syscall off the lists is named), hull.vcpus=N (default 1),
# hull.debug=1 (RUST_LOG=debug) and hull.l2-action=reboot (L2 reboots instead of powering
# off) or hull.l2-action=linger (L2 ticks once a second for a minute; L1 exercises
# hull-vmm's control socket meanwhile and shuts L2 down through it), hull.confined=1, and
# hull.l2=agent (hull-agent as L2's PID 1 instead, probed over vsock).
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp

say() { echo "HULL-ARM64: $*"; }
arg() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
case "$(arg hull.seccomp)" in
    trap) seccomp=--seccomp-trap ;;
    off) seccomp=--no-seccomp ;;
    *) seccomp= ;;
esac
vcpus=$(arg hull.vcpus); vcpus=${vcpus:-1}
# info: hull-vmm says when every thread has installed its seccomp filter.
export RUST_LOG=info
[ "$(arg hull.debug)" = 1 ] && export RUST_LOG=debug
l2_action=$(arg hull.l2-action); l2_action=${l2_action:-poweroff}
L2_TIMEOUT=${L2_TIMEOUT:-300}

say "l1-up kernel=$(uname -r) kvm=$([ -c /dev/kvm ] && echo yes || echo no) seccomp=${seccomp:-on} vcpus=$vcpus l2_action=$l2_action confined=$(arg hull.confined)"

# hull.l2=agent: L2 is hull's own guest userland, hull-agent as PID 1 (no busybox). As the
# x86 harness's vsock check: hull-vsock-probe listens on <uds>_1025 for the agent's
# HULL-AGENT-READY line, then connects to the agent's port 1024 (CONNECT through hull-vmm's
# muxer) and makes one ttrpc Check call. hull-vmm is stopped afterwards.
if [ "$(arg hull.l2)" = agent ]; then
    hull-vsock-probe /tmp/a.sock "$L2_TIMEOUT" >/tmp/probe.out 2>&1 &
    probe=$!
    i=0
    while ! grep -q listening /tmp/probe.out 2>/dev/null && [ $i -lt 200 ]; do
        sleep 0.05; i=$((i + 1))
    done
    # shellcheck disable=SC2086
    hull-vmm $seccomp --kernel /Image --initrd /agent.cpio --vsock-uds /tmp/a.sock \
        --cmdline "console=ttyS0 panic=-1" --vcpus "$vcpus" --memory-mib 256 \
        --console /tmp/l2.console 2>/tmp/vmm.err &
    vmm=$!
    wait "$probe"
    rc=$?
    kill "$vmm" 2>/dev/null; wait "$vmm"
    say "agent probe_exit=$rc vmm_exit=$? seccomp_installed=$(grep -c 'seccomp filters installed on every thread' /tmp/vmm.err)"
    sed 's/^/HULL-ARM64: probe: /' /tmp/probe.out
    sed 's/^/HULL-ARM64: vmm: /' /tmp/vmm.err
    sed 's/^/HULL-ARM64: l2: /' /tmp/l2.console
    say done
    poweroff -f
fi
# L2's virtio-blk disk: a marker L2 reads back, in a 1 MiB image.
printf 'HULL-ARM64-DISK-OK\n' >/tmp/disk.img
truncate -s 1M /tmp/disk.img
# hull.confined=1: hull-vmm drops to uid/gid 65534 in a chroot (/tmp/jail, holding only
# the vsock sockets) once the VM is built, as the shim runs it.
jail=/tmp
confine=
if [ "$(arg hull.confined)" = 1 ]; then
    jail=/tmp/jail
    mkdir -m 755 "$jail"
    confine="--uid 65534 --gid 65534 --chroot $jail"
fi
# L2's vsock connection to port 1025 arrives on <uds>_1025 (hull-vmm's muxer).
vsock-ping host "$jail/v.sock_1025" >/tmp/vsock.out 2>&1 &
listener=$!
i=0
while [ ! -S "$jail/v.sock_1025" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
chmod 777 "$jail/v.sock_1025"
start=$(cut -d' ' -f1 /proc/uptime)
api=
[ "$l2_action" = linger ] && api="--api-sock /tmp/api.sock"
# earlycon's address is the 8250's in vmm/src/arch/aarch64/layout.rs (SERIAL_MMIO_BASE).
# shellcheck disable=SC2086
timeout "$L2_TIMEOUT" hull-vmm $seccomp $api $confine --kernel /Image --initrd /l2.cpio \
    --block /tmp/disk.img,ro --vsock-uds "$jail/v.sock" \
    --cmdline "console=ttyS0 earlycon=uart8250,mmio,0x1000000 panic=-1 hull.action=$l2_action" \
    --vcpus "$vcpus" --memory-mib 128 --console /tmp/l2.console 2>/tmp/vmm.err &
vmm=$!
ticks() { grep -c 'HULL-ARM64-L2: tick' /tmp/l2.console; }
if [ -n "$confine" ]; then
    # Once hull-vmm has dropped its privileges (before the guest's first instruction, so
    # L2's whole boot is the window): its ids and root, from /proc (busybox has no pgrep).
    i=0
    while ! grep -q 'running as uid' /tmp/vmm.err 2>/dev/null && [ $i -lt 3000 ]; do
        sleep 0.02; i=$((i + 1))
    done
    pid=
    for p in /proc/[0-9]*; do [ "$(cat "$p/comm" 2>/dev/null)" = hull-vmm ] && pid=${p#/proc/}; done
    # Real/effective/saved/fs uid, then gid.
    say "confined ids=$(grep '^[UG]id:' "/proc/$pid/status" | awk '{printf "%s/%s/%s/%s ", $2, $3, $4, $5}')root=$(readlink "/proc/$pid/root")"
fi
if [ -n "$api" ]; then
    # The control socket (hull-vmm-ctl) on a running L2 that ticks once a second: paused,
    # the ticks stop; resumed, they go on; shutdown ends hull-vmm with status 0 and
    # removes the socket.
    i=0
    while ! grep -q 'HULL-ARM64-L2: tick' /tmp/l2.console 2>/dev/null && [ $i -lt 600 ]; do
        sleep 0.1; i=$((i + 1))
    done
    say "api state=$(hull-vmm-ctl /tmp/api.sock state)"
    say "api pause=$(hull-vmm-ctl /tmp/api.sock pause) state=$(hull-vmm-ctl /tmp/api.sock state)"
    t0=$(ticks); sleep 3; t1=$(ticks)
    say "api resume=$(hull-vmm-ctl /tmp/api.sock resume) state=$(hull-vmm-ctl /tmp/api.sock state)"
    sleep 3; t2=$(ticks)
    say "api ticks paused_delta=$((t1 - t0)) resumed_delta=$((t2 - t1))"
    say "api metrics=$(hull-vmm-ctl /tmp/api.sock metrics)"
    say "api shutdown=$(hull-vmm-ctl /tmp/api.sock shutdown)"
fi
wait "$vmm"
rc=$?
[ -n "$api" ] && say "api socket_left=$([ -e /tmp/api.sock ] && echo yes || echo no)"
# The listener ends when L2's stream closes (hull-vmm is gone); if L2 never connected it
# still waits in accept().
kill "$listener" 2>/dev/null
say "vsock listener: $(cat /tmp/vsock.out)"
say "hull-vmm exit=$rc seccomp_installed=$(grep -c 'seccomp filters installed on every thread' /tmp/vmm.err) l1_uptime_start_s=$start l1_uptime_end_s=$(cut -d' ' -f1 /proc/uptime)"
sed 's/^/HULL-ARM64: vmm: /' /tmp/vmm.err
sed 's/^/HULL-ARM64: l2: /' /tmp/l2.console
say done
poweroff -f
