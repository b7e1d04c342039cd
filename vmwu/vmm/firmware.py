"""BIOS or UEFI for a base that boots from its own disk, and where OVMF is.

vmwu does not ask: it reads the disk. A GPT disk with an EFI system partition and no BIOS
boot partition (GRUB's ``bios_grub``) can only boot by UEFI; every other disk boots by
BIOS (QEMU's SeaBIOS, the default). The answer is kept per disk sha256 in the node cache
(``derived/<sha>.firmware``), so it costs one look per node. UEFI needs OVMF (Debian
package ``ovmf``): its code is attached read-only, and a fresh copy of its variable store
per instance (``-drive if=pflash``).
"""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

from vmwu import tools
from vmwu.cache import NodeCache
from vmwu.errors import ToolNotFound

SECTOR = 512
ESP = uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")
BIOS_BOOT = uuid.UUID("21686148-6449-6e6f-744e-656564454649")
# (code, variable store) pairs, best first; a pair must come from the same build
OVMF_PAIRS = (
    ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
    ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
    ("/usr/share/edk2/ovmf/OVMF_CODE.fd", "/usr/share/edk2/ovmf/OVMF_VARS.fd"),
)


def classify(head: bytes) -> str:
    """``"uefi"`` or ``"bios"`` from the first 34 sectors of a disk (MBR, GPT header and
    the first 128 partition entries)."""
    if len(head) < 34 * SECTOR or head[SECTOR : SECTOR + 8] != b"EFI PART":
        return "bios"
    entries = int.from_bytes(head[SECTOR + 80 : SECTOR + 84], "little")
    size = int.from_bytes(head[SECTOR + 84 : SECTOR + 88], "little") or 128
    types = set()
    for i in range(min(entries, (len(head) - 2 * SECTOR) // size)):
        raw = head[2 * SECTOR + i * size : 2 * SECTOR + i * size + 16]
        if raw != bytes(16):
            types.add(uuid.UUID(bytes_le=raw))
    return "uefi" if ESP in types and BIOS_BOOT not in types else "bios"


def read_head(disk: Path, fmt: str) -> bytes:
    if fmt == "raw":
        with open(disk, "rb") as fh:
            return fh.read(34 * SECTOR)
    with tempfile.TemporaryDirectory(prefix="vmwu-fw-") as tmp:
        out = Path(tmp) / "head"
        argv = ["qemu-img", "dd", "-f", fmt, "-O", "raw", f"bs={SECTOR}", "count=34"]
        tools.run([*argv, f"if={disk}", f"of={out}"])
        return out.read_bytes()


def detect(disk: Path, fmt: str, cache: NodeCache | None = None, sha256: str = "") -> str:
    """The firmware ``disk`` needs, remembered in ``cache`` under its sha256."""
    if cache is not None and sha256:
        marker = cache.derived_path(f"{sha256}.firmware")
        if marker.is_file():
            return marker.read_text().strip()
        kind = classify(read_head(disk, fmt))
        marker.parent.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_name(f".{marker.name}.{uuid.uuid4().hex}")
        tmp.write_text(kind + "\n")
        tmp.replace(marker)
        return kind
    return classify(read_head(disk, fmt))


def ovmf() -> tuple[Path, Path]:
    """OVMF's code and variable-store template on this node."""
    for code, vars_ in OVMF_PAIRS:
        if Path(code).is_file() and Path(vars_).is_file():
            return Path(code), Path(vars_)
    err = ToolNotFound("OVMF", "ovmf")
    err.message = "this base boots by UEFI, and OVMF (QEMU's UEFI firmware) is not installed"
    raise err
