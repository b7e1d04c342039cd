"""qemu-img: overlays, conversions, inspection."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vmwu import tools

FORMATS = ("qcow2", "raw", "vmdk", "vdi", "vhdx", "vpc")


def create_overlay(backing: Path, overlay: Path, *, backing_format: str) -> None:
    """A qcow2 overlay over ``backing`` (which is never written)."""
    tools.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=65536",
            "-b",
            os.path.abspath(backing),
            "-F",
            backing_format,
            overlay,
        ],
        disk_hint=str(overlay.parent),
    )


def convert(
    src: Path,
    dst: Path,
    *,
    src_format: str | None = None,
    dst_format: str = "qcow2",
    compress: bool = False,
    subformat: str | None = None,
) -> None:
    """Convert ``src`` to ``dst``. In-order, single-coroutine writes so that the same input
    gives the same bytes (compressed clusters land in a fixed order)."""
    argv: list[str | os.PathLike[str]] = ["qemu-img", "convert", "-q", "-m", "1"]
    if src_format:
        argv += ["-f", src_format]
    argv += ["-O", dst_format]
    if compress and dst_format == "qcow2":
        # Small clusters: with the default 64 KiB, qcow2's own tables (stored uncompressed)
        # dominate small images -- an empty 8 MiB output disk shrinks from 320 to 21 KiB.
        argv += ["-c", "-o", "cluster_size=4096"]
    if subformat:
        argv += ["-o", f"subformat={subformat}"]
    argv += [src, dst]
    tools.run(argv, disk_hint=str(dst.parent))


def info(path: Path) -> dict[str, Any]:
    """``qemu-img info`` as a dict (format, virtual-size, backing-filename, ...)."""
    out = tools.output(["qemu-img", "info", "--output=json", "-U", path])
    data: dict[str, Any] = json.loads(out)
    return data
