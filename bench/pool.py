"""Tiny jobs on one node (issue 15): what a no-op ``vmwu run`` and a sweep of no-op VM
jobs cost against a stock bare QEMU boot of the same kernel, and how much memory each
running instance holds. Prints JSON (medians of --runs runs, all in one sitting).

    .venv/bin/python bench/pool.py [--runs 5] [--jobs 100] [--sweep-runs 1] [--home DIR]

Figures:
- ``bare_qemu_wall_s``: stock QEMU (no tuning) booting the tiny base's kernel and
  initramfs straight into ``reboot -f`` (no disks, no vmwu);
- ``noop_run_wall_warm_s`` and ``ratio_warm_vs_bare`` (targets <= 0.35 s, <= 0.20);
- ``noop_run_wall_cold_s`` (``--no-warm``; unchanged or better);
- ``sweep_{jobs}_noop_local_2_slots_wall_s``, ``ratio_sweep_vs_bare`` (target <= 5) and
  ``sweep_jobs_per_minute``;
- ``instance_{rss,pss,private}_mib``: the QEMU of a running warm-started instance, from
  /proc/PID/smaps_rollup (PSS counts shared pages by the share each process has;
  private = Private_Clean + Private_Dirty; target <= 50 MiB), with ``--concurrent`` (2)
  instances running at once so that shared pages are shared;
- ``start``: how the warm instances started (status.json ``start``);
- with a vmwu that has the node pool (``vmwu pool serve``, started here with ``--size 2``):
  ``noop_run_wall_pooled_s`` / ``ratio_pooled_vs_bare`` (``vmwu run`` with ``$VMWU_POOL``
  set, one run at a time, the pool refilled in between as it would be between a user's
  commands), ``pooled_start``, and ``pooled_{rss,pss,private}_mib``: every QEMU of the
  service while ``--concurrent`` instances run in it (running and ready VMs alike).
  The sweep is run without a pool and, interleaved, with the pool the local executor
  starts for ``VMWU_POOL=auto`` (``..._pooled_wall_s``, ``ratio_pooled_sweep_vs_bare``).

It measures the vmwu of the Python that runs it (``OTHER/.venv/bin/python bench/pool.py``
measures another checkout with this script: the "before" figures of a change); that
Python's bin directory goes first in PATH, so the plan's ``vmwu run`` is the same vmwu.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

VMWU = [sys.executable, "-m", "vmwu"]


def sh(argv: list[str], env: dict[str, str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, text=True, capture_output=True, check=True, **kw)


def med(xs: list[float]) -> float:
    return round(statistics.median(xs), 3)


def bare_argv(status: dict[str, Any]) -> list[str]:
    """A stock QEMU command line booting the run's kernel and initramfs into ``reboot -f``:
    the stock kernel command line of the notes (console=ttyS0 quiet panic=-1), the run's
    QEMU binary and accelerator, nothing else of vmwu's."""
    argv = shlex.split(status["cmdline"])
    exe = argv[0]
    kernel = argv[argv.index("-kernel") + 1]
    initrd = argv[argv.index("-initrd") + 1]
    accel = argv[argv.index("-accel") + 1] if "-accel" in argv else "tcg"
    return [
        exe,
        "-nodefaults",
        "-no-reboot",
        "-machine",
        "pc",
        "-accel",
        accel,
        "-m",
        "512",
        "-display",
        "none",
        "-serial",
        "null",
        "-kernel",
        kernel,
        "-initrd",
        initrd,
        "-append",
        "console=ttyS0 quiet panic=-1 rdinit=/bin/busybox -- reboot -f",
    ]


def smaps(pid: int) -> dict[str, float]:
    fields: dict[str, float] = {}
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) >= 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1]) / 1024
    return fields


def qemu_children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        except (OSError, ValueError):
            continue
        if ppid == pid and comm.startswith("qemu-system"):
            out.append(int(entry.name))
    return out


def memory(
    unit: Path, work: Path, env: dict[str, str], concurrent: int, service: int | None = None
) -> dict[str, float]:
    """RSS/PSS/private of each QEMU of ``concurrent`` instances running ``sleep`` at once
    (sampled inside the sleep), or, with ``service``, of every QEMU of that pool service
    then (running and ready VMs)."""
    procs = []
    for i in range(concurrent):
        out = work / f"mem-{i}-{time.monotonic_ns()}"
        argv = [*VMWU, "run", str(unit), "--quiet", "--output-directory", str(out)]
        procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL))
    samples: list[dict[str, float]] = []
    try:
        deadline = time.monotonic() + 60
        pids: list[int] = []
        while time.monotonic() < deadline and len(pids) < concurrent and service is None:
            pids = [q for p in procs for q in qemu_children(p.pid)]
            time.sleep(0.05)
        time.sleep(1.5)  # the guests are inside `sleep` by now
        if service is not None:
            pids = qemu_children(service)
        for q in pids:
            s = smaps(q)
            samples.append(
                {
                    "rss": s["Rss"],
                    "pss": s["Pss"],
                    "private": s.get("Private_Clean", 0) + s.get("Private_Dirty", 0),
                }
            )
    finally:
        for p in procs:
            p.wait(timeout=120)
    return {
        f"instance_{k}_mib": round(max(x[k] for x in samples), 1) for k in ("rss", "pss", "private")
    }


def pool_figures(
    work: Path, env: dict[str, str], args: argparse.Namespace, run: Any, units: dict[str, Path]
) -> dict[str, Any]:
    sock = work / "pool" / "pool.sock"
    serve = [*VMWU, "pool", "serve", "--socket", str(sock), "--size", "2", "--idle", "600"]
    service = subprocess.Popen(serve, env=env, stderr=subprocess.DEVNULL)
    penv = {**env, "VMWU_POOL": str(sock)}
    try:
        deadline = time.monotonic() + 60
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)

        try:  # this vmwu has the pool
            from vmwu.run.poolclient import ask
        except ImportError:  # a vmwu from before the lean client
            from vmwu.run.poolserve import ask  # type: ignore[attr-defined,no-redef]

        def ready() -> int:
            summary = ask(sock, {"v": 1, "status": True}, timeout=30).summary or ""
            return int(summary.split()[1])

        def pooled_run(i: int) -> tuple[float, dict[str, Any]]:
            deadline = time.monotonic() + 60
            while ready() < 2 and time.monotonic() < deadline:  # refilled, as between commands
                time.sleep(0.05)
            out = work / f"pooled-{i}-{time.monotonic_ns()}"
            argv = [*VMWU, "run", str(units["noop"]), "--quiet", "--output-directory", str(out)]
            t = time.perf_counter()
            sh(argv, penv)
            wall = time.perf_counter() - t
            return wall, json.loads((out / "status.json").read_text())

        pooled_run(-1)  # the service learns the machine
        runs = [pooled_run(i) for i in range(args.runs)]
        mem = memory(units["sleep"], work, penv, args.concurrent, service=service.pid)
        return {
            "pooled_start": runs[-1][1]["start"],
            "noop_run_wall_pooled_s": med([w for w, _ in runs]),
            "noop_run_qemu_pooled_s": med([s["timings"]["qemu"] for _, s in runs]),
            "noop_run_boot_to_started_pooled_s": med([s["timings"]["boot"] for _, s in runs]),
            **{k.replace("instance_", "pooled_"): v for k, v in mem.items()},
        }
    finally:
        service.terminate()
        service.wait(timeout=60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--sweep-runs", type=int, default=1)
    ap.add_argument("--concurrent", type=int, default=2)
    ap.add_argument("--home", help="a VMWU_HOME with the tiny base (default: build one)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vmwu-bench-pool-"))
    env = dict(os.environ)
    env["VMWU_HOME"] = args.home or str(work / "home")
    env["VMWU_CACHE_DIR"] = str(work / "cache")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("VMWU_POOL", None)
    os.chdir(work)  # `python -m vmwu` would import a vmwu package in the current directory
    try:
        if not args.home:
            sh([*VMWU, "base", "build", "tiny", "-q"], env)
        units = {}
        for name, launch in (("noop", "true"), ("sleep", "sleep 3")):
            app = work / f"{name}-app"
            app.mkdir()
            spec = work / f"{name}.toml"
            spec.write_text(
                f'package-name = "{name}"\napp-import-dir = "{app}"\n'
                f'app-launch = "{launch}"\napp-output-size = "1M"\n'
            )
            units[name] = work / f"{name}.ova"
            sh([*VMWU, "pack", str(spec), "-o", str(units[name]), "-q"], env)

        def run(i: int, *extra: str) -> tuple[float, dict[str, Any]]:
            out = work / f"out-{i}-{len(extra)}-{time.monotonic_ns()}"
            argv = [*VMWU, "run", str(units["noop"]), "--quiet", "--output-directory", str(out)]
            t = time.perf_counter()
            sh([*argv, *extra], env)
            wall = time.perf_counter() - t
            return wall, json.loads((out / "status.json").read_text())

        run(-1)  # saves the node's booted guest
        run(-1)
        warm = [run(i) for i in range(args.runs)]
        cold = [run(i, "--no-warm") for i in range(args.runs)]
        bare = bare_argv(cold[0][1])
        bare_walls = []
        for _ in range(args.runs):
            t = time.perf_counter()
            subprocess.run(bare, check=True, timeout=120, capture_output=True)
            bare_walls.append(time.perf_counter() - t)
        plan = work / "noop.plan"
        plan.write_text(
            f"parameter n integer range from 1 to {args.jobs} step 1\ntask main\n"
            f"    node:execute vmwu run {units['noop']} --quiet --output-directory out\n"
            "endtask\n"
        )
        has_pool = subprocess.run([*VMWU, "pool", "--help"], env=env, capture_output=True)
        # with and without the sweep's own pool (VMWU_POOL=auto), interleaved
        sweeps: list[float] = []
        pooled_sweeps: list[float] = []
        for i in range(args.sweep_runs):
            sides = [(sweeps, env)]
            if has_pool.returncode == 0:
                sides.append((pooled_sweeps, {**env, "VMWU_POOL": "auto"}))
            for walls, side_env in sides:
                res = work / f"sweep-{i}-{len(walls)}-{len(sides)}-{time.monotonic_ns()}"
                t = time.perf_counter()
                argv = [*VMWU, "sweep", str(plan), "--results", str(res), "-q", "-j", "2"]
                sh(argv, side_env)
                walls.append(time.perf_counter() - t)
        mem = memory(units["sleep"], work, env, args.concurrent)
        pooled: dict[str, Any] = {}
        if has_pool.returncode == 0:
            pooled = pool_figures(work, env, args, run, units)
        bare_wall = med(bare_walls)
        warm_wall = med([w for w, _ in warm])
        sweep_wall = med(sweeps)
        result: dict[str, Any] = {
            "runs": args.runs,
            "accel": warm[0][1]["accel"],
            "start": warm[0][1]["start"],
            "bare_qemu_wall_s": bare_wall,
            "noop_run_wall_warm_s": warm_wall,
            "ratio_warm_vs_bare": round(warm_wall / bare_wall, 3),
            "noop_run_qemu_warm_s": med([s["timings"]["qemu"] for _, s in warm]),
            "noop_run_boot_to_started_warm_s": med([s["timings"]["boot"] for _, s in warm]),
            "noop_run_wall_cold_s": med([w for w, _ in cold]),
            f"sweep_{args.jobs}_noop_local_2_slots_wall_s": sweep_wall,
            "ratio_sweep_vs_bare": round(sweep_wall / bare_wall, 2),
            "sweep_jobs_per_minute": round(args.jobs * 60 / sweep_wall),
            "concurrent_instances": args.concurrent,
            **mem,
        }
        if pooled_sweeps:
            pooled_wall = med(pooled_sweeps)
            pooled[f"sweep_{args.jobs}_noop_local_2_slots_pooled_wall_s"] = pooled_wall
            pooled["ratio_pooled_sweep_vs_bare"] = round(pooled_wall / bare_wall, 2)
            pooled["pooled_sweep_jobs_per_minute"] = round(args.jobs * 60 / pooled_wall)
        if pooled:
            pooled["ratio_pooled_vs_bare"] = round(pooled["noop_run_wall_pooled_s"] / bare_wall, 3)
            result.update(pooled)
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
