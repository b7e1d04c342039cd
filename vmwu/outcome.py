"""What an instance came to: classify how it ended, copy its outputs, write status.json.

Everything the guest left is kept: the output disk's files, ``console.log`` and
``status.json`` land in the output directory whatever happened.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmwu import __version__, tools
from vmwu.errors import (
    ExitCode,
    GuestNeverBooted,
    OutputDiskFull,
    VMCrashed,
    VmwuError,
)
from vmwu.events import InstanceState
from vmwu.hostfs import SafeDir, rel_parts
from vmwu.images import ext4_read, qemu_img
from vmwu.instance import CONSOLE_LOG, STATUS_JSON, Prepared
from vmwu.vmm.qemu import QemuMachine

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    exit_code: int
    output_dir: Path
    status: dict[str, Any]
    error: VmwuError | None = None
    cmdline: list[str] = field(default_factory=list)


def read_tail(path: Path, size: int = 256 * 1024) -> str:
    """The last ``size`` bytes of a file the guest wrote (its console), as text."""
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - size))
            return fh.read(size).decode(errors="replace")
    except OSError:
        return ""


def console_tail(path: Path, lines: int = 3) -> str:
    rows = [r.strip()[:300] for r in read_tail(path).replace("\r", "").splitlines() if r.strip()]
    return " | ".join(rows[-lines:])


def classify(
    state: InstanceState,
    early: VmwuError | None,
    machine: QemuMachine,
    console: Path,
    out_dir: Path,
) -> VmwuError | None:
    """What went wrong, if anything, from what the host saw."""
    console_hint = f"see {out_dir / CONSOLE_LOG}"
    if early is not None:
        tail = console_tail(console)
        early.hint = f"console: {tail}; {console_hint}" if tail else console_hint
        return early
    if state.exit_code is not None:
        if state.disk_full:
            return OutputDiskFull(
                "the output disk filled up inside the guest "
                f"(the app exited with {state.exit_code})",
                hint=f"raise app-output-size and re-pack; partial outputs kept in {out_dir}",
            )
        return None
    tail = console_tail(console)
    text = read_tail(console)
    if state.agent_error:
        return GuestNeverBooted(f"the vmwu agent failed: {state.agent_error}", hint=console_hint)
    if "Kernel panic" in text:
        line = next((r for r in text.splitlines() if "Kernel panic" in r), "Kernel panic")
        cls: type[VmwuError] = GuestNeverBooted if state.booted_at is None else VMCrashed
        return cls(f"the guest kernel panicked: {line.strip()}", hint=console_hint)
    if machine.returncode not in (0, None):
        return VMCrashed(
            f"QEMU exited with status {machine.returncode}: {machine.qemu_log_tail() or tail}",
            hint=console_hint,
        )
    if state.booted_at is None:
        return GuestNeverBooted(
            "the guest stopped before the vmwu agent started" + (f": {tail}" if tail else ""),
            hint=console_hint,
        )
    return VMCrashed(
        "the guest stopped without reporting the application's exit"
        + (f": {tail}" if tail else ""),
        hint=console_hint,
    )


# A guest's own status.json (written by the agent) is read from the disk, never copied out.
GUEST_STATE_DIR = ".vmwu"
_GUEST_STATUS_LIMIT = 64 * 1024


def output_renames(output_filename: str | None) -> dict[str, str]:
    """vmwu's own names in the output directory: a guest's entry of such a name is written
    under the name given here, so that vmwu's file never goes through the guest's."""
    names = [CONSOLE_LOG, STATUS_JSON]
    if output_filename and "/" not in output_filename.strip("/"):
        names.append(output_filename.strip("/"))
    return {n: f"{n}.app" for n in names}


def read_outputs(
    out_disk: Path, out_dir: Path, output_filename: str | None
) -> tuple[dict[str, Any], list[str]]:
    """Copy the files of the output disk into ``out_dir`` through the safe door; the
    guest's own status and the entries that were not written (with why)."""
    tree = ext4_read.scan(out_disk)
    guest_status: dict[str, Any] = {}
    raw = tree.read(f"{GUEST_STATE_DIR}/status.json", _GUEST_STATUS_LIMIT)
    if raw is not None:
        try:
            parsed = json.loads(raw)
            guest_status = parsed if isinstance(parsed, dict) else {"unreadable": True}
        except ValueError:
            guest_status = {"unreadable": True}
    with SafeDir.open(out_dir) as dest:
        report = tree.extract(
            dest,
            skip_top=("lost+found", GUEST_STATE_DIR),
            rename_top=output_renames(output_filename),
        )
    skipped = [str(s) for s in report.skipped]
    for line in skipped:
        log.warning("output not copied: %s", line)
    return guest_status, skipped


def collect(
    prepared: Prepared,
    machine: QemuMachine,
    state: InstanceState,
    early: VmwuError | None,
) -> RunResult:
    """Classify how the instance ended and copy out everything it left."""
    opts, desc, inst, out_dir = prepared.opts, prepared.desc, prepared.inst, prepared.out_dir
    console = inst / CONSOLE_LOG
    error = classify(state, early, machine, console, out_dir)
    out_disk = inst / "output.raw"
    guest_status: dict[str, Any] = {}
    skipped: list[str] = []
    collect_error: VmwuError | None = None
    try:
        guest_status, skipped = read_outputs(out_disk, out_dir, opts.output_filename)
    except VmwuError as exc:
        collect_error = exc
    with SafeDir.open(out_dir) as dest:
        if opts.output_filename:
            keep_output_image(out_disk, dest, opts.output_filename)
        if console.exists():
            dest.copy_file_in(console, CONSOLE_LOG)
    if error is None and collect_error is not None:
        error = collect_error
    app_code = state.exit_code
    if app_code is None and isinstance(guest_status.get("exit_code"), int):
        app_code = guest_status["exit_code"]
    exit_code = (
        int(error.exit_code)
        if error is not None
        else (app_code if app_code is not None else int(ExitCode.VM_CRASHED))
    )
    qemu_s = (machine.exited_at or time.monotonic()) - machine.started_at
    timings: dict[str, float | None] = {
        "boot": delta(machine.started_at, state.started_at),
        "app": delta(state.started_at, state.exit_at),
        "shutdown": delta(state.exit_at, machine.exited_at or None),
        "qemu": round(qemu_s, 3),
    }
    status: dict[str, Any] = {
        "vmwu_version": __version__,
        "unit": desc.name,
        "unit_path": os.fspath(opts.unit.absolute()),
        "node": os.uname().nodename,
        "outcome": "vmwu-error" if error is not None else "app",
        "exit_code": exit_code,
        "app_exit_code": app_code,
        "signal": guest_status.get("signal"),
        "disk_full": state.disk_full,
        "error": None
        if error is None
        else {"code": int(error.exit_code), "kind": type(error).__name__, "message": str(error)},
        "params": list(opts.args),
        "progress": state.fraction,
        "timings": timings,
        "qemu_peak_rss_kib": machine.peak_rss_kib,
        "qemu_cpu_seconds": round(machine.cpu_seconds, 3),
        "console_log": CONSOLE_LOG,
        "guest": guest_status,
        "outputs_not_copied": skipped,
        "cmdline": shlex.join(machine.argv),
        "accel": prepared.accel.accel,
        "accel_reason": prepared.accel.reason,
    }
    return RunResult(exit_code, out_dir, status, error, cmdline=machine.argv)


def delta(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    return round(b - a, 3)


def keep_output_image(raw: Path, dest: SafeDir, name: str) -> None:
    """The output disk itself, kept as ``name`` (qcow2 for a .qcow2/.qcow name, else a
    sparse raw copy), made in a private directory of vmwu's, then renamed into place.
    ``name`` is the user's: relative to the output directory, which it may leave (the
    thesis's ``-output-filename ../output.img``). Inside the output directory, where the
    guest's entries are, no step of it is taken through a link."""
    target = Path(os.path.normpath(dest.path / name))
    if target == dest.path or dest.path in target.parents:
        *dirs, leaf = rel_parts(str(target.relative_to(dest.path)), "--output-filename")
        where = dest.walk(dirs, create=True)
    else:  # outside the output directory: the user's own place
        leaf = target.name
        where = SafeDir.open(target.parent, create=True)
    with where, where.private_dir() as private:
        made = private.path / "image"
        if leaf.endswith((".qcow2", ".qcow")):
            qemu_img.convert(raw, made, src_format="raw", dst_format="qcow2", compress=True)
        else:
            tools.run(["cp", "--sparse=always", raw, made], disk_hint=str(where.path))
        where.take(private, "image", leaf)


def write_status(out_dir: Path, status: dict[str, Any]) -> None:
    """status.json, written atomically; a guest's entry of that name is replaced, never
    written through."""
    data = (json.dumps(status, indent=2, sort_keys=True) + "\n").encode()
    with SafeDir.open(out_dir) as dest:
        dest.write_atomic(STATUS_JSON, data)


def salvage(inst: Path, out_dir: Path, err: VmwuError, output_filename: str | None) -> None:
    """Keep what we can after an interruption."""
    try:
        if out_dir.is_dir():
            if (inst / "output.raw").exists():
                read_outputs(inst / "output.raw", out_dir, output_filename)
            if (inst / CONSOLE_LOG).exists():
                with SafeDir.open(out_dir) as dest:
                    dest.copy_file_in(inst / CONSOLE_LOG, CONSOLE_LOG)
        write_status(
            out_dir,
            {
                "vmwu_version": __version__,
                "outcome": "vmwu-error",
                "exit_code": int(err.exit_code),
                "error": {
                    "code": int(err.exit_code),
                    "kind": type(err).__name__,
                    "message": str(err),
                },
            },
        )
    except (OSError, VmwuError) as exc:
        log.debug("salvage failed: %s", exc)
