"""Issue 6 §3 with a real distribution: `vmwu base build debian --arch arm64` on this
x86_64 host, with no binfmt_misc and no root: packages extracted on the host, installed by
dpkg inside the arm64 guest itself (vmwu/bases/foreign.py), then a unit selected by
`app-architecture = "arm64"` runs on it under qemu-system-aarch64 (TCG).

The build is the slow part (~10 min of emulated dpkg on 2 cores); it runs once, and the
first test pays for it (tests/budgets.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.budgets import slow_fixture
from tests.conftest import run_vmwu
from tests.integration.conftest import Vmwu

BUILD = 2700  # seconds for `vmwu base build debian --arch arm64`
RUN = 600  # seconds for one `vmwu run` on it (boot, guest-packages layer, app)

# each test: pack (maybe a guest-packages layer, dpkg under TCG) and run
pytestmark = pytest.mark.timeout(2 * RUN)

HELLO = '#!/bin/sh\necho "$(uname -m) debian $(cat /etc/debian_version)" "$@"\n'


@slow_fixture(BUILD + 60, scope="module")
def arm_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("vmwu-debian-arm64")
    result = run_vmwu(
        "base",
        "build",
        "debian",
        "--arch",
        "arm64",
        "--name",
        "debian-arm64",
        env={"VMWU_HOME": str(home)},
        timeout=BUILD,
    )
    assert result.returncode == 0, result.stderr
    return home


@pytest.fixture
def arm(arm_home: Path, tmp_path: Path) -> Vmwu:
    return Vmwu(arm_home, tmp_path, {})


def test_debian_arm64_base_is_registered_for_aarch64(arm: Vmwu) -> None:
    shown = json.loads(arm("base", "show", "debian-arm64", "--json").stdout)
    assert shown["architecture"] == "aarch64"
    assert "Debian bookworm arm64" in shown["description"]
    assert "console=ttyAMA0" in shown["cmdline"] and "root=UUID=" in shown["cmdline"]
    kernel = next(f for f in shown["files"] if f["role"] == "kernel")
    assert kernel["format"] == "image"


def test_unit_selected_by_app_architecture_runs_on_debian_arm64(arm: Vmwu) -> None:
    unit = arm.pack(
        '/app/hello.sh "$@"; dpkg --audit; exit 5',
        name="arm-hello",
        files={"hello.sh": HELLO},
        extra={
            "base-image-autosource": "true",
            "app-architecture": "arm64",
            "app-os": "linux",
            "app-output-size": "4M",
        },
    )
    result, out, status = arm.run(unit, params=("x", "y z"), timeout=RUN)
    assert result.returncode == 5, result.stderr
    stdout = (out / "stdout.log").read_text()
    # the packages were configured by dpkg in the guest: nothing half-installed
    assert stdout.startswith("aarch64 debian 12."), stdout
    assert "y z" in stdout and "not configured" not in stdout, stdout
    assert status["outcome"] == "app" and status["app_exit_code"] == 5


def test_guest_packages_are_installed_for_arm64(arm: Vmwu) -> None:
    """apt resolves `bc` for arm64 on the host; dpkg installs it in an emulated guest."""
    unit = arm.pack(
        "echo '6*7' | bc",
        name="arm-bc",
        extra={"base-image": "debian-arm64", "guest-packages": "bc", "app-output-size": "4M"},
    )
    result, out, _ = arm.run(unit, timeout=RUN)
    assert result.returncode == 0, result.stderr
    assert (out / "stdout.log").read_text().strip() == "42"
