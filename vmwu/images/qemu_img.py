"""qemu-img: overlays, conversions, inspection.

Every call names the format of every image it opens (``-f``, ``-F``): qemu-img never
probes. ``qemu-img info`` of an image from outside runs under CPU and memory limits
(:data:`UNTRUSTED`), as OpenStack runs it; vmwu/images/inspect.py decides beforehand, by
reading the image itself, whether qemu-img may open it at all.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vmwu import tools
from vmwu.errors import BadInput, ToolFailed

FORMATS = ("qcow2", "raw", "vmdk", "vdi", "vhdx", "vpc")

# What OpenStack gives qemu-img info on untrusted images (nova/oslo: 30 s, 1 GiB).
UNTRUSTED = tools.Limits(cpu_seconds=30, address_space=1024**3)

# A compressed qcow2 of 4 KiB clusters keeps small disks tiny, but its L1 table (at most
# 32 MiB in QEMU) then maps at most 8 TiB; larger disks get 64 KiB clusters.
SMALL_CLUSTER_MAX = 64 * 1024**3


def create_overlay(
    backing: Path, overlay: Path, *, backing_format: str, size: int | None = None
) -> None:
    """A qcow2 overlay over ``backing`` (which is never written), of ``size`` bytes if
    given (a warm start's larger capacity), else of the backing's."""
    argv: list[tools.Arg] = ["qemu-img", "create", "-q", "-f", "qcow2"]
    argv += ["-o", "cluster_size=65536", "-b", os.path.abspath(backing), "-F", backing_format]
    argv.append(overlay)
    if size is not None:
        argv.append(str(size))
    tools.run(argv, disk_hint=str(overlay.parent))


def convert(
    src: Path,
    dst: Path,
    *,
    src_format: str,
    dst_format: str = "qcow2",
    compress: bool = False,
    subformat: str | None = None,
) -> None:
    """Convert ``src`` (of ``src_format``) to ``dst``. In-order, single-coroutine writes so
    that the same input gives the same bytes (compressed clusters land in a fixed order)."""
    argv: list[str | os.PathLike[str]] = ["qemu-img", "convert", "-q", "-m", "1"]
    argv += ["-f", src_format, "-O", dst_format]
    if compress and dst_format == "qcow2":
        # Small clusters: with the default 64 KiB, qcow2's own tables (stored uncompressed)
        # dominate small images -- an empty 8 MiB output disk shrinks from 320 to 21 KiB.
        size = src.stat().st_size if src_format == "raw" else virtual_size(src, src_format)
        cluster = 4096 if size <= SMALL_CLUSTER_MAX else 65536
        argv += ["-c", "-o", f"cluster_size={cluster}"]
    if subformat:
        argv += ["-o", f"subformat={subformat}"]
    argv += [src, dst]
    tools.run(argv, disk_hint=str(dst.parent))


def info(path: Path, fmt: str, *, limits: tools.Limits | None = UNTRUSTED) -> dict[str, Any]:
    """``qemu-img info`` of ``path`` opened as ``fmt`` (never probed), as a dict (format,
    virtual-size, backing-filename, ...). Under :data:`UNTRUSTED` limits unless the
    caller passes ``limits=None`` for an image vmwu made itself."""
    argv: list[tools.Arg] = ["qemu-img", "info", "--output=json", "-U", "-f", fmt, path]
    try:
        out = tools.output(argv, limits=limits)
    except ToolFailed as exc:
        if exc.returncode < 0:  # SIGXCPU at the CPU limit, SIGABRT or SIGSEGV at the memory one
            raise BadInput(
                f"{path}: qemu-img info ran out of its CPU or memory limit on this image",
                hint="refusing an image that takes that much to open",
            ) from None
        raise
    try:
        data = json.loads(out)
    except json.JSONDecodeError:
        raise BadInput(f"{path}: qemu-img info gave no readable answer") from None
    if not isinstance(data, dict):
        raise BadInput(f"{path}: qemu-img info gave no readable answer")
    return data


def virtual_size(path: Path, fmt: str) -> int:
    """The capacity of ``path`` (a ``fmt`` image vmwu made or already inspected)."""
    size = info(path, fmt, limits=None).get("virtual-size")
    if not isinstance(size, int):
        raise BadInput(f"{path}: qemu-img info reports no virtual size")
    return size
