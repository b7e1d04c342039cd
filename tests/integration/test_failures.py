"""Guests that fail before the application runs (issue 3 section 8): each gives one line on
stderr quoting what the console showed, exit 243 (``ExitCode.NEVER_BOOTED``), and keeps
``console.log`` and ``status.json``.

The broken bases reuse the tiny base's kernel with initramfs images written here:

- ``hang``: ``/init`` prints a line and sleeps forever (busybox, taken from the tiny base's
  initramfs) — the guest never reaches the agent;
- ``panic``: ``/init`` is not an executable, so the kernel panics ("No working init
  found") and, with ``panic=-1`` and ``-no-reboot``, QEMU exits;
- ``nodisk``: the tiny initramfs without its disk drivers, and ``vmwu.waitsec=2`` on the
  kernel command line — the agent starts but finds none of the unit's disks.

They live in a catalog of their own (``--catalog``), so other tests never auto-source them.
``hang`` and ``panic`` swap the base of a normally packed unit with ``run --base-image``;
``nodisk`` needs its own kernel command line, which comes from the base the unit was packed
on, so its unit is packed on it.

The runs boot cold (``--no-warm``) to keep them short; the last test checks that the default
start (warm) reports the same failure.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import run_vmwu
from tests.integration.conftest import Vmwu
from tests.newc import read_initramfs
from vmwu.errors import ExitCode
from vmwu.images import cpio

NEVER_BOOTED = ExitCode.NEVER_BOOTED
COLD = "--no-warm"
HANG_MESSAGE = "test-init: hanging on purpose"


@dataclass(frozen=True)
class Broken:
    catalog: Path


@pytest.fixture(scope="module")
def broken(tiny_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Broken:
    where = tmp_path_factory.mktemp("broken-bases")
    env = {"VMWU_HOME": str(tiny_home)}
    shown = run_vmwu("base", "show", "tiny", "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    tiny = json.loads(shown.stdout)
    files = {f["role"]: Path(f["path"]) for f in tiny["files"]}
    entries = read_initramfs(files["initrd"])
    busybox = next(e for e in entries if e.path == "bin/busybox")
    console = next(e for e in entries if e.path == "dev/console")

    hang_init = f"#!/bin/busybox sh\necho '{HANG_MESSAGE}'\nexec /bin/busybox sleep 100000\n"
    images = {
        "hang": [
            cpio.directory("bin"),
            cpio.directory("dev"),
            console,
            busybox,
            cpio.file("init", hang_init.encode(), 0o755),
        ],
        "panic": [
            cpio.directory("dev"),
            console,
            cpio.file("init", b"this is not a program\n", 0o755),
        ],
        "nodisk": [cpio.file(e.path, b"") if e.path == "etc/vmwu/modules" else e for e in entries],
    }
    catalog = where / "broken.sqlite"
    for name, image_entries in images.items():
        image = where / f"{name}.img"
        cpio.write_initramfs(image, image_entries)
        cmdline = tiny["cmdline"] + (" vmwu.waitsec=2" if name == "nodisk" else "")
        added = run_vmwu(
            "base", "add", name, "--kernel", files["kernel"], "--initrd", image,
            "--cmdline", cmdline, "--catalog", catalog, env=env,
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
    return Broken(catalog)


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("vmwu: error: "), lines[0]
    return lines[0]


def assert_kept(out: Path, status: dict[str, object], console_text: str) -> None:
    """console.log and status.json are in the output directory and say what happened."""
    assert console_text in (out / "console.log").read_text(errors="replace")
    assert status["outcome"] == "vmwu-error"
    assert status["exit_code"] == NEVER_BOOTED
    error = status["error"]
    assert isinstance(error, dict) and error["kind"] == "GuestNeverBooted"


def test_guest_that_never_boots(vmwu: Vmwu, broken: Broken) -> None:
    unit = vmwu.pack("true", name="hangs")
    result, out, status = vmwu.run(
        unit, "--catalog", str(broken.catalog), "--base-image", "hang", "--boot-timeout", "8",
        "--timeout", "60", COLD,
    )  # fmt: skip
    assert result.returncode == NEVER_BOOTED, result.stderr
    line = error_line(result)
    assert "did not reach the vmwu agent within 8 s" in line
    assert HANG_MESSAGE in line  # the console tail, quoted
    assert str(out / "console.log") in line
    assert_kept(out, status, HANG_MESSAGE)


def test_guest_kernel_panic(vmwu: Vmwu, broken: Broken) -> None:
    unit = vmwu.pack("true", name="panics")
    result, out, status = vmwu.run(
        unit, "--catalog", str(broken.catalog), "--base-image", "panic", "--boot-timeout", "60",
        "--timeout", "60", COLD,
    )  # fmt: skip
    assert result.returncode == NEVER_BOOTED, result.stderr
    line = error_line(result)
    assert "the guest kernel panicked" in line
    assert "No working init found" in line
    assert str(out / "console.log") in line
    assert_kept(out, status, "Kernel panic")


def test_agent_finds_no_disk(vmwu: Vmwu, broken: Broken) -> None:
    unit = vmwu.pack(
        "true", name="nodisk", extra={"vmddb": str(broken.catalog), "base-image": "nodisk"}
    )
    result, out, status = vmwu.run(unit, "--catalog", str(broken.catalog), "--timeout", "60", COLD)
    assert result.returncode == NEVER_BOOTED, result.stderr
    line = error_line(result)
    assert "the vmwu agent failed" in line
    assert "VMWU-APP VMWU-OUT VMWU-INST did not appear within 2s" in line
    assert_kept(out, status, "vmwu-agent: error")


def test_guest_kernel_panic_default_start(vmwu: Vmwu, broken: Broken) -> None:
    """With warm start on (the default) the template VM fails first; the instance then
    boots cold and reports the failure like any other, and the next run skips the
    template."""
    unit = vmwu.pack("true", name="panics-default")
    result, out, status = vmwu.run(
        unit, "--catalog", str(broken.catalog), "--base-image", "panic", "--timeout", "60"
    )
    assert result.returncode == NEVER_BOOTED, result.stderr
    assert "No working init found" in error_line(result)
    assert_kept(out, status, "Kernel panic")
    assert status["start"].startswith("cold boot: the warm-start template failed")
    result, out, status = vmwu.run(
        unit, "--catalog", str(broken.catalog), "--base-image", "panic", out="again"
    )
    assert result.returncode == NEVER_BOOTED, result.stderr
    assert status["start"] == "cold boot: this machine configuration failed to warm-start before"
