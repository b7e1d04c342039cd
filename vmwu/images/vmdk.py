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

_CID = re.compile(rb"\nCID=[0-9a-f]{1,8}\n")
_DESCRIPTOR_BYTES = 64 * 1024  # the descriptor sits in the first sectors


def write_stream_optimized(raw: Path, dest: Path) -> None:
    """Convert the raw image ``raw`` to a streamOptimized VMDK at ``dest``."""
    qemu_img.convert(raw, dest, src_format="raw", dst_format="vmdk", subformat="streamOptimized")
    pin_cid(dest)


def pin_cid(path: Path) -> str:
    """Replace the descriptor's random CID by the first 32 bits of the sha256 of the file
    with a zero CID; returns the new CID.

    QEMU writes the CID as ``%x``, so it has 1 to 8 digits: the descriptor text is rewritten
    with an 8-digit CID inside its NUL-padded area, which makes the result independent of
    the random value and of its length."""
    with open(path, "r+b") as fh:
        head = fh.read(_DESCRIPTOR_BYTES)
        start = head.find(b"# Disk DescriptorFile")
        end = head.find(b"\0", start) if start >= 0 else -1
        if end < 0:
            return ""
        area_end = end
        while area_end < len(head) and head[area_end] == 0:
            area_end += 1
        text = head[start:end]
        if _CID.search(text) is None:
            return ""

        def with_cid(cid: str) -> bytes:
            new = _CID.sub(b"\nCID=" + cid.encode() + b"\n", text, count=1)
            if len(new) > area_end - start:
                raise ValueError(f"{path}: no room for the VMDK descriptor")  # a bug
            return new.ljust(area_end - start, b"\0")

        # the head as it would be with a zero CID, then the rest of the file as it is
        digest = hashlib.sha256(head[:start] + with_cid("00000000") + head[area_end:])
        cid = hashlib.file_digest(fh, lambda: digest).hexdigest()[:8]
        fh.seek(start)
        fh.write(with_cid(cid))
    return cid
