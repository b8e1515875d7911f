#!/usr/bin/env bash
# Builds (once) the small Debian 12 guest that scripts/vm/run-e2e.sh boots: a debootstrap root
# filesystem with Debian's own kernel (linux-image-amd64, 6.1: a different kernel from the
# host's), the userspace the tests call (iptables, nftables, iproute2, the reference CNI
# plugins), and a tiny init that mounts the workspace and hands over to scripts/vm/guest-run.sh.
#
# Everything comes from Debian's apt repositories. The result is cached in $MESHCAP_VM_DIR
# (default /var/tmp/meshcap-vm):
#   rootfs/           the debootstrapped tree (kept for the kernel and initrd)
#   rootfs.img        an ext4 image of it (booted with snapshot=on: it never changes)
#   vmlinuz, initrd   the guest's kernel and initramfs, copied out of rootfs/boot
#   stamp             what the image was built from; a change rebuilds it
# Run as root. `--rebuild` throws the cache away first.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VM_DIR=${MESHCAP_VM_DIR:-/var/tmp/meshcap-vm}
MIRROR=${MESHCAP_VM_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
IMAGE_SIZE=${MESHCAP_VM_IMAGE_SIZE:-3G}
# What the guest needs: its kernel and initramfs, the tools the tests drive, and kmod so the
# kernel can autoload netfilter, veth, bridge and 9p modules.
GUEST_PACKAGES=(
    linux-image-amd64 initramfs-tools kmod udev
    iptables nftables iproute2 containernetworking-plugins
    procps psmisc util-linux ca-certificates bpftool
    podman runc busybox-static containerd
)

log() { echo "build-image.sh: $*" >&2; }
die() { log "FAILED: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap, chroot)"
if [ "${1:-}" = "--rebuild" ]; then
    log "removing the cached image in $VM_DIR"
    rm -rf "${VM_DIR:?}/rootfs" "$VM_DIR/rootfs.img" "$VM_DIR/vmlinuz" "$VM_DIR/initrd" \
        "$VM_DIR/stamp" "$VM_DIR/base-stamp"
fi

# The stamps name everything the image depends on: the base (suite, mirror, packages) needs a
# new debootstrap; the guest init only a new ext4 image.
base_stamp() {
    printf 'suite=%s\nmirror=%s\npackages=%s\n' "$SUITE" "$MIRROR" "${GUEST_PACKAGES[*]}"
}
stamp_text() {
    base_stamp
    printf 'size=%s\n' "$IMAGE_SIZE"
    sha256sum "$HERE/guest-init.sh" | cut -d' ' -f1
}

if [ -f "$VM_DIR/stamp" ] && [ -f "$VM_DIR/rootfs.img" ] && [ -f "$VM_DIR/vmlinuz" ] &&
    [ -f "$VM_DIR/initrd" ] && [ "$(cat "$VM_DIR/stamp")" = "$(stamp_text)" ]; then
    log "cached image is current: $VM_DIR/rootfs.img"
    exit 0
fi

command -v debootstrap >/dev/null || die "debootstrap missing (apt-get install debootstrap)"
command -v mkfs.ext4 >/dev/null || die "mkfs.ext4 missing (apt-get install e2fsprogs)"
mkdir -p "$VM_DIR"
ROOT=$VM_DIR/rootfs
start=$SECONDS

if [ -f "$VM_DIR/base-stamp" ] && [ "$(cat "$VM_DIR/base-stamp")" = "$(base_stamp)" ] &&
    [ -x "$ROOT/usr/sbin/nft" ] && [ -f "$VM_DIR/vmlinuz" ] && [ -f "$VM_DIR/initrd" ]; then
    log "the root filesystem is current; refreshing the guest init and the image only"
else
    rm -rf "$ROOT" "$VM_DIR/base-stamp"
    log "debootstrap $SUITE into $ROOT (log: $VM_DIR/debootstrap.log)"
    include=$(IFS=,; echo "${GUEST_PACKAGES[*]}")
    if ! debootstrap --variant=minbase --include="$include" "$SUITE" "$ROOT" "$MIRROR" \
        >"$VM_DIR/debootstrap.log" 2>&1; then
        tail -n 30 "$VM_DIR/debootstrap.log" >&2
        die "debootstrap (see $VM_DIR/debootstrap.log)"
    fi
    log "debootstrap took $(( SECONDS - start ))s"

    # The guest's filesystem table and hostname, and the 9p modules it mounts the workspace
    # with in the initramfs (harmless when they also load from the root).
    printf '/dev/vda / ext4 rw,relatime 0 1\n' >"$ROOT/etc/fstab"
    echo meshcap-vm >"$ROOT/etc/hostname"
    printf '9p\n9pnet\n9pnet_virtio\n' >>"$ROOT/etc/initramfs-tools/modules"
    kver=$(find "$ROOT/lib/modules" -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1)
    [ -n "$kver" ] || die "no kernel modules in $ROOT/lib/modules: was linux-image-amd64 installed?"
    chroot "$ROOT" update-initramfs -u -k "$kver" >>"$VM_DIR/debootstrap.log" 2>&1 ||
        die "update-initramfs in the guest root"
    cp "$ROOT/boot/vmlinuz-$kver" "$VM_DIR/vmlinuz"
    cp "$ROOT/boot/initrd.img-$kver" "$VM_DIR/initrd"
    # Apt's downloads are not needed inside the image.
    rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/*
    base_stamp >"$VM_DIR/base-stamp"
fi
install -m 0755 "$HERE/guest-init.sh" "$ROOT/usr/local/sbin/meshcap-vm-init"
kver=$(find "$ROOT/lib/modules" -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1)

log "making the ext4 image ($IMAGE_SIZE)"
truncate -s "$IMAGE_SIZE" "$VM_DIR/rootfs.img"
# -d populates the filesystem from the tree, so no loop device or mount is needed.
mkfs.ext4 -q -F -L meshcap-vm -d "$ROOT" "$VM_DIR/rootfs.img" || die "mkfs.ext4 -d"
stamp_text >"$VM_DIR/stamp"
log "image ready in $(( SECONDS - start ))s: $VM_DIR/rootfs.img (guest kernel $kver)"
