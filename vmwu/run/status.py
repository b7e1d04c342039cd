"""``status.json``: how one instance ended, as :class:`RunStatus` (docs/exit-codes.md).

The record crosses process boundaries (a sweep's runner, the wrapper, users' scripts
read it), so it has one writer (:meth:`RunStatus.write`) and one reader
(:meth:`RunStatus.read`), and a version (``status_version``). Fields are only ever added;
a reader takes what it knows and ignores the rest. The ``guest`` field is what the guest
itself wrote: untrusted, kept as the small JSON object it was.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

from vmwu import __version__
from vmwu.errors import VmwuError
from vmwu.hostfs import SafeDir

STATUS_JSON = "status.json"
STATUS_VERSION = 1
_READ_LIMIT = 1 << 20


class Outcome(StrEnum):
    APP = "app"  # the application ran; exit_code is its own
    VMWU_ERROR = "vmwu-error"  # vmwu failed (240-249); error says how


@dataclass(frozen=True)
class ErrorInfo:
    code: int
    kind: str
    message: str

    @classmethod
    def of(cls, exc: VmwuError) -> ErrorInfo:
        return cls(int(exc.exit_code), type(exc).__name__, str(exc))


@dataclass
class Timings:
    """Seconds: boot (QEMU start to the app's start), app, shutdown (app exit to QEMU
    exit), qemu (QEMU's whole life), prepare and collect (vmwu's own work)."""

    boot: float | None = None
    app: float | None = None
    shutdown: float | None = None
    qemu: float | None = None
    prepare: float | None = None
    collect: float | None = None


@dataclass
class RunStatus:
    outcome: Outcome
    exit_code: int
    app_exit_code: int | None = None
    error: ErrorInfo | None = None
    vmwu_version: str = __version__
    status_version: int = STATUS_VERSION
    unit: str | None = None
    unit_path: str | None = None
    node: str | None = None
    params: list[str] = field(default_factory=list)
    signal: int | None = None
    disk_full: bool = False
    progress: float | None = None
    timings: Timings | None = None
    qemu_peak_rss_kib: int | None = None
    qemu_cpu_seconds: float | None = None
    console_log: str | None = None
    guest: dict[str, Any] = field(default_factory=dict)
    outputs_not_copied: list[str] = field(default_factory=list)
    cmdline: str | None = None
    accel: str | None = None
    accel_reason: str | None = None
    start: str | None = None  # how the guest started ("warm start: resumed", ...)
    instance_dir: str | None = None  # with --keep

    @classmethod
    def failed(cls, exc: VmwuError, **known: Any) -> RunStatus:
        """vmwu failed before (or instead of) collecting an instance."""
        return cls(Outcome.VMWU_ERROR, int(exc.exit_code), error=ErrorInfo.of(exc), **known)

    @property
    def vmwu_failed(self) -> bool:
        return self.outcome is Outcome.VMWU_ERROR

    # -- the one writer and the one reader -----------------------------------------------

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["outcome"] = self.outcome.value
        if self.instance_dir is None:
            del data["instance_dir"]
        return data

    def write(self, out_dir: Path) -> None:
        """Write ``out_dir/status.json`` atomically; a guest's entry of that name is
        replaced, never written through."""
        data = (json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n").encode()
        with SafeDir.open(out_dir) as dest:
            dest.write_atomic(STATUS_JSON, data)

    @classmethod
    def read(cls, out_dir: Path) -> RunStatus | None:
        """The status.json of ``out_dir`` (read without following a link; at most 1 MiB),
        or None if there is none that vmwu wrote."""
        try:
            with SafeDir.open(out_dir) as d:
                return cls.read_in(d)
        except (VmwuError, OSError):
            return None

    @classmethod
    def read_in(cls, out_dir: SafeDir) -> RunStatus | None:
        """Like :meth:`read`, in a directory already held open."""
        try:
            data = json.loads(out_dir.read_bytes(STATUS_JSON, _READ_LIMIT))
        except (VmwuError, OSError, ValueError):
            return None
        return cls.from_json(data)

    @classmethod
    def from_json(cls, data: object) -> RunStatus | None:
        """The record in ``data`` (a parsed status.json), or None if it is not one; fields
        of the wrong type are left at their defaults."""
        if not isinstance(data, dict) or "vmwu_version" not in data:
            return None
        try:
            outcome = Outcome(str(data.get("outcome")))
        except ValueError:
            return None
        code = data.get("exit_code")
        if not isinstance(code, int) or isinstance(code, bool):
            return None
        status = cls(outcome, code)
        for name, kind in _FIELD_TYPES.items():
            value = data.get(name)
            if isinstance(value, kind) and not (kind is not bool and isinstance(value, bool)):
                setattr(status, name, value)
        for name in ("params", "outputs_not_copied"):
            items = data.get(name)
            if isinstance(items, list):
                setattr(status, name, [str(x) for x in items])
        err = data.get("error")
        if isinstance(err, dict):
            status.error = ErrorInfo(
                int(err.get("code") or 0), str(err.get("kind") or ""), str(err.get("message") or "")
            )
        t = data.get("timings")
        if isinstance(t, dict):
            status.timings = Timings(
                **{
                    f.name: t.get(f.name) if isinstance(t.get(f.name), int | float) else None
                    for f in fields(Timings)
                }
            )
        return status


# The scalar fields :meth:`RunStatus.from_json` takes, with the JSON type each must have.
_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "app_exit_code": int,
    "vmwu_version": str,
    "status_version": int,
    "unit": str,
    "unit_path": str,
    "node": str,
    "signal": int,
    "disk_full": bool,
    "progress": (int, float),
    "qemu_peak_rss_kib": int,
    "qemu_cpu_seconds": (int, float),
    "console_log": str,
    "guest": dict,
    "cmdline": str,
    "accel": str,
    "accel_reason": str,
    "start": str,
    "instance_dir": str,
}
