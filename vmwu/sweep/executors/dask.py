"""The Dask executor: each job is a ``distributed`` future that runs ``exec-job`` on a
worker. ``distributed.LocalCluster`` (N single-threaded worker processes) by default;
``--scheduler ADDRESS`` uses an existing scheduler, e.g. one that ``dask-jobqueue`` feeds
with workers from PBS, SGE or Slurm (docs/sweeps.md). The workers must see the results
directory and the plan's input files at the same paths (a shared file system).

A job's ``exec-job`` runs in a session of its own and is *not* tied to the worker
(``die_with_parent=False``), so it outlives a driver (and the LocalCluster it owned) that
was killed; a resumed driver finds such jobs by their process (``find``) when the futures
are gone. The exec-job is a vmwu process itself: what it starts dies with it.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vmwu import tools
from vmwu.errors import HostFailure
from vmwu.extras import require
from vmwu.sweep.executors import Context, Executor, Observed, Phase, Submission
from vmwu.sweep.executors.local import find_exec_jobs, parse_handle
from vmwu.sweep.layout import Layout


def run_exec_job(results: str, job_id: str, attempt: int) -> int:
    """On a worker: run one attempt with the worker's own Python (and vmwu)."""
    log = Layout(Path(results)).log(job_id, attempt)
    argv = [sys.executable, "-m", "vmwu", "sweep", "exec-job", results, job_id]
    with open(log, "ab") as fh:
        proc = tools.spawn(
            [*argv, "--attempt", str(attempt)],
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            session=True,
            die_with_parent=False,  # resumable: see the module's text
        )
    code = proc.wait()
    assert code is not None
    return code


def kill_exec_job(results: str, job_id: str, attempt: int) -> int:
    """On every worker: stop this attempt's exec-job if it runs there."""
    from vmwu import procstat as procs

    found = find_exec_jobs(Path(results), [Submission(job_id, attempt)])
    for handle in found.values():
        pid, start = parse_handle(handle)
        if procs.alive(pid, start):
            procs.kill_tree(pid, grace=5.0)
    return len(found)


def _key_parts(key: str) -> tuple[str, int]:
    """``vmwu-EXP-JOBID-aN`` → (JOBID, N)."""
    rest, _, attempt = key.rpartition("-a")
    return rest.split("-", 2)[2], int(attempt)


class DaskExecutor(Executor):
    name = "dask"
    poll_interval = 0.2

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.address: str | None = ctx.options.get("scheduler")
        self.cluster: Any = None
        self.client: Any = None
        self.futures: dict[str, Any] = {}

    def check(self) -> None:
        require("dask", "the dask executor")
        if self.address:  # a LocalCluster is started when the first job is submitted
            self._connect()

    @property
    def slots(self) -> int | None:
        return None  # the scheduler queues; it knows its workers

    def _connect(self) -> Any:
        if self.client is not None:
            return self.client
        from distributed import Client, LocalCluster

        logging.getLogger("distributed").setLevel(logging.ERROR)
        try:
            if self.address:
                self.client = Client(self.address, timeout="10s")  # type: ignore[no-untyped-call]
            else:
                import os

                self.cluster = LocalCluster(  # type: ignore[no-untyped-call]
                    n_workers=self.ctx.slots or os.cpu_count() or 1,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                    silence_logs=logging.ERROR,
                )
                self.client = Client(self.cluster)  # type: ignore[no-untyped-call]
        except (OSError, TimeoutError) as err:
            where = self.address or "a LocalCluster"
            raise HostFailure(f"Dask scheduler not reachable at {where}: {err}") from None
        return self.client

    def submit(self, subs: Sequence[Submission], batch: str) -> dict[str, str]:
        client = self._connect()
        handles: dict[str, str] = {}
        for sub in subs:
            key = f"vmwu-{self.ctx.experiment}-{sub.job_id}-a{sub.attempt}"
            self.futures[key] = client.submit(
                run_exec_job, str(self.ctx.results), sub.job_id, sub.attempt, key=key, pure=False
            )
            handles[sub.job_id] = key
        return handles

    def poll(self, handles: Mapping[str, str]) -> dict[str, Observed]:
        out: dict[str, Observed] = {}
        orphans = {}
        for job, key in handles.items():
            future = self.futures.get(key)
            if future is None:  # submitted by a driver that is gone
                orphans[job] = key
                continue
            status = future.status
            if status == "pending":
                out[job] = Observed(Phase.QUEUED)
            elif status == "cancelled":
                out[job] = Observed(Phase.CANCELLED)
            else:  # finished, error, lost
                out[job] = Observed(Phase.ENDED, detail=status)
                del self.futures[key]
        if orphans:
            subs = [Submission(*_key_parts(k)) for k in orphans.values()]
            alive = find_exec_jobs(self.ctx.results, subs)
            for job in orphans:
                out[job] = Observed(Phase.RUNNING if job in alive else Phase.ENDED)
        return out

    def cancel(self, handles: Mapping[str, str]) -> None:
        for key in handles.values():
            future = self.futures.pop(key, None)
            if future is not None:
                future.cancel()
            job, attempt = _key_parts(key)
            if self.client is not None:
                self.client.run(kill_exec_job, str(self.ctx.results), job, attempt)
            else:
                kill_exec_job(str(self.ctx.results), job, attempt)

    def find(self, batch: str, subs: Sequence[Submission]) -> dict[str, str]:
        alive = find_exec_jobs(self.ctx.results, subs)
        return {
            s.job_id: f"vmwu-{self.ctx.experiment}-{s.job_id}-a{s.attempt}"
            for s in subs
            if s.job_id in alive
        }

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None
