#!/usr/bin/env bash
# Sourced by build.sh. Builds small L2 test initramfs images: a static busybox and a shell
# script as /init, for nested checks that need a scriptable guest rather than hull-agent
# (the same guest kernel boots them).
#   l2_shell_initramfs GEN_INIT_CPIO BUSYBOX INIT_SCRIPT OUT_CPIO
l2_shell_initramfs() {
    local gen=$1 busybox=$2 init=$3 out=$4
    local list="$out.list"
    cat >"$list" <<LIST
dir /dev 0755 0 0
nod /dev/console 0600 0 0 c 5 1
dir /proc 0555 0 0
dir /sys 0555 0 0
dir /tmp 1777 0 0
dir /mnt 0755 0 0
dir /bin 0755 0 0
file /bin/busybox $busybox 0755 0 0
file /init $init 0755 0 0
LIST
    "$gen" "$list" >"$out.tmp"
    mv "$out.tmp" "$out"
}
