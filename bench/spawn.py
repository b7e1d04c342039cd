"""What tying children to vmwu's life costs per start. Prints JSON.

    .venv/bin/python bench/spawn.py [--runs 50]

Each figure is the median, in milliseconds, of ``--runs`` starts of ``/bin/true`` run to
its end, from this (vmwu-sized) Python process:

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
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vmwu import tools  # noqa: E402


def median_ms(runs: int, fn: Callable[[], object]) -> float:
    fn()  # warm up (imports, page cache)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return round(statistics.median(times) * 1000, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    runs = parser.parse_args().runs
    # import what `vmwu run` imports, so that fork copies a realistic process
    import vmwu.cli  # noqa: F401
    import vmwu.launch  # noqa: F401

    true = tools.which("true")
    figures = {
        "subprocess_run_ms": median_ms(runs, lambda: subprocess.run([true], check=True)),
        "tools_run_ms": median_ms(runs, lambda: tools.run([true])),
        "tools_spawn_wait_ms": median_ms(runs, lambda: tools.spawn([true]).wait()),
        "tools_spawn_tree_wait_ms": median_ms(
            runs, lambda: tools.spawn([true], tree=True).wait()
        ),
    }
    figures["tree_overhead_ms"] = round(
        figures["tools_spawn_tree_wait_ms"] - figures["tools_spawn_wait_ms"], 2
    )
    with open("/proc/self/status") as fh:
        rss = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
    figures["rss_mib"] = round(rss / 1024, 1)
    figures["runs"] = runs
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
