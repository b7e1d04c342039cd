"""Before and after, interleaved: the figures of bench/pool.py for two vmwu checkouts
measured turn by turn in one sitting, so that a shared machine's load falls on both alike.
Prints JSON (medians).

    .venv/bin/python bench/pool_compare.py BEFORE_PYTHON [--runs 5] [--jobs 100] [--sweeps 2]

BEFORE_PYTHON is the other checkout's interpreter (``OTHER/.venv/bin/python``); the
after side is the Python running this script. Each side gets its own VMWU_HOME (its own
tiny base: the agent may differ) and node cache. Figures per side: ``bare_qemu_wall_s``
(stock QEMU, the side's kernel and initramfs, straight into ``reboot -f``),
``noop_run_wall_warm_s`` (``vmwu run`` without a pool), ``noop_run_wall_pooled_s`` (with
``$VMWU_POOL``, the after side only, the pool refilled between runs) and
``sweep_{jobs}_noop_local_2_slots_wall_s``; ratios against the side's own bare boot.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pool import bare_argv, med  # noqa: E402


class Side:
    def __init__(self, name: str, python: str, work: Path) -> None:
        self.name = name
        self.vmwu = [python, "-m", "vmwu"]
        self.dir = work / name
        self.dir.mkdir()
        self.env = dict(os.environ)
        self.env.pop("VMWU_POOL", None)
        self.env.update(
            VMWU_HOME=str(self.dir / "home"),
            VMWU_CACHE_DIR=str(self.dir / "cache"),
            PATH=f"{Path(python).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        )
        self.figures: dict[str, list[float]] = {}
        self.service: subprocess.Popen[bytes] | None = None

    def sh(self, *argv: str, env: dict[str, str] | None = None) -> float:
        t = time.perf_counter()
        subprocess.run(
            [*self.vmwu, *argv], env=env or self.env, cwd=self.dir, check=True, capture_output=True
        )
        return time.perf_counter() - t

    def add(self, key: str, value: float) -> None:
        self.figures.setdefault(key, []).append(value)

    def setup(self, jobs: int) -> None:
        self.sh("base", "build", "tiny", "-q")
        app = self.dir / "app"
        app.mkdir()
        spec = self.dir / "noop.toml"
        spec.write_text(
            f'package-name = "noop"\napp-import-dir = "{app}"\napp-launch = "true"\n'
            'app-output-size = "1M"\n'
        )
        self.unit = self.dir / "noop.ova"
        self.sh("pack", str(spec), "-o", str(self.unit), "-q")
        self.plan = self.dir / "noop.plan"
        self.plan.write_text(
            f"parameter n integer range from 1 to {jobs} step 1\ntask main\n"
            f"    node:execute vmwu run {self.unit} --quiet --output-directory out\nendtask\n"
        )
        for i in range(2):
            self.noop(f"warmup{i}")
        out = self.dir / "cold"
        self.sh("run", str(self.unit), "--quiet", "--no-warm", "--output-directory", str(out))
        self.bare = bare_argv(json.loads((out / "status.json").read_text()))
        has_pool = subprocess.run([*self.vmwu, "pool", "--help"], env=self.env, capture_output=True)
        if has_pool.returncode == 0:
            sock = self.dir / "pool" / "pool.sock"
            self.service = subprocess.Popen(
                [*self.vmwu, "pool", "serve", "--socket", str(sock), "--size", "2"],
                env=self.env,
                stderr=subprocess.DEVNULL,
                cwd=self.dir,
            )
            self.pool_env = {**self.env, "VMWU_POOL": str(sock)}
            while not sock.exists():
                time.sleep(0.05)
            self.noop("pool-warmup", pooled=True)

    def noop(self, tag: str, *, pooled: bool = False) -> float:
        out = self.dir / f"out-{tag}-{time.monotonic_ns()}"
        env = self.pool_env if pooled else self.env
        return self.sh("run", str(self.unit), "--quiet", "--output-directory", str(out), env=env)

    def pool_ready(self, n: int) -> None:
        try:  # the after side's own vmwu
            from vmwu.run.poolclient import ask
        except ImportError:  # a vmwu from before the lean client
            from vmwu.run.poolserve import ask  # type: ignore[attr-defined,no-redef]

        sock = Path(self.pool_env["VMWU_POOL"])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            summary = ask(sock, {"v": 1, "status": True}, timeout=30).summary or ""
            if int(summary.split()[1]) >= n:
                return
            time.sleep(0.05)

    def bare_boot(self) -> float:
        t = time.perf_counter()
        subprocess.run(self.bare, check=True, capture_output=True, timeout=120)
        return time.perf_counter() - t

    def sweep(self, i: int) -> float:
        res = str(self.dir / f"res{i}")
        # VMWU_POOL=auto: a local sweep of a vmwu with the pool starts one (ignored before)
        env = {**self.env, "VMWU_POOL": "auto"}
        return self.sh("sweep", str(self.plan), "--results", res, "-q", "-j", "2", env=env)

    def result(self, jobs: int) -> dict[str, Any]:
        out: dict[str, Any] = {k: med(v) for k, v in self.figures.items()}
        bare = out["bare_qemu_wall_s"]
        for key in list(out):
            if key != "bare_qemu_wall_s":
                out[f"ratio_{key.removesuffix('_s')}_vs_bare"] = round(out[key] / bare, 3)
        sweep = out.get(f"sweep_{jobs}_noop_local_2_slots_wall_s")
        if sweep:
            out["sweep_jobs_per_minute"] = round(jobs * 60 / sweep)
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("before_python")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--sweeps", type=int, default=2)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vmwu-bench-compare-"))
    os.chdir(work)
    sides = [Side("before", args.before_python, work), Side("after", sys.executable, work)]
    try:
        for side in sides:
            side.setup(args.jobs)
        for i in range(args.runs):
            for side in sides:
                side.add("bare_qemu_wall_s", side.bare_boot())
                side.add("noop_run_wall_warm_s", side.noop(f"w{i}"))
                if side.service is not None:
                    side.pool_ready(2)
                    side.add("noop_run_wall_pooled_s", side.noop(f"p{i}", pooled=True))
        for side in sides:  # the sweeps start pools of their own
            if side.service is not None:
                side.service.terminate()
                side.service.wait(timeout=60)
                side.service = None
        for i in range(args.sweeps):
            for side in sides:
                key = f"sweep_{args.jobs}_noop_local_2_slots_wall_s"
                side.add(key, side.sweep(i))
        print(
            json.dumps(
                {"runs": args.runs, "sweeps": args.sweeps}
                | {s.name: s.result(args.jobs) for s in sides},
                indent=2,
            )
        )
    finally:
        for side in sides:
            if side.service is not None:
                side.service.terminate()
                side.service.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
