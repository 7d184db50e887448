#!/bin/busybox sh
# /init of the nested harness's L2 test initramfs (busybox + this script, booting the
# guest image's kernel under hull-vmm): runs the guest half of the check named by
# hull.l2= on the kernel command line, prints "L2-<CHECK>: ..." lines on the console, and
# reboots (hull-vmm then exits with status 0).
#   blk: /dev/vda (read-only) checksum, size and ro flag; a write to /dev/vdb; a write to
#        /dev/vda, which must be refused; if there is a /dev/vdc, the time to read it.
#   net: eth0 = 10.0.2.2/24, ping L1 at 10.0.2.1, then stay up hull.linger= seconds so L1
#        can ping back.
#   virtiofs: mounts the virtio-fs share `hull-share`, prints the file L1 put there, writes
#        one back, times a 128 MiB write and read through the share ("L2-FS:" lines). The
#        dd figures use the guest clock with centisecond resolution: nested, noisy, for
#        orders of magnitude only.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
arg() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" /proc/cmdline; }

case "$(arg hull.l2)" in
blk)
    echo "L2-BLK: vda=$(sha256sum /dev/vda | cut -d' ' -f1) size=$(cat /sys/block/vda/size) ro=$(cat /sys/block/vda/ro)"
    if echo hull-l2-wrote-this | dd of=/dev/vdb bs=512 conv=sync,fsync 2>/dev/null; then
        echo "L2-BLK: vdb-write=ok"
    else
        echo "L2-BLK: vdb-write=failed"
    fi
    if echo x | dd of=/dev/vda bs=512 conv=sync,fsync 2>/dev/null; then
        echo "L2-BLK: vda-write=accepted"
    else
        echo "L2-BLK: vda-write=refused"
    fi
    if [ -e /dev/vdc ]; then
        # Sequential read of the third disk (uncached: read once), timed in centiseconds.
        s=$(sed 's/\.//;s/ .*//' /proc/uptime)
        dd if=/dev/vdc of=/dev/null bs=1M 2>/dev/null
        e=$(sed 's/\.//;s/ .*//' /proc/uptime)
        echo "L2-BLK: vdc-read-mib=$(( $(cat /sys/block/vdc/size) / 2048 )) vdc-read-ms=$(( (e - s) * 10 ))"
    fi
    ;;
net)
    ip link set lo up
    ip link set eth0 up
    ip addr add 10.0.2.2/24 dev eth0
    echo "L2-NET: mac=$(cat /sys/class/net/eth0/address)"
    if ping -c 3 -w 20 10.0.2.1 >/tmp/ping 2>&1; then
        echo "L2-NET: ping=ok $(grep -o '[0-9]* packets received' /tmp/ping)"
    else
        echo "L2-NET: ping=FAIL $(tail -n 2 /tmp/ping | tr '\n' ' ')"
    fi
    sleep "$(arg hull.linger)"
    ;;
virtiofs)
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
    ;;
*)
    echo "L2: unknown hull.l2=$(arg hull.l2)"
    ;;
esac
echo "L2-DONE"
reboot -f
