#!/bin/busybox sh
# /init of L2 (booted by hull-vmm inside the arm64 L1): prints marker lines on the 8250
# console (the CPU count, the virtio-blk disk's first bytes, a vsock round trip) and
# powers off, which arm64
# Linux does through PSCI SYSTEM_OFF (hull-vmm then sees KVM_EXIT_SYSTEM_EVENT and exits
# with status 0).
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t devtmpfs devtmpfs /dev
echo "HULL-ARM64-L2: up $(/bin/busybox uname -m) cpus=$(/bin/busybox grep -c ^processor /proc/cpuinfo)"
# L1 hands a virtio-blk disk whose first bytes are a marker: reading it back proves the
# virtio-mmio device (its FDT node, its SPI through an irqfd, its queue through an ioeventfd).
if [ -b /dev/vda ]; then
    echo "HULL-ARM64-L2: vda $(/bin/busybox head -c 20 /dev/vda)"
else
    echo "HULL-ARM64-L2: no /dev/vda"
fi
# A vsock round trip with L1 (guest-initiated, to the host's port 1025, as hull-agent's
# readiness connection): one line each way.
echo "HULL-ARM64-L2: $(/bin/vsock-ping guest 1025 2>&1)"
# hull.action=linger: tick once a second for a minute (L1 pauses, resumes and shuts the VM
# down through hull-vmm's control socket meanwhile).
if /bin/busybox grep -q 'hull.action=linger' /proc/cmdline; then
    i=0
    while [ $i -lt 60 ]; do
        i=$((i + 1)); echo "HULL-ARM64-L2: tick $i"; /bin/busybox sleep 1
    done
fi
# hull.action=reboot on L2's command line: reboot instead (PSCI SYSTEM_RESET; hull-vmm
# exits with status 0 too and names the reset).
if /bin/busybox grep -q 'hull.action=reboot' /proc/cmdline; then
    /bin/busybox reboot -f
fi
/bin/busybox poweroff -f
