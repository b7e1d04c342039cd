"""The work unit a VM task runs, and the instance files it gets.

``<virtualmachine>`` ending in ``.ova`` is a packed unit: its own ``app-launch`` runs and
``<command_line>`` becomes the instance parameters. Anything else names a catalog base
(VMwrapper's model: a VM image plus an application copied in): the wrapper packs a small
unit on that base the first time the task starts, keeps it with the task's files, and
reuses it on every restart (a checkpoint only fits the unit it was taken of). Its
``app-launch`` copies the ``copy_file_to_VM`` files from the instance ISO into the
working directory (the output disk), exports ``setenv``, and runs ``<application>``
with the command line's arguments, stdin from ``stdin_filename``.
"""

from __future__ import annotations

import os
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from vmwu.errors import BadInput
from vmwu.options import RawValue
from vmwu.wrapper.jobxml import TaskSpec

MiB = 1024 * 1024


@dataclass(frozen=True)
class GuestFiles:
    """Host files for the instance ISO and their names there."""

    files: tuple[Path, ...]
    destinations: tuple[str, ...]


def guest_files(task: TaskSpec, slot: Path, where: str) -> GuestFiles:
    """``copy_file_to_VM`` files, ``stdin_filename`` and (``copy_app_to_VM``, for a unit)
    the application: host paths relative to the slot, named by their base names."""
    names: list[str] = list(task.copy_file_to_vm)
    if task.stdin_filename and task.stdin_filename not in names:
        names.append(task.stdin_filename)
    if task.is_unit and task.copy_app_to_vm and task.application:
        names.append(task.application)
    files: list[Path] = []
    dests: list[str] = []
    for name in names:
        path = Path(name) if Path(name).is_absolute() else slot / name
        if not path.is_file():
            raise BadInput(f"{where}: {name} (to copy into the VM) does not exist in {slot}")
        dest = path.name
        if dest in dests:
            raise BadInput(f"{where}: two files to copy into the VM are both named {dest}")
        files.append(path)
        dests.append(dest)
    return GuestFiles(tuple(files), tuple(dests))


def unit_path(task: TaskSpec, slot: Path, where: str) -> Path:
    """The unit of a task whose ``virtualmachine`` is a ``.ova`` (relative to the slot)."""
    assert task.virtualmachine is not None
    path = Path(task.virtualmachine)
    path = path if path.is_absolute() else slot / path
    if not path.is_file():
        raise BadInput(f"{where}: virtualmachine {task.virtualmachine} does not exist")
    return path


def guest_application(task: TaskSpec) -> str:
    """The application's path inside the guest."""
    assert task.application is not None
    if task.copy_app_to_vm:
        return f"/app/{PurePosixPath(task.application).name}"
    return task.application


def launch_command(task: TaskSpec, inputs: GuestFiles) -> str:
    """``app-launch`` of the unit packed for a base-image task; it runs in /output."""
    q = shlex.quote
    parts: list[str] = []
    copied = [d for d in inputs.destinations if d in {Path(f).name for f in task.copy_file_to_vm}]
    if copied:
        parts.append("cp " + " ".join(q(f"/cdrom/{d}") for d in copied) + " . || exit 1")
    for name, value in task.setenv:
        parts.append(f"export {name}={q(value)}")
    run = q(guest_application(task)) + ' "$@"'
    if task.stdin_filename:
        run += f" < {q('/cdrom/' + Path(task.stdin_filename).name)}"
    parts.append(run)
    return "; ".join(parts)


def pack_overrides(
    task: TaskSpec, name: str, app_dir: Path, inputs: GuestFiles, origin: str
) -> list[RawValue]:
    """The spec of the unit for a base-image task, as ``vmwu pack`` options."""
    assert task.virtualmachine is not None
    input_bytes = sum(f.stat().st_size for f in inputs.files)
    output_size = 64 * MiB + 2 * input_bytes  # inputs are copied onto the output disk
    values = {
        "package-name": name,
        "app-import-dir": os.fspath(app_dir),
        "app-launch": launch_command(task, inputs),
        "base-image": task.virtualmachine,
        "app-output-size": str(output_size),
    }
    return [RawValue(k, v, origin) for k, v in values.items()]


def stage_application(task: TaskSpec, slot: Path, app_dir: Path, where: str) -> None:
    """Fill the application folder of a base-image task's unit."""
    app_dir.mkdir(parents=True, exist_ok=True)
    if not task.copy_app_to_vm:
        return
    assert task.application is not None
    src = Path(task.application)
    src = src if src.is_absolute() else slot / src
    if not src.is_file():
        message = f"application {task.application} (to copy into the VM) does not exist"
        raise BadInput(f"{where}: {message} in {slot}")
    dest = app_dir / src.name
    shutil.copyfile(src, dest)
    dest.chmod(0o755)
