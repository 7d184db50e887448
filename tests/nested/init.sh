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

# kB of a process's PSS, and of its private anonymous part (heap, stacks: what each
# further pod adds; binaries and guest RAM are shared pages).
pss_kb() { awk '/^Pss:/ {print $2}' "/proc/$1/smaps_rollup" 2>/dev/null; }
pss_anon_kb() { awk '/^Pss_Anon:/ {print $2}' "/proc/$1/smaps_rollup" 2>/dev/null; }
max() { if [ "${1:-0}" -gt "${2:-0}" ]; then echo "${1:-0}"; else echo "${2:-0}"; fi; }

# virtio-fs through hull-vmm's vhost-user frontend: L1 starts virtiofsd on /tmp/share,
# hull-vmm boots the guest kernel with an L2 busybox initramfs (l2-virtiofs-init.sh) and
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
    i=0
    while [ ! -S /tmp/fs.sock ] && [ $i -lt 500 ]; do sleep 0.01; i=$((i + 1)); done
    sleep 0.2
    idle_kb=$(pss_kb "$vfsd"); idle_anon_kb=$(pss_anon_kb "$vfsd")
    start=$(now)
    hull-vmm --kernel /l2/vmlinux --initrd /l2/virtiofs.cpio \
        --cmdline "$L2_CMDLINE" --vcpus 1 --memory-mib 256 --fs hull-share=/tmp/fs.sock \
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
    say "virtiofs $result rc=$rc ms=$ms read=\"$read_line\" wrote=\"$wrote\" $dd_line virtiofsd_idle_pss_kb=$idle_kb virtiofsd_idle_anon_kb=$idle_anon_kb virtiofsd_peak_pss_kb=$vfsd_kb virtiofsd_peak_anon_kb=$vfsd_anon_kb vmm_peak_anon_kb=$vmm_anon_kb"
    [ "$result" = ok ] || { dump /tmp/fs.console L2; dump /tmp/fs.vmm VMM; dump /tmp/virtiofsd.log VFSD; }
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
    i=0
    while [ ! -S /tmp/fs2.sock ] && [ $i -lt 500 ]; do sleep 0.01; i=$((i + 1)); done
    hull-vmm --kernel /l2/vmlinux --initrd /l2/initramfs.cpio \
        --cmdline "$L2_CMDLINE" --vcpus 1 --memory-mib 256 --fs hull-share=/tmp/fs2.sock \
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
        reset) check_reset ;;
        vsock) check_vsock ;;
        virtiofs) check_virtiofs ;;
        virtiofs-death) check_virtiofs_death ;;
        shim-hullvmm) check_shim_hullvmm ;;
        *) say "$c FAIL unknown check" ;;
    esac
done
say "done uptime_s=$(cut -d' ' -f1 /proc/uptime)"
sync
reboot -f
sleep 10
