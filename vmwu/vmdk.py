"""streamOptimized VMDK disks for ``vmwu pack --format vmdk`` (issue 6).

``qemu-img convert -O vmdk -o subformat=streamOptimized`` writes the format VMware, OVF
tools and VirtualBox import (compressed grains, one file). Its embedded descriptor holds
a random content ID (``CID=``); vmwu replaces it with one derived from the disk's
contents, so that packing the same inputs twice still gives the same bytes.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from vmwu.images import qemu_img

_CID = re.compile(rb"\nCID=([0-9a-f]{8})\n")
_DESCRIPTOR_BYTES = 64 * 1024  # the descriptor sits in the first sectors


def write_stream_optimized(raw: Path, dest: Path) -> None:
    """Convert the raw image ``raw`` to a streamOptimized VMDK at ``dest``."""
    qemu_img.convert(raw, dest, src_format="raw", dst_format="vmdk", subformat="streamOptimized")
    pin_cid(dest)


def pin_cid(path: Path) -> str:
    """Replace the descriptor's random CID by the first 32 bits of the sha256 of the file
    with the CID zeroed; returns the new CID."""
    with open(path, "r+b") as fh:
        head = fh.read(_DESCRIPTOR_BYTES)
        match = _CID.search(head)
        if match is None:
            return ""
        start = match.start(1)
        digest = hashlib.sha256()
        digest.update(head[:start] + b"00000000" + head[match.end(1) :])
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
        cid = digest.hexdigest()[:8]
        fh.seek(start)
        fh.write(cid.encode())
    return cid
