"""``vmwu sweep``: run a plan, and look after its results directory.

    vmwu sweep PLAN [--executor local|slurm|sge|dask] [--results DIR] [options]
    vmwu sweep resume DIR | status DIR | cancel DIR | report DIR
    vmwu sweep export --format slurm|htcondor|sge PLAN -o DIR
    vmwu sweep exec-job RESULTS JOB_ID --attempt N      (what executors run on a node)

Exit codes: 0 every job done; 1 some jobs failed or were cancelled, or a rootfinish
command failed (results.csv says which); vmwu's own codes otherwise (241 bad plan or
options, 247 host failure such as a full disk or an unreachable Slurm or Grid Engine,
248 interrupted).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from vmwu.errors import BadInput

if TYPE_CHECKING:
    from vmwu.sweep.experiment import SweepOptions

COMMANDS = ("resume", "status", "cancel", "report", "export", "exec-job")

USAGE = """usage: vmwu sweep PLAN [--executor local|slurm|sge|dask] [--results DIR] [options]
       vmwu sweep resume DIR [--jobs N] [--retry-failed] [--retry-cancelled]
       vmwu sweep status DIR [--all] [--json]
       vmwu sweep cancel DIR
       vmwu sweep report DIR [-o timeline.png]
       vmwu sweep export --format slurm|htcondor|sge PLAN -o DIR [--set NAME=VALUE ...]

Run every job of a Nimrod plan (or its TOML form) and collect the results in DIR
(default ./PLAN-results): jobs/JOBID/ per job, results.csv and results.json for all.
`vmwu sweep PLAN --help` lists the options; docs/sweeps.md has the details."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise BadInput(f"{self.prog}: {message}", hint=f"see `{self.prog} --help`")


def _run_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="vmwu sweep", allow_abbrev=False, description="Run a parameter sweep.")
    p.add_argument("plan", help="a Nimrod plan file, or its TOML form (*.toml)")
    p.add_argument("--executor", default="local", help="local (default), slurm, sge or dask")
    p.add_argument("--results", help="results directory (default ./PLAN-results)")
    p.add_argument(
        "--jobs", "-j", type=int, help="parallel jobs (local: default cores; dask: workers)"
    )
    p.add_argument(
        "--retries", type=int, default=2, help="retries after infrastructure failures (default 2)"
    )
    p.add_argument(
        "--retry-app-failures",
        action="store_true",
        help="also retry jobs whose application exited non-zero",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="give a parameter this one value (repeatable)",
    )
    p.add_argument(
        "--input-dir",
        help="where copy sources and files patterns are (default: the plan's directory)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="run in a results directory that holds another plan's results",
    )
    p.add_argument("--scheduler", help="dask: address of an existing scheduler")
    p.add_argument(
        "--sbatch-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="slurm: extra sbatch argument, e.g. --sbatch-arg=--partition=long",
    )
    p.add_argument(
        "--qsub-arg",
        action="append",
        default=[],
        metavar="ARGS",
        help="sge: extra qsub arguments (split like a shell would), e.g. --qsub-arg='-q long.q'",
    )
    p.add_argument(
        "--jobs-per-task",
        type=int,
        default=1,
        metavar="K",
        help="slurm, sge: run K jobs one after the other in each array task (short jobs)",
    )
    p.add_argument("--keep-work", action="store_true", help="keep the jobs' node directories")
    p.add_argument(
        "--max-jobs",
        type=int,
        default=None,
        metavar="N",
        help="refuse plans of more than N jobs (default 100000)",
    )
    p.add_argument(
        "--cache-limit",
        metavar="SIZE",
        help="size limit of the node cache for the jobs' vmwu run, e.g. 20G, or none "
        "(sets $VMWU_CACHE_LIMIT for them; default: as it is set)",
    )
    p.add_argument("--dry-run", action="store_true", help="check the plan and list the jobs")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    return p


def main(argv: Sequence[str]) -> int:
    args = list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command = args[0] if args[0] in COMMANDS else "run"
    rest = args[1:] if command != "run" else args
    handler = {
        "run": cmd_run,
        "resume": cmd_resume,
        "status": cmd_status,
        "cancel": cmd_cancel,
        "report": cmd_report,
        "export": cmd_export,
        "exec-job": cmd_exec_job,
    }[command]
    return handler(rest)


def drive(
    results: Path,
    *,
    quiet: bool,
    slots: int | None = None,
    rerun: Sequence[str] = (),
    create_args: tuple[Path, SweepOptions] | None = None,
) -> int:
    """Run (or resume) the sweep in ``results`` under the driver lock; the exit code."""
    from vmwu.sweep.driver import Driver, TaskFailed, driver_lock, make_executor
    from vmwu.sweep.experiment import create, open_existing
    from vmwu.sweep.journal import State
    from vmwu.sweep.progress import SweepProgress

    t0 = time.monotonic()
    with driver_lock(results):
        if create_args is not None:
            exp = create(create_args[0], results, create_args[1])
        else:
            exp = open_existing(results)
        executor = make_executor(exp, slots)
        progress = SweepProgress(quiet=quiet)
        driver = Driver(exp, executor, progress)
        if rerun:
            driver.rerun([State(s) for s in rerun])
        total = len(exp.journal.jobs())
        if not quiet:
            print(
                f"vmwu: sweep: {total} jobs ({exp.added} new) with the {executor.name} "
                f"executor; results in {results}",
                file=sys.stderr,
            )
        try:
            code = driver.run()
        except TaskFailed as err:
            print(f"vmwu: error: {err}", file=sys.stderr)
            code = 1
        counts = exp.journal.counts()
        if not quiet:
            print(
                f"vmwu: sweep: {counts[State.DONE]} done, {counts[State.FAILED]} failed, "
                f"{counts[State.CANCELLED]} cancelled in {time.monotonic() - t0:.1f} s; "
                f"summary in {results / 'results.csv'}",
                file=sys.stderr,
            )
        return code


def cmd_run(argv: list[str]) -> int:
    from vmwu.sweep.executors import Context, check_name, get_executor
    from vmwu.sweep.experiment import SweepOptions, check_results_dir, prepare_jobs
    from vmwu.sweep.plan import load_plan

    ns = _run_parser().parse_args(argv)
    if ns.cache_limit is not None:
        from vmwu.cache import LIMIT_ENV, limit_from

        limit_from(ns.cache_limit)  # a bad size is refused before anything runs
        os.environ[LIMIT_ENV] = ns.cache_limit  # the jobs' environment
    plan_path = Path(ns.plan)
    executor = check_name(ns.executor)
    exec_opts: dict[str, object] = {}
    if ns.scheduler:
        exec_opts["scheduler"] = ns.scheduler
    if ns.sbatch_arg:
        exec_opts["sbatch_args"] = list(ns.sbatch_arg)
    if ns.qsub_arg:
        exec_opts["qsub_args"] = _split_args("--qsub-arg", ns.qsub_arg)
    if ns.jobs_per_task < 1:
        raise BadInput(f"--jobs-per-task must be 1 or more, not {ns.jobs_per_task}")
    if ns.jobs_per_task > 1:
        if executor not in ("slurm", "sge"):
            raise BadInput("--jobs-per-task is for --executor slurm or sge")
        exec_opts["jobs_per_task"] = ns.jobs_per_task
    opts = SweepOptions(
        executor=executor,
        slots=ns.jobs,
        retries=ns.retries,
        retry_app_failures=ns.retry_app_failures,
        overrides=list(ns.set),
        input_dir=Path(ns.input_dir) if ns.input_dir else None,
        force=ns.force,
        keep_work=ns.keep_work,
        executor_options=exec_opts,
    )
    if ns.max_jobs is not None:
        if ns.max_jobs < 1:
            raise BadInput(f"--max-jobs {ns.max_jobs}: must be at least 1")
        opts.max_jobs = ns.max_jobs
    if ns.dry_run:
        plan = load_plan(plan_path)
        input_dir = opts.input_dir or plan_path.absolute().parent
        for job in prepare_jobs(plan, input_dir, opts.overrides, opts.max_jobs):
            print(job.id, json.dumps(job.params, sort_keys=True))
        return 0
    results = Path(ns.results or f"{plan_path.stem}-results").absolute()
    check_results_dir(results)
    # Everything that can be checked is, before anything is created: the plan, its jobs,
    # and whether the executor can be reached.
    plan = load_plan(plan_path)
    prepare_jobs(plan, opts.input_dir or plan_path.absolute().parent, opts.overrides, opts.max_jobs)
    get_executor(executor, Context(results, "check", options=exec_opts)).check()
    results.mkdir(parents=True, exist_ok=True)
    return drive(results, quiet=ns.quiet, create_args=(plan_path, opts))


def _split_args(option: str, values: Sequence[str]) -> list[str]:
    """Arguments for an engine's command (an argument list: no shell ever sees them)."""
    try:
        return [word for value in values for word in shlex.split(value)]
    except ValueError as err:
        raise BadInput(f"{option}: {err}", hint="quote as a shell would") from None


def _dir_parser(prog: str) -> _Parser:
    p = _Parser(prog=f"vmwu sweep {prog}", allow_abbrev=False)
    p.add_argument("results", help="a sweep's results directory")
    return p


def cmd_resume(argv: list[str]) -> int:
    p = _dir_parser("resume")
    p.add_argument("--jobs", "-j", type=int)
    p.add_argument("--retry-failed", action="store_true", help="run failed jobs again")
    p.add_argument("--retry-cancelled", action="store_true", help="run cancelled jobs again")
    p.add_argument("-q", "--quiet", action="store_true")
    ns = p.parse_args(argv)
    rerun = (["failed"] if ns.retry_failed else []) + (["cancelled"] if ns.retry_cancelled else [])
    return drive(Path(ns.results).absolute(), quiet=ns.quiet, slots=ns.jobs, rerun=rerun)


def cmd_status(argv: list[str]) -> int:
    from vmwu.sweep.driver import driver_pid
    from vmwu.sweep.journal import Journal
    from vmwu.sweep.summary import row_dict, status_text

    p = _dir_parser("status")
    p.add_argument("--all", action="store_true", help="list every job")
    p.add_argument("--json", action="store_true")
    ns = p.parse_args(argv)
    results = Path(ns.results).absolute()
    journal = Journal.open(results, readonly=True)
    pid = driver_pid(results)
    if ns.json:
        counts = {str(k): v for k, v in journal.counts().items()}
        jobs = [row_dict(r, results) for r in journal.jobs()]
        print(json.dumps({"driver_pid": pid, "counts": counts, "jobs": jobs}, indent=2))
        return 0
    print(status_text(journal, results, verbose=ns.all))
    print(f"driver  {'running, pid ' + str(pid) if pid else 'not running'}")
    return 0


def cmd_cancel(argv: list[str]) -> int:
    from vmwu.sweep.driver import Driver, driver_lock, driver_pid, make_executor
    from vmwu.sweep.experiment import open_existing
    from vmwu.sweep.journal import State
    from vmwu.sweep.progress import SweepProgress
    from vmwu.sweep.summary import write_summary

    ns = _dir_parser("cancel").parse_args(argv)
    results = Path(ns.results).absolute()
    exp = open_existing(results)
    pid = driver_pid(results)
    if pid is not None:
        # The running driver is the journal's one writer: ask it to cancel, wait for it.
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 300
        while driver_pid(results) is not None and time.monotonic() < deadline:
            time.sleep(0.2)
    else:
        with driver_lock(results):
            executor = make_executor(exp)
            driver = Driver(exp, executor, SweepProgress(quiet=True))
            executor.check()
            driver.cancel_all()
            executor.close()
            write_summary(exp.journal, results, list(exp.meta["parameters"]))
    counts = exp.journal.counts()
    print(
        f"{counts[State.CANCELLED]} cancelled, {counts[State.DONE]} done, "
        f"{counts[State.FAILED]} failed"
    )
    return 0


def cmd_report(argv: list[str]) -> int:
    from vmwu.extras import require
    from vmwu.sweep.journal import Journal
    from vmwu.sweep.report import draw_timeline

    p = _dir_parser("report")
    p.add_argument("-o", "--output", help="PNG file (default DIR/timeline.png)")
    ns = p.parse_args(argv)
    require("report", "vmwu sweep report")
    results = Path(ns.results).absolute()
    journal = Journal.open(results, readonly=True)
    out = Path(ns.output) if ns.output else results / "timeline.png"
    print(draw_timeline(journal, out))
    return 0


def cmd_export(argv: list[str]) -> int:
    from vmwu.sweep.export import FORMATS, export_plan

    p = _Parser(prog="vmwu sweep export", allow_abbrev=False)
    p.add_argument("plan")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("-o", "--output", required=True, help="directory to write (new or empty)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--input-dir")
    p.add_argument("--max-jobs", type=int, default=None, metavar="N")
    ns = p.parse_args(argv)
    if ns.max_jobs is not None and ns.max_jobs < 1:
        raise BadInput(f"--max-jobs {ns.max_jobs}: must be at least 1")
    out = export_plan(
        Path(ns.plan),
        ns.format,
        Path(ns.output),
        overrides=list(ns.set),
        input_dir=Path(ns.input_dir) if ns.input_dir else None,
        max_jobs=ns.max_jobs,
    )
    print(out)
    return 0


def cmd_exec_job(argv: list[str]) -> int:
    from vmwu.sweep.runner import exec_job, exec_jobs, list_line

    p = _Parser(prog="vmwu sweep exec-job", allow_abbrev=False)
    p.add_argument("results")
    p.add_argument("job", nargs="?")
    p.add_argument("--attempt", type=int, default=1)
    p.add_argument("--list", help="a job list of the Slurm executor (JOB ATTEMPT pairs)")
    p.add_argument("--line", type=int, help="with --list: run the jobs of this line (from 0)")
    ns = p.parse_args(argv)
    if ns.list is not None:
        if ns.line is None or ns.job is not None:
            raise BadInput("exec-job --list LIST needs --line N and no JOB")
        return exec_jobs(Path(ns.results), list_line(Path(ns.list), ns.line))
    if ns.job is None:
        raise BadInput("exec-job needs a JOB (or --list LIST --line N)")
    return exec_job(Path(ns.results), ns.job, ns.attempt)
