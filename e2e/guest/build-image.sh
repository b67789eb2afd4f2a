#!/usr/bin/env bash
# Builds the test guests' boot files into OUT_DIR from Debian packages alone:
#   vmlinuz     - the kernel of Debian's linux-image-*-cloud-amd64 (extracted, not installed)
#   initrd.gz   - busybox-static, the virtio block modules of that kernel, and ./init
# Usage: build-image.sh OUT_DIR   (needs busybox-static, cpio; downloads the kernel .deb)
set -euo pipefail

out=${1:?usage: build-image.sh OUT_DIR}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The meta-package names the current cloud kernel; download it without installing it.
kpkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
[ -n "$kpkg" ] || { echo "build-image: no linux-image-cloud-amd64 dependency found" >&2; exit 1; }
download() { (cd "$work" && apt-get download -q -o APT::Sandbox::User=root "$kpkg" >/dev/null); }
# Package lists older than the archive name a kernel that is gone: refresh once and retry.
download || { apt-get update -qq && download; }
dpkg-deb -x "$work"/"$kpkg"_*.deb "$work/kernel"

root=$work/initramfs
mkdir -p "$root"/{bin,dev,proc,sys,lib/modules}
cp /bin/busybox "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
install -m 0755 "$here/init" "$root/init"

moddir=$(echo "$work"/kernel/lib/modules/*/kernel)
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk; do
    f=$(find "$moddir" -name "$m.ko*" | head -n1)
    # Built into the kernel when there is no module file; init skips missing ones.
    [ -n "$f" ] || continue
    case "$f" in
        *.ko.xz) xz -dc "$f" >"$root/lib/modules/$m.ko" ;;
        *.ko.zst) zstd -qdc "$f" >"$root/lib/modules/$m.ko" ;;
        *) cp "$f" "$root/lib/modules/$m.ko" ;;
    esac
done

mkdir -p "$out"
cp "$work"/kernel/boot/vmlinuz-* "$out/vmlinuz.tmp"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -9) >"$out/initrd.gz.tmp"
mv "$out/vmlinuz.tmp" "$out/vmlinuz"
mv "$out/initrd.gz.tmp" "$out/initrd.gz"
echo "$kpkg" >"$out/kernel-package"
