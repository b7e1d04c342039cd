"""The TOML form of a plan, for people who don't know Nimrod. Same meaning::

    [[parameter]]
    name = "index"
    type = "integer"                          # integer | float | text | files
    range = { from = 1, to = 20, step = 1 }  # or points = N
    # default = 5 | select = ["a", "b"] | oneof = ["a", "b"] | random = { from, to, points }

    [task.main]
    steps = [
        { copy = "${index}.pha", to = "node:input.pha" },
        { execute = "vmwu run ../${gva} --files input.pha" },
        { substitute = "node:template.txt", to = "node:config.txt" },
        { copy = "node:out.dat", to = "out_${index}.dat" },
    ]

tomllib gives no positions for values, so errors point at the first place the offending
text appears (after its table's header): good enough to find it.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from vmwu.errors import SpecError
from vmwu.sweep.model import (
    IDENT,
    TASKS,
    DefaultDomain,
    Domain,
    Parameter,
    ParamType,
    Plan,
    RandomDomain,
    RangeDomain,
    SelectDomain,
    Step,
    StepKind,
    Task,
    Template,
    Value,
    Where,
    check_domain,
    check_plan,
    check_value,
    fail,
)

_AT = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
DOMAINS = ("default", "range", "select", "oneof", "random")
STEP_KEYS = {"copy": StepKind.COPY, "execute": StepKind.EXECUTE, "substitute": StepKind.SUBSTITUTE}


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
    nums = {k: _number(table, k, where) for k in table}
    for needed in ("from", "to"):
        if needed not in nums:
            raise fail(where, f"{key} needs {needed}")
    if key == "random":
        if "points" not in nums:
            raise fail(where, "random needs points")
        return RandomDomain(nums["from"], nums["to"], _count(nums["points"], where))
    if ("step" in nums) == ("points" in nums):
        raise fail(where, "range needs exactly one of step and points")
    if "step" in nums:
        return RangeDomain(nums["from"], nums["to"], step=nums["step"])
    return RangeDomain(nums["from"], nums["to"], points=_count(nums["points"], where))


def _number(table: Mapping[str, Any], key: str, where: Where) -> float:
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise fail(where, f"{key} must be a number, not {value!r}")
    return float(value)


def _count(value: float, where: Where) -> int:
    if value != int(value):
        raise fail(where, "points must be a whole number")
    return int(value)


def _scalar(value: Any, p_type: ParamType, where: Where) -> Value:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise fail(where, f"expected a number or a string, not {value!r}")
    if p_type is ParamType.INTEGER and isinstance(value, float) and value == int(value):
        value = int(value)
    if p_type is ParamType.FLOAT and isinstance(value, int):
        value = float(value)
    if p_type in (ParamType.TEXT, ParamType.FILES) and not isinstance(value, str):
        value = str(value)
    check_value(p_type, value, where)
    result: Value = value
    return result


def _task(name: str, raw: Any, loc: _Locator) -> Task:
    header = loc.find(f"task.{name}")
    where = loc.at(header)
    if name not in TASKS:
        close = difflib.get_close_matches(name, TASKS, n=1)
        raise fail(
            where,
            f"unknown task {name!r} (vmwu runs main, rootstart and rootfinish)",
            f"did you mean '{close[0]}'?" if close else None,
        )
    if not isinstance(raw, dict) or not isinstance(raw.get("steps"), list):
        raise fail(where, f"[task.{name}] needs steps = [ ... ]")
    _known(raw, ("steps",), loc, header, "task key")
    steps = []
    cursor = header
    for item in raw["steps"]:
        step, cursor = _step(item, loc, cursor, where)
        steps.append(step)
    return Task(name, tuple(steps), where)


def _step(item: Any, loc: _Locator, after: int, task_where: Where) -> tuple[Step, int]:
    if not isinstance(item, dict):
        raise fail(task_where, f'a step must be a table like {{ execute = "..." }}, not {item!r}')
    kinds = [k for k in item if k in STEP_KEYS]
    if len(kinds) != 1:
        raise fail(task_where, f"a step needs one of copy, execute, substitute: {item!r}")
    key = kinds[0]
    kind = STEP_KEYS[key]
    _known(item, (key,) if kind is StepKind.EXECUTE else (key, "to"), loc, after, "step key")
    start = loc.find(key, after)
    values = [item[key]] if kind is StepKind.EXECUTE else [item[key], item.get("to")]
    args = []
    for value in values:
        if not isinstance(value, str) or not value:
            raise fail(loc.at(start), f"{key} needs text" + ("" if len(values) == 1 else " and to"))
        offset = loc.find(value, start)
        args.append(Template.parse(value, _at(loc, offset)))
        start = offset
    return Step(kind, tuple(args), loc.at(loc.find(key, after))), start + 1


def _at(loc: _Locator, offset: int) -> Callable[[int], Where]:
    return lambda index: loc.at(offset + index)
