#!/bin/busybox sh
# /init of the L2 guest of the nested `virtiofs` check: mounts the virtio-fs share
# `hull-share`, prints the file L1 put there, writes one back, times a 128 MiB write and
# read through the share, and reboots (hull-vmm then exits). One "L2-FS:" line per step;
# the console is slow under nesting, so nothing else is printed. The dd figures use the
# guest clock with centisecond resolution: nested, noisy, for orders of magnitude only.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
say() { echo "L2-FS: $*"; }
# Centiseconds since boot.
now() { read -r up _ </proc/uptime; echo "${up%.*}${up#*.}" | sed 's/^0*//;s/^$/0/'; }
mib=128
if mount -t virtiofs hull-share /mnt; then
    say "mounted"
    say "read=$(cat /mnt/hello.txt)"
    echo "hello-from-l2" >/mnt/from-guest.txt && sync && say "wrote"
    t0=$(now)
    dd if=/dev/zero of=/mnt/big bs=1M count=$mib conv=fsync 2>/dev/null
    t1=$(now)
    # A fresh mount: nothing of the file is left in the guest's page cache.
    umount /mnt || say "umount FAILED"
    mount -t virtiofs hull-share /mnt || say "remount FAILED"
    t2=$(now)
    dd if=/mnt/big of=/dev/null bs=1M 2>/dev/null
    t3=$(now)
    rm -f /mnt/big
    w=$((t1 - t0)); r=$((t3 - t2))
    [ "$w" -gt 0 ] || w=1; [ "$r" -gt 0 ] || r=1
    say "dd mib=$mib write_cs=$w read_cs=$r write_mib_s=$((mib * 100 / w)) read_mib_s=$((mib * 100 / r))"
    umount /mnt
else
    say "mount FAILED"
fi
say "end"
reboot -f
