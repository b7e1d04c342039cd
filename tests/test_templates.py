"""Instance disks from templates (vmwu.images.templates): what a pool service copies is
what qemu-img would have made, and a replaced source gets a template of its own."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vmwu.images import ext4, qemu_img, templates
from vmwu.images.templates import Templates


@pytest.fixture
def backing(tmp_path: Path) -> Path:
    raw = tmp_path / "app.raw"
    ext4.make_image(raw, 8 * 1024**2, label="VMWU-APP")
    disk = tmp_path / "app.qcow2"
    qemu_img.convert(raw, disk, src_format="raw", dst_format="qcow2", compress=True)
    return disk


def test_an_overlay_copied_from_a_template_is_the_overlay_qemu_img_makes(
    tmp_path: Path, backing: Path
) -> None:
    made = Templates(tmp_path / "t")
    for name, size in (("a", None), ("b", None), ("c", 1 << 30)):
        made.overlay(backing, tmp_path / f"{name}.qcow2", backing_format="qcow2", size=size)
    qemu_img.create_overlay(backing, tmp_path / "ref.qcow2", backing_format="qcow2")
    assert (tmp_path / "a.qcow2").read_bytes() == (tmp_path / "ref.qcow2").read_bytes()
    assert (tmp_path / "b.qcow2").read_bytes() == (tmp_path / "a.qcow2").read_bytes()
    info = qemu_img.info(tmp_path / "c.qcow2", "qcow2", limits=None)
    assert info["virtual-size"] == 1 << 30
    assert info["backing-filename"] == os.path.abspath(backing)
    assert made.virtual_size(backing, "qcow2") == 8 * 1024**2
    assert len(list((tmp_path / "t").iterdir())) == 2  # one per (source, size)


def test_a_replaced_source_gets_a_new_template(tmp_path: Path) -> None:
    src = tmp_path / "out.raw"
    ext4.make_image(src, 4 * 1024**2, label="VMWU-OUT")
    made = Templates(tmp_path / "t")
    made.raw(src, tmp_path / "one.raw", src_format="raw")
    assert (tmp_path / "one.raw").read_bytes() == src.read_bytes()
    replacement = tmp_path / "new.raw"
    ext4.make_image(replacement, 6 * 1024**2, label="VMWU-OUT")
    os.replace(replacement, src)  # as the node cache replaces an entry
    made.raw(src, tmp_path / "two.raw", src_format="raw")
    assert (tmp_path / "two.raw").stat().st_size == 6 * 1024**2
    assert (tmp_path / "two.raw").read_bytes() == src.read_bytes()


def test_copies_keep_their_holes_and_old_templates_go(tmp_path: Path) -> None:
    src = tmp_path / "big.raw"
    ext4.make_image(src, 1024**3, label="VMWU-OUT")
    made = Templates(tmp_path / "t")
    made.raw(src, tmp_path / "copy.raw", src_format="raw")
    assert (tmp_path / "copy.raw").stat().st_blocks * 512 < 64 * 1024**2
    for i in range(templates.KEEP + 3):
        other = tmp_path / f"o{i}.raw"
        other.write_bytes(b"x" * 512)
        made.raw(other, tmp_path / f"c{i}.raw", src_format="raw")
    assert len(list((tmp_path / "t").iterdir())) == templates.KEEP


def test_without_enable_every_disk_is_made_by_qemu_img(tmp_path: Path, backing: Path) -> None:
    assert templates._active is None
    templates.create_overlay(backing, tmp_path / "o.qcow2", backing_format="qcow2", size=1 << 30)
    assert qemu_img.virtual_size(tmp_path / "o.qcow2", "qcow2") == 1 << 30
