"""An experiment = a plan (with its ``--set`` values) run into one results directory.

Creating one checks the whole plan before anything runs (syntax, ``${…}`` references,
domains, copy sources for every job), then writes what the nodes need (experiment.json,
a copy of the plan, one spec file per job) and the journal. Running the same plan into the
same directory again continues it (job ids come from parameter values, so nothing is
duplicated); a different plan is refused unless ``--force``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmwu.errors import BadInput, HostDiskFull
from vmwu.sweep.executors import check_name
from vmwu.sweep.expand import (
    DEFAULT_MAX_JOBS,
    Job,
    check_paths,
    check_references,
    expand,
    parse_overrides,
    single_values,
)
from vmwu.sweep.journal import Journal
from vmwu.sweep.layout import Layout, write_json
from vmwu.sweep.model import Plan, Value
from vmwu.sweep.plan import load_plan, read_text


@dataclass
class SweepOptions:
    executor: str = "local"
    slots: int | None = None
    retries: int = 2
    retry_app_failures: bool = False
    overrides: list[str] = field(default_factory=list)
    input_dir: Path | None = None
    force: bool = False
    keep_work: bool = False
    executor_options: dict[str, Any] = field(default_factory=dict)
    max_jobs: int = DEFAULT_MAX_JOBS


@dataclass
class Experiment:
    results: Path
    journal: Journal
    meta: dict[str, Any]
    plan: Plan
    added: int = 0

    @property
    def layout(self) -> Layout:
        return Layout(self.results)

    @property
    def id(self) -> str:
        return str(self.meta["id"])


def plan_hash(text: str, overrides: Sequence[str]) -> str:
    blob = json.dumps({"plan": text, "set": sorted(overrides)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class Prepared:
    jobs: list[Job]
    single: dict[str, Value]  # what rootstart, nodestart and rootfinish see


def prepare(
    plan: Plan, input_dir: Path, overrides: Sequence[str], max_jobs: int = DEFAULT_MAX_JOBS
) -> Prepared:
    """Every check that can be made before anything runs: the jobs are counted (and
    refused beyond ``max_jobs``), made, and every task's names and paths checked for each."""
    values = parse_overrides(plan, overrides)
    jobs = expand(plan, input_dir, values, max_jobs)
    single = single_values(plan, input_dir, values)
    check_references(plan, single=single)
    check_paths(plan, jobs, input_dir, single)
    return Prepared(jobs, single)


def prepare_jobs(
    plan: Plan, input_dir: Path, overrides: Sequence[str], max_jobs: int = DEFAULT_MAX_JOBS
) -> list[Job]:
    return prepare(plan, input_dir, overrides, max_jobs).jobs


def check_results_dir(results: Path) -> None:
    """A results directory is new, empty, or a sweep's (never someone else's files)."""
    if (results / Journal.FILE).exists() or not results.exists():
        return
    if not results.is_dir():
        raise BadInput(f"results directory {results} exists and is not a directory")
    if any(p.name != Layout(results).lock.name for p in results.iterdir()):
        raise BadInput(
            f"results directory {results} is not empty and holds no sweep",
            hint="choose a new --results directory",
        )


def create(plan_path: Path, results: Path, opts: SweepOptions) -> Experiment:
    check_name(opts.executor)
    if opts.retries < 0:
        raise BadInput(f"--retries {opts.retries}: must be 0 or more")
    if opts.slots is not None and opts.slots < 1:
        raise BadInput(f"--jobs {opts.slots}: must be at least 1")
    plan_path = plan_path.absolute()
    text = read_text(plan_path)
    plan = load_plan(plan_path)
    input_dir = (opts.input_dir or plan_path.parent).absolute()
    if not input_dir.is_dir():
        raise BadInput(f"--input-dir {input_dir} is not a directory")
    if opts.max_jobs < 1:
        raise BadInput(f"--max-jobs {opts.max_jobs}: must be at least 1")
    prepared = prepare(plan, input_dir, opts.overrides, opts.max_jobs)
    jobs = prepared.jobs
    digest = plan_hash(text, opts.overrides)
    results = results.absolute()
    layout = Layout(results)
    existing = (results / Journal.FILE).exists()
    check_results_dir(results)
    try:
        results.mkdir(parents=True, exist_ok=True)
        journal = Journal.open(results, create=True)
        meta = journal.meta()
        if existing and meta.get("plan_hash") not in (None, digest) and not opts.force:
            created = time.strftime("%Y-%m-%d %H:%M", time.localtime(meta.get("created", 0)))
            raise BadInput(
                f"{results} holds the results of another plan ({meta.get('plan_source')}, "
                f"created {created})",
                hint="choose another --results directory, or --force to run this plan there "
                "(results of jobs with the same parameters are kept)",
            )
        if existing and meta.get("executor") not in (None, opts.executor):
            from vmwu.sweep.journal import ACTIVE

            if journal.jobs(ACTIVE):
                raise BadInput(
                    f"jobs of {results} are still under way with the {meta['executor']} "
                    f"executor; cannot switch to {opts.executor}",
                    hint=f"vmwu sweep resume {results}, or vmwu sweep cancel {results}",
                )
        exp_id = meta.get("id") or hashlib.sha256(f"{digest}:{results}".encode()).hexdigest()[:10]
        copy_name = "plan.toml" if plan_path.suffix.lower() == ".toml" else "plan.plan"
        meta = {
            "id": exp_id,
            "plan_source": str(plan_path),
            "plan_copy": copy_name,
            "plan_hash": digest,
            "overrides": list(opts.overrides),
            "input_dir": str(input_dir),
            "executor": opts.executor,
            "slots": opts.slots,
            "max_attempts": opts.retries + 1,
            "retry_app_failures": opts.retry_app_failures,
            "keep_work": opts.keep_work,
            "executor_options": opts.executor_options,
            "created": meta.get("created", time.time()),
            "batches": meta.get("batches", 0),
            "parameters": [p.name for p in plan.parameters],
            "single_values": prepared.single,
        }
        layout.make_dirs()
        shutil.copyfile(plan_path, results / copy_name)
        write_json(layout.experiment, {k: meta[k] for k in _NODE_KEYS})
        for job in jobs:
            write_json(layout.spec(job.id), {"job": job.id, "seq": job.seq, "params": job.params})
        if existing and opts.force:
            journal.drop_jobs(j.id for j in jobs)
        added = journal.add_jobs(jobs)
        journal.set_meta(meta)
    except OSError as err:
        raise _os_error(err, results) from None
    return Experiment(results, journal, meta, plan, added)


_NODE_KEYS = (
    "id",
    "plan_source",
    "plan_copy",
    "input_dir",
    "max_attempts",
    "retry_app_failures",
    "keep_work",
    "single_values",
)


def open_existing(results: Path) -> Experiment:
    results = results.absolute()
    journal = Journal.open(results)
    meta = journal.meta()
    from vmwu.sweep.runner import load_experiment

    _, plan = load_experiment(results)
    return Experiment(results, journal, meta, plan)


def _os_error(err: OSError, results: Path) -> Exception:
    import errno

    if err.errno == errno.ENOSPC:
        return HostDiskFull(str(results))
    if err.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        return BadInput(f"cannot write in the results directory {results}: {err.strerror}")
    return err
