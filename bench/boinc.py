"""`vmwu wrap` under the real BOINC client: CPU time, checkpoints, a client quit. JSON.

    .venv/bin/python bench/boinc.py [--trials 3] [--interval 3] [--steps 40] [--home DIR]
                                    [--packaged] [--stop quit|kill]

Each trial starts our project server (tests/boinc/server.py) and a real `boinc` client in
a new data directory (tests/boinc/client.py), with a job whose VM task counts ``--steps``
steps of one second (examples/boinc/count.sh in a unit on the tiny base), the client's
checkpoint period (its "store at most every" preference) ``--interval`` seconds. At a
random moment of the guest's count the client quits (`boinccmd --quit`: the wrapper
checkpoints and exits), or with ``--stop kill`` the client and the wrapper are killed
(SIGKILL, both at once: a crash or a power cut; QEMU dies with the wrapper); the client is
started again and runs the task to its report. The wrapper is `vmwu wrap` from this virtualenv,
or with ``--packaged`` the executable `vmwu wrap package` builds (it unpacks itself at
every start). Figures, medians over the trials unless said otherwise:

- ``client_start_to_guest_running_s``: from starting the client to the guest's first
  step (scheduler RPC, the download, the slot, the wrapper, the instance, the boot);
  ``task_start_to_guest_running_s``: from the client's "Starting task" to the same;
- ``wrapper_cpu_s``, ``qemu_cpu_s``: CPU seconds of the wrapper process and of QEMU in
  the first run, up to the quit (the wrapper's own status: ``wrapper_cpu_time`` and
  ``run_cpu_time`` less it), and ``wrapper_cpu_per_running_s``;
- ``checkpoint_s``, ``checkpoint_guest_paused_s``, ``checkpoint_size_bytes``: one
  checkpoint (from the wrapper's log in the task's stderr.txt);
- ``work_lost_s``: per trial, the guest's steps done before the stop that the restored
  guest did again (step seconds: the host's last status for a quit, the guest's console
  for a kill); target: at most one interval (``work_lost_within_one_interval``);
- ``restart_to_guest_running_s``: from the second client start to the restored guest
  counting again; ``final_cpu_time_s``: the client's CPU time of the whole result.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.boinc.client import App, BoincClient  # noqa: E402
from tests.boinc.server import Job, ProjectServer  # noqa: E402

VMWU = [sys.executable, "-m", "vmwu"]
SIZE_UNITS = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}


def med(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 3) if xs else None


def status(client: BoincClient) -> dict[str, Any]:
    try:
        return json.loads((client.slot() / "wrapper_status.json").read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return {}


def step(st: dict[str, Any]) -> int:
    m = re.match(r"step (\d+)", (st.get("task") or {}).get("message") or "")
    return int(m.group(1)) if m else 0


def wait(what: Any, timeout: float, message: str) -> Any:
    end = time.monotonic() + timeout
    while not (value := what()):
        if time.monotonic() > end:
            raise SystemExit(f"bench/boinc.py: timed out waiting for {message}")
        time.sleep(0.05)
    return value


def package(work: Path, env: dict[str, str], steps: int, packaged: bool) -> Path:
    """A unit counting to ``steps``, a job running it, and `vmwu wrap package`'s output."""
    app = work / "counter-app"
    app.mkdir()
    (app / "count.sh").write_text((ROOT / "examples" / "boinc" / "count.sh").read_text())
    (app / "count.sh").chmod(0o755)
    spec = work / "counter.toml"
    spec.write_text(
        f'package-name = "counter"\napp-import-dir = "{app}"\napp-launch = \'/app/count.sh "$@"\'\n'
    )
    subprocess.run([*VMWU, "pack", spec, "-o", work / "counter.ova", "-q"], env=env, check=True)
    job = work / "job.xml"
    job.write_text(
        "<job_desc><task><virtualmachine>counter.ova</virtualmachine>"
        f"<command_line>{steps}</command_line>"
        "<copy_file_from_VM>steps.log</copy_file_from_VM></task></job_desc>\n"
    )
    argv = [*VMWU, "wrap", "package", str(job), "-o", str(work / "pkg")]
    if not packaged:
        script = work / "vmwu-wrap.sh"
        script.write_text(f'#!/bin/sh\nexec {sys.executable} -m vmwu wrap "$@"\n')
        script.chmod(0o755)
        argv += ["--executable", str(script)]
    subprocess.run(argv, env=env, check=True, capture_output=True)
    return work / "pkg"


def kill(client: BoincClient, wrapper: int) -> int:
    """SIGKILL to the client and the wrapper at once; the last step the guest's console
    shows (its instance directory stays until the next run cleans it)."""
    assert client.proc is not None
    os.kill(client.proc.pid, signal.SIGKILL)
    os.kill(wrapper, signal.SIGKILL)
    client.proc.wait()
    wait(lambda: not Path(f"/proc/{wrapper}").exists() or _zombie(wrapper), 60, "the wrapper")
    state = json.loads((client.slot() / "wrapper_checkpoint.json").read_text())
    console = Path(state.get("instance_dir") or "/nonexistent") / "console.log"
    text = console.read_text(errors="replace") if console.exists() else ""
    steps = [int(n) for n in re.findall(r"count: step (\d+) of", text)]
    return steps[-1] if steps else 0


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def checkpoints(stderr: str) -> list[tuple[float, float, float]]:
    """(seconds, guest paused seconds, bytes) of every checkpoint the wrapper logged."""
    pattern = r"checkpoint ck-\d+: ([\d.]+) (\w+) in ([\d.]+) s \(guest paused ([\d.]+) s\)"
    return [
        (float(s), float(p), float(n) * SIZE_UNITS.get(u, 1))
        for n, u, s, p in re.findall(pattern, stderr)
    ]


def trial(
    n: int, work: Path, pkg: Path, args: argparse.Namespace, rng: random.Random
) -> dict[str, Any]:
    with ProjectServer() as server:
        job = server.add_job(Job(f"bench{n}", "vmwu", outputs=("steps.log",)))
        client = BoincClient(
            work / f"data{n}",
            server,
            App.from_package("vmwu", pkg),
            checkpoint_period=args.interval,
        )
        try:
            t0 = time.monotonic()
            client.start(exit_when_idle=False)
            wait(lambda: step(status(client)) >= 1, 600, "the guest's first step")
            t_running = time.monotonic()
            started = client.wait_log(r"(\d\d):(\d\d):(\d\d) \[[^\]]+\] Starting task")
            # the log's clock has whole seconds: the task start, relative to now
            h, m, s = (int(x) for x in started.groups())
            now = time.localtime()
            since_task = (now.tm_hour - h) * 3600 + (now.tm_min - m) * 60 + (now.tm_sec - s)
            task_to_running = since_task - (time.monotonic() - t_running)

            run_for = rng.uniform(args.interval, args.steps * 0.8)
            wait(lambda: step(status(client)) >= run_for, 600, "the quit moment")
            before = status(client)
            if args.stop == "quit":
                client.quit()
                after_quit = status(client)  # written by the wrapper once it had stopped
                seen = max(step(before), step(after_quit))
            else:
                after_quit = before
                seen = kill(client, int(before["pid"]))
            run_s = float(after_quit.get("elapsed") or 0.0)
            wrapper_cpu = float(after_quit.get("wrapper_cpu_time") or 0.0)
            run_cpu = float(after_quit.get("run_cpu_time") or 0.0)

            t1 = time.monotonic()
            client.start()
            wait(
                lambda: step(status(client)) > 0 and status(client).get("starts", 0) >= 2,
                600,
                "the restored guest",
            )
            restart_to_running = time.monotonic() - t1
            report = server.wait_report(job.result, timeout=900)
            if report.exit_status != 0:
                raise SystemExit(f"bench/boinc.py: the task failed: {report.stderr_out}")
            client.wait_exit(300)
        finally:
            client.kill()
    restored = re.search(r"guest at [\d.]+%: step (\d+) of", report.stderr_out)
    resumed_at = int(restored.group(1)) if restored else 0
    return {
        "client_start_to_guest_running_s": round(t_running - t0, 3),
        "task_start_to_guest_running_s": round(task_to_running, 3),
        "stopped_after_step": seen,
        "resumed_after_step": resumed_at,
        "work_lost_s": float(max(0, seen - resumed_at)),
        "first_run_s": round(run_s, 3),
        "wrapper_cpu_s": round(wrapper_cpu, 3),
        "qemu_cpu_s": round(run_cpu - wrapper_cpu, 3),
        "restart_to_guest_running_s": round(restart_to_running, 3),
        "final_cpu_time_s": report.final_cpu_time,
        "checkpoints": checkpoints(report.stderr_out),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--interval", type=float, default=3.0, help="the client's checkpoint period")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--packaged", action="store_true", help="ship the PyInstaller executable")
    ap.add_argument("--stop", choices=("quit", "kill"), default="quit", help="how to stop it")
    ap.add_argument("--home", help="a VMWU_HOME with the tiny base (default: build one)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="vmwu-bench-boinc-") as tmp:
        work = Path(tmp)
        env = dict(os.environ)
        env["VMWU_HOME"] = args.home or str(work / "home")
        if not args.home:
            subprocess.run([*VMWU, "base", "build", "tiny", "-q"], env=env, check=True)
        pkg = package(work, env, args.steps, args.packaged)
        trials = [trial(n, work, pkg, args, rng) for n in range(args.trials)]
    cks = [c for t in trials for c in t["checkpoints"]]
    lost = [t["work_lost_s"] for t in trials]

    def col(key: str) -> float | None:
        return med([t[key] for t in trials if t[key] is not None])

    per_s = [t["wrapper_cpu_s"] / t["first_run_s"] for t in trials if t["first_run_s"]]
    result = {
        "wrapper": "packaged executable" if args.packaged else "vmwu wrap from the virtualenv",
        "stop": "boinccmd --quit" if args.stop == "quit" else "SIGKILL to client and wrapper",
        "interval_s": args.interval,
        "trials": args.trials,
        "client_start_to_guest_running_s": col("client_start_to_guest_running_s"),
        "task_start_to_guest_running_s": col("task_start_to_guest_running_s"),
        "wrapper_cpu_s": col("wrapper_cpu_s"),
        "qemu_cpu_s": col("qemu_cpu_s"),
        "first_run_s": col("first_run_s"),
        "wrapper_cpu_per_running_s": med(per_s),
        "checkpoints_taken": len(cks),
        "checkpoint_s": med([s for s, _, _ in cks]),
        "checkpoint_guest_paused_s": med([p for _, p, _ in cks]),
        "checkpoint_size_bytes": int(statistics.median([b for _, _, b in cks])) if cks else None,
        "work_lost_s": lost,
        "work_lost_max_s": max(lost),
        "work_lost_within_one_interval": max(lost) <= args.interval,
        "restart_to_guest_running_s": col("restart_to_guest_running_s"),
        "final_cpu_time_s": col("final_cpu_time_s"),
        "per_trial": [{k: v for k, v in t.items() if k != "checkpoints"} for t in trials],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
