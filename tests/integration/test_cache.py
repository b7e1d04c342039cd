"""The bounded node cache with real guests: `vmwu cache clean` and `trim` while a `vmwu run`
is running remove nothing it uses (and the run ends well), and a run at the cache's limit
evicts what is idle, never what it runs on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.integration.conftest import Vmwu
from tests.integration.sweeps import app_started
from tests.processes import comm, tree
from tests.waits import wait_for

MIB = 1024**2
SLOW_APP = "#!/bin/sh\nsleep 5\necho done > /output/done.txt\n"


def blobs(cache: Path) -> set[str]:
    return {p.name for p in (cache / "blobs").iterdir()} if (cache / "blobs").is_dir() else set()


def cache_info(vmwu: Vmwu) -> dict[str, Any]:
    result = vmwu("cache", "info", "--json")
    assert result.returncode == 0, result.stderr
    info: dict[str, Any] = json.loads(result.stdout)
    return info


def running_guest(pid: int) -> int | None:
    """The QEMU below ``pid`` once its guest has started the application."""
    qemus = [p for p in tree(pid) if comm(p).startswith("qemu-system")]
    return next((q for q in qemus if app_started(q)), None)


def test_clean_and_trim_while_a_run_runs_keep_what_it_uses(cold_vmwu: Vmwu) -> None:
    unit = cold_vmwu.pack("/app/run.sh", files={"run.sh": SLOW_APP})
    cache = cold_vmwu.tmp / "cache"
    (cache / "blobs").mkdir(parents=True, exist_ok=True)
    idle = cache / "blobs" / ("f" * 64)  # what another unit left: idle
    idle.write_bytes(os.urandom(MIB))
    crashed = cache / "instances" / "crashed-1-abcdef"  # an instance killed long ago
    crashed.mkdir(parents=True)
    out = cold_vmwu.tmp / "out"
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vmwu",
            "run",
            os.fspath(unit),
            "--output-directory",
            out,
            "--quiet",
        ],
        env={**os.environ, **cold_vmwu.env},
        cwd=cold_vmwu.tmp,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def started() -> int | None:
        if run.poll() is not None:
            raise AssertionError(f"vmwu run ended ({run.returncode}): {run.communicate()}")
        return running_guest(run.pid)

    qemu = wait_for(started, 300, "the run's guest to start its app")
    os.kill(qemu, signal.SIGSTOP)  # the run cannot end while we look
    try:
        info = cache_info(cold_vmwu)
        used = {e["entry"] for e in info["entries"] if e["in_use"]}
        kinds = {e["kind"] for e in info["entries"] if e["in_use"]}
        assert {"blob", "saved-guest"} <= kinds, info
        assert ("f" * 64) not in used
        assert sum(1 for i in info["instances"] if i["running"]) == 1

        cleaned = cold_vmwu("cache", "clean")
        assert cleaned.returncode == 0, cleaned.stderr
        assert "kept" in cleaned.stdout
        assert not idle.exists() and not crashed.exists()
        after = cache_info(cold_vmwu)
        assert {e["entry"] for e in after["entries"]} == used
        assert all(e["in_use"] for e in after["entries"])

        trimmed = cold_vmwu("cache", "trim", "--cache-limit", "0")
        assert trimmed.returncode == 0, trimmed.stderr
        assert "removed 0 entries" in trimmed.stdout
        assert {e["entry"] for e in cache_info(cold_vmwu)["entries"]} == used
    finally:
        os.kill(qemu, signal.SIGCONT)
    stdout, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr
    assert (out / "done.txt").read_text() == "done\n"
    status = json.loads((out / "status.json").read_text())
    assert status["outcome"] == "app" and status["app_exit_code"] == 0, status

    # now idle: clean empties the cache, and the next run fills it again
    cleaned = cold_vmwu("cache", "clean")
    assert cleaned.returncode == 0, cleaned.stderr
    assert cache_info(cold_vmwu)["entries"] == []
    result, out2, status2 = cold_vmwu.run(unit, out="out2")
    assert result.returncode == 0, result.stderr
    assert (out2 / "done.txt").read_text() == "done\n"


def test_a_run_at_the_limit_evicts_what_is_idle_not_what_it_runs_on(cold_vmwu: Vmwu) -> None:
    one = cold_vmwu.pack("/app/run.sh", name="one", files={"run.sh": "#!/bin/sh\necho 1\n"})
    two = cold_vmwu.pack("/app/run.sh", name="two", files={"run.sh": "#!/bin/sh\necho 2\n"})
    cache = cold_vmwu.tmp / "cache"
    (cache / "blobs").mkdir(parents=True, exist_ok=True)
    idle = cache / "blobs" / ("f" * 64)
    idle.write_bytes(os.urandom(MIB))

    # far less than one run needs: every idle entry goes, none of the run's own
    result, out1, status1 = cold_vmwu.run(one, "--cache-limit", "1M", out="out1")
    assert result.returncode == 0, result.stderr
    assert (out1 / "stdout.log").read_text() == "1\n"
    assert status1["start"].startswith("warm start: saved"), status1
    assert not idle.exists()
    after_one = blobs(cache)
    size_one = cache_info(cold_vmwu)["bytes"]
    assert size_one > MIB  # over the limit by what the run used

    # at the limit (a little slack for two's own application disk): room is made for
    # two's application disk from what is idle and least recently used
    limit = str(size_one + 16 * 1024)
    result, out2, status2 = cold_vmwu.run(two, "--cache-limit", limit, out="out2")
    assert result.returncode == 0, result.stderr
    assert (out2 / "stdout.log").read_text() == "2\n"
    # the saved guest and the base stayed: resumed, not saved again
    assert status2["start"].startswith("warm start: resumed"), status2
    after_two = blobs(cache)
    assert len(after_one - after_two) == 1 and len(after_two - after_one) == 1
    info = cache_info(cold_vmwu)
    assert info["limit"] is None  # not configured: the option held for those runs only
    assert info["bytes"] <= int(limit)

    trimmed = cold_vmwu("cache", "trim", "--cache-limit", "1M")
    assert trimmed.returncode == 0, trimmed.stderr
    assert cache_info(cold_vmwu)["bytes"] <= MIB
