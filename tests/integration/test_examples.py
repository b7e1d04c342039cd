"""The examples end to end, as a user runs them: build, pack, run, combine."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.integration.conftest import Vmwu

EXAMPLES = ROOT / "examples"


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    # every chunk's CRC must hold
    pos = 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc
        pos += 12 + length
    return width, height


@pytest.fixture(scope="module")
def mandelbrot_app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of examples/mandelbrot with the static binary built."""
    dest = tmp_path_factory.mktemp("mandel") / "mandelbrot"
    shutil.copytree(EXAMPLES / "mandelbrot", dest, ignore=shutil.ignore_patterns("out"))
    subprocess.run(["bash", str(dest / "build.sh")], check=True, capture_output=True)
    return dest


def test_mandelbrot_eight_jobs_combine_into_the_thesis_image(
    vmwu: Vmwu, mandelbrot_app: Path
) -> None:
    unit = vmwu.tmp / "mandelbrot.ova"
    packed = vmwu("pack", mandelbrot_app / "vmwu.toml", "-o", unit, "-q")
    assert packed.returncode == 0, packed.stderr
    assert unit.stat().st_size < 1_000_000  # base referenced by sha256
    jobs = subprocess.run(
        [sys.executable, str(mandelbrot_app / "jobs.py")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert len(jobs) == 8
    outputs = []
    for i, job in enumerate(jobs):
        result, out, status = vmwu.run(unit, out=f"out/{i}", params=tuple(job.split()))
        assert result.returncode == 0, result.stderr
        assert status["progress"] == 1.0  # the app reports progress with vmwu-progress
        outputs.append(out / "mandelbrot.out")
    png = vmwu.tmp / "mandelbrot.png"
    combine = subprocess.run(
        [sys.executable, str(mandelbrot_app / "combine.py"), str(png), *map(str, outputs)],
        capture_output=True,
        text=True,
    )
    assert combine.returncode == 0, combine.stderr
    assert _png_size(png) == (1600, 800)
    # the same image as the application run natively on the host, in one piece
    native = vmwu.tmp / "native.out"
    subprocess.run(
        [
            str(mandelbrot_app / "app" / "mandelbrot"),
            str(native),
            *"-2.0 1.0 -1.0 1.0 1600 800 100 0 0 1600 800".split(),
        ],
        check=True,
        capture_output=True,
    )
    native_png = vmwu.tmp / "native.png"
    subprocess.run(
        [sys.executable, str(mandelbrot_app / "combine.py"), str(native_png), str(native)],
        check=True,
        capture_output=True,
    )
    assert png.read_bytes() == native_png.read_bytes()


def test_thesis_style_gvap_packs_the_same_application(vmwu: Vmwu, mandelbrot_app: Path) -> None:
    unit = vmwu.tmp / "from-gvap.ova"
    packed = vmwu("pack", mandelbrot_app / "mandelbrot.gvap", "-o", unit, "-q")
    assert packed.returncode == 0, packed.stderr
    summary = json.loads(vmwu("inspect", unit, "--json").stdout)
    assert summary["name"] == "mandelbrot"
    assert summary["base"]["name"] == "tiny"


def test_phaser_like_reads_stdin_and_two_files_from_the_iso(vmwu: Vmwu) -> None:
    inputs = vmwu.tmp / "inputs"
    subprocess.run(
        [sys.executable, str(EXAMPLES / "phaser-like" / "make_inputs.py"), str(inputs), "-n", "2"],
        check=True,
        capture_output=True,
    )
    unit = vmwu.tmp / "phaser.ova"
    packed = vmwu("pack", EXAMPLES / "phaser-like" / "vmwu.toml", "-o", unit, "-q")
    assert packed.returncode == 0, packed.stderr
    sums = []
    for index in (1, 2):
        files = ",".join(str(inputs / f"{index}.{ext}") for ext in ("pha", "mtz", "pdb"))
        result, out, _ = vmwu.run(
            unit,
            "--files",
            files,
            "--files-destination",
            "input.pha,phaser.mtz,phaser.pdb",
            out=f"phaser{index}",
        )
        assert result.returncode == 0, result.stderr
        assert "STAND-IN" in (out / "phaser.out").read_text()
        assert (out / "phaser.sol").is_file()
        sums.append((out / "phaser.sum").read_text())
        assert not (out / "stdout.log").exists()  # the launch command redirects stdout
    assert sums[0] != sums[1]  # different inputs, different results


def test_phaser_like_missing_input_is_the_apps_exit_code(vmwu: Vmwu) -> None:
    unit = vmwu.tmp / "phaser.ova"
    packed = vmwu("pack", EXAMPLES / "phaser-like" / "vmwu.toml", "-o", unit, "-q")
    assert packed.returncode == 0, packed.stderr
    script = "MODE MR_AUTO\nHKLIN /cdrom/phaser.mtz\nENSEMBLE pdb PDBFILE /cdrom/phaser.pdb\n"
    (vmwu.tmp / "only.pha").write_text(script)  # names two files that are not on the ISO
    result, out, status = vmwu.run(unit, "--files", "only.pha", "--files-destination", "input.pha")
    assert result.returncode == 1
    assert status["outcome"] == "app"
    assert (out / "phaser.err").read_text().strip()
