"""What a plan is, whichever form it was written in (Nimrod plan file or TOML): typed
parameters with domains, and tasks made of copy / execute / substitute steps whose
arguments are templates with ``${name}`` references. Every piece remembers where it was
written (``file:line:col``) so errors found later still point at the plan."""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from vmwu.errors import SpecError

Value = int | float | str


@dataclass(frozen=True)
class Where:
    source: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.source}:{self.line}:{self.col}"


def fail(where: Where, message: str, hint: str | None = None) -> SpecError:
    return SpecError(str(where), message, hint=hint)


class ParamType(StrEnum):
    INTEGER = "integer"
    FLOAT = "float"
    TEXT = "text"
    FILES = "files"


@dataclass(frozen=True)
class DefaultDomain:
    value: Value


@dataclass(frozen=True)
class RangeDomain:
    start: float
    stop: float
    step: float | None = None  # exactly one of step / points
    points: int | None = None


@dataclass(frozen=True)
class SelectDomain:
    values: tuple[Value, ...]
    anyof: bool = True  # anyof: every value; oneof: only the default (or the first)
    default: Value | None = None


@dataclass(frozen=True)
class RandomDomain:
    start: float
    stop: float
    points: int


Domain = DefaultDomain | RangeDomain | SelectDomain | RandomDomain


@dataclass(frozen=True)
class Parameter:
    name: str
    type: ParamType
    domain: Domain
    where: Where
    label: str | None = None


# --- templates --------------------------------------------------------------------------

REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Ref:
    name: str
    start: int  # offsets of "${name}" in the template text
    end: int
    where: Where


@dataclass(frozen=True)
class Template:
    """Text with ``${name}`` references. ``where_of(i)`` gives the plan position of
    character ``i`` (plans may continue lines with a backslash)."""

    text: str
    refs: tuple[Ref, ...]

    @classmethod
    def parse(cls, text: str, where_of: Callable[[int], Where]) -> Template:
        opened = text.find("${")
        refs = []
        for match in REF.finditer(text):
            refs.append(Ref(match[1], match.start(), match.end(), where_of(match.start())))
        # "${" that does not start a reference: shell syntax like ${x:-y} is left alone, but
        # an unterminated "${" is a mistake.
        while opened != -1:
            if text.find("}", opened) == -1:
                raise fail(where_of(opened), "unterminated ${ (expected ${name})")
            opened = text.find("${", opened + 2)
        return cls(text, tuple(refs))

    def render(
        self,
        params: Mapping[str, Value],
        *,
        quote: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> str:
        """Substitute parameters (shell-quoted with ``quote``, for command lines).
        References to other names come from ``env`` when given, else stay as written (a
        shell expands them)."""
        out: list[str] = []
        pos = 0
        for ref in self.refs:
            out.append(self.text[pos : ref.start])
            if ref.name in params:
                text = format_value(params[ref.name])
                out.append(shlex.quote(text) if quote else text)
            elif env is not None:
                if ref.name not in env:
                    raise fail(ref.where, f"${{{ref.name}}} is not set on this node")
                out.append(env[ref.name])
            else:
                out.append(self.text[ref.start : ref.end])
            pos = ref.end
        out.append(self.text[pos:])
        return "".join(out)


def format_value(value: Value) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)


def canonical_float(x: float) -> float:
    """Round away binary noise (0.1 + 0.2) so values print and hash the way they read."""
    result = float(f"{x:.12g}")
    return 0.0 if result == 0 else result


# --- tasks --------------------------------------------------------------------------------


class StepKind(StrEnum):
    COPY = "copy"
    EXECUTE = "execute"
    SUBSTITUTE = "substitute"


@dataclass(frozen=True)
class Step:
    kind: StepKind
    args: tuple[Template, ...]  # copy/substitute: (src, dest); execute: (command,)
    where: Where


ROOT_TASKS = ("rootstart", "rootfinish")
TASKS = ("main", *ROOT_TASKS)


@dataclass(frozen=True)
class Task:
    name: str
    steps: tuple[Step, ...]
    where: Where


NODE = "node:"
ROOT = "root:"


@dataclass(frozen=True)
class Plan:
    source: Path
    parameters: tuple[Parameter, ...]
    tasks: Mapping[str, Task] = field(default_factory=dict)

    @property
    def main(self) -> Task:
        return self.tasks["main"]

    def parameter(self, name: str) -> Parameter | None:
        return next((p for p in self.parameters if p.name == name), None)


def check_plan(plan: Plan, where: Where) -> None:
    """Rules both plan forms share: a main task, copy endpoints that make sense."""
    if "main" not in plan.tasks:
        raise fail(where, "the plan has no 'task main … endtask'")
    for task in plan.tasks.values():
        for step in task.steps:
            if step.kind is StepKind.COPY:
                _check_copy(task.name, step)
            elif step.kind is StepKind.SUBSTITUTE and task.name != "main":
                raise fail(step.where, f"substitute is only for task main, not {task.name}")


def _check_copy(task: str, step: Step) -> None:
    src, dest = (a.text for a in step.args)
    if task != "main":
        if src.startswith(NODE) or dest.startswith(NODE):
            raise fail(step.where, f"task {task} runs on the submit host: no node: files")
        return
    if not src.startswith(NODE) and not dest.startswith(NODE):
        raise fail(
            step.where,
            "copy needs node: on one side (node:FILE is in the job's working directory)",
            hint="e.g. copy input.dat node:input.dat, or copy node:out.dat out.dat",
        )
    if src.startswith(NODE) and not dest.startswith(NODE):
        _check_result_path(dest.removeprefix(ROOT), step.where)


def _check_result_path(dest: str, where: Where) -> None:
    """Outputs go into the job's result directory: a relative path inside it."""
    parts = Path(dest).parts
    if not dest or Path(dest).is_absolute() or ".." in parts:
        raise fail(
            where,
            f"copy destination {dest!r} must be a relative path inside the job's results",
            hint="e.g. copy node:out.dat out_${index}.dat",
        )


# --- domains: shared validation ------------------------------------------------------------


def check_number(p_type: ParamType, value: float, where: Where, what: str) -> None:
    if not math.isfinite(value):
        raise fail(where, f"{what} must be a finite number")
    if p_type is ParamType.INTEGER and value != int(value):
        raise fail(where, f"{what} {value:g} is not a whole number (the parameter is integer)")


def check_domain(p_type: ParamType, domain: Domain, where: Where) -> None:
    """Type rules and empty domains, found when the plan is read."""
    if isinstance(domain, RangeDomain | RandomDomain):
        if p_type in (ParamType.TEXT, ParamType.FILES):
            kind = "range" if isinstance(domain, RangeDomain) else "random"
            raise fail(where, f"a {p_type} parameter cannot take a {kind}; use select or default")
        check_number(p_type, domain.start, where, "from")
        check_number(p_type, domain.stop, where, "to")
    if isinstance(domain, RangeDomain):
        if domain.step is not None:
            check_number(p_type, domain.step, where, "step")
            if domain.step == 0:
                raise fail(where, "step 0: the range would never end", hint="use a non-zero step")
            if (domain.stop - domain.start) * domain.step < 0:
                raise fail(
                    where,
                    f"empty domain: range from {domain.start:g} to {domain.stop:g} "
                    f"step {domain.step:g} has no values",
                    hint="swap from and to, or change the sign of step",
                )
        elif domain.points is None or domain.points < 1:
            raise fail(where, "empty domain: points must be at least 1")
    elif isinstance(domain, RandomDomain):
        if domain.points < 1:
            raise fail(where, "empty domain: points must be at least 1")
        if domain.stop < domain.start:
            raise fail(where, "empty domain: random from A to B needs A <= B")
    elif isinstance(domain, SelectDomain):
        if not domain.values:
            raise fail(where, "empty domain: select needs at least one value")
        for v in domain.values:
            check_value(p_type, v, where)
        if domain.default is not None and domain.default not in domain.values:
            raise fail(where, f"the default {domain.default!r} is not one of the values")
    else:
        check_value(p_type, domain.value, where)


def check_value(p_type: ParamType, value: Value, where: Where) -> None:
    if p_type in (ParamType.INTEGER, ParamType.FLOAT):
        if isinstance(value, str):
            raise fail(where, f"{value!r} is not a number (the parameter is {p_type})")
        check_number(p_type, float(value), where, "value")


def convert(p_type: ParamType, text: str, where: Where) -> Value:
    """A value written as text (a plan token, --set) as the parameter's type."""
    if p_type is ParamType.INTEGER:
        try:
            return int(text)
        except ValueError:
            raise fail(
                where, f"{text!r} is not a whole number (the parameter is integer)"
            ) from None
    if p_type is ParamType.FLOAT:
        try:
            number = float(text)
        except ValueError:
            raise fail(where, f"{text!r} is not a number (the parameter is float)") from None
        check_number(p_type, number, where, "value")
        return canonical_float(number)
    return text
