"""`vmwu wrap` driven in a slot directory by the integration tests."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import run_vmwu
from tests.integration.conftest import Vmwu


class Wrap:
    """`vmwu wrap` in a slot directory, in the foreground or in the background."""

    def __init__(self, vmwu: Vmwu, job: Path, *args: str) -> None:
        self.vmwu = vmwu
        self.job = job
        self.slot = vmwu.tmp / "slot"
        self.slot.mkdir(exist_ok=True)
        self.args = ["--slot-dir", os.fspath(self.slot), *args]
        self.proc: subprocess.Popen[str] | None = None

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "vmwu", "wrap", os.fspath(self.job), *self.args]

    def run(self, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **self.vmwu.env}
        return subprocess.run(
            self.argv(), env=env, cwd=self.slot, capture_output=True, text=True, timeout=timeout
        )

    def start(self) -> None:
        env = {**os.environ, **self.vmwu.env}
        pipe = subprocess.PIPE
        self.proc = subprocess.Popen(
            self.argv(), env=env, cwd=self.slot, text=True, stdout=pipe, stderr=pipe
        )

    def wait(self, timeout: float = 300) -> tuple[int, str]:
        assert self.proc is not None
        try:
            _, err = self.proc.communicate(timeout=timeout)
        finally:
            self.proc.kill()
        return self.proc.returncode, err

    def status(self) -> dict[str, Any]:
        try:
            return json.loads((self.slot / "wrapper_status.json").read_text())  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return {}

    def step(self) -> int:
        """The guest's step as the host last heard it (0 before the first)."""
        message = (self.status().get("task") or {}).get("message") or ""
        m = re.match(r"step (\d+)", message)
        return int(m.group(1)) if m else 0

    def ctl(self, action: str) -> dict[str, Any]:
        result = run_vmwu(
            "wrap", "ctl", action, "--slot-dir", self.slot, env=self.vmwu.env, timeout=120
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)  # type: ignore[no-any-return]

    def log(self) -> str:
        return (self.slot / ".vmwu-wrap" / "wrapper.log").read_text()

    def task_output(self, index: int) -> Path:
        return self.slot / ".vmwu-wrap" / "tasks" / str(index) / "output"
