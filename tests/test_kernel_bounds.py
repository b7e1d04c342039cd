"""A unit's embedded kernel is untrusted input on the host: vmwu decompresses its payload
to boot it by PVH (vmwu/vmm/kernel.py). A decompression bomb must cost at most
``MAX_VMLINUX`` bytes, and a malformed ELF must not escape as an internal error."""

from __future__ import annotations

import gzip
import lzma
import struct
import subprocess
from pathlib import Path

import pytest

from vmwu import tools
from vmwu.vmm import kernel

MiB = 1024**2


def bomb(kind: str, size: int, tmp: Path) -> bytes:
    zeros = bytes(size)
    if kind == "gzip":
        return gzip.compress(zeros, mtime=0)
    if kind == "xz":
        return lzma.compress(zeros)
    src = tmp / "zeros"
    src.write_bytes(zeros)
    flags = ["-l"] if kind == "lz4" else []
    tool = "lz4" if kind == "lz4" else "zstd"
    proc = subprocess.run([tool, *flags, "-c", "-q", src], check=True, capture_output=True)
    return proc.stdout


@pytest.mark.parametrize("kind", ["gzip", "xz", "lz4", "zstd"])
def test_a_decompression_bomb_is_cut_at_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    monkeypatch.setattr(kernel, "MAX_VMLINUX", 2 * MiB)
    payload = bomb(kind, 16 * MiB, tmp_path)
    image = tmp_path / "bzImage"
    image.write_bytes(b"\0" * 4096 + payload)
    with pytest.raises(OSError, match="more than 2097152 bytes"):
        kernel._decompress(payload, kind, tmp_path / "out")
    assert kernel.extract_vmlinux(image, tmp_path / "vmlinux") is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bzImage"] + (
        ["zeros"] if kind in ("lz4", "zstd") else []
    )


@pytest.mark.parametrize(
    "elf",
    [
        b"\x7fELF\x02\x01",  # cut short
        b"\x7fELF\x02\x01" + bytes(26) + struct.pack("<Q", 10**9) + bytes(22) + b"\x38\x00\x05\x00",
        b"\x7fELF\x02\x01" + bytes(200),
    ],
)
def test_a_malformed_elf_has_no_pvh_note(elf: bytes) -> None:
    assert kernel.has_pvh_note(elf) is False


def test_limits_bound_the_file_a_child_writes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with open(out, "wb") as fh:
        argv = ["head", "-c", str(8 * MiB), "/dev/zero"]
        proc = tools.run(argv, check=False, stdout=fh.fileno(), limits=tools.Limits(file_size=MiB))
    assert proc.returncode != 0 and out.stat().st_size == MiB
