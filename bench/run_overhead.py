"""What vmwu adds to a bare QEMU boot, and how big units are. Prints JSON.

    .venv/bin/python bench/run_overhead.py [--runs 5] [--home DIR]

Figures (medians of --runs runs, all on this machine, in this run):
- ``noop_run_wall_{warm_start,cold_boot}_s`` / ``bare_qemu_wall_s``: ``vmwu run`` of a unit
  whose app is ``true`` (resuming the node's saved guest, and with ``--no-warm``) versus
  QEMU booting the same kernel and initramfs straight into ``reboot -f`` (same QEMU
  binary, machine options and accelerator, no disks); ``ratio_*`` (target <= 1.15);
- ``outside_qemu_{warm,cold}_cache_s``: wall clock of the ``vmwu run`` process minus the
  time its QEMU ran (target <= 0.3 s warm): Python start-up, cache, overlays, ISO,
  collection; the cold-cache runs unpack the unit and base into an empty cache
  (``--no-warm``, so that saving the booted guest is not counted here);
- ``warm_state_save_s``: the one-off cost, per node and machine configuration, of booting
  and saving the guest that later instances resume;
- ``app_exit_to_qemu_exit_s``: from the agent's ``exit`` event to QEMU's exit
  (target <= 0.5 s; the thesis measured 11.4 s);
- ``boot_to_app_start_s``: QEMU start to the agent's ``started`` event;
- ``pack_s``; Mandelbrot unit sizes referenced/embedded (targets 1 MB / 25 MB);
- ``qemu_peak_rss_mib``.
"""

from __future__ import annotations

import argparse
import compileall
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


def sh(argv: list[str], env: dict[str, str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, text=True, capture_output=True, check=True, **kw)


def timed(argv: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    sh(argv, env)
    return time.perf_counter() - t


def med(xs: list[float]) -> float:
    return round(statistics.median(xs), 3)


def bare_argv(status: dict[str, Any]) -> list[str]:
    """The run's own QEMU command line with the disks, serial files and QMP removed and
    init replaced by ``reboot -f``: the same boot with nothing of vmwu in it."""
    import shlex

    argv = shlex.split(status["cmdline"])
    out: list[str] = []
    skip_next = False
    drop = {"-drive", "-device", "-chardev", "-qmp"}
    for i, a in enumerate(argv):
        if skip_next:
            skip_next = False
            continue
        if a in drop:
            skip_next = True
            continue
        if a == "-serial":
            skip_next = True
            out += ["-serial", "null"]
            continue
        if i > 0 and argv[i - 1] == "-append":
            a = a + " rdinit=/bin/busybox -- reboot -f"
        out.append(a)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument(
        "--home", help="a VMWU_HOME with the tiny base (default: build one in a temp dir)"
    )
    args = ap.parse_args()
    # vmwu as installed: with its bytecode (an editable checkout under
    # PYTHONDONTWRITEBYTECODE would otherwise compile edited modules at every run)
    compileall.compile_dir(str(ROOT / "vmwu"), quiet=1)

    work = Path(tempfile.mkdtemp(prefix="vmwu-bench-"))
    env = dict(os.environ)
    env["VMWU_HOME"] = args.home or str(work / "home")
    try:
        if not args.home:
            sh(VMWU + ["base", "build", "tiny", "-q"], env)
        app = work / "app"
        app.mkdir()
        spec = work / "noop.toml"
        spec.write_text(f'package-name = "noop"\napp-import-dir = "{app}"\napp-launch = "true"\n')
        unit = work / "noop.ova"
        pack_times = [
            timed(VMWU + ["pack", str(spec), "-o", str(unit), "-q"], env) for _ in range(args.runs)
        ]

        def run(i: int, cache: Path | None, *extra: str) -> tuple[float, dict[str, Any]]:
            e = dict(env)
            if cache is not None:
                e["VMWU_CACHE_DIR"] = str(cache)
            out = work / f"out-{cache.name if cache else 'warm'}-{i}-{len(extra)}"
            t = time.perf_counter()
            sh(VMWU + ["run", str(unit), "--quiet", "--output-directory", str(out), *extra], e)
            wall = time.perf_counter() - t
            status = json.loads((out / "status.json").read_text())
            return wall, status

        first = run(-1, work / "cache-first")  # saves the booted guest in an empty cache
        run(-1, None)  # make sure the node cache is warm
        warm = [run(i, None) for i in range(args.runs)]
        cold_boot = [run(i, None, "--no-warm") for i in range(args.runs)]
        cold = [run(i, work / f"cache{i}", "--no-warm") for i in range(args.runs)]
        bare = bare_argv(cold_boot[0][1])
        bare_walls = []
        for _ in range(args.runs):
            t = time.perf_counter()
            subprocess.run(bare, check=True, timeout=120)
            bare_walls.append(time.perf_counter() - t)

        def outside(runs: list[tuple[float, dict[str, Any]]]) -> float:
            return med([w - s["timings"]["qemu"] for w, s in runs])

        # Mandelbrot sizes (the example's binary must be built: examples/mandelbrot/build.sh)
        sizes: dict[str, Any] = {}
        mandel = ROOT / "examples" / "mandelbrot"
        if (mandel / "app" / "mandelbrot").exists():
            for kind, extra in (("referenced", []), ("embedded", ["--embed-base"])):
                out = work / f"mandelbrot-{kind}.ova"
                sh(VMWU + ["pack", str(mandel / "vmwu.toml"), "-o", str(out), "-q", *extra], env)
                sizes[f"mandelbrot_unit_{kind}_bytes"] = out.stat().st_size
        warm_wall = med([w for w, _ in warm])
        cold_wall = med([w for w, _ in cold_boot])
        bare_wall = med(bare_walls)
        result = {
            "runs": args.runs,
            "accel": warm[0][1]["accel"],
            "bare_qemu_wall_s": bare_wall,
            "noop_run_wall_warm_start_s": warm_wall,
            "ratio_warm_start_vs_bare": round(warm_wall / bare_wall, 3),
            "noop_run_wall_cold_boot_s": cold_wall,
            "ratio_cold_boot_vs_bare": round(cold_wall / bare_wall, 3),
            "outside_qemu_warm_cache_s": outside(warm),
            "outside_qemu_cold_cache_s": outside(cold),
            "warm_state_save_s": round(first[1]["timings"]["prepare"], 3),
            "qemu_wall_warm_start_s": med([s["timings"]["qemu"] for _, s in warm]),
            "qemu_wall_cold_boot_s": med([s["timings"]["qemu"] for _, s in cold_boot]),
            "boot_to_app_start_warm_start_s": med([s["timings"]["boot"] for _, s in warm]),
            "boot_to_app_start_cold_boot_s": med([s["timings"]["boot"] for _, s in cold_boot]),
            "app_exit_to_qemu_exit_s": med([s["timings"]["shutdown"] for _, s in warm]),
            "pack_s": med(pack_times),
            "qemu_peak_rss_warm_start_mib": round(
                max(s["qemu_peak_rss_kib"] for _, s in warm) / 1024, 1
            ),
            "qemu_peak_rss_cold_boot_mib": round(
                max(s["qemu_peak_rss_kib"] for _, s in cold_boot) / 1024, 1
            ),
            **sizes,
        }
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
