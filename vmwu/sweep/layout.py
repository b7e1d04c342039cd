"""Where things are in a sweep's results directory (the one shared place between the
driver and the nodes)::

    RESULTS/
      journal.sqlite        the driver's journal (only the driver writes it)
      experiment.json       what a node needs: plan copy, directories, retry policy
      plan.plan|plan.toml   the plan as it was when the experiment was created
      spec/JOBID.json       one job's parameters
      jobs/JOBID/           a finished job's result: outputs, console.log, status.json,
                            task.log, job.json; created only by an atomic rename
      jobs/JOBID/.root/     the job's root-side outputs (copy node:X Y) until the driver
                            puts them at RESULTS/Y when it settles the job
      jobs/.JOBID.tmp-…     a result being written (never read)
      attempts/JOBID.aN/    an attempt that failed for the infrastructure and will be retried
      run/JOBID.aN.json     written by a job when it starts: host, pid, start time
      logs/JOBID.aN.log     the runner's own output (local and Dask executors)
      slurm/                batch scripts, job lists and Slurm's output files
      sge/                  the same for Grid Engine
      results.csv, results.json, timeline.png
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT_STAGE = ".root"


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def experiment(self) -> Path:
        return self.root / "experiment.json"

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    @property
    def attempts(self) -> Path:
        return self.root / "attempts"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def slurm(self) -> Path:
        return self.root / "slurm"

    @property
    def spec_dir(self) -> Path:
        return self.root / "spec"

    @property
    def lock(self) -> Path:
        return self.root / "driver.lock"

    def spec(self, job_id: str) -> Path:
        return self.spec_dir / f"{job_id}.json"

    def result(self, job_id: str) -> Path:
        return self.jobs / job_id

    def attempt_dir(self, job_id: str, attempt: int) -> Path:
        return self.attempts / f"{job_id}.a{attempt}"

    def marker(self, job_id: str, attempt: int) -> Path:
        return self.run / f"{job_id}.a{attempt}.json"

    def log(self, job_id: str, attempt: int) -> Path:
        return self.logs / f"{job_id}.a{attempt}.log"

    def make_dirs(self) -> None:
        for d in (self.jobs, self.attempts, self.run, self.logs, self.spec_dir):
            d.mkdir(parents=True, exist_ok=True)


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)
