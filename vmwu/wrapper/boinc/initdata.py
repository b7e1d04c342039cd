"""``init_data.xml``: what the BOINC client tells an app about its job, host and client.

The client writes it into the slot directory before it starts the app (lib/app_ipc.cpp,
``write_init_data_file``). It comes from outside vmwu, so it is read as hostile-ish
input: at most :data:`MAX_BYTES`, through :mod:`vmwu.xmlsafe` (defusedxml) with document
type declarations forbidden (so no entity can expand or be fetched), strings bounded,
numbers finite, and every error one line naming the element. Tags vmwu does not use are
skipped, as BOINC's own parser does; a value of the wrong type is an error, where BOINC
would read it as 0.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from vmwu.errors import BadInput
from vmwu.xmlsafe import XmlMalformed, XmlRefused, parse_element

INIT_DATA_FILE = "init_data.xml"
MAX_BYTES = 4 * 1024 * 1024
MAX_TEXT = 4096
DEFAULT_CHECKPOINT_PERIOD = 300.0  # lib/app_ipc.h


@dataclass(frozen=True)
class HostInfo:
    """The parts of ``<host_info>`` a VM wrapper looks at."""

    p_ncpus: int = 0
    m_nbytes: float = 0.0  # physical memory, bytes
    d_free: float = 0.0  # free disk, bytes
    p_vm_extensions_disabled: bool = False
    p_features: str = ""
    os_name: str = ""
    os_version: str = ""


@dataclass(frozen=True)
class InitData:
    """The fields of BOINC's ``APP_INIT_DATA`` that vmwu uses, with BOINC's defaults."""

    major_version: int = 0
    minor_version: int = 0
    release: int = 0
    app_version: int = 0
    app_name: str = ""
    project_dir: str = ""
    boinc_dir: str = ""
    wu_name: str = ""
    result_name: str = ""
    slot: int = 0
    client_pid: int = 0
    hostid: int = 0
    checkpoint_period: float = DEFAULT_CHECKPOINT_PERIOD  # seconds between checkpoints
    fraction_done_start: float = 0.0
    fraction_done_end: float = 1.0
    wu_cpu_time: float = 0.0  # CPU seconds of the earlier runs of this job
    starting_elapsed_time: float = 0.0  # elapsed seconds of the earlier runs
    ncpus: float = 0.0  # CPUs the job may use (0: not said)
    rsc_fpops_est: float = 0.0
    rsc_fpops_bound: float = 0.0
    rsc_memory_bound: float = 0.0  # bytes
    rsc_disk_bound: float = 0.0  # bytes
    computation_deadline: float = 0.0  # Unix time
    vm_extensions_disabled: bool = False
    no_priority_change: bool = False
    app_files: tuple[str, ...] = ()  # <app_file>: the files of the app version
    host_info: HostInfo = field(default_factory=HostInfo)

    @property
    def client_version(self) -> str:
        return f"{self.major_version}.{self.minor_version}.{self.release}"


def _convert(kind: Any, text: str, where: str) -> Any:
    if kind is str:
        if len(text) > MAX_TEXT:
            raise BadInput(f"{where}: longer than {MAX_TEXT} characters")
        return text
    if kind is bool:
        # BOINC's parse_bool: an empty <tag/> is true
        if text in ("", "1", "true"):
            return True
        if text in ("0", "false"):
            return False
        raise BadInput(f"{where}: expected 0 or 1, got {text[:40]!r}")
    try:
        value = int(text) if kind is int else float(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise BadInput(f"{where}: expected {what}, got {text[:40]!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise BadInput(f"{where}: expected a finite number, got {text[:40]!r}")
    return value


_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def _values(element: ET.Element, cls: type[Any], where: str) -> dict[str, Any]:
    kinds = {f.name: _TYPES.get(str(f.type)) for f in fields(cls)}
    values: dict[str, Any] = {}
    for child in element:
        kind = kinds.get(str(child.tag))
        if kind is None:
            continue  # a tag vmwu does not use (or a structure), as BOINC skips them
        if len(child):
            raise BadInput(f"{where}: <{child.tag}> holds elements, expected a value")
        text = (child.text or "").strip()
        values[str(child.tag)] = _convert(kind, text, f"{where}: <{child.tag}>")
    return values


def parse_init_data(data: bytes, where: str = INIT_DATA_FILE) -> InitData:
    """Parse the content of an ``init_data.xml``; :class:`BadInput` naming ``where``."""
    if len(data) > MAX_BYTES:
        raise BadInput(f"{where}: larger than {MAX_BYTES} bytes", hint="is it really BOINC's?")
    try:
        root = parse_element(data)
    except XmlRefused as exc:
        raise BadInput(f"{where}: refused: {exc.detail}") from None
    except XmlMalformed as exc:
        raise BadInput(f"{where}:{exc.line}:{exc.column}: not well-formed XML") from None
    if root.tag != "app_init_data":
        raise BadInput(f"{where}: the root element is <{root.tag}>, expected <app_init_data>")
    values = _values(root, InitData, where)
    values["app_files"] = tuple(
        _convert(str, (e.text or "").strip(), f"{where}: <app_file>")
        for e in root.findall("app_file")
    )
    host = root.find("host_info")
    if host is not None:
        values["host_info"] = HostInfo(**_values(host, HostInfo, f"{where}: <host_info>"))
    init = InitData(**values)
    if init.checkpoint_period < 0:
        raise BadInput(f"{where}: <checkpoint_period> is negative ({init.checkpoint_period:g})")
    if not 0.0 <= init.fraction_done_start <= init.fraction_done_end <= 1.0:
        raise BadInput(
            f"{where}: <fraction_done_start> {init.fraction_done_start:g} and "
            f"<fraction_done_end> {init.fraction_done_end:g} must satisfy 0 <= start <= end <= 1"
        )
    if init.project_dir and not init.project_dir.startswith("/"):
        raise BadInput(f"{where}: <project_dir> {init.project_dir[:200]!r} is not absolute")
    return init


def read_init_data(path: Path) -> InitData:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror}") from None
    return parse_init_data(data, str(path))
