"""Where vmwu keeps things, and what `vmwu doctor` says about this node."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_vmwu
from vmwu import paths


def test_xdg_locations(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("VMWU_HOME", "VMWU_CACHE_DIR", "VMWU_CATALOG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert paths.data_dir() == tmp_path / "data" / "vmwu"
    assert paths.cache_dir() == tmp_path / "cache" / "vmwu"
    assert paths.catalog_path() == tmp_path / "data" / "vmwu" / "catalog.sqlite"


def test_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VMWU_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("VMWU_CACHE_DIR", raising=False)
    monkeypatch.delenv("VMWU_CATALOG", raising=False)
    assert paths.data_dir() == tmp_path / "home" / "data"
    assert paths.cache_dir() == tmp_path / "home" / "cache"
    monkeypatch.setenv("VMWU_CACHE_DIR", str(tmp_path / "scratch"))  # a site's local disk
    assert paths.cache_dir() == tmp_path / "scratch"
    monkeypatch.setenv("VMWU_CATALOG", str(tmp_path / "shared.sqlite"))
    assert paths.catalog_path() == tmp_path / "shared.sqlite"
    assert paths.catalog_path(tmp_path / "explicit.sqlite") == tmp_path / "explicit.sqlite"


def test_doctor_reports_tools_accelerator_and_places(tmp_path: Path) -> None:
    result = run_vmwu("doctor", "--json", env={"VMWU_HOME": str(tmp_path)})
    report = json.loads(result.stdout)
    tools = {t["tool"]: t for t in report["tools"]}
    assert tools["qemu-system-x86_64"]["package"] == "qemu-system-x86"
    assert tools["debugfs"]["package"] == "e2fsprogs"
    assert report["accel"]["choice"] in ("kvm", "tcg") and report["accel"]["reason"]
    assert report["catalog"]["path"] == str(tmp_path / "data" / "catalog.sqlite")
    assert report["cache_dir"]["path"] == str(tmp_path / "cache")
    assert result.returncode == (0 if report["ok"] else 242)


def test_doctor_names_the_package_of_a_missing_tool(tmp_path: Path) -> None:
    result = run_vmwu("doctor", env={"VMWU_HOME": str(tmp_path), "PATH": str(tmp_path)})
    assert result.returncode == 242
    assert "MISSING  qemu-system-x86_64" in result.stdout
    assert "apt-get install qemu-system-x86" in result.stdout
