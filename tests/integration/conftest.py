"""Integration fixtures: a real tiny base built once per test session (apt-get download of
Debian's cloud kernel and busybox-static), and helpers that pack small units."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.budgets import slow_fixture
from tests.conftest import run_vmwu


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


TINY_BUILD = 600  # seconds: apt-get download of a kernel and busybox, an initramfs


@slow_fixture(TINY_BUILD + 60, scope="session")
def tiny_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A VMWU_HOME holding a catalog with the tiny base and a warm node cache."""
    home = tmp_path_factory.mktemp("vmwu-home")
    result = run_vmwu("base", "build", "tiny", env={"VMWU_HOME": str(home)}, timeout=TINY_BUILD)
    assert result.returncode == 0, result.stderr
    return home


@dataclass
class Vmwu:
    home: Path
    tmp: Path
    extra_env: dict[str, str]

    @property
    def env(self) -> dict[str, str]:
        return {"VMWU_HOME": str(self.home), **self.extra_env}

    def __call__(self, *args: str | os.PathLike[str], timeout: float = 300) -> Any:
        return run_vmwu(*args, env=self.env, cwd=self.tmp, timeout=timeout)

    def pack(
        self,
        launch: str,
        *,
        name: str = "unit",
        files: dict[str, str] | None = None,
        extra: dict[str, str] | None = None,
        mode: int = 0o755,
    ) -> Path:
        """Pack a unit whose app folder holds ``files`` (name -> text, executable) and whose
        app-launch is ``launch``."""
        app = self.tmp / f"{name}-app"
        app.mkdir(exist_ok=True)
        for fname, text in (files or {}).items():
            path = app / fname
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            path.chmod(mode)
        spec = self.tmp / f"{name}.toml"
        lines = [
            f"package-name = {json.dumps(name)}",
            f"app-import-dir = {json.dumps(str(app))}",
            f"app-launch = {json.dumps(launch)}",
        ]
        lines += [f"{k} = {json.dumps(v)}" for k, v in (extra or {}).items()]
        spec.write_text("\n".join(lines) + "\n")
        out = self.tmp / f"{name}.ova"
        result = self("pack", spec, "-o", out, "-q")
        assert result.returncode == 0, result.stderr
        return out

    def run(
        self,
        unit: Path,
        *args: str,
        out: str = "out",
        params: tuple[str, ...] = (),
        timeout: float = 300,
    ) -> tuple[Any, Path, dict[str, Any]]:
        """``vmwu run``; returns (process, output dir, status.json)."""
        outdir = self.tmp / out
        argv: list[str | os.PathLike[str]] = [
            "run",
            unit,
            "--output-directory",
            outdir,
            "--quiet",
            *args,
        ]
        if params:
            argv += ["--", *params]
        result = self(*argv, timeout=timeout)
        status_file = outdir / "status.json"
        status = json.loads(status_file.read_text()) if status_file.exists() else {}
        return result, outdir, status


@pytest.fixture
def vmwu(tiny_home: Path, tmp_path: Path) -> Vmwu:
    return Vmwu(tiny_home, tmp_path, {})


@pytest.fixture
def cold_vmwu(tiny_home: Path, tmp_path: Path) -> Vmwu:
    """Like ``vmwu`` but with an empty node cache of its own."""
    return Vmwu(tiny_home, tmp_path, {"VMWU_CACHE_DIR": str(tmp_path / "cache")})


Packer = Callable[..., Path]
