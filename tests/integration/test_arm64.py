"""A foreign architecture (issue 6 section 3): an arm64 tiny base, built from Debian's arm64
packages on this x86_64 host, run under qemu-system-aarch64 (TCG), selected by
app-architecture; the Mandelbrot unit computes the same image as on x86_64."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.budgets import slow_fixture
from tests.conftest import ROOT
from tests.integration.conftest import Vmwu

MANDEL = ROOT / "examples" / "mandelbrot"
ROWS = ("-2.0", "1.0", "-1.0", "1.0", "1600", "800", "100")


ARM_TINY_BUILD = 600  # seconds for `vmwu base build tiny --arch arm64`


@slow_fixture(ARM_TINY_BUILD + 120, scope="module")  # and two builds of the example
def arm_example(tiny_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Mandelbrot example with both binaries built, and an arm64 base in the session's
    catalog."""
    dest = tmp_path_factory.mktemp("arm") / "mandelbrot"
    shutil.copytree(MANDEL, dest, ignore=shutil.ignore_patterns("out", "app", "app-aarch64"))
    (dest / "app").mkdir()
    for arch in ("x86_64", "aarch64"):
        subprocess.run(
            ["bash", str(dest / "build.sh")], env={"ARCH": arch, "PATH": "/usr/bin:/bin"},
            check=True, capture_output=True,
        )  # fmt: skip
    built = Vmwu(tiny_home, dest, {})(
        "base",
        "build",
        "tiny",
        "--arch",
        "arm64",
        "--name",
        "tiny-arm64",
        "-q",
        timeout=ARM_TINY_BUILD,
    )
    assert built.returncode == 0, built.stderr
    return dest


def test_arm64_base_is_in_the_catalog(vmwu: Vmwu, arm_example: Path) -> None:
    shown = json.loads(vmwu("base", "show", "tiny-arm64", "--json").stdout)
    assert shown["architecture"] == "aarch64"
    assert {f["format"] for f in shown["files"]} == {"image", "cpio"}


def test_mandelbrot_on_arm64_matches_x86_64(vmwu: Vmwu, arm_example: Path) -> None:
    unit = vmwu.tmp / "m-arm64.ova"
    packed = vmwu("pack", arm_example / "arm64.toml", "-o", unit, "-q")
    assert packed.returncode == 0, packed.stderr
    summary = json.loads(vmwu("inspect", unit, "--json").stdout)
    assert summary["base"]["name"] == "tiny-arm64"  # chosen by app-architecture = aarch64
    for i, (y0, y1) in enumerate((("300", "400"), ("400", "500"))):
        result, out, status = vmwu.run(unit, out=f"arm{i}", params=(*ROWS, "0", y0, "1600", y1))
        assert result.returncode == 0, result.stderr
        assert "qemu-system-aarch64" in status["cmdline"]
        native = vmwu.tmp / f"native{i}.out"
        subprocess.run(
            [str(arm_example / "app" / "mandelbrot"), str(native), *ROWS, "0", y0, "1600", y1],
            check=True, capture_output=True,
        )  # fmt: skip
        assert (out / "mandelbrot.out").read_bytes() == native.read_bytes()
