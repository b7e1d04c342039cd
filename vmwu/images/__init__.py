"""Disk images: ext file systems (mkfs -d / debugfs), ISO9660 (pycdlib), initramfs (newc
cpio) and qcow2/raw/vmdk conversions (qemu-img). Nothing here mounts anything."""
