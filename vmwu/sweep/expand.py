"""From a plan to jobs: each parameter's values, their cross product, and job ids derived
from the values (so re-running a plan never duplicates a job). Also the checks that need
the values: ``${name}`` references that name nothing, and ``copy`` sources that do not
exist for some job."""

from __future__ import annotations

import difflib
import glob
import hashlib
import itertools
import json
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from vmwu.errors import BadInput
from vmwu.sweep.model import (
    NODE,
    ROOT,
    DefaultDomain,
    Parameter,
    ParamType,
    Plan,
    RandomDomain,
    RangeDomain,
    SelectDomain,
    StepKind,
    Value,
    canonical_float,
    convert,
    fail,
)

# Set by the runner for every job; plans may use them like environment variables.
RUNNER_VARIABLES = ("VMWU_JOB_ID", "VMWU_JOB_ATTEMPT", "VMWU_WORK_DIR", "VMWU_RESULTS")


@dataclass(frozen=True)
class Job:
    id: str
    seq: int  # position in the cross product, from 0
    params: dict[str, Value]


def job_id(params: Mapping[str, Value]) -> str:
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "j-" + hashlib.sha256(canonical.encode()).hexdigest()[:12]


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
        values = _range(param.type, domain)
    else:
        values = _random(param, domain)
    if param.type is ParamType.FILES:
        values = _globbed([str(v) for v in values], param, input_dir)
    return values


def _range(p_type: ParamType, d: RangeDomain) -> list[Value]:
    if d.step is not None:
        count = int((d.stop - d.start) / d.step + 1e-9) + 1
        numbers = [d.start + i * d.step for i in range(count)]
    else:
        n = d.points or 1
        numbers = (
            [d.start + (d.stop - d.start) * i / (n - 1) for i in range(n)] if n > 1 else [d.start]
        )
    return _typed(p_type, numbers)


def _random(param: Parameter, d: RandomDomain) -> list[Value]:
    # Seeded from the declaration so that expanding the plan again gives the same jobs.
    rng = random.Random(f"{param.name}:{param.type}:{d.start!r}:{d.stop!r}:{d.points}")
    if param.type is ParamType.INTEGER:
        return _typed(param.type, [rng.randint(int(d.start), int(d.stop)) for _ in range(d.points)])
    return _typed(param.type, [rng.uniform(d.start, d.stop) for _ in range(d.points)])


def _typed(p_type: ParamType, numbers: Sequence[float]) -> list[Value]:
    out: list[Value] = []
    for x in numbers:
        value: Value = int(round(x)) if p_type is ParamType.INTEGER else canonical_float(x)
        if value not in out:  # integer points may round onto each other
            out.append(value)
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
        out.extend(m for m in matches if m not in out)
    return out


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
        out[param.name] = convert(param.type, text, param.where)
    return out


def expand(plan: Plan, input_dir: Path, overrides: Mapping[str, Value] | None = None) -> list[Job]:
    """Every job of the plan: the cross product of the parameters' values, in declaration
    order (the last parameter varies fastest)."""
    overrides = overrides or {}
    names = [p.name for p in plan.parameters]
    domains = [
        [overrides[p.name]] if p.name in overrides else values_of(p, input_dir)
        for p in plan.parameters
    ]
    jobs: list[Job] = []
    seen: set[str] = set()
    for seq, combo in enumerate(itertools.product(*domains)):
        params = dict(zip(names, combo, strict=True))
        jid = job_id(params)
        if jid in seen:
            continue
        seen.add(jid)
        jobs.append(Job(jid, seq, params))
    return jobs


def check_references(plan: Plan, environ: Mapping[str, str] | None = None) -> None:
    """Every ``${name}`` must be a parameter, an environment variable of the driver, or a
    variable the runner sets (VMWU_JOB_ID …): a typo is an error here, not a blank later."""
    environ = os.environ if environ is None else environ
    names = {p.name for p in plan.parameters}
    known = names | set(RUNNER_VARIABLES)
    for task in plan.tasks.values():
        for step in task.steps:
            for template in step.args:
                for ref in template.refs:
                    if ref.name in known or ref.name in environ:
                        continue
                    close = difflib.get_close_matches(ref.name, sorted(names), n=1)
                    raise fail(
                        ref.where,
                        f"unknown parameter ${{{ref.name}}} (not a parameter of the plan, "
                        "nor an environment variable)",
                        f"did you mean '{close[0]}'?" if close else None,
                    )


def source_path(text: str, input_dir: Path) -> Path:
    """A root-side copy source as a path (relative to the input directory)."""
    return input_dir / os.path.expanduser(text.removeprefix(ROOT))


def check_sources(
    plan: Plan, jobs: Sequence[Job], input_dir: Path, environ: Mapping[str, str] | None = None
) -> None:
    """Every root-side ``copy`` source must exist for every job, before anything runs."""
    environ = dict(os.environ if environ is None else environ)
    for task in plan.tasks.values():
        for step in task.steps:
            if step.kind is not StepKind.COPY or step.args[0].text.startswith(NODE):
                continue
            src = step.args[0]
            checked: set[str] = set()
            for job in jobs if src.refs else jobs[:1]:
                text = src.render(job.params, env=environ)
                if text in checked:
                    continue
                checked.add(text)
                if not source_path(text, input_dir).exists():
                    which = f" for job {job.id} ({_show(job.params)})" if src.refs else ""
                    raise fail(
                        step.where,
                        f"copy: {text} does not exist in {input_dir}{which}",
                        hint="copy sources are relative to the plan's directory (or --input-dir)",
                    )


def _show(params: Mapping[str, Value]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())
