"""From a plan to jobs: each parameter's values, their cross product, and job ids derived
from the values (so re-running a plan never duplicates a job). The jobs are counted before
they are made: a plan of more than ``--max-jobs`` jobs is refused at once.

Also every check that needs the values, made for every job before anything runs: each task
names only what it sees (``$name`` that names nothing is an error), every root-side
``copy`` source exists, every path stays where it belongs after substitution (node paths in
the node's directories, outputs inside the experiment's directory), and no two jobs write
the same output."""

from __future__ import annotations

import difflib
import glob
import hashlib
import itertools
import json
import math
import os
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal, localcontext
from pathlib import Path, PurePosixPath

from vmwu.errors import BadInput, SpecError
from vmwu.sweep.model import (
    DEV_NULL,
    JOB_NAMES,
    RESERVED_RESULTS,
    ROOT_TASKS,
    DefaultDomain,
    Parameter,
    ParamType,
    Plan,
    RandomDomain,
    RangeDomain,
    Ref,
    SelectDomain,
    Side,
    Step,
    StepKind,
    Task,
    Value,
    Where,
    convert,
    exact,
    fail,
    format_value,
)

DEFAULT_MAX_JOBS = 100_000

# Set by the runner for every job; plans may use them like environment variables.
RUNNER_VARIABLES = (
    "VMWU_JOB_ID",
    "VMWU_JOB_ATTEMPT",
    "VMWU_WORK_DIR",
    "VMWU_RESULTS",
    "NIMROD_JOBINDEX",
    "NIMROD_JOBNAME",
    "NIMROD_EXPNAME",
)
NIMROD_VAR = "NIMROD_VAR_"  # NIMROD_VAR_x: parameter x's value (nimrodg, Embedded Nimrod)


@dataclass(frozen=True)
class Job:
    id: str
    seq: int  # position in the cross product, from 0
    params: dict[str, Value]

    @property
    def index(self) -> int:
        """``$jobindex``: the job's number, from 1."""
        return self.seq + 1


def job_values(params: Mapping[str, Value], index: int) -> dict[str, Value]:
    """What task main sees: the parameters, ``$jobindex`` and ``$jobname``."""
    return {**params, "jobindex": index, "jobname": str(index)}


def job_id(params: Mapping[str, Value]) -> str:
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "j-" + hashlib.sha256(canonical.encode()).hexdigest()[:12]


# --- counting and values -------------------------------------------------------------------


def count_values(param: Parameter, input_dir: Path) -> int:
    """How many values a parameter takes, without making them (a range of 10^300 values
    is counted in an instant)."""
    domain = param.domain
    if isinstance(domain, DefaultDomain):
        return 1 if param.type is not ParamType.FILES else len(values_of(param, input_dir))
    if isinstance(domain, SelectDomain):
        if not domain.anyof:
            return 1
        if param.type is ParamType.FILES:
            return len(values_of(param, input_dir))
        return len(set(domain.values))
    if isinstance(domain, RandomDomain):
        return domain.points
    return range_count(domain)


def range_count(domain: RangeDomain) -> int:
    if domain.points is not None:
        return domain.points
    assert domain.step is not None
    with localcontext() as ctx:
        ctx.prec = 50
        span = (exact(domain.stop) - exact(domain.start)) / exact(domain.step)
        steps = span.to_integral_value(rounding=ROUND_FLOOR)
    return int(steps) + 1


def values_of(param: Parameter, input_dir: Path) -> list[Value]:
    domain = param.domain
    if isinstance(domain, DefaultDomain):
        values: list[Value] = [domain.value]
    elif isinstance(domain, SelectDomain):
        if domain.anyof:
            values = list(domain.values)
        else:
            values = [domain.default if domain.default is not None else domain.values[0]]
    elif isinstance(domain, RangeDomain):
        values = list(_range(param.type, domain))
    else:
        values = _random(param, domain)
    if param.type is ParamType.FILES:
        values = _globbed([str(v) for v in values], param, input_dir)
    return _unique(values)


def _range(p_type: ParamType, d: RangeDomain) -> Iterator[Value]:
    """Computed in decimals from the numbers as written, so that 0.1 … 0.3 step 0.1 is
    0.1, 0.2, 0.3 and ``from 1 to 500 step 1`` ends at 500."""
    start, stop = exact(d.start), exact(d.stop)
    with localcontext() as ctx:
        ctx.prec = 50
        if d.step is not None:
            step = exact(d.step)
            numbers: Iterator[Decimal] = (start + i * step for i in range(range_count(d)))
        else:
            n = d.points or 1
            numbers = (
                (start + (stop - start) * i / (n - 1) for i in range(n)) if n > 1 else iter([start])
            )
        for x in numbers:
            yield int(round(x)) if p_type is ParamType.INTEGER else float(x)


def _random(param: Parameter, d: RandomDomain) -> list[Value]:
    # Seeded from the declaration so that expanding the plan again gives the same jobs.
    rng = random.Random(f"{param.name}:{param.type}:{d.start!r}:{d.stop!r}:{d.points}")
    if param.type is ParamType.INTEGER:
        return [rng.randint(int(d.start), int(d.stop)) for _ in range(d.points)]
    return [rng.uniform(float(d.start), float(d.stop)) for _ in range(d.points)]


def _unique(values: Sequence[Value]) -> list[Value]:
    """Values in order without repeats (integer points may round onto each other)."""
    seen: set[Value] = set()
    out = []
    for v in values:
        if v not in seen:
            seen.add(v)
            out.append(v)
    return out


def _globbed(patterns: list[str], param: Parameter, input_dir: Path) -> list[Value]:
    out: list[Value] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern, root_dir=input_dir))
        if not matches and not glob.has_magic(pattern) and (input_dir / pattern).exists():
            matches = [pattern]
        if not matches:
            raise fail(
                param.where,
                f"empty domain: no file matches {pattern!r} in {input_dir}",
                hint="files patterns are relative to the plan's directory (or --input-dir)",
            )
        out.extend(matches)
    return _unique(out)


def parse_overrides(plan: Plan, items: Sequence[str]) -> dict[str, Value]:
    """``--set NAME=VALUE`` (repeatable): the parameter takes this one value."""
    out: dict[str, Value] = {}
    names = [p.name for p in plan.parameters]
    for item in items:
        name, eq, text = item.partition("=")
        if not eq:
            raise BadInput(f"--set {item}: expected NAME=VALUE")
        param = plan.parameter(name.strip())
        if param is None:
            close = difflib.get_close_matches(name, names, n=1)
            raise BadInput(
                f"--set {item}: the plan has no parameter {name!r}",
                hint=f"did you mean '{close[0]}'?" if close else f"parameters: {', '.join(names)}",
            )
        try:
            out[param.name] = convert(param.type, text, param.where)
        except SpecError:
            kind = "whole number" if param.type is ParamType.INTEGER else "finite number"
            raise BadInput(
                f"--set {item}: {text!r} is not a {kind} (the parameter is {param.type})"
            ) from None
    return out


def count_jobs(
    plan: Plan,
    input_dir: Path,
    overrides: Mapping[str, Value] | None = None,
    max_jobs: int = DEFAULT_MAX_JOBS,
) -> int:
    """The number of jobs (the product of the parameters' value counts), refused at once
    when it is over ``max_jobs``."""
    overrides = overrides or {}
    counts = {
        p.name: 1 if p.name in overrides else count_values(p, input_dir) for p in plan.parameters
    }
    total = math.prod(counts.values())
    if total > max_jobs:
        biggest = max(plan.parameters, key=lambda p: counts[p.name])
        raise fail(
            biggest.where,
            f"the plan makes {_amount(total)} jobs ({biggest.name} alone has "
            f"{_amount(counts[biggest.name])} values), more than the limit of {max_jobs}",
            hint="check the domains; --max-jobs N raises the limit",
        )
    return total


def _amount(n: int) -> str:
    if n >= 10**4000:
        return "more than 10^4000"
    digits = len(str(n))
    return str(n) if digits <= 12 else f"about 10^{digits - 1}"


def domains(
    plan: Plan, input_dir: Path, overrides: Mapping[str, Value] | None = None
) -> dict[str, list[Value]]:
    overrides = overrides or {}
    return {
        p.name: [overrides[p.name]] if p.name in overrides else values_of(p, input_dir)
        for p in plan.parameters
    }


def expand(
    plan: Plan,
    input_dir: Path,
    overrides: Mapping[str, Value] | None = None,
    max_jobs: int = DEFAULT_MAX_JOBS,
) -> list[Job]:
    """Every job of the plan: the cross product of the parameters' values, in declaration
    order (the last parameter varies fastest). Counted first: see :func:`count_jobs`."""
    count_jobs(plan, input_dir, overrides, max_jobs)
    values = domains(plan, input_dir, overrides)
    names = list(values)
    jobs: list[Job] = []
    seen: set[str] = set()
    for combo in itertools.product(*values.values()):
        params = dict(zip(names, combo, strict=True))
        jid = job_id(params)
        if jid in seen:
            continue
        seen.add(jid)
        jobs.append(Job(jid, len(jobs), params))
    return jobs


def single_values(
    plan: Plan, input_dir: Path, overrides: Mapping[str, Value] | None = None
) -> dict[str, Value]:
    """The parameters that have one value for the whole sweep: what rootstart, nodestart
    and rootfinish see (EnFuzion's "single value job parameters")."""
    overrides = overrides or {}
    out: dict[str, Value] = {}
    for p in plan.parameters:
        if p.name in overrides:
            out[p.name] = overrides[p.name]
        elif count_values(p, input_dir) == 1:
            out[p.name] = values_of(p, input_dir)[0]
    return out


# --- what each task may name ---------------------------------------------------------------


def task_names(plan: Plan, task: Task, single: Mapping[str, Value]) -> set[str]:
    if task.name == "main":
        return {p.name for p in plan.parameters} | set(JOB_NAMES)
    return set(single)


def check_references(
    plan: Plan,
    environ: Mapping[str, str] | None = None,
    single: Mapping[str, Value] | None = None,
) -> None:
    """Every ``$name`` must be something its task sees: in task main a parameter,
    ``$jobindex`` or ``$jobname``; in rootstart, nodestart and rootfinish a parameter with
    one value; else an environment variable of the driver or one the runner sets. A typo
    is an error here, not a blank later."""
    environ = os.environ if environ is None else environ
    single = {} if single is None else single
    params = {p.name: p for p in plan.parameters}
    for task in plan.ordered_tasks():
        names = task_names(plan, task, single)
        env_names = set(RUNNER_VARIABLES) | {NIMROD_VAR + p for p in params}
        for step in task.steps:
            for template in step.args:
                for ref in template.refs:
                    if ref.name in names or ref.name in env_names or ref.name in environ:
                        continue
                    _unknown(ref, task, step, params, names)


def _unknown(
    ref: Ref, task: Task, step: Step, params: Mapping[str, Parameter], names: set[str]
) -> None:
    if ref.name in params:
        raise fail(
            ref.where,
            f"task {task.name} runs once, not once per job: it sees only parameters with "
            f"one value, and {ref.name} has several",
            hint=f"use {ref.written} in task main",
        )
    if ref.name in JOB_NAMES:
        raise fail(ref.where, f"{ref.written} is a job's number: task {task.name} has none")
    close = difflib.get_close_matches(ref.name, sorted(names), n=1)
    hint = f"did you mean '{close[0]}'?" if close else None
    if step.kind is StepKind.EXECUTE and hint is None:
        hint = f"a variable of the shell? write \\{ref.written}"
    raise fail(
        ref.where,
        f"unknown parameter {ref.written} (not a parameter of the plan, nor an environment "
        "variable)",
        hint,
    )


# --- paths ---------------------------------------------------------------------------------


def source_path(text: str, input_dir: Path) -> Path:
    """A root-side source as a path (relative to the input directory)."""
    return input_dir / os.path.expanduser(text)


def node_relative(text: str, where: Where | str) -> str:
    """A node-side path, relative to the job's working directory: it may climb to
    ``node:..`` (the node's directory the experiment's jobs share) and no further."""
    if "\0" in text:
        raise _path_error(where, f"node:{text!r} holds a NUL character")
    if text.startswith("/") or text.startswith("~"):
        raise _path_error(where, f"node:{text} is an absolute path, not one in the job's directory")
    parts: list[str] = ["w"]  # the working directory, one level below the node's directory
    for part in PurePosixPath(text or ".").parts:
        if part == "..":
            if not parts:
                raise _path_error(
                    where,
                    f"node:{text} is outside the job's node directories "
                    "(node:.. is the node's shared directory; nothing is above it)",
                )
            parts.pop()
        elif part != ".":
            parts.append(part)
    if parts[:1] == ["w"]:
        return str(PurePosixPath(*parts[1:])) if parts[1:] else "."
    return str(PurePosixPath("..", *parts)) if parts else ".."


def root_output(dest: str, src: str, where: Where | str) -> str:
    """Where a root-side copy lands, relative to the experiment's directory (RESULTS): a
    destination that is ``.`` or ends in ``/`` is a directory (the file keeps its name).
    Checked after substitution: relative, no ``..``, not one of vmwu's own names."""
    if dest in ("", ".") or dest.endswith("/"):
        name = PurePosixPath(src.rstrip("/") or ".").name
        dest = f"{dest.rstrip('/')}/{name}" if dest not in ("", ".") else name
    return root_relative(dest, where)


def root_relative(text: str, where: Where | str) -> str:
    if "\0" in text:
        raise _path_error(where, f"{text!r} holds a NUL character")
    path = PurePosixPath(text)
    if not text or text.startswith("/") or text.startswith("~") or ".." in path.parts:
        raise _path_error(
            where,
            f"{text!r} is not a relative path inside the experiment's directory",
            hint="e.g. copy node:out.dat out_${index}.dat",
        )
    parts = [p for p in path.parts if p != "."]
    if not parts:
        raise _path_error(where, f"{text!r} names the experiment's directory itself")
    if parts[0] in RESERVED_RESULTS:
        raise _path_error(
            where,
            f"{text!r}: {parts[0]} is vmwu's own in the experiment's directory",
            hint="choose another name",
        )
    if any(len(p.encode()) > 255 for p in parts):
        raise _path_error(where, f"{text!r} has a name longer than 255 bytes")
    return str(PurePosixPath(*parts))


def _path_error(where: Where | str, message: str, hint: str | None = None) -> SpecError:
    return SpecError(str(where), message, hint=hint)


def check_paths(
    plan: Plan,
    jobs: Sequence[Job],
    input_dir: Path,
    single: Mapping[str, Value],
    environ: Mapping[str, str] | None = None,
) -> None:
    """For every job, after substitution: root-side copy sources exist, node paths stay in
    the node's directories, outputs stay inside the experiment's directory, and no two jobs
    write the same output."""
    environ = dict(os.environ if environ is None else environ)
    written: dict[str, tuple[Job, Step]] = {}
    for task in plan.ordered_tasks():
        if task.name == "main":
            runs: Sequence[tuple[Job | None, dict[str, Value]]] = [
                (job, job_values(job.params, job.index)) for job in jobs
            ]
        else:
            runs = [(None, dict(single))]
        for step in task.steps:
            fixed = not any(ref.name in runs[0][1] for t in step.args for ref in t.refs)
            if task.name == "main" and step.kind is StepKind.COPY and step.sides[1] is Side.ROOT:
                fixed = False  # every job's output is recorded: no two may write one file
            for job, values in runs[:1] if fixed else runs:
                _check_step(task, step, job, values, input_dir, environ, written)


def _check_step(
    task: Task,
    step: Step,
    job: Job | None,
    values: Mapping[str, Value],
    input_dir: Path,
    environ: Mapping[str, str],
    written: dict[str, tuple[Job, Step]],
) -> None:
    which = f" for job {job.index} ({_show(job.params)})" if job is not None else ""
    try:
        if step.kind is StepKind.REDIRECT and step.args:
            target = step.args[0].render(values, env=environ)
            if target == DEV_NULL:
                return
            if task.name in ROOT_TASKS:
                root_relative(target, step.where)
            else:
                node_relative(target, step.where)
            return
        if step.kind not in (StepKind.COPY, StepKind.SUBSTITUTE):
            return
        src, dest = (a.render(values, env=environ) for a in step.args)
        s_src, s_dest = step.sides
        if s_src is Side.NODE:
            node_relative(src, step.where)
        elif task.name not in ROOT_TASKS and not source_path(src, input_dir).exists():
            raise fail(
                step.where,
                f"{step.kind}: {src} does not exist in {input_dir}",
                hint="copy sources are relative to the plan's directory (or --input-dir)",
            )
        if s_dest is Side.NODE:
            node_relative(dest, step.where)
            return
        rel = root_output(dest, src, step.where) if task.name == "main" else None
        if rel is None:
            root_relative(dest, step.where)
            return
        assert job is not None
        other = written.get(rel)
        if other is not None and other[0].id != job.id:
            raise fail(
                step.where,
                f"jobs {other[0].index} ({_show(other[0].params)}) and {job.index} "
                f"({_show(job.params)}) would both write {rel} in the experiment's directory",
                hint="put a parameter or ${jobname} in the destination, e.g. "
                f"{step.args[1].plain}.${{jobname}}",
            )
        written[rel] = (job, step)
    except SpecError as err:
        if not which or "would both write" in err.message:
            raise
        body = err.message.removeprefix(f"{err.where}: ")
        raise SpecError(err.where, body + which, hint=err.hint) from None


def check_sources(
    plan: Plan, jobs: Sequence[Job], input_dir: Path, environ: Mapping[str, str] | None = None
) -> None:
    """Every root-side ``copy`` source must exist for every job, before anything runs (with
    every other path check: :func:`check_paths`)."""
    check_paths(plan, jobs, input_dir, {}, environ)


def _show(params: Mapping[str, Value]) -> str:
    return ", ".join(f"{k}={format_value(v)}" for k, v in params.items())
