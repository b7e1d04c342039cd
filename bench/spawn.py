"""What tying children to vmwu's life costs per start. Prints JSON.

    .venv/bin/python bench/spawn.py [--runs 50]

Each ``*_ms`` figure is the median wall-clock time, in milliseconds, of ``--runs`` starts of
``/bin/true`` run to its end, from this (vmwu-sized) Python process; each ``*_cpu_ms`` the
mean CPU time (this process and its children) per start, which a loaded machine inflates
less:

- ``subprocess_run_ms``: plain ``subprocess.run`` (vfork, no ``preexec_fn``): the floor;
- ``tools_run_ms``: ``tools.run`` as every helper (qemu-img, mkfs.ext4, debugfs...) runs:
  ``PR_SET_PDEATHSIG`` set by a ``preexec_fn``, which makes subprocess fork instead of
  vfork;
- ``tools_spawn_wait_ms``: ``tools.spawn(...).wait()``, as QEMU is started;
- ``tools_spawn_tree_wait_ms``: ``tools.spawn(tree=True).wait()``: the process guard
  (a Python start-up in isolated mode, its subreaper set-up, fork, exec, the final sweep
  of /proc for leftovers), as host tasks, plan steps, mmdebstrap and apt-get are started;
- ``tree_overhead_ms``: the difference between the last two, the guard's cost per spawn;
- ``rss_mib``: this process's resident size when forking (fork costs grow with it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vmwu import tools  # noqa: E402


def cpu_seconds() -> float:
    mine = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return mine.ru_utime + mine.ru_stime + kids.ru_utime + kids.ru_stime


def measure(runs: int, fn: Callable[[], object]) -> tuple[float, float]:
    """(median wall ms, mean CPU ms of this process and its children) per call."""
    fn()  # warm up (imports, page cache)
    times = []
    cpu = cpu_seconds()
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    used = (cpu_seconds() - cpu) / runs
    return round(statistics.median(times) * 1000, 2), round(used * 1000, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    runs = parser.parse_args().runs
    # import what `vmwu run` imports, so that fork copies a realistic process
    import vmwu.cli  # noqa: F401
    import vmwu.launch  # noqa: F401

    true = tools.which("true")
    cases: dict[str, Callable[[], object]] = {
        "subprocess_run": lambda: subprocess.run([true], check=True),
        "tools_run": lambda: tools.run([true]),
        "tools_spawn_wait": lambda: tools.spawn([true]).wait(),
        "tools_spawn_tree_wait": lambda: tools.spawn([true], tree=True).wait(),
    }
    figures: dict[str, float] = {}
    for name, fn in cases.items():
        figures[f"{name}_ms"], figures[f"{name}_cpu_ms"] = measure(runs, fn)
    for kind in ("ms", "cpu_ms"):
        figures[f"tree_overhead_{kind}"] = round(
            figures[f"tools_spawn_tree_wait_{kind}"] - figures[f"tools_spawn_wait_{kind}"], 2
        )
    with open("/proc/self/status") as fh:
        rss = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
    figures["rss_mib"] = round(rss / 1024, 1)
    figures["runs"] = runs
    figures["load_average_1min"] = round(os.getloadavg()[0], 2)
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
