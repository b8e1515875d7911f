#!/bin/sh
# PID 1 of the meshcap test VM (installed as /usr/local/sbin/meshcap-vm-init by build-image.sh,
# booted with init=). No systemd: mount what the tests need, mount the host's two 9p shares
# (`out`: this run's config and results, read-write; `ws`: the workspace, read-only, at the same
# path as on the host so the test binaries' compiled-in paths hold), run guest-run.sh from the
# workspace, and power off whatever happens so the host's qemu exits.
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH

say() { echo "meshcap-vm-init: $*" >/dev/console 2>&1 || echo "meshcap-vm-init: $*"; }
# The image has no poweroff (debootstrap without systemd-sysv): SysRq's power-off. It runs on a
# kernel worker, so PID 1 waits for it; PID 1 exiting first would panic the kernel.
finish() {
    sync
    echo o >/proc/sysrq-trigger
    while :; do sleep 1; done
}

# The initramfs moved /proc, /sys, /dev and /run into the root; mount them if it did not.
mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mountpoint -q /run || mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /dev/pts /dev/shm
mountpoint -q /dev/pts || mount -t devpts devpts /dev/pts
mountpoint -q /dev/shm || mount -t tmpfs tmpfs /dev/shm
mountpoint -q /tmp || mount -t tmpfs -o mode=1777 tmpfs /tmp
# cgroup v2 (the eBPF fast path attaches there) and bpffs (where its maps are pinned).
mountpoint -q /sys/fs/cgroup || mount -t cgroup2 cgroup2 /sys/fs/cgroup || say "no cgroup2"
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf || say "no bpffs"
mountpoint -q /sys/kernel/debug || mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
ip link set lo up
hostname meshcap-vm

modprobe 9pnet_virtio 2>/dev/null
mkdir -p /mnt/out
if ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 out /mnt/out; then
    say "cannot mount the 'out' 9p share"
    finish
fi
# run.env (written by the host) names the workspace path and the test environment.
if [ ! -f /mnt/out/run.env ]; then
    say "no run.env in the out share"
    finish
fi
# shellcheck disable=SC1091
. /mnt/out/run.env
mkdir -p "$MESHCAP_VM_WS"
if ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,ro ws "$MESHCAP_VM_WS"; then
    say "cannot mount the workspace at $MESHCAP_VM_WS"
    echo "result=error mount-workspace" >/mnt/out/result
    finish
fi
/bin/bash "$MESHCAP_VM_WS/scripts/vm/guest-run.sh" >/dev/console 2>&1
echo "guest-run.sh exited $?" >>/mnt/out/guest-exit
umount /mnt/out 2>/dev/null
finish
