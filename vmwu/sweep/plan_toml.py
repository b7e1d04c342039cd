"""The TOML form of a plan, for people who don't know Nimrod. Same meaning::

    [[parameter]]
    name = "index"
    type = "integer"                          # integer | float | text | files
    range = { from = 1, to = 20, step = 1 }  # or points = N
    # default = 5 | select = ["a", "b"] | oneof = ["a", "b"] | random = { from, to, points }

    [task.main]                               # also task.rootstart, nodestart, rootfinish
    steps = [
        { onerror = "ignore" },
        { redirect = "stdout", to = "out.txt", append = true },
        { copy = "${index}.pha", to = "node:input.pha" },
        { execute = "vmwu run ../${gva} --files input.pha" },   # or shexec = "…"
        { exec = ["echo", "${index}"] },
        { substitute = "node:template.txt", to = "node:config.txt" },
        { copy = "node:out.dat", to = "out_${index}.dat" },
    ]

tomllib gives no positions for values, so errors point at the first place the offending
text appears (after its table's header): good enough to find it.
"""

from __future__ import annotations

import difflib
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

from vmwu.errors import SpecError
from vmwu.sweep.model import (
    IDENT,
    ROOT_TASKS,
    TASKS,
    DefaultDomain,
    Domain,
    Number,
    Parameter,
    ParamType,
    Plan,
    RandomDomain,
    RangeDomain,
    SelectDomain,
    Side,
    Step,
    StepKind,
    Task,
    Template,
    Value,
    Where,
    check_domain,
    check_plan,
    convert,
    fail,
    format_value,
    to_number,
)

_AT = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
DOMAINS = ("default", "range", "select", "oneof", "random")


class _Locator:
    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.source = source

    def at(self, index: int) -> Where:
        line = self.text.count("\n", 0, index) + 1
        col = index - (self.text.rfind("\n", 0, index) + 1) + 1
        return Where(self.source, line, col)

    def find(self, needle: str, after: int = 0) -> int:
        index = self.text.find(needle, after)
        return index if index != -1 else after

    def where(self, needle: str, after: int = 0) -> Where:
        return self.at(self.find(needle, after))


def parse_toml_plan(text: str, path: Path, source: str | None = None) -> Plan:
    source = source or str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        message = str(err)
        match = _AT.search(message)
        if match:
            where = f"{source}:{match[1]}:{match[2]}"
        else:  # "(at end of document)"
            where = f"{source}:{max(1, len(text.splitlines()))}:1"
            message = message.replace(" (at end of document)", " at the end of the file")
        raise SpecError(where, f"invalid TOML: {_AT.sub('', message)}") from None
    loc = _Locator(text, source)
    _known(data, ("parameter", "task"), loc, 0, "top-level key")
    params = data.get("parameter", [])
    if not isinstance(params, list):
        raise fail(loc.where("parameter"), "use [[parameter]] tables, one per parameter")
    parameters: list[Parameter] = []
    cursor = 0
    for raw in params:
        cursor = loc.find("[[parameter]]", cursor) + 1
        param = _parameter(raw, loc, cursor)
        if any(p.name == param.name for p in parameters):
            raise fail(param.where, f"parameter {param.name} is declared twice")
        parameters.append(param)
    tasks_raw = data.get("task", {})
    if not isinstance(tasks_raw, dict):
        raise fail(loc.where("task"), "use [task.main] tables with steps = [...]")
    tasks = {name: _task(name, raw, loc) for name, raw in tasks_raw.items()}
    plan = Plan(Path(path), tuple(parameters), tasks)
    check_plan(plan, loc.at(max(0, len(text) - 1)))
    return plan


def _known(
    table: Mapping[str, Any], keys: tuple[str, ...], loc: _Locator, after: int, what: str
) -> None:
    for key in table:
        if key not in keys:
            close = difflib.get_close_matches(key, keys, n=1)
            raise fail(
                loc.where(key, after),
                f"unknown {what} {key!r}",
                f"did you mean '{close[0]}'?" if close else None,
            )


def _parameter(raw: Any, loc: _Locator, after: int) -> Parameter:
    where = loc.at(after - 1)
    if not isinstance(raw, dict):
        raise fail(where, "a parameter must be a table")
    _known(raw, ("name", "type", "label", *DOMAINS), loc, after, "parameter key")
    name = raw.get("name")
    if not isinstance(name, str) or not IDENT.fullmatch(name):
        raise fail(where, 'parameter needs name = "NAME" (letters, digits, _)')
    where = loc.where(f'"{name}"', after)
    type_name = raw.get("type")
    if type_name not in tuple(ParamType):
        close = difflib.get_close_matches(str(type_name), list(ParamType), n=1)
        raise fail(
            loc.where("type", after),
            f"parameter {name}: type must be integer, float, text or files, not {type_name!r}",
            f"did you mean '{close[0]}'?" if close else None,
        )
    p_type = ParamType(type_name)
    given = [k for k in DOMAINS if k in raw]
    if not given:
        raise fail(where, f"empty domain: parameter {name} has no values", _DOMAIN_HINT)
    if len(given) > 1 and given != ["select", "default"] and given != ["default", "oneof"]:
        raise fail(where, f"parameter {name}: give one of {', '.join(given)}")
    domain_where = loc.where(given[0], after)
    domain = _domain(raw, given, p_type, domain_where, loc, after)
    check_domain(p_type, domain, domain_where)
    label = raw.get("label")
    return Parameter(name, p_type, domain, where, label if isinstance(label, str) else None)


_DOMAIN_HINT = "add default = V, range = {from, to, step}, select = [...] or random = {...}"


def _domain(
    raw: Mapping[str, Any],
    given: list[str],
    p_type: ParamType,
    where: Where,
    loc: _Locator,
    after: int,
) -> Domain:
    if "select" in given or "oneof" in given:
        key = "select" if "select" in given else "oneof"
        values = raw[key]
        if not isinstance(values, list):
            raise fail(where, f"{key} must be a list of values")
        default = _scalar(raw["default"], p_type, where) if "default" in raw else None
        return SelectDomain(
            tuple(_scalar(v, p_type, where) for v in values), key == "select", default
        )
    if "default" in given:
        return DefaultDomain(_scalar(raw["default"], p_type, where))
    key = given[0]
    table = raw[key]
    if not isinstance(table, dict):
        raise fail(where, f"{key} must be a table like {{ from = 1, to = 10, step = 1 }}")
    allowed = ("from", "to", "step", "points") if key == "range" else ("from", "to", "points")
    _known(table, allowed, loc, after, f"{key} key")
    nums = {
        k: _number(table, k, where, ParamType.INTEGER if k == "points" else p_type) for k in table
    }
    for needed in ("from", "to"):
        if needed not in nums:
            raise fail(where, f"{key} needs {needed}")
    if key == "random":
        points = _count(nums["points"], where) if "points" in nums else 1
        return RandomDomain(nums["from"], nums["to"], points)
    if "step" in nums and "points" in nums:
        raise fail(where, "range takes step or points, not both")
    if "points" in nums:
        return RangeDomain(nums["from"], nums["to"], points=_count(nums["points"], where))
    return RangeDomain(nums["from"], nums["to"], step=nums.get("step", 1))


def _number(table: Mapping[str, Any], key: str, where: Where, p_type: ParamType) -> Number:
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise fail(where, f"{key} must be a number, not {value!r}")
    return _finite(value, where, key, p_type)


def _finite(value: int | float, where: Where, what: str, p_type: ParamType) -> Number:
    if isinstance(value, float) and not math.isfinite(value):
        raise fail(where, f"{what} must be a finite number, not {value}")
    return to_number(Decimal(value), where, what, p_type)


def _count(value: Number, where: Where) -> int:
    if value != int(value) or value < 1:
        raise fail(where, "points must be a whole number, at least 1")
    return int(value)


def _scalar(value: Any, p_type: ParamType, where: Where) -> Value:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise fail(where, f"expected a number or a string, not {value!r}")
    if p_type in (ParamType.TEXT, ParamType.FILES):
        return convert(p_type, value if isinstance(value, str) else format_value(value), where)
    if isinstance(value, str):
        raise fail(where, f"{value!r} is not a number (the parameter is {p_type})")
    return _finite(value, where, "the value", p_type)


def _task(name: str, raw: Any, loc: _Locator) -> Task:
    header = loc.find(f"task.{name}")
    where = loc.at(header)
    if name not in TASKS:
        close = difflib.get_close_matches(name, TASKS, n=1)
        raise fail(
            where,
            f"unknown task {name!r} (tasks: {', '.join(TASKS)})",
            f"did you mean '{close[0]}'?" if close else None,
        )
    if not isinstance(raw, dict) or not isinstance(raw.get("steps"), list):
        raise fail(where, f"[task.{name}] needs steps = [ ... ]")
    _known(raw, ("steps",), loc, header, "task key")
    steps = []
    cursor = header
    for item in raw["steps"]:
        step, cursor = _step(item, loc, cursor, where, name)
        steps.append(step)
    return Task(name, tuple(steps), where)


STEP_KEYS = ("copy", "execute", "shexec", "exec", "substitute", "onerror", "redirect")


def _step(item: Any, loc: _Locator, after: int, task_where: Where, task: str) -> tuple[Step, int]:
    if not isinstance(item, dict):
        raise fail(task_where, f'a step must be a table like {{ execute = "..." }}, not {item!r}')
    kinds = [k for k in item if k in STEP_KEYS]
    if len(kinds) != 1:
        raise fail(task_where, f"a step needs one of {', '.join(STEP_KEYS)}: {item!r}")
    key = kinds[0]
    allowed = {
        "copy": (key, "to"),
        "substitute": (key, "to"),
        "redirect": (key, "to", "append"),
    }.get(key, (key,))
    _known(item, allowed, loc, after, "step key")
    start = loc.find(key, after)
    where = loc.at(start)
    if key == "onerror":
        if item[key] not in ("fail", "ignore"):
            raise fail(where, f'onerror must be "fail" or "ignore", not {item[key]!r}')
        return Step(StepKind.ONERROR, where, word=item[key], written=key), start + 1
    if key == "redirect":
        if item[key] not in ("stdout", "stderr"):
            raise fail(where, f'redirect must be "stdout" or "stderr", not {item[key]!r}')
        append = item.get("append", False)
        if not isinstance(append, bool):
            raise fail(where, "append must be true or false")
        target = item.get("to")
        if target is None:
            return Step(StepKind.REDIRECT, where, word=item[key], written=key), start + 1
        side = Side.ROOT if task in ROOT_TASKS else Side.NODE
        (path,), (got,), start = _texts(loc, start, where, [target], [side], key)
        if got is not side:
            raise fail(where, f"redirect writes a file where task {task} runs: no {got}: here")
        step = Step(StepKind.REDIRECT, where, (path,), word=item[key], append=append, written=key)
        return step, start + 1
    if key in ("execute", "shexec"):
        (command,), _, start = _texts(loc, start, where, [item[key]], [None], key)
        return Step(StepKind.EXECUTE, where, (command,), written=key), start + 1
    if key == "exec":
        words = item[key] if isinstance(item[key], list) else [item[key]]
        if not words:
            raise fail(where, 'exec needs a program: exec = ["PROGRAM", "ARGUMENT", …]')
        argv, _, start = _texts(loc, start, where, words, [None] * len(words), key)
        return Step(StepKind.EXEC, where, tuple(argv), written=key), start + 1
    if task in ROOT_TASKS:
        defaults: list[Side | None] = [Side.ROOT, Side.ROOT]
    else:
        defaults = [Side.ROOT, Side.NODE if key == "substitute" else Side.ROOT]
    args, sides, start = _texts(loc, start, where, [item[key], item.get("to")], defaults, key)
    kind = StepKind.COPY if key == "copy" else StepKind.SUBSTITUTE
    return Step(kind, where, tuple(args), tuple(sides), written=key), start + 1


def _texts(
    loc: _Locator,
    start: int,
    where: Where,
    values: list[Any],
    defaults: list[Side | None],
    key: str,
) -> tuple[list[Template], list[Side], int]:
    """Each value as a template (after a node:/root: prefix when a side is expected)."""
    templates: list[Template] = []
    sides: list[Side] = []
    for value, default in zip(values, defaults, strict=True):
        if not isinstance(value, str) or not value:
            two = " and to" if len(values) == 2 else ""
            raise fail(where, f"{key} needs text{two}")
        offset = loc.find(value, start)
        skip = 0
        if default is not None:
            side = default
            for candidate in Side:
                if value.startswith(f"{candidate}:"):
                    side, skip = candidate, len(candidate) + 1
            sides.append(side)
        templates.append(Template.parse(value[skip:], _at(loc, offset + skip)))
        start = offset
    return templates, sides, start


def _at(loc: _Locator, offset: int) -> Callable[[int], Where]:
    return lambda index: loc.at(offset + index)
