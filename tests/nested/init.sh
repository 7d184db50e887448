#!/bin/busybox sh
# /init of the nested harness's L1: runs the checks named by hull.checks= on the kernel
# command line and reports each as one "HULL-NESTED: <check> ok|FAIL ..." line on the
# serial console, then "HULL-NESTED: done" and powers L1 off. Every L2 run has a timeout.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp

say() { echo "HULL-NESTED: $*"; }
# Centiseconds since L1 booted.
now() { read -r up _ </proc/uptime; echo "${up%.*}${up#*.}" | sed 's/^0*//;s/^$/0/'; }
ms_since() { echo $(( ($(now) - $1) * 10 )); }
L2_TIMEOUT=${L2_TIMEOUT:-30}
L2_CMDLINE="console=ttyS0 reboot=t panic=-1 quiet"

say "l1-up kernel=$(uname -r) uptime_s=$(cut -d' ' -f1 /proc/uptime)"

check_kvm() {
    if [ -c /dev/kvm ] && grep -qw svm /proc/cpuinfo; then
        say "kvm ok vendor=$(grep -m1 vendor_id /proc/cpuinfo | cut -d: -f2 | tr -d ' ')"
    else
        say "kvm FAIL /dev/kvm=$(ls -l /dev/kvm 2>&1)"
    fi
}

# Prints an L2 console / VMM log with a prefix, so it is told apart from L1's output.
dump() { sed "s/^/$2| /" "$1" 2>/dev/null | tail -n 40; }

# Boots the real guest image; passes when the agent reports its mounts on the console.
check_agent() {
    start=$(now)
    RUST_LOG=info hull-vmm --kernel /l2/vmlinux --initrd /l2/initramfs.cpio \
        --cmdline "$L2_CMDLINE" --vcpus 1 --memory-mib 256 \
        --console /tmp/agent.console 2>/tmp/agent.vmm &
    pid=$!
    result=FAIL
    deadline=$(( $(now) + L2_TIMEOUT * 100 ))
    while [ "$(now)" -lt "$deadline" ]; do
        if grep -q 'hull-agent: INFO init: [0-9]* filesystems mounted' /tmp/agent.console 2>/dev/null; then
            result=ok; break
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.02
    done
    ms=$(ms_since "$start")
    kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
    say "agent $result ms=$ms seccomp=$(grep -c 'seccomp filters installed' /tmp/agent.vmm) line=\"$(grep -m1 'filesystems mounted' /tmp/agent.console | tr -d '\r')\""
    [ "$result" = ok ] || { dump /tmp/agent.console L2; dump /tmp/agent.vmm VMM; }
    dump /tmp/agent.vmm VMM | grep 'first KVM_RUN' || true
}

# A guest that reboots (its init is missing, so the kernel panics and, with panic=-1 and
# reboot=t, triple-faults): hull-vmm must end by itself with status 0 and say why.
check_reset() {
    start=$(now)
    timeout -s KILL "$L2_TIMEOUT" hull-vmm --kernel /l2/vmlinux --initrd /l2/initramfs.cpio \
        --cmdline "$L2_CMDLINE rdinit=/no-such-init" --vcpus 2 --memory-mib 256 \
        --console /tmp/reset.console 2>/tmp/reset.vmm
    rc=$?
    ms=$(ms_since "$start")
    why=$(grep -m1 'hull-vmm: guest' /tmp/reset.vmm)
    if [ "$rc" = 0 ] && [ -n "$why" ]; then
        say "reset ok code=$rc ms=$ms why=\"$why\""
    else
        say "reset FAIL code=$rc ms=$ms"
        dump /tmp/reset.console L2; dump /tmp/reset.vmm VMM
    fi
}

# Boots the guest image with a vsock device: the agent announces readiness on host port
# 1025 (<uds>_1025, where hull-vsock-probe listens), then the probe connects to guest port
# 1024 through the hybrid-vsock socket and makes a ttrpc Check call.
check_vsock() {
    rm -f /tmp/v.sock /tmp/v.sock_*
    start=$(now)
    hull-vsock-probe /tmp/v.sock "$L2_TIMEOUT" >/tmp/probe.out 2>&1 &
    probe=$!
    i=0
    while ! grep -q 'listening' /tmp/probe.out 2>/dev/null && [ $i -lt 200 ]; do
        sleep 0.01; i=$((i + 1))
    done
    RUST_LOG=info hull-vmm --kernel /l2/vmlinux --initrd /l2/initramfs.cpio \
        --cmdline "$L2_CMDLINE" --vcpus 1 --memory-mib 256 --vsock-uds /tmp/v.sock \
        --console /tmp/vsock.console 2>/tmp/vsock.vmm &
    pid=$!
    wait "$probe"
    rc=$?
    ms=$(ms_since "$start")
    kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
    vmm_rc=$?
    line=$(grep -m1 'HULL-VSOCK-PROBE: \(ok\|FAIL\)' /tmp/probe.out | sed 's/^HULL-VSOCK-PROBE: //')
    if [ "$rc" = 0 ]; then
        say "vsock $line total_ms=$ms seccomp=$(grep -c 'seccomp filters installed' /tmp/vsock.vmm)"
    else
        # vmm_rc 143: still running when killed; 159: killed by SIGSYS (its seccomp filter;
        # the kernel's audit line below names the syscall).
        say "vsock FAIL rc=$rc vmm_rc=$vmm_rc $line total_ms=$ms"
        dump /tmp/probe.out PROBE; dump /tmp/vsock.console L2; dump /tmp/vsock.vmm VMM
        dmesg | grep 'audit.*syscall=' | tail -n 3 | sed 's/^/KERNEL| /'
    fi
}

# The vsock check again with hull-vmm confined: it drops to uid/gid 65534 inside a chroot
# (/tmp/jail, holding only the sockets) once the VM is built. The readiness listener is
# made connectable by that user, as a pod's would be.
check_confined() {
    rm -rf /tmp/jail; mkdir -m 755 /tmp/jail
    start=$(now)
    hull-vsock-probe /tmp/jail/v.sock "$L2_TIMEOUT" >/tmp/confined.out 2>&1 &
    probe=$!
    i=0
    while ! grep -q 'listening' /tmp/confined.out 2>/dev/null && [ $i -lt 200 ]; do
        sleep 0.01; i=$((i + 1))
    done
    chmod 777 /tmp/jail/v.sock_1025
    RUST_LOG=info hull-vmm --kernel /l2/vmlinux --initrd /l2/initramfs.cpio \
        --cmdline "$L2_CMDLINE" --vcpus 1 --memory-mib 256 --vsock-uds /tmp/jail/v.sock \
        --uid 65534 --gid 65534 --chroot /tmp/jail \
        --console /tmp/confined.console 2>/tmp/confined.vmm &
    pid=$!
    wait "$probe"
    rc=$?
    ms=$(ms_since "$start")
    ids=$(grep '^[UG]id:' "/proc/$pid/status" 2>/dev/null | awk '{print $2}' | tr '\n' /)
    root=$(readlink "/proc/$pid/root" 2>/dev/null)
    kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
    vmm_rc=$?
    line=$(grep -m1 'HULL-VSOCK-PROBE: \(ok\|FAIL\)' /tmp/confined.out | sed 's/^HULL-VSOCK-PROBE: //')
    seccomp=$(grep -c 'seccomp filters installed' /tmp/confined.vmm)
    if [ "$rc" = 0 ]; then
        say "confined $line ids=$ids root=$root seccomp=$seccomp total_ms=$ms"
    else
        say "confined FAIL rc=$rc vmm_rc=$vmm_rc $line ids=$ids root=$root total_ms=$ms"
        dump /tmp/confined.out PROBE; dump /tmp/confined.console L2; dump /tmp/confined.vmm VMM
    fi
}

checks=$(sed -n 's/.*hull\.checks=\([^ ]*\).*/\1/p' /proc/cmdline)
for c in $(echo "$checks" | tr , ' '); do
    case "$c" in
        kvm) check_kvm ;;
        agent) check_agent ;;
        reset) check_reset ;;
        vsock) check_vsock ;;
        confined) check_confined ;;
        *) say "$c FAIL unknown check" ;;
    esac
done
say "done uptime_s=$(cut -d' ' -f1 /proc/uptime)"
sync
reboot -f
sleep 10
