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
    say "agent $result ms=$ms line=\"$(grep -m1 'filesystems mounted' /tmp/agent.console | tr -d '\r')\""
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
    line=$(grep -m1 'HULL-VSOCK-PROBE: \(ok\|FAIL\)' /tmp/probe.out | sed 's/^HULL-VSOCK-PROBE: //')
    if [ "$rc" = 0 ]; then
        say "vsock $line total_ms=$ms"
    else
        say "vsock FAIL rc=$rc $line total_ms=$ms"
        dump /tmp/probe.out PROBE; dump /tmp/vsock.console L2; dump /tmp/vsock.vmm VMM
    fi
}

# The control socket on the real guest: boot with --api-sock, wait for the agent, then
# state, PSS of hull-vmm without guest RAM (smaps minus the memfd), pause/resume, metrics,
# and shutdown, which must end hull-vmm with status 0 and remove the socket.
check_api() {
    rm -f /tmp/api.sock /tmp/api-v.sock*
    RUST_LOG=info hull-vmm --kernel /l2/vmlinux --initrd /l2/initramfs.cpio \
        --cmdline "$L2_CMDLINE" --vcpus 1 --memory-mib 128 --vsock-uds /tmp/api-v.sock \
        --api-sock /tmp/api.sock --console /tmp/api.console 2>/tmp/api.vmm &
    pid=$!
    deadline=$(( $(now) + L2_TIMEOUT * 100 ))
    booted=no
    while [ "$(now)" -lt "$deadline" ] && kill -0 "$pid" 2>/dev/null; do
        if grep -q 'filesystems mounted' /tmp/api.console 2>/dev/null; then booted=yes; break; fi
        sleep 0.05
    done
    sleep 2
    state=$(hull-vmm-ctl /tmp/api.sock state)
    pss=$(awk '/^[0-9a-f]+-[0-9a-f]+ / { g = ($0 ~ /memfd:hull-guest-ram/) }
        /^Pss:/ { t += $2; if (g) m += $2 } END { print t, m, t - m }' "/proc/$pid/smaps")
    set -- $pss
    p1=$(hull-vmm-ctl /tmp/api.sock pause); s1=$(hull-vmm-ctl /tmp/api.sock state)
    r1=$(hull-vmm-ctl /tmp/api.sock resume); s2=$(hull-vmm-ctl /tmp/api.sock state)
    metrics=$(hull-vmm-ctl /tmp/api.sock metrics)
    stop=$(hull-vmm-ctl /tmp/api.sock shutdown)
    i=0
    while kill -0 "$pid" 2>/dev/null && [ $i -lt 500 ]; do sleep 0.01; i=$((i + 1)); done
    wait "$pid"
    rc=$?
    result=FAIL
    case "$booted|$state|$s1|$s2|$stop|$rc" in
        'yes|{"ok":true,"state":"running"'*'|{"ok":true,"state":"paused"'*'|{"ok":true,"state":"running"'*'|{"ok":true}|0')
            [ -e /tmp/api.sock ] || result=ok ;;
    esac
    say "api $result booted=$booted code=$rc pss_total_kib=$1 pss_guest_ram_kib=$2 pss_vmm_kib=$3 state=$state paused=$s1 resumed=$s2 shutdown=$stop metrics=$metrics"
    [ "$result" = ok ] || { echo "pause=$p1 resume=$r1"; dump /tmp/api.console L2; dump /tmp/api.vmm VMM; }
}

checks=$(sed -n 's/.*hull\.checks=\([^ ]*\).*/\1/p' /proc/cmdline)
for c in $(echo "$checks" | tr , ' '); do
    case "$c" in
        kvm) check_kvm ;;
        agent) check_agent ;;
        reset) check_reset ;;
        vsock) check_vsock ;;
        api) check_api ;;
        *) say "$c FAIL unknown check" ;;
    esac
done
say "done uptime_s=$(cut -d' ' -f1 /proc/uptime)"
sync
reboot -f
sleep 10
