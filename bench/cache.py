"""What the bounded node cache costs (issue 15 §4). Prints JSON.

    .venv/bin/python bench/cache.py [--runs 7] [--entries 200]

In a fresh temporary cache, medians of ``--runs`` repetitions of:

- ``in_use_us``: holding one entry in use and letting go (``NodeCache.in_use``: a shared
  flock on its use file and two nanosecond ``utime``); a `vmwu run` takes ~6 of them;
- ``lookup_us``: ``ensure_blob`` of an entry that is there (the hit path of every run);
- ``scan_ms``: listing ``--entries`` entries with their sizes and last use (what every
  insertion under a limit and `vmwu cache info` do);
- ``insert_at_limit_ms`` / ``insert_unlimited_ms``: inserting a 64 KiB entry into a cache
  of ``--entries`` entries at its limit (one idle entry evicted) and without a limit;
- ``trim_ms_per_entry``: evicting every one of ``--entries`` idle entries (``trim(0)``).

Timings on a shared machine are noisy: compare within one run of this script.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vmwu.cache import NodeCache  # noqa: E402

SIZE = 64 * 1024


def fill(tmp: Path) -> None:
    tmp.write_bytes(os.urandom(SIZE))


def median(fn: Callable[[], float], runs: int) -> float:
    return statistics.median(fn() for _ in range(runs))


def populate(root: Path, n: int, limit: int | None) -> NodeCache:
    cache = NodeCache(root, limit=None)
    for i in range(n):
        cache.ensure_blob(f"{i:064x}", fill)
    return NodeCache(root, limit=limit)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--entries", type=int, default=200)
    a = p.parse_args()
    n = a.entries
    out: dict[str, object] = {"runs": a.runs, "entries": n, "entry_bytes": SIZE}
    with tempfile.TemporaryDirectory(prefix="vmwu-bench-cache-") as tmp_str:
        tmp = Path(tmp_str)
        cache = populate(tmp / "base", n, None)
        blob = cache.blob_path(f"{0:064x}")

        def in_use() -> float:
            t = time.perf_counter()
            for _ in range(1000):
                with cache.in_use(blob):
                    pass
            return (time.perf_counter() - t) / 1000 * 1e6

        def lookup() -> float:
            t = time.perf_counter()
            for _ in range(1000):
                cache.ensure_blob(blob.name, fill)
            return (time.perf_counter() - t) / 1000 * 1e6

        def scan() -> float:
            t = time.perf_counter()
            cache.entries()
            return (time.perf_counter() - t) * 1e3

        out["in_use_us"] = round(median(in_use, a.runs), 1)
        out["lookup_us"] = round(median(lookup, a.runs), 1)
        out["scan_ms"] = round(median(scan, a.runs), 2)

        counter = iter(range(10**6))

        def insert(limit: int | None) -> Callable[[], float]:
            def run() -> float:
                root = tmp / f"c{next(counter)}"
                c = populate(root, n, limit)
                t = time.perf_counter()
                c.ensure_blob("f" * 64, fill)
                took = (time.perf_counter() - t) * 1e3
                assert limit is None or c.size() <= limit
                return took

            return run

        out["insert_at_limit_ms"] = round(median(insert(n * SIZE), a.runs), 2)
        out["insert_unlimited_ms"] = round(median(insert(None), a.runs), 2)

        def trim() -> float:
            c = populate(tmp / f"t{next(counter)}", n, None)
            t = time.perf_counter()
            done = c.trim(0)
            took = (time.perf_counter() - t) * 1e3 / n
            assert len(done.removed) == n
            return took

        out["trim_ms_per_entry"] = round(median(trim, a.runs), 3)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
