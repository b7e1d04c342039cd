"""``job.xml``: the task list of BOINC's wrapper, with VMwrapper's virtual-machine fields.

::

    <job_desc>
      <unzip_task> ... </unzip_task>      run first, once
      <VMmanage_task> ... </VMmanage_task> daemons: started before the tasks, stopped after
      <task> ... </task>                  run in sequence; a <virtualmachine> runs it in a VM
    </job_desc>

Parsed through :mod:`vmwu.xmlsafe` (defusedxml's expat reader), which gives line numbers for
every error; a document type declaration (and with it every entity definition) is refused,
so nothing can expand or be fetched.
Macros ($PROJECT_DIR, $PWD, $NTHREADS) are substituted later, by :func:`expand`, when the
wrapper knows their values.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Any, NoReturn

from vmwu.errors import BadInput, SpecError
from vmwu.xmlsafe import Node, XmlMalformed, XmlRefused, parse_nodes

MAX_BYTES = 1024 * 1024


class TaskKind(StrEnum):
    UNZIP = "unzip_task"
    MANAGE = "VMmanage_task"
    TASK = "task"


@dataclass(frozen=True)
class TaskSpec:
    """One task element. Optional text fields are None when absent or empty."""

    kind: TaskKind
    line: int
    application: str | None = None
    command_line: tuple[str, ...] = ()  # split like a shell would (quotes), not expanded
    stdin_filename: str | None = None
    stdout_filename: str | None = None
    stderr_filename: str | None = None
    weight: float = 1.0
    checkpoint_filename: str | None = None
    fraction_done_filename: str | None = None
    setenv: tuple[tuple[str, str], ...] = ()
    exec_dir: str | None = None
    time_limit: float | None = None  # seconds
    daemon: bool = False
    append_cmdline_args: bool = False
    virtualmachine: str | None = None  # a unit .ova, or a catalog base to pack one on
    image: str | None = None  # a catalog base replacing the unit's
    copy_app_to_vm: bool = False
    copy_file_to_vm: tuple[str, ...] = ()
    copy_file_from_vm: tuple[str, ...] = ()

    @property
    def is_vm(self) -> bool:
        return self.virtualmachine is not None

    @property
    def is_unit(self) -> bool:
        """The VM is a packed work unit (else a base the wrapper packs a unit on)."""
        return self.virtualmachine is not None and self.virtualmachine.endswith(".ova")

    def where(self, source: str) -> str:
        return f"{source}:{self.line}: <{self.kind.value}>"


@dataclass(frozen=True)
class JobDesc:
    source: str
    unzip_tasks: tuple[TaskSpec, ...] = ()
    daemons: tuple[TaskSpec, ...] = ()  # <VMmanage_task>s and <task>s with <daemon>
    tasks: tuple[TaskSpec, ...] = ()

    @property
    def has_vm_tasks(self) -> bool:
        return any(t.is_vm for t in self.tasks)


# -- fields ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    attr: str
    convert: Callable[[str, str], Any]  # (text, where) -> value
    repeated: bool = False


def _text(text: str, where: str) -> str:
    return text


def _bool(text: str, where: str) -> bool:
    # BOINC's parse_bool: an empty <daemon/> means true
    value = text.lower()
    if value in ("", "1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    raise SpecError(where, f"expected 0 or 1, got {text!r}")


def _number(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise SpecError(where, f"expected a number, got {text!r}") from None
    if not value == value or value in (float("inf"), float("-inf")):
        raise SpecError(where, f"expected a finite number, got {text!r}")
    return value


def _weight(text: str, where: str) -> float:
    value = _number(text, where)
    if value < 0:
        raise SpecError(where, f"a weight cannot be negative, got {text}")
    return value


def _seconds(text: str, where: str) -> float:
    value = _number(text, where)
    if value <= 0:
        raise SpecError(where, f"expected a positive number of seconds, got {text}")
    return value


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _env(text: str, where: str) -> tuple[str, str]:
    name, eq, value = text.partition("=")
    if not eq or not _ENV_NAME.match(name):
        raise SpecError(where, f"expected NAME=VALUE, got {text!r}")
    return name, value


def _command_line(text: str, where: str) -> tuple[str, ...]:
    try:
        return tuple(shlex.split(text))
    except ValueError as exc:
        raise SpecError(where, f"cannot split the command line: {exc}") from None


def _guest_relative(text: str, where: str) -> str:
    path = PurePosixPath(text)
    if path.is_absolute() or ".." in path.parts:
        raise SpecError(
            where,
            f"{text!r} must be a path relative to the guest's output directory, without '..'",
        )
    return text


def _slot_relative(text: str, where: str) -> str:
    """A file the wrapper writes in the slot: never outside it."""
    path = PurePosixPath(text)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise SpecError(
            where, f"{text!r} must be a path relative to the slot directory, without '..'"
        )
    return text


FIELDS: dict[str, Field] = {
    # BOINC wrapper
    "application": Field("application", _text),
    "command_line": Field("command_line", _command_line),
    "stdin_filename": Field("stdin_filename", _text),
    "stdout_filename": Field("stdout_filename", _slot_relative),
    "stderr_filename": Field("stderr_filename", _slot_relative),
    "weight": Field("weight", _weight),
    "checkpoint_filename": Field("checkpoint_filename", _text),
    "fraction_done_filename": Field("fraction_done_filename", _text),
    "setenv": Field("setenv", _env, repeated=True),
    "exec_dir": Field("exec_dir", _text),
    "time_limit": Field("time_limit", _seconds),
    "daemon": Field("daemon", _bool),
    "append_cmdline_args": Field("append_cmdline_args", _bool),
    # VMwrapper
    "virtualmachine": Field("virtualmachine", _text),
    "image": Field("image", _text),
    "copy_app_to_VM": Field("copy_app_to_vm", _bool),
    "copy_file_to_VM": Field("copy_file_to_vm", _text, repeated=True),
    "copy_file_from_VM": Field("copy_file_from_vm", _guest_relative, repeated=True),
}
_TEXT_OPTIONAL = {"application", "stdin_filename", "stdout_filename", "stderr_filename"}
_TEXT_OPTIONAL |= {"checkpoint_filename", "fraction_done_filename", "exec_dir"}
_TEXT_OPTIONAL |= {"virtualmachine", "image"}
HOST_ONLY = ("checkpoint_filename", "fraction_done_filename", "exec_dir", "daemon")
VM_ONLY = ("image", "copy_app_to_VM", "copy_file_to_VM", "copy_file_from_VM")


# -- the element tree, with line numbers ----------------------------------------------------


def _tree(data: bytes, source: str) -> Node:
    try:
        return parse_nodes(data)
    except XmlRefused as exc:
        raise SpecError(
            f"{source}:{exc.line}",
            "document type declarations and entities are not allowed in a job file",
        ) from None
    except XmlMalformed as exc:
        raise SpecError(f"{source}:{exc.line}", f"not well-formed XML: {exc.reason}") from None


# -- parsing -------------------------------------------------------------------------------


def _fail(source: str, line: int, message: str, hint: str | None = None) -> NoReturn:
    raise SpecError(f"{source}:{line}", message, hint=hint)


def _unknown(source: str, node: Node, known: list[str], parent: str) -> NoReturn:
    close = difflib.get_close_matches(node.tag, known, n=1)
    hint = f"did you mean <{close[0]}>?" if close else f"expected one of <{'>, <'.join(known)}>"
    _fail(source, node.line, f"unknown tag <{node.tag}> in <{parent}>", hint)


def _no_attrs(source: str, node: Node) -> None:
    if node.attrs:
        name = next(iter(node.attrs))
        _fail(source, node.line, f"<{node.tag}> takes no attributes (got {name}=...)")


def _stray_text(source: str, node: Node) -> None:
    if node.text_line:
        text = "".join(node.text).strip()
        _fail(source, node.text_line, f"unexpected text {text[:30]!r} in <{node.tag}>")


def _task(source: str, node: Node, kind: TaskKind) -> TaskSpec:
    _no_attrs(source, node)
    _stray_text(source, node)
    values: dict[str, Any] = {}
    seen: dict[str, int] = {}
    for child in node.children:
        spec = FIELDS.get(child.tag)
        if spec is None:
            _unknown(source, child, list(FIELDS), node.tag)
        _no_attrs(source, child)
        if child.children:
            _fail(source, child.children[0].line, f"<{child.tag}> holds text, not elements")
        where = f"{source}:{child.line}: <{child.tag}>"
        if not spec.repeated and child.tag in seen:
            _fail(
                source,
                child.line,
                f"<{child.tag}> given twice in <{node.tag}> (first on line {seen[child.tag]})",
            )
        seen[child.tag] = child.line
        text = "".join(child.text).strip()
        if spec.repeated:
            if text:
                values.setdefault(spec.attr, []).append(spec.convert(text, where))
        elif child.tag in _TEXT_OPTIONAL:
            if text:
                values[spec.attr] = spec.convert(text, where)
        elif text or spec.convert is _bool:
            values[spec.attr] = spec.convert(text, where)
    for key, value in values.items():
        if isinstance(value, list):
            values[key] = tuple(value)
    task = TaskSpec(kind=kind, line=node.line, **values)
    _check_task(source, task, seen)
    return task


def _check_task(source: str, task: TaskSpec, seen: Mapping[str, int]) -> None:
    tag = task.kind.value
    if task.is_vm:
        if task.kind is not TaskKind.TASK:
            message = f"a <{tag}> runs on the host; only a <task> can have a <virtualmachine>"
            _fail(source, seen["virtualmachine"], message)
        for name in HOST_ONLY:
            if name in seen:
                _fail(
                    source,
                    seen[name],
                    f"<{name}> is for host tasks, and this <task> runs in a VM",
                    hint="a VM task reports progress with vmwu-progress; the wrapper "
                    "checkpoints the whole VM",
                )
        if task.is_unit and task.setenv:
            message = "<setenv> cannot reach into a packed unit (.ova)"
            _fail(source, seen["setenv"], message, hint="set variables in the unit's app-launch")
        if not task.is_unit and not task.application:
            _fail(
                source,
                task.line,
                f"<{tag}> runs in base image {task.virtualmachine!r} but has no <application>",
                hint="name the program to run; a <virtualmachine> ending in .ova is a unit",
            )
        if task.copy_app_to_vm and not task.application:
            _fail(source, seen["copy_app_to_VM"], "<copy_app_to_VM> needs an <application>")
        if not task.is_unit and task.image:
            message = "<image> replaces a unit's base; this <virtualmachine> is already a base"
            _fail(source, seen["image"], message, hint="name the base in <virtualmachine> alone")
    else:
        for name in VM_ONLY:
            if name in seen:
                _fail(source, seen[name], f"<{name}> needs a <virtualmachine>")
        if not task.application:
            _fail(source, task.line, f"<{tag}> has no <application>")


def parse_job(data: bytes, source: str) -> JobDesc:
    """Parse a job file's bytes; ``source`` names it in errors (``job.xml:LINE: ...``)."""
    if len(data) > MAX_BYTES:
        raise SpecError(source, f"a job file larger than {MAX_BYTES // 1024} KiB is not allowed")
    root = _tree(data, source)
    if root.tag != "job_desc":
        _fail(source, root.line, f"the root element is <{root.tag}>, expected <job_desc>")
    _no_attrs(source, root)
    _stray_text(source, root)
    unzip: list[TaskSpec] = []
    daemons: list[TaskSpec] = []
    tasks: list[TaskSpec] = []
    for child in root.children:
        try:
            kind = TaskKind(child.tag)
        except ValueError:
            _unknown(source, child, [k.value for k in TaskKind], "job_desc")
        task = _task(source, child, kind)
        if kind is TaskKind.UNZIP:
            unzip.append(task)
        elif kind is TaskKind.MANAGE or task.daemon:
            daemons.append(task)
        else:
            tasks.append(task)
    if not tasks:
        _fail(source, root.line, "<job_desc> has no <task> to run")
    return JobDesc(source, tuple(unzip), tuple(daemons), tuple(tasks))


def load_job(path: Path) -> JobDesc:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_BYTES + 1)
    except IsADirectoryError:
        raise BadInput(f"job file {path} is a directory") from None
    except OSError as exc:
        raise BadInput(f"cannot read job file {path}: {exc.strerror}") from None
    return parse_job(data, str(path))


# -- macros --------------------------------------------------------------------------------

_MACRO = re.compile(r"\$(PROJECT_DIR|PWD|NTHREADS)(?![A-Za-z0-9_])")


def substitute(text: str, macros: Mapping[str, str]) -> str:
    """Replace $PROJECT_DIR, $PWD and $NTHREADS (other $ words are left as they are)."""
    return _MACRO.sub(lambda m: macros[m.group(1)], text)


def expand(task: TaskSpec, macros: Mapping[str, str]) -> TaskSpec:
    """``task`` with the macros substituted in every text field."""
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(task):
        value = getattr(task, f.name)
        if f.name == "kind":
            continue
        if isinstance(value, str):
            changes[f.name] = substitute(value, macros)
        elif isinstance(value, tuple) and value and isinstance(value[0], str):
            changes[f.name] = tuple(substitute(v, macros) for v in value)
        elif f.name == "setenv":
            changes[f.name] = tuple((k, substitute(v, macros)) for k, v in value)
    return dataclasses.replace(task, **changes)
