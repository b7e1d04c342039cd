"""What a sweep costs beyond its jobs, and how close a sweep of VMs gets to running the
application natively. Prints JSON (medians of --runs runs, all on this machine).

    .venv/bin/python bench/sweep.py [--runs 3] [--jobs 100] [--no-local] [--no-slurm] [--no-sge]

Figures:
- ``mandelbrot_sweep_wall_s`` / ``mandelbrot_native_serial_wall_s`` = ``mandelbrot_ratio``
  (target <= 3; the thesis measured ~100x): the examples/mandelbrot plan (8 jobs of 100
  rows, 2 parallel slots, rootfinish combine) versus the same 8 bands run one after the
  other on the host by the native binary, then combined;
- for ``--jobs`` no-op jobs (each a ``vmwu run`` of a unit whose app is ``true``):
  ``noop_local_wall_s_{1,2}_slots``, ``noop_slurm_wall_s`` and ``noop_sge_wall_s``, and
  ``driver_overhead_per_job_{local,slurm,sge}_s`` = (wall x slots - the sum of the jobs'
  own run times, as the node-side runner measured them) / jobs: the time a slot is not
  busy with a job: the driver's bookkeeping, submission, polling, process start-up and, on
  a batch system, its own scheduling and launch latency (target <= 0.1 s); on Slurm and
  Grid Engine also with ``--jobs-per-task K`` (default 10):
  ``driver_overhead_per_job_{slurm,sge}_K_per_task_s``. The two batch systems (2 slots
  each, their test clusters started by scripts/{slurm,sge}-test-cluster.sh unless
  SLURM_CONF is set / Grid Engine is already up) are measured in the same sitting, their
  runs interleaved, so that the machine's load is the same for both;
- ``driver_cpu_per_job_{local,slurm,sge}_s``: the driver process's own CPU time per job
  (journal, polling, submission; the jobs run in other processes);
- ``machinery_per_job_local_s``: the same sweep with a plain ``true`` task (no VM at
  all), wall x slots / jobs: everything vmwu adds per job, runner included.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VMWU = [sys.executable, "-m", "vmwu"]
ARGS = "-2.0 1.0 -1.0 1.0 1600 800 100".split()


def sh(argv: list[str], env: dict[str, str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, text=True, capture_output=True, check=True, **kw)


def med(xs: list[float]) -> float:
    return round(statistics.median(xs), 3)


def timed_sweep(plan: Path, results: Path, env: dict[str, str], *extra: str) -> float:
    shutil.rmtree(results, ignore_errors=True)
    t = time.perf_counter()
    sh([*VMWU, "sweep", str(plan), "--results", str(results), "-q", *extra], env)
    return time.perf_counter() - t


def job_seconds(results: Path) -> float:
    total = 0.0
    for job in (results / "jobs").iterdir():
        info = json.loads((job / "job.json").read_text())
        total += info["finished"] - info["started"]
    return total


def mandelbrot(work: Path, env: dict[str, str], runs: int) -> dict[str, Any]:
    ex = work / "mandelbrot"
    shutil.copytree(ROOT / "examples" / "mandelbrot", ex, ignore=shutil.ignore_patterns("*.ova"))
    sh(["bash", str(ex / "build.sh")], env)
    unit = work / "mandelbrot.ova"
    sh([*VMWU, "pack", str(ex / "vmwu.toml"), "-o", str(unit), "-q"], env)
    sweeps, natives = [], []
    for _ in range(runs):
        sweeps.append(
            timed_sweep(ex / "mandelbrot.plan", work / "m-res", env, "--set", f"unit={unit}")
        )
        outs = []
        t = time.perf_counter()
        for row in range(0, 800, 100):
            out = work / f"native-{row}.out"
            sh(
                [
                    str(ex / "app" / "mandelbrot"),
                    str(out),
                    *ARGS,
                    "0",
                    str(row),
                    "1600",
                    str(row + 100),
                ],
                env,
            )
            outs.append(str(out))
        sh([sys.executable, str(ex / "combine.py"), str(work / "native.png"), *outs], env)
        natives.append(time.perf_counter() - t)
    return {
        "mandelbrot_sweep_wall_s": med(sweeps),
        "mandelbrot_native_serial_wall_s": med(natives),
        "mandelbrot_ratio": round(med(sweeps) / med(natives), 2),
    }


def noop_plans(work: Path, env: dict[str, str], jobs: int) -> tuple[Path, Path]:
    app = work / "noop-app"
    app.mkdir()
    (app / "true.sh").write_text("#!/bin/sh\nexit 0\n")
    (app / "true.sh").chmod(0o755)
    spec = work / "noop.toml"
    spec.write_text(
        f'package-name = "noop"\napp-import-dir = "{app}"\napp-launch = "/app/true.sh"\n'
        'app-output-size = "1M"\n'
    )
    unit = work / "noop.ova"
    sh([*VMWU, "pack", str(spec), "-o", str(unit), "-q"], env)
    vm_plan = work / "noop.plan"
    vm_plan.write_text(
        f"parameter n integer range from 1 to {jobs} step 1\n"
        f"task main\n    node:execute vmwu run {unit} --quiet --output-directory out\nendtask\n"
    )
    bare_plan = work / "bare.plan"
    bare_plan.write_text(
        f"parameter n integer range from 1 to {jobs} step 1\ntask main\n    exec true\nendtask\n"
    )
    # warm the node cache and the saved booted guest, as on a node that ran a job before
    sh([*VMWU, "run", str(unit), "--quiet", "--output-directory", str(work / "warmup")], env)
    return vm_plan, bare_plan


def overhead(wall: float, slots: int, results: Path, jobs: int) -> float:
    return (wall * slots - job_seconds(results)) / jobs


def driver_cpu(results: Path, jobs: int) -> float:
    import sqlite3

    db = sqlite3.connect(results / "journal.sqlite")
    row = db.execute("SELECT value FROM experiment WHERE key = 'driver_cpu_s'").fetchone()
    db.close()
    return float(json.loads(row[0])) / jobs if row else float("nan")


def slurm_env(work: Path, env: dict[str, str]) -> dict[str, str] | None:
    if env.get("SLURM_CONF"):
        return env
    directory = work / "slurm"
    started = subprocess.run(
        ["bash", str(ROOT / "scripts" / "slurm-test-cluster.sh"), "start"],
        env={
            **env,
            "VMWU_SLURM_DIR": str(directory),
            "VMWU_SLURM_PORT": "6917",
            "VMWU_SLURM_CPUS": "2",
        },
        capture_output=True,
        text=True,
    )
    if started.returncode != 0:
        print(f"bench: no Slurm: {started.stderr.strip()}", file=sys.stderr)
        return None
    return {**env, "SLURM_CONF": str(directory / "slurm.conf")}


def sge_env(env: dict[str, str]) -> tuple[dict[str, str] | None, bool]:
    """Grid Engine's environment, and whether this bench started it (then it stops it)."""
    script = str(ROOT / "scripts" / "sge-test-cluster.sh")
    was_up = subprocess.run(["bash", script, "status"], capture_output=True).returncode == 0
    started = subprocess.run(
        ["bash", script, "start"],
        env={**env, "VMWU_SGE_SLOTS": "2"},
        capture_output=True,
        text=True,
    )
    if started.returncode != 0:
        print(f"bench: no Grid Engine: {started.stderr.strip()}", file=sys.stderr)
        return None, False
    words = started.stdout.strip().splitlines()[-1].split()[1:]
    return {**env, **dict(w.split("=", 1) for w in words)}, not was_up


def clusters(
    vm_plan: Path, res: Path, engines: dict[str, dict[str, str]], runs: int, jobs: int, k: int
) -> dict[str, Any]:
    """Each engine with one job per task and with K, runs interleaved between engines."""
    walls: dict[str, list[float]] = {}
    over: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    for _ in range(runs):
        for name, env in engines.items():
            for per in (1, k):
                key = name if per == 1 else f"{name}_{per}_per_task"
                extra = ["--jobs-per-task", str(per)] if per > 1 else []
                wall = timed_sweep(vm_plan, res, env, "--executor", name, *extra)
                walls.setdefault(key, []).append(wall)
                over.setdefault(key, []).append(overhead(wall, 2, res, jobs))
                cpu.setdefault(key, []).append(driver_cpu(res, jobs))
    out: dict[str, Any] = {}
    for name in engines:
        out[f"noop_{name}_wall_s"] = med(walls[name])
        out[f"driver_overhead_per_job_{name}_s"] = med(over[name])
        out[f"driver_cpu_per_job_{name}_s"] = med(cpu[name])
        key = f"{name}_{k}_per_task"
        out[f"noop_{name}_wall_s_{k}_per_task"] = med(walls[key])
        out[f"driver_overhead_per_job_{key}_s"] = med(over[key])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--no-local", action="store_true", help="skip Mandelbrot and local")
    parser.add_argument("--no-slurm", action="store_true")
    parser.add_argument("--no-sge", action="store_true")
    parser.add_argument("--jobs-per-task", type=int, default=10, help="K for the 2nd runs")
    args = parser.parse_args()
    env = dict(os.environ)
    out: dict[str, Any] = {"runs": args.runs, "jobs": args.jobs, "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="vmwu-bench-sweep-") as tmp:
        work = Path(tmp)
        if not args.no_local:
            out.update(mandelbrot(work, env, args.runs))
        vm_plan, bare_plan = noop_plans(work, env, args.jobs)
        res = work / "res"
        if not args.no_local:
            walls: dict[int, list[float]] = {1: [], 2: []}
            over: list[float] = []
            cpu: list[float] = []
            for _ in range(args.runs):
                for slots in (2, 1):
                    wall = timed_sweep(vm_plan, res, env, "-j", str(slots))
                    walls[slots].append(wall)
                    if slots == 2:
                        over.append(overhead(wall, 2, res, args.jobs))
                        cpu.append(driver_cpu(res, args.jobs))
            out["noop_local_wall_s_2_slots"] = med(walls[2])
            out["noop_local_wall_s_1_slot"] = med(walls[1])
            out["noop_speedup_2_vs_1_slots"] = round(med(walls[1]) / med(walls[2]), 2)
            out["driver_overhead_per_job_local_s"] = med(over)
            out["driver_cpu_per_job_local_s"] = med(cpu)
            bare = [
                timed_sweep(bare_plan, res, env, "-j", "2") * 2 / args.jobs
                for _ in range(args.runs)
            ]
            out["machinery_per_job_local_s"] = med(bare)
        engines: dict[str, dict[str, str]] = {}
        stop_sge = False
        try:
            senv = None if args.no_slurm else slurm_env(work, env)
            if senv is not None:
                engines["slurm"] = senv
            if not args.no_sge:
                genv, stop_sge = sge_env(env)
                if genv is not None:
                    engines["sge"] = genv
            if engines:
                out.update(
                    clusters(vm_plan, res, engines, args.runs, args.jobs, args.jobs_per_task)
                )
        finally:
            if "slurm" in engines and not env.get("SLURM_CONF"):
                subprocess.run(
                    ["bash", str(ROOT / "scripts" / "slurm-test-cluster.sh"), "stop"],
                    env={**env, "VMWU_SLURM_DIR": str(work / "slurm")},
                    capture_output=True,
                )
            if stop_sge:
                subprocess.run(
                    ["bash", str(ROOT / "scripts" / "sge-test-cluster.sh"), "stop"],
                    capture_output=True,
                )
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
