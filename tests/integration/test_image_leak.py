"""Issue 11 point 3 with a real guest: a unit whose application disk is a qcow2 image with
a backing file naming a host file would show the guest that file's bytes (the guest
below prints them). vmwu must refuse the unit before QEMU starts, and the host file's
marker must reach none of the outputs. And point 4: a 10T output disk costs the host a
few MiB when the guest runs (the agent mounts it with noinit_itable)."""

from __future__ import annotations

import secrets
import shutil
import subprocess
from pathlib import Path

from tests.integration.conftest import Vmwu
from tests.units import (
    rewrite_unit,
)
from vmwu.errors import ExitCode
from vmwu.unit.model import FileRole
from vmwu.unit.reader import OvaReader

MiB = 1024**2

# Prints the last MiB of the application disk, beyond its file system: where the blocks a
# qcow2 image leaves unallocated are read from its backing file.
LEAK_SH = """#!/bin/sh
dev=$(awk '$2 == "/app" { print $1 }' /proc/mounts)
size=$(blockdev --getsize64 "$dev")
dd if="$dev" bs=1048576 skip=$((size / 1048576 - 1)) count=1 2> /dev/null \\
    | tr -c 'A-Za-z0-9-' '\\n' | grep -a VMWU-HOST | tee /output/leak.txt
echo "read $size bytes of $dev"
"""


def qimg(*args: object) -> None:
    subprocess.run(["qemu-img", *map(str, args)], check=True, capture_output=True)


def test_a_backing_file_naming_a_host_file_never_reaches_the_guest(vmwu: Vmwu) -> None:
    tmp = vmwu.tmp
    unit = vmwu.pack("/app/leak.sh", name="leak", files={"leak.sh": LEAK_SH})
    with OvaReader(unit) as reader:
        app = reader.descriptor.file(FileRole.APP_DISK)
        assert app is not None and app.capacity is not None
        reader.extract(app.href, tmp / "app.qcow2")
    fs_size = app.capacity
    # the app disk's file system, then 1 MiB left unallocated in the qcow2 image
    qimg("convert", "-f", "qcow2", "-O", "raw", tmp / "app.qcow2", tmp / "app.raw")
    with open(tmp / "app.raw", "r+b") as fh:
        fh.truncate(fs_size + MiB)
    evil_disk = tmp / "evil.qcow2"
    qimg("convert", "-f", "raw", "-O", "qcow2", tmp / "app.raw", evil_disk)
    # the host file: zeros under the file system (it still mounts), the marker beyond it
    marker = b"VMWU-HOST-SECRET-" + secrets.token_hex(8).encode()
    host_file = tmp / "host-secret"
    payload = (marker + b"\n") * 64
    host_file.write_bytes(bytes(fs_size) + payload + bytes(MiB - len(payload)))
    qimg("rebase", "-q", "-u", "-f", "qcow2", "-b", host_file, "-F", "raw", evil_disk)
    # what QEMU would show the guest: the host file's bytes (checked here, outside vmwu)
    qimg("convert", "-f", "qcow2", "-O", "raw", evil_disk, tmp / "seen.raw")
    assert marker in (tmp / "seen.raw").read_bytes()[fs_size:]

    evil = rewrite_unit(
        unit, tmp / "evil.ova", FileRole.APP_DISK, evil_disk, "qcow2", fs_size + MiB
    )
    for start in ((), ("--no-warm",)):
        out = f"out{len(start)}"
        result, outdir, status = vmwu.run(evil, *start, out=out)
        assert result.returncode == ExitCode.BAD_INPUT, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "is refused: it names a backing file" in lines[0], lines
        assert status["outcome"] == "vmwu-error"
        assert marker.decode() not in result.stdout + result.stderr
        for path in outdir.rglob("*"):
            if path.is_file():
                assert marker not in path.read_bytes(), path
    result = vmwu("inspect", evil)
    assert result.returncode == ExitCode.BAD_INPUT and "names a backing file" in result.stderr

    # the unit as packed runs, and its guest reads its own disk's tail: no marker there
    result, outdir, status = vmwu.run(unit, out="good")
    assert result.returncode == 0, result.stderr
    assert (outdir / "leak.txt").read_bytes() == b""
    assert "read" in (outdir / "stdout.log").read_text()


def test_a_10T_output_disk_costs_the_host_what_the_guest_writes(vmwu: Vmwu) -> None:
    script = "#!/bin/sh\ngrep ' /output ' /proc/mounts\necho 42 > /output/answer\n"
    unit = vmwu.pack(
        "/app/run.sh", name="big", files={"run.sh": script}, extra={"app-output-size": "10T"}
    )
    assert unit.stat().st_size < 32 * MiB
    result, outdir, status = vmwu.run(unit, "--keep")
    assert result.returncode == 0, result.stderr
    assert (outdir / "answer").read_text() == "42\n"
    mount = (outdir / "stdout.log").read_text()
    assert "noinit_itable" in mount, mount  # the kernel leaves the inode tables alone
    inst = Path(status["instance_dir"])
    try:
        out_disk = inst / "output.raw"
        assert out_disk.stat().st_size == 10 * 1024**4
        assert out_disk.stat().st_blocks * 512 < 64 * MiB, out_disk.stat().st_blocks
    finally:
        shutil.rmtree(inst, ignore_errors=True)
