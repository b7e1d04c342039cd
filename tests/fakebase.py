"""The command line against a VMWU_HOME of a test's own, with a fake base (dummy kernel and
initrd files: enough to pack, not to boot), and the checks every bad-input test makes:
one ``vmwu: error:`` line with the documented exit code, nothing left half-written."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import run_vmwu
from vmwu.errors import ExitCode

BAD_INPUT = ExitCode.BAD_INPUT
BASE_NOT_FOUND = ExitCode.BASE_NOT_FOUND


@dataclass(frozen=True)
class Home:
    """A VMWU_HOME of its own (catalog, base files, node cache) and a working directory."""

    root: Path
    cwd: Path

    @property
    def env(self) -> dict[str, str]:
        return {
            "VMWU_HOME": str(self.root),
            "VMWU_CATALOG": str(self.catalog),
            "VMWU_CACHE_DIR": str(self.cache),
        }

    @property
    def catalog(self) -> Path:
        return self.root / "data" / "catalog.sqlite"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def at(self, cwd: Path) -> Home:
        return Home(self.root, cwd)

    def __call__(self, *args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
        return run_vmwu(*args, env=self.env, cwd=self.cwd, timeout=120)


def one_error_line(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    """Assert the documented exit code and exactly one ``vmwu: error:`` line on stderr that
    contains every needle; returns that line."""
    assert result.returncode == code, f"exit {result.returncode}, stderr: {result.stderr}"
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("vmwu: error: "), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


def assert_only_status(out: Path, result: subprocess.CompletedProcess[str]) -> None:
    """A failure before any guest ran leaves just status.json with the error (issue 3:
    vmwu's own failures are always in status.json), nothing else."""
    assert sorted(p.name for p in out.iterdir()) == ["status.json"]
    status = json.loads((out / "status.json").read_text())
    assert status["outcome"] == "vmwu-error"
    assert status["exit_code"] == result.returncode == status["error"]["code"]


def add_fake_base(home: Home, name: str = "fake", arch: str = "x86_64") -> dict[str, Path]:
    """Register dummy kernel/initrd files as a direct-boot base (enough to pack, not boot)."""
    where = home.root / f"{name}-files"
    where.mkdir(parents=True)
    files = {"kernel": where / "kernel", "initrd": where / "initrd.img"}
    files["kernel"].write_bytes(b"not a kernel " * 400)
    files["initrd"].write_bytes(b"not an initrd " * 200)
    result = home(
        "base", "add", name, "--kernel", files["kernel"], "--initrd", files["initrd"],
        "--arch", arch,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return files


def write_app(where: Path) -> Path:
    app = where / "app"
    app.mkdir(exist_ok=True)
    (app / "run.sh").write_text("#!/bin/sh\necho hello\n")
    return app


GOOD_SPEC = 'package-name = "u"\napp-import-dir = "app"\napp-launch = "/app/run.sh"\n'


@dataclass(frozen=True)
class Packed:
    home: Home
    unit: Path
    base_files: dict[str, Path]


def pack_on_fake_base(where: Path) -> Packed:
    """A real unit (``GOOD_SPEC``) packed on the fake base in a home under ``where``."""
    home = Home(where / "vmwu-home", where)
    files = add_fake_base(home)
    write_app(where)
    (where / "u.toml").write_text(GOOD_SPEC)
    result = home("pack", "u.toml", "-q", "-o", where / "u.ova")
    assert result.returncode == 0, result.stderr
    return Packed(home, where / "u.ova", files)


def pack_spec(home: Home, text: str, name: str = "u.toml", *args: str) -> Any:
    (home.cwd / name).write_text(text)
    return home("pack", name, "-q", *args)


def no_leftovers(directory: Path) -> None:
    """Nothing half-written: no unit, no pack work directory, no hidden temp file."""
    left = [
        p.name
        for p in directory.iterdir()
        if p.suffix == ".ova" or p.name.startswith(("vmwu-pack-", "."))
    ]
    assert left == []
