"""What a plan is, whichever form it was written in (Nimrod plan file or TOML): typed
parameters with domains, and tasks made of commands (copy, execute/shexec, exec,
substitute, onerror, redirect) whose arguments are templates with ``$name`` and
``${name}`` references. Every piece remembers where it was written (``file:line:col``) so
errors found later still point at the plan."""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from pathlib import Path, PurePosixPath

from vmwu.errors import SpecError

Value = int | float | str
Number = int | float


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
    start: Number
    stop: Number
    step: Number | None = None  # exactly one of step / points
    points: int | None = None


@dataclass(frozen=True)
class SelectDomain:
    values: tuple[Value, ...]
    anyof: bool = True  # anyof: every value; oneof: only the default (or the first)
    default: Value | None = None


@dataclass(frozen=True)
class RandomDomain:
    start: Number
    stop: Number
    points: int = 1


Domain = DefaultDomain | RangeDomain | SelectDomain | RandomDomain


@dataclass(frozen=True)
class Parameter:
    name: str
    type: ParamType
    domain: Domain
    where: Where
    label: str | None = None


# --- numbers --------------------------------------------------------------------------------

# What a plan may write as a number: no "nan", "inf", "1_000" or hex (Python's float()
# takes them all; Nimrod's grammar takes none).
NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
INT_LIMIT = 2**63  # integer values are 64-bit in Nimrod; beyond is a mistake, not a sweep


def parse_number(text: str, where: Where, what: str, p_type: ParamType) -> Number:
    """A number as the parameter's type: an int for integer parameters (``1e3`` is 1000),
    a finite float otherwise. NaN, infinities, and values no float can hold are refused."""
    if not NUMBER.fullmatch(text):
        kind = "whole number" if p_type is ParamType.INTEGER else "number"
        raise fail(where, f"expected a {kind} for {what}, found {text!r}")
    try:
        decimal = Decimal(text)
    except InvalidOperation:  # pragma: no cover - NUMBER only lets Decimal's syntax through
        raise fail(where, f"expected a number for {what}, found {text!r}") from None
    return to_number(decimal, where, what, p_type)


def to_number(decimal: Decimal, where: Where, what: str, p_type: ParamType) -> Number:
    if not decimal.is_finite():
        raise fail(where, f"{what} must be a finite number")
    if p_type is ParamType.INTEGER:
        if abs(decimal) >= INT_LIMIT:
            raise fail(where, f"{what} {decimal:.6g} is too large (integers are below 2^63)")
        if decimal != decimal.to_integral_value():
            raise fail(
                where,
                f"{what} {decimal.normalize()} is not a whole number (the parameter is integer)",
            )
        return int(decimal)
    number = float(decimal)
    if not math.isfinite(number):
        raise fail(where, f"{what} {decimal:.6g} is too large for a float")
    return number


def format_value(value: Value) -> str:
    """A value as Nimrod prints it: a whole float without ``.0`` (``500``), other floats as
    the shortest text that reads back to the same number (``0.1``, ``2.5e-07``)."""
    if isinstance(value, float):
        text = repr(value)
        if text.endswith(".0"):
            text = text[:-2]
        return "0" if text == "-0" else text
    return str(value)


def exact(value: Number) -> Decimal:
    """The decimal a number was written as (floats by their shortest text): range arithmetic
    in decimals gives 0.1, 0.2, 0.3 rather than 0.30000000000000004."""
    return Decimal(value) if isinstance(value, int) else Decimal(repr(value))


# --- templates --------------------------------------------------------------------------

IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# \$ before a name (or {) is a $ that is not a reference; ${name}; $name.
_PIECE = re.compile(r"\\\$(?=[A-Za-z_{])|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")

# Names Nimrod gives every job of the main task (nimrodg's implicit variables).
JOB_NAMES = ("jobindex", "jobname")


@dataclass(frozen=True)
class Ref:
    name: str
    written: str  # "$name" or "${name}", as in the plan
    where: Where


@dataclass(frozen=True)
class Template:
    """Text with ``$name``/``${name}`` references (``\\$`` is a literal ``$``). ``parts``
    are literal strings and references, in order; ``text`` is the text as written."""

    text: str
    parts: tuple[str | Ref, ...]

    @classmethod
    def parse(cls, text: str, where_of: Callable[[int], Where]) -> Template:
        check_text(text, where_of)
        parts: list[str | Ref] = []
        pos = 0
        literal: list[str] = []
        for match in _PIECE.finditer(text):
            literal.append(text[pos : match.start()])
            if match[0] == "\\$":
                literal.append("$")
            else:
                if literal:
                    parts.append("".join(literal))
                    literal = []
                parts.append(Ref(match[1] or match[2], match[0], where_of(match.start())))
            pos = match.end()
        literal.append(text[pos:])
        if "".join(literal):
            parts.append("".join(literal))
        # "${" that does not start a reference: shell syntax like ${x:-y} is left alone, but
        # an unterminated "${" is a mistake.
        opened = text.find("${")
        while opened != -1:
            if text.find("}", opened) == -1:
                raise fail(where_of(opened), "unterminated ${ (expected ${name})")
            opened = text.find("${", opened + 2)
        return cls(text, tuple(parts))

    @classmethod
    def literal(cls, text: str) -> Template:
        return cls(text, (text,) if text else ())

    @property
    def refs(self) -> tuple[Ref, ...]:
        return tuple(p for p in self.parts if isinstance(p, Ref))

    @property
    def plain(self) -> str:
        """The text with references as written and ``\\$`` as ``$`` (for messages)."""
        return "".join(p if isinstance(p, str) else p.written for p in self.parts)

    def render(
        self,
        values: Mapping[str, Value],
        env: Mapping[str, str] | None = None,
    ) -> str:
        """Values substituted as they print; other names from ``env`` when given (else they
        stay as written)."""
        out: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
            elif part.name in values:
                out.append(format_value(values[part.name]))
            elif env is not None:
                if part.name not in env:
                    raise fail(part.where, f"{part.written} is not set on this node")
                out.append(env[part.name])
            else:
                out.append(part.written)
        return "".join(out)

    def render_shell(self, values: Mapping[str, Value]) -> str:
        """A shell command line: each value is inserted so that it stays exactly its text
        where it stands (quoted for the place: bare, inside '…' or inside "…"); other
        names are left for the shell to expand."""
        out: list[str] = []
        state = _SHELL_BARE
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                state = shell_state(part, state)
            elif part.name in values:
                out.append(_shell_insert(format_value(values[part.name]), state))
            else:
                out.append(part.written)
                state = shell_state(part.written, state)
        return "".join(out)


_BAD_CHAR = re.compile("[\x00\ud800-\udfff]")


def check_text(text: str, where_of: Callable[[int], Where]) -> None:
    """No NUL character (no file name, argument or environment can hold one) and no lone
    surrogate (no UTF-8 text can)."""
    bad = _BAD_CHAR.search(text)
    if bad is not None:
        what = "a NUL character" if bad[0] == "\x00" else f"the character U+{ord(bad[0]):04X}"
        raise fail(where_of(bad.start()), f"{what} cannot be part of a plan's text")


_SHELL_BARE, _SHELL_SINGLE, _SHELL_DOUBLE = 0, 1, 2


def shell_state(text: str, state: int = _SHELL_BARE) -> int:
    """The quoting state of a POSIX shell after ``text`` (bare, '…' or "…")."""
    i = 0
    while i < len(text):
        char = text[i]
        if state == _SHELL_SINGLE:
            if char == "'":
                state = _SHELL_BARE
        elif char == "\\":
            i += 1  # the next character is escaped (bare, and inside "…" close enough)
        elif state == _SHELL_DOUBLE:
            if char == '"':
                state = _SHELL_BARE
        elif char == "'":
            state = _SHELL_SINGLE
        elif char == '"':
            state = _SHELL_DOUBLE
        i += 1
    return state


def _shell_insert(value: str, state: int) -> str:
    if state == _SHELL_SINGLE:
        return value.replace("'", "'\\''")
    if state == _SHELL_DOUBLE:
        return "".join("\\" + c if c in '"\\$`' else c for c in value)
    return shlex.quote(value)


# --- tasks --------------------------------------------------------------------------------


class StepKind(StrEnum):
    COPY = "copy"
    EXECUTE = "execute"  # a shell command line: node:execute, execute, shexec
    EXEC = "exec"  # a program and its arguments, no shell: exec, lexec, lpexec
    SUBSTITUTE = "substitute"
    ONERROR = "onerror"
    REDIRECT = "redirect"


class Side(StrEnum):
    ROOT = "root"  # the experiment's side: sources in the input directory, outputs in RESULTS
    NODE = "node"  # the job's working directory on its node


@dataclass(frozen=True)
class Step:
    kind: StepKind
    where: Where
    # copy/substitute: (source, destination); execute: (command line,); exec: the program
    # and its arguments (with argv0: program, argv[0], arguments); redirect: (file,) or ()
    args: tuple[Template, ...] = ()
    sides: tuple[Side, ...] = ()  # copy/substitute: the side of source and destination
    word: str = ""  # onerror: fail | ignore; redirect: stdout | stderr
    append: bool = False  # redirect … append to FILE
    search_path: bool = True  # exec: look the program up on PATH (exec, lpexec)
    argv0: bool = False  # exec: the second word is argv[0] (lexec, lpexec)
    written: str = ""  # the command word as the plan wrote it


ROOT_TASKS = ("rootstart", "rootfinish")
DEV_NULL = "/dev/null"  # the one absolute path a redirect may name: output thrown away
# In Nimrod's order: rootstart once before any job, nodestart once on each node before its
# first job, main once per job, rootfinish once after the last job.
TASKS = ("rootstart", "nodestart", "main", "rootfinish")


@dataclass(frozen=True)
class Task:
    name: str
    steps: tuple[Step, ...]
    where: Where


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

    def ordered_tasks(self) -> Iterable[Task]:
        return (self.tasks[name] for name in TASKS if name in self.tasks)


# Names vmwu keeps for itself at the top of a results directory: a plan's root-side
# outputs may not land on them.
RESERVED_RESULTS = frozenset(
    {
        "journal.sqlite",
        "journal.sqlite-wal",
        "journal.sqlite-shm",
        "experiment.json",
        "plan.plan",
        "plan.toml",
        "jobs",
        "attempts",
        "run",
        "logs",
        "spec",
        "slurm",
        "sge",
        "results.csv",
        "results.json",
        "root.log",
        "driver.lock",
        "timeline.png",
    }
)


def check_plan(plan: Plan, where: Where) -> None:
    """Rules both plan forms share, about what is written (values are checked later, for
    every job: :mod:`vmwu.sweep.expand`)."""
    if "main" not in plan.tasks:
        raise fail(where, "the plan has no 'task main … endtask'")
    for param in plan.parameters:
        if param.name in JOB_NAMES:
            raise fail(
                param.where,
                f"{param.name} is the name Nimrod gives each job's number; "
                "choose another parameter name",
            )
    for task in plan.tasks.values():
        for step in task.steps:
            if step.kind in (StepKind.COPY, StepKind.SUBSTITUTE):
                _check_files(task.name, step)
            elif step.kind is StepKind.REDIRECT and step.args and step.args[0].plain != DEV_NULL:
                check_relative(step.args[0].plain, step.where, "redirect to", allow_up=True)


def _check_files(task: str, step: Step) -> None:
    (src, dest), (s_src, s_dest) = step.args, step.sides
    word = step.kind.value
    if task in ROOT_TASKS:
        if Side.NODE in step.sides:
            raise fail(step.where, f"task {task} runs on the submit host: no node: files")
        check_relative(dest.plain, step.where, f"{word} destination")
        return
    if step.kind is StepKind.SUBSTITUTE:
        if s_dest is not Side.NODE:
            raise fail(
                step.where,
                f"substitute writes a file in the job's working directory: node:{dest.plain}",
                hint="copy the result back with copy node:FILE FILE",
            )
    elif s_src is Side.ROOT and s_dest is Side.ROOT:
        raise fail(
            step.where,
            "copy needs node: on one side (node:FILE is in the job's working directory)",
            hint="e.g. copy input.dat node:input.dat, or copy node:out.dat out.dat",
        )
    elif task == "nodestart" and s_dest is Side.ROOT:
        raise fail(step.where, "task nodestart prepares the node: it copies to node: files only")
    for text, side in ((src.plain, s_src), (dest.plain, s_dest)):
        if side is Side.NODE:
            check_relative(text, step.where, f"node:{text}", allow_up=True)
    if s_dest is Side.ROOT:
        check_relative(dest.plain, step.where, f"{word} destination")


def check_relative(text: str, where: Where, what: str, *, allow_up: bool = False) -> None:
    """A path the plan writes must stay where it belongs: relative, and (root side) without
    ``..``; node-side paths may climb to ``node:..``, the node's shared directory, and no
    further (checked after substitution: :func:`node_relative`)."""
    if text.startswith("/") or text.startswith("~"):
        place = "the job's working directory" if allow_up else "the experiment's directory"
        raise fail(
            where,
            f"{what}: {text!r} is an absolute path, not a path in {place}",
            hint="write a relative path",
        )
    if not allow_up and ".." in PurePosixPath(text).parts:
        raise fail(
            where,
            f"{what} {text!r} must be a relative path inside the experiment's directory",
            hint="e.g. copy node:out.dat out_${index}.dat",
        )


# --- domains: shared validation ------------------------------------------------------------


def check_domain(p_type: ParamType, domain: Domain, where: Where) -> None:
    """Type rules and empty domains, found when the plan is read."""
    if isinstance(domain, RangeDomain | RandomDomain):
        if p_type in (ParamType.TEXT, ParamType.FILES):
            kind = "range" if isinstance(domain, RangeDomain) else "random"
            raise fail(where, f"a {p_type} parameter cannot take a {kind}; use select or default")
    if isinstance(domain, RangeDomain):
        if domain.step is not None:
            if domain.step == 0:
                raise fail(where, "step 0: the range would never end", hint="use a non-zero step")
            if (exact(domain.stop) - exact(domain.start)) * exact(domain.step) < 0:
                raise fail(
                    where,
                    f"empty domain: range from {format_value(domain.start)} to "
                    f"{format_value(domain.stop)} step {format_value(domain.step)} has no values",
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
        if domain.default is not None and domain.default not in domain.values:
            raise fail(
                where, f"the default {format_value(domain.default)!r} is not one of the values"
            )


def convert(p_type: ParamType, text: str, where: Where) -> Value:
    """A value written as text (a plan token, --set) as the parameter's type."""
    if p_type in (ParamType.INTEGER, ParamType.FLOAT):
        return parse_number(text.strip(), where, "the value", p_type)
    check_text(text, lambda i: where)
    return text
