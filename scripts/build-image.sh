#!/usr/bin/env bash
# The arm64 Debian bookworm gateway image, built on x86: debootstrap --foreign, the second
# stage under qemu-user-static, then the edge-defender .deb installed with dpkg (its
# maintainer scripts run under emulation, as on a Pi) and a first-boot service that reads
# per-device files (thing name, endpoint, certificates, profiles) from the boot partition.
#   sudo scripts/build-image.sh [--deb dist/edge-defender_V_arm64.deb] [--out dist/image]
#                               [--cache DIR] [--no-disk]
# Writes OUT/rootfs (the tree, bootable with systemd-nspawn), and unless --no-disk
# OUT/edge-defender-gateway_V_arm64.img: a disk with a FAT boot partition (label EDBOOT,
# mounted at /boot/firmware, holding edge-defender/ for the first-boot files) and an ext4
# root (label EDROOT). docs/deploy.md says what a Pi still needs (kernel, firmware).
# The debootstrap result is cached (keyed by suite, arch and package list) in CACHE,
# default /var/cache/edge-defender-build: 6 minutes the first time (366 s measured on 2 shared
# cores, 11 min when they were busy; the second stage under emulation is most of it), then
# about 15 s a build.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/packaging/lib.sh"

suite=bookworm arch=arm64
deb="" out=$here/dist/image cache=/var/cache/edge-defender-build disk=1
while [ $# -gt 0 ]; do
    case "$1" in
    --deb) deb=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --cache) cache=$2; shift 2 ;;
    --no-disk) disk=0; shift ;;
    *) echo "usage: $0 [--deb FILE] [--out DIR] [--cache DIR] [--no-disk]" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" -eq 0 ] || { echo "build-image.sh: needs root (debootstrap, chroot)" >&2; exit 1; }
need() { command -v "$1" >/dev/null || { echo "build-image.sh: $1 missing: apt-get install $2" >&2; exit 1; }; }
need debootstrap debootstrap
need qemu-aarch64-static qemu-user-static
if [ "$disk" = 1 ]; then
    need mkfs.vfat dosfstools
    need mcopy mtools
    need sfdisk fdisk
fi
if [ -z "$deb" ]; then
    deb=$(ls -t "$here"/dist/edge-defender_*_"$arch".deb 2>/dev/null | head -n1 || true)
    [ -n "$deb" ] || { echo "build-image.sh: no dist/edge-defender_*_$arch.deb: run scripts/build-deb.sh first, or pass --deb" >&2; exit 1; }
fi
version=$(dpkg-deb -f "$deb" Version)
[ "$(dpkg-deb -f "$deb" Architecture)" = "$arch" ] || { echo "build-image.sh: $deb is not an $arch package" >&2; exit 1; }

binfmt_enable "$arch"
mirror=$(debian_mirror "$suite")

# What a headless gateway needs beside the agent: an init, networking (systemd-networkd,
# DHCP on every wired interface), a clock (TLS needs the time, a Pi has no RTC), the
# agent's dependencies (python3), and the tools an operator reaches for (ss, ps).
packages=systemd,systemd-sysv,systemd-timesyncd,dbus,udev,kmod,python3,iproute2,procps,ca-certificates,netbase,less
key=$(printf '%s %s %s\n' "$suite" "$arch" "$packages" | sha256sum | cut -c1-12)
base=$cache/image-base-$suite-$arch-$key

# Mounts a chroot needs, undone by the trap.
mounted=()
chroot_mounts() {
    local root=$1
    mount -t proc proc "$root/proc" && mounted+=("$root/proc")
    mount -t sysfs sysfs "$root/sys" && mounted+=("$root/sys")
    mount --bind /dev "$root/dev" && mounted+=("$root/dev")
}
unmount_all() {
    local i
    # (debootstrap's second stage unmounts /proc and /sys itself)
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[$i]}" 2>/dev/null || true; done
    mounted=()
}
in_root() { chroot "$1" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "${@:2}"; }
trap unmount_all EXIT

mkdir -p "$cache"
exec 9>"$cache/.image.lock"
flock 9
if [ ! -e "$base/.complete" ]; then
    tmp=$base.partial
    rm -rf "$tmp"
    start=$SECONDS
    echo "build-image.sh: debootstrap $suite $arch from $mirror (first stage)" >&2
    debootstrap --arch="$arch" --foreign --include="$packages" "$suite" "$tmp" "$mirror" \
        >"$cache/image-debootstrap.log" 2>&1 || { tail -n 30 "$cache/image-debootstrap.log" >&2; exit 1; }
    echo "build-image.sh: second stage under qemu-$(qemu_arch "$arch")-static" >&2
    chroot_mounts "$tmp"
    in_root "$tmp" /debootstrap/debootstrap --second-stage >>"$cache/image-debootstrap.log" 2>&1 ||
        { tail -n 30 "$cache/image-debootstrap.log" >&2; exit 1; }
    in_root "$tmp" apt-get clean
    unmount_all
    touch "$tmp/.complete"
    mv "$tmp" "$base"
    echo "build-image.sh: base root in $((SECONDS - start)) s: $base" >&2
fi

root=$out/rootfs
rm -rf "$root"
mkdir -p "$out"
cp -a "$base" "$root"
rm "$root/.complete"

# The package, installed as on a device: dpkg runs its maintainer scripts under qemu.
cp "$deb" "$root/tmp/edge-defender.deb"
chroot_mounts "$root"
in_root "$root" dpkg -i /tmp/edge-defender.deb
rm "$root/tmp/edge-defender.deb"

# The gateway around it.
echo edge-gateway >"$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tedge-gateway\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
cat >"$root/etc/fstab" <<'EOF'
# nofail: a container (or a disk without the partition) still boots.
LABEL=EDROOT  /               ext4  defaults,noatime                          0 1
LABEL=EDBOOT  /boot/firmware  vfat  defaults,nofail,x-systemd.device-timeout=10s,umask=0077  0 2
EOF
mkdir -p "$root/boot/firmware"
cat >"$root/etc/systemd/network/50-wired.network" <<'EOF'
[Match]
Name=en* eth*

[Network]
DHCP=yes
EOF
install -m 0755 "$here/packaging/image/edge-defender-firstboot" "$root/usr/local/sbin/edge-defender-firstboot"
install -m 0644 "$here/packaging/image/edge-defender-firstboot.service" "$root/etc/systemd/system/"
in_root "$root" systemctl enable systemd-networkd systemd-timesyncd edge-defender-firstboot.service
# Every device makes its own machine id at first boot; no one can log in with a password.
: >"$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
in_root "$root" passwd --lock root >/dev/null
in_root "$root" apt-get clean
unmount_all
echo "build-image.sh: root tree: $root" >&2

[ "$disk" = 1 ] || exit 0
# A disk without loop devices: each file system made in a file, then copied into place.
img=$out/edge-defender-gateway_${version}_$arch.img
boot_mb=256
root_mb=$(($(du -sm "$root" | cut -f1) * 13 / 10 + 200))
work=$(mktemp -d)
trap 'unmount_all; rm -rf "$work"' EXIT
mkfs.vfat -n EDBOOT -C "$work/boot.vfat" $((boot_mb * 1024)) >/dev/null
mmd -i "$work/boot.vfat" ::/edge-defender ::/edge-defender/certs ::/edge-defender/profiles
mcopy -i "$work/boot.vfat" "$here/packaging/image/README.txt" ::/edge-defender/README.txt
truncate -s "${root_mb}M" "$work/root.ext4"
mkfs.ext4 -q -L EDROOT -d "$root" "$work/root.ext4"
rm -f "$img"
truncate -s $((1 + boot_mb + root_mb))M "$img"
printf 'label: dos\n1MiB,%sMiB,c,*\n,,83\n' "$boot_mb" | sfdisk -q "$img"
dd if="$work/boot.vfat" of="$img" bs=1M seek=1 conv=notrunc status=none
dd if="$work/root.ext4" of="$img" bs=1M seek=$((1 + boot_mb)) conv=notrunc status=none
echo "$img"
