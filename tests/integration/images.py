"""Disk images that know nothing of vmwu, made here without downloads beyond Debian's
packages and without mounts: what `vmwu base import` takes (tests and bench/bases.py).

- :func:`make_daemon_image`: a BIOS disk (MBR, syslinux on a FAT partition, ext4 root)
  with Debian's cloud kernel and a busybox system whose init is the thesis's script-bin
  daemon (section 5.1.4.1): it mounts the application disk and runs its scripts. Built
  from the two .deb files the tiny base was built from.
- :func:`make_cloud_image`: a Debian cloud image: mmdebstrap with cloud-init, booted by
  syslinux with Debian's own initramfs; cloud-init finds vmwu's NoCloud seed.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from vmwu.bases import mmdebstrap
from vmwu.bases.apt import Apt
from vmwu.bases.debian import build_initramfs, find_kernel
from vmwu.bases.tiny import CMDLINE, module_order
from vmwu.images import bootdisk, rootfs

MiB = 1024**2

DAEMON_INIT = """#!/bin/busybox sh
# A guest that knows nothing of vmwu: init is the thesis's script-bin daemon (section
# 5.1.4.1). It mounts the application image (thesis.app=, default /dev/vdb) at /app and
# runs every script in /app/.vmwu/bin: moved to a temporary directory, run, removed.
/bin/busybox --install -s /bin 2> /dev/null
export PATH=/bin
mount -t devtmpfs dev /dev 2> /dev/null
exec 0< /dev/console 1> /dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs tmp /tmp
while read -r mod; do insmod "/lib/modules/$mod.ko"; done < /etc/modules.order
app=/dev/vdb
for arg in $(cat /proc/cmdline); do
    case "$arg" in thesis.app=*) app=${arg#thesis.app=} ;; esac
done
echo "thesis-daemon: waiting for the application image $app"
while [ ! -b "$app" ]; do sleep 1; done
mkdir -p /app /tmp/script-bin
mount -t ext4 "$app" /app || echo "thesis-daemon: cannot mount $app"
for script in /app/.vmwu/bin/*; do
    [ -f "$script" ] || continue
    name=${script##*/}
    mv "$script" /tmp/script-bin/ && chmod +x "/tmp/script-bin/$name"
    echo "thesis-daemon: running $name"
    "/tmp/script-bin/$name"
    rm -f "/tmp/script-bin/$name"
done
echo "thesis-daemon: script-bin empty, restarting"
reboot -f
"""


def unpack_debs(debs: list[Path], dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for deb in debs:
        subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True)
    return dest


def tiny_debs(downloads: Path) -> list[Path]:
    """The kernel and busybox .debs `vmwu base build tiny` downloaded."""
    kernel = sorted(downloads.glob("linux-image-*_amd64.deb"))
    busybox = sorted(downloads.glob("busybox-static_*_amd64.deb"))
    assert kernel and busybox, f"no tiny-base packages in {downloads}"
    return [kernel[-1], busybox[-1]]


def systemd_boot(downloads: Path, dest: Path) -> Path:
    """systemd-boot's UEFI binary, from Debian's systemd-boot-efi package."""
    debs = sorted(downloads.glob("systemd-boot-efi_*_amd64.deb"))
    if not debs:
        debs = Apt("amd64").download(["systemd-boot-efi"], downloads)
    tree = unpack_debs(debs[-1:], dest)
    return next(tree.rglob("systemd-bootx64.efi"))


def make_daemon_image(
    downloads: Path, dest: Path, *, app_device: str = "/dev/vdb", uefi: bool = False
) -> Path:
    """The daemon image; with ``uefi``, a GPT disk that boots by UEFI (systemd-boot)."""
    with tempfile.TemporaryDirectory(prefix="vmwu-daemon-img-") as tmp_str:
        tmp = Path(tmp_str)
        tree = unpack_debs(tiny_debs(downloads), tmp / "debs")
        kernel, version = find_kernel(tree)
        build_initramfs(tree, version, tmp / "initrd.img")
        moddir = next(p for p in (tree / "lib/modules", tree / "usr/lib/modules") if p.is_dir())
        root = tmp / "root"
        for d in ("bin", "sbin", "dev", "proc", "sys", "tmp", "etc", "lib/modules"):
            (root / d).mkdir(parents=True, exist_ok=True)
        shutil.copy(tree / "bin/busybox", root / "bin/busybox")
        staged = rootfs.Staged(root)
        staged.add_file("/sbin/init", DAEMON_INIT.encode(), mode=0o755)
        modules = module_order(moddir / version, ("isofs",))
        for ko in modules:
            shutil.copy(ko, root / "lib/modules" / f"{ko.stem}.ko")
        (root / "etc/modules.order").write_text("".join(f"{ko.stem}\n" for ko in modules))
        entry = bootdisk.BootEntry(
            append=f"{CMDLINE} root=/dev/vda2 rootfstype=ext4 rw thesis.app={app_device}"
        )
        bootdisk.make_bios_disk(
            dest,
            boot_files={"vmlinuz": kernel, "initrd.img": tmp / "initrd.img"},
            entry=entry,
            root=staged,
            root_size=32 * MiB,
            uefi_loader=systemd_boot(downloads, tmp / "sd-boot") if uefi else None,
        )
    return dest


# Debian's cloud image, the parts cloud-init needs; its kernel boots with Debian's own
# initramfs (MODULES=most finds the virtio root disk without help).
CLOUD_PACKAGES = ("linux-image-cloud-amd64", "systemd-sysv", "cloud-init", "udev")


def make_cloud_image(dest: Path, *, release: str = "bookworm") -> Path:
    with tempfile.TemporaryDirectory(prefix="vmwu-cloud-img-", dir=dest.parent) as tmp_str:
        tmp = Path(tmp_str)
        spec = mmdebstrap.Bootstrap(release=release, packages=CLOUD_PACKAGES)
        mmdebstrap.bootstrap(spec, tmp / "rootfs.tar")
        staged = rootfs.extract(tmp / "rootfs.tar", tmp / "root")
        (tmp / "rootfs.tar").unlink()
        kernel, version = find_kernel(staged.root)
        initrd = staged.root / "boot" / f"initrd.img-{version}"
        staged.add_file("/etc/hostname", b"cloud\n")
        staged.add_file("/etc/fstab", b"/dev/vda2 / ext4 rw 0 1\n")
        size = max(1024 * MiB, rootfs.tree_size(staged.root) * 3 // 2)
        size = (size + MiB - 1) // MiB * MiB
        entry = bootdisk.BootEntry(append=f"{CMDLINE} root=/dev/vda2 rootfstype=ext4 rw")
        bootdisk.make_bios_disk(
            dest,
            boot_files={"vmlinuz": kernel, "initrd.img": initrd},
            entry=entry,
            root=staged,
            root_size=size,
        )
    return dest
