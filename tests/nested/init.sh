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
# hull.seccomp=trap on L1's command line: the virtiofs checks run hull-vmm with
# --seccomp-trap (a syscall off a list is printed with the thread kind; exit status 159);
# hull.seccomp=off: with --no-seccomp (to compare figures).
case "$(sed -n 's/.*hull\.seccomp=\([^ ]*\).*/\1/p' /proc/cmdline)" in
    trap) SECCOMP_FLAG=--seccomp-trap ;;
    off) SECCOMP_FLAG=--no-seccomp ;;
    *) SECCOMP_FLAG= ;;
esac

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
# The kernel's audit lines of the last seccomp kills (they name the syscall).
# Waits (up to 5 s) until a unix socket listens at $1: its file exists from bind(2), but
# hull-vmm connects once, and is refused until listen(2).
wait_listening() {
    i=0
    until awk -v p="$1" '$4 == "00010000" && $8 == p { f = 1 } END { exit !f }' /proc/net/unix; do
        [ $i -lt 500 ] || return 1
        sleep 0.01; i=$((i + 1))
    done
}
audit() { dmesg | grep 'audit.*syscall=' | tail -n 3 | sed 's/^/KERNEL| /'; }

# Boots the real guest image with kernel $2 (check name $1); passes when the agent reports
# its mounts on the console. `agent` boots the PVH vmlinux, `bzimage` the same kernel's
# bzImage through the Linux boot protocol.
boot_agent() {
    name=$1 kernel=$2
    start=$(now)
    RUST_LOG=info hull-vmm --kernel "$kernel" --initrd /l2/initramfs.cpio \
        --cmdline "$L2_CMDLINE" --vcpus 1 --memory-mib 256 \
        --console "/tmp/$name.console" 2>"/tmp/$name.vmm" &
    pid=$!
    result=FAIL
    deadline=$(( $(now) + L2_TIMEOUT * 100 ))
    while [ "$(now)" -lt "$deadline" ]; do
        if grep -q 'hull-agent: INFO init: [0-9]* filesystems mounted' "/tmp/$name.console" 2>/dev/null; then
            result=ok; break
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.02
    done
    ms=$(ms_since "$start")
    kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
    say "$name $result ms=$ms seccomp=$(grep -c 'seccomp filters installed' "/tmp/$name.vmm") line=\"$(grep -m1 'filesystems mounted' "/tmp/$name.console" | tr -d '\r')\""
    [ "$result" = ok ] || { dump "/tmp/$name.console" L2; dump "/tmp/$name.vmm" VMM; }
    dump "/tmp/$name.vmm" VMM | grep 'first KVM_RUN' || true
}
check_agent() { boot_agent agent /l2/vmlinux; }
check_bzimage() { boot_agent bzimage /l2/bzImage; }

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

# Boots the guest kernel with the L2 test initramfs and two disks: a 4 MiB read-only image
# (the start of the guest vmlinux) whose checksum the guest must read back, and a
# writable one the guest writes a line into. A guest write to the read-only disk must fail.
# A third, 64 MiB disk gives a (nested) sequential read time.
check_blk() {
    head -c 4194304 /l2/vmlinux >/tmp/ro.img
    dd if=/dev/zero of=/tmp/rw.img bs=1024 count=64 2>/dev/null
    dd if=/dev/zero of=/tmp/big.img bs=1048576 count=64 2>/dev/null
    want=$(sha256sum /tmp/ro.img | cut -d' ' -f1)
    start=$(now)
    # Only vstate's info lines: they say the seccomp filters are on (the default).
    RUST_LOG=warn,hull_vmm::vstate=info \
    timeout -s KILL "$L2_TIMEOUT" hull-vmm --kernel /l2/vmlinux --initrd /l2/test.cpio \
        --cmdline "$L2_CMDLINE hull.l2=blk" --vcpus 1 --memory-mib 128 \
        --block /tmp/ro.img,ro --block /tmp/rw.img --block /tmp/big.img,ro \
        --console /tmp/blk.console 2>/tmp/blk.vmm
    rc=$?
    ms=$(ms_since "$start")
    got=$(sed -n 's/.*L2-BLK: vda=\([0-9a-f]*\).*/\1/p' /tmp/blk.console)
    line=$(grep -m1 'L2-BLK: vda=' /tmp/blk.console | tr -d '\r' | sed 's/^L2-BLK: //')
    wrote=$(head -c 18 /tmp/rw.img)
    read=$(grep -m1 'L2-BLK: vdc-read' /tmp/blk.console | tr -d '\r' | sed 's/^L2-BLK: //')
    rm -f /tmp/big.img
    if [ "$rc" = 0 ] && [ -n "$got" ] && [ "$got" = "$want" ] \
        && grep -q 'vda-write=refused' /tmp/blk.console && [ "$wrote" = hull-l2-wrote-this ]; then
        say "blk ok ms=$ms sha256_match=yes $line rw=\"$wrote\" ro_write=refused $read seccomp=$(grep -c 'seccomp filters installed' /tmp/blk.vmm)"
    else
        # code 159: killed by SIGSYS (a syscall off a seccomp list; the audit line names it).
        say "blk FAIL code=$rc ms=$ms want=$want $line rw=\"$wrote\""
        dump /tmp/blk.console L2; dump /tmp/blk.vmm VMM; audit
    fi
}

# The guest kernel with a virtio-net device on a tap hull-vmm creates: L1 puts 10.0.2.1 on
# the tap, the guest (10.0.2.2) pings L1, then L1 pings the guest.
check_net() {
    start=$(now)
    RUST_LOG=info hull-vmm --kernel /l2/vmlinux --initrd /l2/test.cpio \
        --cmdline "$L2_CMDLINE hull.l2=net hull.linger=15" --vcpus 1 --memory-mib 128 \
        --tap hulltap0 --mac 06:00:ac:10:00:02 \
        --console /tmp/net.console 2>/tmp/net.vmm &
    pid=$!
    i=0
    while [ ! -e /sys/class/net/hulltap0 ] && [ $i -lt 500 ]; do sleep 0.01; i=$((i + 1)); done
    ip addr add 10.0.2.1/24 dev hulltap0 && ip link set hulltap0 up
    deadline=$(( $(now) + L2_TIMEOUT * 100 ))
    while [ "$(now)" -lt "$deadline" ] && ! grep -q 'L2-NET: ping=' /tmp/net.console 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    l2=$(grep -m1 'L2-NET: ping=' /tmp/net.console | tr -d '\r' | sed 's/^L2-NET: //')
    if ping -c 3 -w 10 10.0.2.2 >/tmp/net.ping 2>&1; then l1=ok; else l1=FAIL; fi
    l1n=$(grep -o '[0-9]* packets received' /tmp/net.ping)
    mac=$(grep -m1 'L2-NET: mac=' /tmp/net.console | tr -d '\r' | sed 's/^L2-NET: //')
    ms=$(ms_since "$start")
    kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
    case "$l2" in
        ping=ok*) ;;
        *) l1="$l1 l2_failed" ;;
    esac
    if [ "$l1" = ok ]; then
        say "net ok ms=$ms l2_to_l1=\"$l2\" l1_to_l2=\"$l1n\" $mac seccomp=$(grep -c 'seccomp filters installed' /tmp/net.vmm)"
    else
        say "net FAIL ms=$ms l2_to_l1=\"$l2\" l1_to_l2=\"$l1 $l1n\" $mac"
        cat /tmp/net.ping; dump /tmp/net.console L2; dump /tmp/net.vmm VMM; audit
    fi
}

# A hostile guest (garbage-guest.S: no Linux, raw writes to every virtio-mmio register and
# descriptor-shaped noise in the rings) against vsock, blk and net: hull-vmm must survive
# it (with broadcast pings arriving on the tap meanwhile), log the guest's errors, and end
# with status 0 when the guest resets.
check_garbage() {
    rm -f /tmp/g.sock /tmp/g.sock_*
    dd if=/dev/zero of=/tmp/g.img bs=1024 count=64 2>/dev/null
    start=$(now)
    RUST_LOG=warn,hull_vmm::vstate=info \
    timeout -s KILL "$L2_TIMEOUT" hull-vmm --kernel /l2/garbage-guest --cmdline garbage \
        --vcpus 1 --memory-mib 64 --vsock-uds /tmp/g.sock --block /tmp/g.img --tap hullg0 \
        --console /tmp/garbage.console 2>/tmp/garbage.vmm &
    pid=$!
    # RX traffic for the garbage rings: broadcast pings (small, and 3000 bytes = 3 frames).
    i=0
    while [ ! -e /sys/class/net/hullg0 ] && [ $i -lt 500 ]; do sleep 0.01; i=$((i + 1)); done
    ip addr add 10.0.3.1/24 dev hullg0 && ip link set hullg0 up
    ping -q -i 0.02 -w "$L2_TIMEOUT" 10.0.3.255 >/dev/null 2>&1 &
    p1=$!
    ping -q -i 0.05 -s 3000 -w "$L2_TIMEOUT" 10.0.3.255 >/dev/null 2>&1 &
    p2=$!
    wait "$pid"
    rc=$?
    ms=$(ms_since "$start")
    kill "$p1" "$p2" 2>/dev/null; wait "$p1" "$p2" 2>/dev/null
    why=$(grep -m1 'hull-vmm: guest' /tmp/garbage.vmm)
    errs=$(grep -c 'guest error' /tmp/garbage.vmm)
    lines=$(wc -l </tmp/garbage.vmm)
    # Used index of each queue (vsock rx/tx/ev, blk, -, -, net rx/tx, -), as the guest saw them.
    used=$(grep -m1 GARBAGE-USED /tmp/garbage.console | tr -d '\r' | sed 's/GARBAGE-USED //;s/ /,/g')
    if [ "$rc" = 0 ] && grep -q GARBAGE-END /tmp/garbage.console && [ "$errs" -gt 0 ] \
        && ! grep -qi 'panick' /tmp/garbage.vmm; then
        say "garbage ok code=$rc ms=$ms guest_error_lines=$errs log_lines=$lines used=$used seccomp=$(grep -c 'seccomp filters installed' /tmp/garbage.vmm) why=\"$why\""
    else
        # code 159: killed by SIGSYS (a syscall off a seccomp list; the audit line names it).
        say "garbage FAIL code=$rc ms=$ms guest_error_lines=$errs log_lines=$lines"
        dump /tmp/garbage.console L2; dump /tmp/garbage.vmm VMM; audit
    fi
    sed 's/[0-9][0-9]*/N/g' /tmp/garbage.vmm | sort | uniq -c | sort -rn | head -n 12 | sed 's/^/VMM-LOG| /'
}

# kB of a process's PSS, and of its private anonymous part (heap, stacks: what each
# further pod adds; binaries and guest RAM are shared pages).
pss_kb() { awk '/^Pss:/ {print $2}' "/proc/$1/smaps_rollup" 2>/dev/null; }
pss_anon_kb() { awk '/^Pss_Anon:/ {print $2}' "/proc/$1/smaps_rollup" 2>/dev/null; }
max() { if [ "${1:-0}" -gt "${2:-0}" ]; then echo "${1:-0}"; else echo "${2:-0}"; fi; }

# virtio-fs through hull-vmm's vhost-user frontend: L1 starts virtiofsd on /tmp/share,
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
    # code 159: killed by SIGSYS (a syscall off a seccomp list; the audit line names it).
    say "api $result booted=$booted code=$rc seccomp=$(grep -c 'seccomp filters installed' /tmp/api.vmm) pss_total_kib=$1 pss_guest_ram_kib=$2 pss_vmm_kib=$3 state=$state paused=$s1 resumed=$s2 shutdown=$stop metrics=$metrics"
    [ "$result" = ok ] || { echo "pause=$p1 resume=$r1"; dump /tmp/api.console L2; dump /tmp/api.vmm VMM; audit; }
}

# hull-vmm boots the guest kernel with the L2 test initramfs (l2-init.sh, hull.l2=virtiofs) and
# --fs hull-share=<socket>; the guest reads L1's file, writes one back and times dd. The
# peak PSS of virtiofsd (total; anonymous) and hull-vmm (anonymous) is sampled while the
# guest runs; its total includes the guest RAM it maps.
check_virtiofs() {
    rm -rf /tmp/share /tmp/fs.sock*
    mkdir -p /tmp/share
    echo "hello-from-l1" >/tmp/share/hello.txt
    virtiofsd --socket-path /tmp/fs.sock --shared-dir /tmp/share --sandbox chroot \
        --cache auto >/tmp/virtiofsd.log 2>&1 &
    vfsd=$!
    wait_listening /tmp/fs.sock
    sleep 0.2
    idle_kb=$(pss_kb "$vfsd"); idle_anon_kb=$(pss_anon_kb "$vfsd")
    start=$(now)
    RUST_LOG=warn,hull_vmm::vstate=info \
    hull-vmm --kernel /l2/vmlinux --initrd /l2/test.cpio \
        --cmdline "$L2_CMDLINE hull.l2=virtiofs" --vcpus 1 --memory-mib 256 $SECCOMP_FLAG \
        --fs hull-share=/tmp/fs.sock \
        --console /tmp/fs.console 2>/tmp/fs.vmm &
    pid=$!
    deadline=$(( $(now) + L2_TIMEOUT * 100 ))
    vfsd_kb=0; vfsd_anon_kb=0; vmm_anon_kb=0
    while kill -0 "$pid" 2>/dev/null && [ "$(now)" -lt "$deadline" ]; do
        vfsd_kb=$(max "$(pss_kb "$vfsd")" "$vfsd_kb")
        vfsd_anon_kb=$(max "$(pss_anon_kb "$vfsd")" "$vfsd_anon_kb")
        vmm_anon_kb=$(max "$(pss_anon_kb "$pid")" "$vmm_anon_kb")
        sleep 0.05
    done
    kill -9 "$pid" 2>/dev/null; wait "$pid"; rc=$?
    ms=$(ms_since "$start")
    kill "$vfsd" 2>/dev/null; wait "$vfsd" 2>/dev/null
    read_line=$(grep -m1 'L2-FS: read=' /tmp/fs.console | tr -d '\r' | sed 's/.*read=//')
    wrote=$(cat /tmp/share/from-guest.txt 2>/dev/null)
    dd_line=$(grep -m1 'L2-FS: dd ' /tmp/fs.console | tr -d '\r' | sed 's/.*L2-FS: dd //')
    if [ "$rc" = 0 ] && [ "$read_line" = "hello-from-l1" ] && [ "$wrote" = "hello-from-l2" ]; then
        result=ok
    else
        result=FAIL
    fi
    say "virtiofs $result rc=$rc ms=$ms read=\"$read_line\" wrote=\"$wrote\" $dd_line seccomp=$(grep -c 'seccomp filters installed' /tmp/fs.vmm) virtiofsd_idle_pss_kb=$idle_kb virtiofsd_idle_anon_kb=$idle_anon_kb virtiofsd_peak_pss_kb=$vfsd_kb virtiofsd_peak_anon_kb=$vfsd_anon_kb vmm_peak_anon_kb=$vmm_anon_kb"
    # rc 159: killed by SIGSYS (a syscall off a seccomp list; the audit line names it).
    [ "$result" = ok ] || { dump /tmp/fs.console L2; dump /tmp/fs.vmm VMM; dump /tmp/virtiofsd.log VFSD; audit; }
}

# The virtio-fs backend dies under a running guest: hull-vmm logs it, stops the device and
# keeps running. The guest image's driver activates the device at boot (no mount needed);
# once the agent is up, L1 kills virtiofsd.
check_virtiofs_death() {
    rm -rf /tmp/share2 /tmp/fs2.sock*
    mkdir -p /tmp/share2
    virtiofsd --socket-path /tmp/fs2.sock --shared-dir /tmp/share2 --sandbox chroot \
        >/tmp/virtiofsd2.log 2>&1 &
    vfsd=$!
    wait_listening /tmp/fs2.sock
    hull-vmm --kernel /l2/vmlinux --initrd /l2/initramfs.cpio \
        --cmdline "$L2_CMDLINE" --vcpus 1 --memory-mib 256 $SECCOMP_FLAG \
        --fs hull-share=/tmp/fs2.sock \
        --console /tmp/fs2.console 2>/tmp/fs2.vmm &
    pid=$!
    deadline=$(( $(now) + L2_TIMEOUT * 100 ))
    while [ "$(now)" -lt "$deadline" ] && kill -0 "$pid" 2>/dev/null; do
        grep -q 'filesystems mounted' /tmp/fs2.console 2>/dev/null && break
        sleep 0.02
    done
    kill -9 "$vfsd" 2>/dev/null; wait "$vfsd" 2>/dev/null
    i=0
    while ! grep -q 'hung up' /tmp/fs2.vmm 2>/dev/null && [ $i -lt 200 ]; do sleep 0.01; i=$((i + 1)); done
    sleep 0.5
    if kill -0 "$pid" 2>/dev/null; then running=yes; else running=no; fi
    kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
    logged=$(grep -m1 'hung up' /tmp/fs2.vmm | sed 's/.*virtio-fs/virtio-fs/')
    if [ "$running" = yes ] && [ -n "$logged" ]; then
        say "virtiofs-death ok vmm_running=$running logged=\"$logged\""
    else
        say "virtiofs-death FAIL vmm_running=$running logged=\"$logged\""
        dump /tmp/fs2.console L2; dump /tmp/fs2.vmm VMM
    fi
}

# The shim's hull-vmm backend end to end: the shim's own ignored test (static build of
# hull-shim's unit tests) boots the guest image through Vm::boot with HullVmm (virtiofsd +
# hull-vmm from /bin, pod share on), checks the agent and shuts the VM down cleanly.
SHIM_TEST=backend::hullvmm::tests::hull_vmm_boots_the_guest_image_with_a_share_and_shuts_it_down
check_shim_hullvmm() {
    start=$(now)
    HULL_KERNEL=/l2/vmlinux HULL_INITRD=/l2/initramfs.cpio TMPDIR=/tmp \
        timeout -s KILL $((L2_TIMEOUT * 2)) hull-shim-tests --ignored --exact "$SHIM_TEST" \
        --test-threads 1 >/tmp/shim.out 2>&1
    rc=$?
    ms=$(ms_since "$start")
    if [ "$rc" = 0 ] && grep -q 'test result: ok. 1 passed' /tmp/shim.out; then
        say "shim-hullvmm ok ms=$ms test=$SHIM_TEST"
    else
        say "shim-hullvmm FAIL rc=$rc ms=$ms"
        dump /tmp/shim.out SHIM
        for f in /tmp/.tmp*/hullvmm-test/*.log; do [ -f "$f" ] && dump "$f" "$(basename "$f")"; done
    fi
}

checks=$(sed -n 's/.*hull\.checks=\([^ ]*\).*/\1/p' /proc/cmdline)
for c in $(echo "$checks" | tr , ' '); do
    case "$c" in
        kvm) check_kvm ;;
        agent) check_agent ;;
        bzimage) check_bzimage ;;
        reset) check_reset ;;
        vsock) check_vsock ;;
        blk) check_blk ;;
        net) check_net ;;
        garbage) check_garbage ;;
        confined) check_confined ;;
        virtiofs) check_virtiofs ;;
        virtiofs-death) check_virtiofs_death ;;
        shim-hullvmm) check_shim_hullvmm ;;
        api) check_api ;;
        *) say "$c FAIL unknown check" ;;
    esac
done
say "done uptime_s=$(cut -d' ' -f1 /proc/uptime)"
sync
reboot -f
sleep 10
