"""The examples as sweeps: the Mandelbrot plan (8 jobs + the rootfinish combine step gives
the same image as the application run natively), and the thesis's Phaser plan (figure 6.9,
only its launcher line changed) over 20 generated input sets."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.integration.conftest import Vmwu
from tests.integration.sweeps import assert_whole_results, summary

EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="module")
def mandelbrot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("mandel-sweep") / "mandelbrot"
    shutil.copytree(EXAMPLES / "mandelbrot", dest, ignore=shutil.ignore_patterns("out", "*.ova"))
    subprocess.run(["bash", str(dest / "build.sh")], check=True, capture_output=True)
    return dest


@pytest.mark.timeout(900)
def test_the_mandelbrot_plan_gives_the_native_image(vmwu: Vmwu, mandelbrot_dir: Path) -> None:
    unit = vmwu.tmp / "mandelbrot.ova"
    packed = vmwu("pack", mandelbrot_dir / "vmwu.toml", "-o", unit, "-q")
    assert packed.returncode == 0, packed.stderr
    res = vmwu.tmp / "sweep"
    result = vmwu(
        "sweep",
        mandelbrot_dir / "mandelbrot.plan",
        "--set",
        f"unit={unit}",
        "--results",
        res,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert_whole_results(res, 8)
    png = res / "mandelbrot.png"
    native = vmwu.tmp / "native.out"
    subprocess.run(
        [
            str(mandelbrot_dir / "app" / "mandelbrot"),
            str(native),
            *"-2.0 1.0 -1.0 1.0 1600 800 100 0 0 1600 800".split(),
        ],
        check=True,
        capture_output=True,
    )
    native_png = vmwu.tmp / "native.png"
    subprocess.run(
        [sys.executable, str(mandelbrot_dir / "combine.py"), str(native_png), str(native)],
        check=True,
        capture_output=True,
    )
    assert png.read_bytes() == native_png.read_bytes()


@pytest.mark.timeout(1200)
def test_the_thesis_phaser_plan_runs_with_only_its_launcher_line_changed(vmwu: Vmwu) -> None:
    inputs = vmwu.tmp / "inputs"
    subprocess.run(
        [sys.executable, str(EXAMPLES / "phaser-like" / "make_inputs.py"), str(inputs), "-n", "20"],
        check=True,
        capture_output=True,
    )
    unit = vmwu.tmp / "phaser.ova"
    packed = vmwu("pack", EXAMPLES / "phaser-like" / "vmwu.toml", "-o", unit, "-q")
    assert packed.returncode == 0, packed.stderr
    # the plan's gva parameter defaults to phaser.ova.gz, next to the inputs
    with open(unit, "rb") as src, gzip.open(inputs / "phaser.ova.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    res = vmwu.tmp / "res"
    result = vmwu(
        "sweep",
        EXAMPLES / "phaser-like" / "phaser.plan",
        "--input-dir",
        inputs,
        "--results",
        res,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr
    assert_whole_results(res, 20)
    sums = set()
    for job in summary(res)["jobs"]:
        index = job["params"]["index"]
        out = res / job["result"]
        # what the plan copies back, into the experiment's directory as in Nimrod: the
        # output image and the launcher's two logs
        assert (res / f"output_{index}.img").stat().st_size > 0
        assert (res / f"gval_{index}.out").is_file()
        assert "exit 0" in (res / f"gval_{index}.err").read_text()
        # and the vmwu run's outputs, kept with the job
        assert "STAND-IN" in (out / "phaser.out").read_text()
        sums.add((out / "phaser.sum").read_text())
        assert json.loads((out / "status.json").read_text())["exit_code"] == 0
    assert len(sums) == 20  # 20 different input sets, 20 different results
