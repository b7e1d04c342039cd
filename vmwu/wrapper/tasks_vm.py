"""VM tasks: one instance of a work unit, driven by the wrapper instead of ``vmwu run``.

The instance is prepared as ``vmwu run`` prepares it (``vmwu.instance.prepare``: node
cache, overlays, output disk, instance ISO, warm start) and collected the same way
(``vmwu.outcome.collect``), but in between the wrapper can pause it (QMP ``stop``),
resume it (``cont``), and checkpoint it:

1. pause the VM (unless it already is), save its full state into the checkpoint
   (``vmwu.vmm.snapshot.save_vm``: memory and devices, a migration stream);
2. copy every instance disk into the checkpoint (sparse; they do not change while paused);
3. seal the checkpoint (digests, manifest, rename: ``checkpoint.py``), resume the VM.

Restoring prepares a fresh instance of the same unit, replaces its disks with working
copies of the checkpoint's (the checkpoint itself is never written), and starts QEMU
with the same machine configuration and ``-incoming`` from the saved state: the guest
goes on from the instruction it was paused at.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmwu import tools
from vmwu.errors import (
    BadInput,
    GuestNeverBooted,
    HostFailure,
    UnsafeContent,
    VMCrashed,
    VmwuError,
)
from vmwu.events import EventReader, InstanceState, Phase, check_log_sizes
from vmwu.hostfs import Report as CopyReport
from vmwu.hostfs import SafeDir, rel_parts
from vmwu.images import qemu_img
from vmwu.instance import Prepared, RunOptions, prepare
from vmwu.outcome import RunResult, collect, write_status
from vmwu.vmm import warm
from vmwu.vmm.qemu import MachineConfig, QemuMachine
from vmwu.vmm.snapshot import save_vm, wait_incoming
from vmwu.wrapper import vmunit
from vmwu.wrapper.checkpoint import Checkpoint, CheckpointStore
from vmwu.wrapper.fsutil import sparse_copy
from vmwu.wrapper.jobxml import TaskSpec
from vmwu.wrapper.tasks_host import proc_cpu_seconds

log = logging.getLogger(__name__)

QMP_TIMEOUT = 60.0
Report = Callable[[str], None]


class RestoreFailed(HostFailure):
    """A checkpoint that verified but would not restore (another QEMU, another unit)."""


@dataclass(frozen=True)
class VmSettings:
    catalog: Path | None = None
    accel: str = "auto"
    warm: bool = True
    boot_timeout: float = 120.0


class VmTask:
    """One VM task; ``start()`` or ``restore()``, then ``poll()`` until it returns the
    exit code (the application's, or vmwu's own 240-249)."""

    def __init__(
        self,
        task: TaskSpec,
        index: int,
        slot: Path,
        task_dir: Path,
        where: str,
        settings: VmSettings,
        extra_args: Sequence[str] = (),
        report: Report = lambda msg: None,
    ) -> None:
        self.task = task
        self.index = index
        self.slot = slot
        self.task_dir = task_dir
        self.where = where
        self.settings = settings
        self.args = list(task.command_line) + (list(extra_args) if task.append_cmdline_args else [])
        self.report = report
        self.prepared: Prepared | None = None
        self.machine: QemuMachine | None = None
        self.cfg: MachineConfig | None = None
        self.state = InstanceState()
        self.events: EventReader | None = None
        self.warm = False  # the machine runs the warm-start configuration
        self.start_how = ""
        self.suspended = False
        self.result: RunResult | None = None
        self.error: VmwuError | None = None
        self.paused_seconds: float | None = None  # how long the last checkpoint paused it
        self._boot_left: float | None = None  # seconds of (unsuspended) time to boot
        self._tick = 0.0
        self._cpu_done = 0.0  # CPU of QEMU processes of this run that already exited
        self._qmp_ready = False

    @property
    def label(self) -> str:
        what = self.task.application or self.task.virtualmachine or "?"
        return f"{what} in VM {self.task.virtualmachine}"

    @property
    def instance_dir(self) -> Path | None:
        return self.prepared.inst if self.prepared else None

    # -- the unit and the options ---------------------------------------------------------

    def check(self) -> None:
        """Raise :class:`BadInput` now for what would fail at start."""
        if self.task.is_unit:
            vmunit.unit_path(self.task, self.slot, self.where)
        vmunit.guest_files(self.task, self.slot, self.where)

    def unit(self) -> Path:
        if self.task.is_unit:
            return vmunit.unit_path(self.task, self.slot, self.where)
        unit = self.task_dir / "unit.ova"
        if not unit.is_file():  # packed once: a checkpoint only fits the unit it was taken of
            self._pack(unit)
        return unit

    def _pack(self, unit: Path) -> None:
        from vmwu.catalog import Catalog
        from vmwu.pack import pack
        from vmwu.spec import load_spec

        self.report(f"packing a unit for {self.label}")
        app_dir = self.task_dir / "unit-app"
        shutil.rmtree(app_dir, ignore_errors=True)
        vmunit.stage_application(self.task, self.slot, app_dir, self.where)
        inputs = vmunit.guest_files(self.task, self.slot, self.where)
        name = f"task{self.index + 1}"
        overrides = vmunit.pack_overrides(self.task, name, app_dir, inputs, self.where)
        spec = load_spec(None, overrides, cwd=self.task_dir)
        tmp = unit.with_name("unit.ova.partial")
        pack(spec, output=tmp, catalog=Catalog.open(self.settings.catalog))
        tmp.replace(unit)
        shutil.rmtree(app_dir, ignore_errors=True)

    def run_options(self) -> RunOptions:
        inputs = vmunit.guest_files(self.task, self.slot, self.where)
        return RunOptions(
            unit=self.unit(),
            args=tuple(self.args),
            files=inputs.files,
            files_destination=inputs.destinations,
            output_directory=self.task_dir / "output",
            base_image=self.task.image,
            accel=self.settings.accel,
            warm=self.settings.warm,
            boot_timeout=self.settings.boot_timeout,
            catalog=self.settings.catalog,
        )

    def _prepare(self) -> Prepared:
        opts = self.run_options()
        shutil.rmtree(self.task_dir / "output", ignore_errors=True)  # from an earlier run
        self.prepared = prepare(opts)
        return self.prepared

    # -- starting --------------------------------------------------------------------------

    def _launch(self, cfg: MachineConfig) -> QemuMachine:
        assert self.prepared is not None
        inst = self.prepared.inst
        (inst / "events.jsonl").unlink(missing_ok=True)
        self.cfg = cfg
        self.events = EventReader(inst / "events.jsonl")
        machine = QemuMachine(cfg, log_path=inst / "qemu.log")
        machine.launch()
        self.machine = machine
        self._qmp_ready = False
        self._tick = time.monotonic()
        return machine

    def _qmp(self, name: str, **args: Any) -> Any:
        assert self.machine is not None
        if not self._qmp_ready:  # no QEMU may hang the wrapper
            self.machine.qmp().settimeout(QMP_TIMEOUT)
            self._qmp_ready = True
        return self.machine.command(name, **args)

    def start(self, *, suspended: bool = False) -> None:
        """Start the task afresh (resuming the node's saved booted guest if it can)."""
        prepared = self._prepare()
        cfg, self.start_how = prepared.warm_config()
        self.warm = cfg.incoming is not None
        self.state = InstanceState()
        self._launch(cfg)
        self.state.qemu_started = time.monotonic()
        self.state.phase = Phase.BOOTING
        self._boot_left = self.settings.boot_timeout
        self.suspended = False
        if suspended:
            self.suspend()

    def restore(self, ck: Checkpoint, *, suspended: bool = False) -> None:
        """Resume the task from ``ck``; raises :class:`RestoreFailed` if it will not."""
        manifest = ck.manifest
        prepared = self._prepare()
        try:
            self.warm = bool(manifest.get("warm"))
            self._restore_disks(prepared, ck)
            cfg = warm.with_warm_cmdline(prepared.cfg) if self.warm else prepared.cfg
            machine = self._launch(dataclasses.replace(cfg, incoming=ck.file("state")))
            status = wait_incoming(machine, timeout=self.settings.boot_timeout)
        except (VmwuError, OSError) as exc:
            self.stop()
            message = exc.message if isinstance(exc, VmwuError) else str(exc)
            raise RestoreFailed(f"checkpoint {ck.name} did not restore: {message}") from None
        self.start_how = f"restored from checkpoint {ck.name}"
        self.state = _restored_state(manifest.get("guest", {}))
        self._boot_left = None if self.state.booted_at else self.settings.boot_timeout
        self.suspended = status != "running"  # saved paused: restored paused
        if suspended and not self.suspended:
            self.suspend()
        elif not suspended and self.suspended:
            self.resume()

    def _restore_disks(self, prepared: Prepared, ck: Checkpoint) -> None:
        drives = {d.id: d for d in prepared.cfg.drives}
        listed = {str(d["id"]): d for d in ck.manifest.get("drives", [])}
        if set(listed) != set(drives):
            raise RestoreFailed(
                f"its disks ({', '.join(sorted(listed))}) are not the unit's "
                f"({', '.join(sorted(drives))})"
            )
        for drive_id, drive in drives.items():
            backing = None
            if drive.format == "qcow2":
                info = qemu_img.info(drive.path, "qcow2", limits=None)  # vmwu's own overlay
                if info.get("backing-filename"):
                    backing = (info["backing-filename"], info.get("backing-filename-format"))
            own_size = warm.virtual_size(drive.path)
            sparse_copy(ck.file(listed[drive_id]["file"]), drive.path)
            if backing is not None:
                # The copy points at the backing file the checkpoint was taken over; point
                # it at this node cache's (the same bytes, possibly at another path).
                argv = ["qemu-img", "rebase", "-u", "-f", "qcow2", "-b", backing[0]]
                argv += ["-F", backing[1]] if backing[1] else []
                tools.run([*argv, drive.path])
            if self.warm:
                prepared.grown[drive.path] = own_size

    # -- running ---------------------------------------------------------------------------

    def poll(self) -> int | None:
        """The exit code once the instance has ended and been collected, else None."""
        machine = self.machine
        if self.result is not None:
            return self.result.exit_code
        if machine is None:
            return None
        code = machine.poll()
        now = time.monotonic()
        assert self.events is not None
        for event in self.events.read():
            self.state.apply(event, now)
        if code is None:
            flood = check_log_sizes(self.events.path, machine.cfg.console_log)
            if flood is not None:
                machine.shutdown(timeout=2.0)
                self.error = VMCrashed(f"{flood}; it was stopped")
            if self._boot_left is not None and not self.suspended:
                if self.state.booted_at is not None:
                    self._boot_left = None
                else:
                    self._boot_left -= now - self._tick
                    if self._boot_left <= 0:
                        machine.shutdown(timeout=2.0)
                        self.error = GuestNeverBooted(
                            f"the guest did not reach the vmwu agent within "
                            f"{self.settings.boot_timeout:g} s"
                        )
            self._tick = now
            if self.error is None:
                return None
            machine.wait(5.0)
        if self._warm_start_failed(machine):
            return None
        return self._finish()

    def _warm_start_failed(self, machine: QemuMachine) -> bool:
        """The node's saved booted guest did not load: forget it and boot cold."""
        cfg = self.cfg
        if cfg is None or cfg.incoming is None or not self.start_how.startswith("warm"):
            return False
        if machine.returncode in (0, None) or self.state.event_count:
            return False
        self.report(f"warm start failed ({machine.qemu_log_tail()}); booting cold")
        self._cpu_done += machine.cpu_seconds
        cfg.incoming.unlink(missing_ok=True)
        assert self.prepared is not None
        self.prepared.shrink_disks()
        self.start_how = "cold boot: the saved guest did not load"
        self.warm = False
        self.state = InstanceState(qemu_started=time.monotonic(), phase=Phase.BOOTING)
        self._launch(self.prepared.cfg)
        self._boot_left = self.settings.boot_timeout
        return True

    def _finish(self) -> int:
        prepared, machine = self.prepared, self.machine
        assert prepared is not None and machine is not None
        prepared.shrink_disks()
        result = collect(prepared, machine, self.state, self.error)
        result.status["start"] = self.start_how
        write_status(prepared.out_dir, result.status)
        self._cpu_done += machine.cpu_seconds
        self.machine = None
        prepared.release()
        self.prepared = None
        self.result = result
        self.error = result.error
        self._copy_outputs(result.output_dir, ok=result.exit_code == 0)
        return self.result.exit_code

    def _copy_outputs(self, out: Path, *, ok: bool) -> None:
        """stdout/stderr and the ``copy_file_from_VM`` files into the slot directory,
        through the safe door: what the guest made is never followed, and its links are
        not copied (a BOINC client would upload what they point to)."""
        report = CopyReport()
        streams = (
            ("stdout.log", self.task.stdout_filename),
            ("stderr.log", self.task.stderr_filename),
        )
        missing = []
        with SafeDir.open(out) as src, SafeDir.open(self.slot) as slot:
            for name, dest in streams:
                if dest:
                    *dirs, leaf = rel_parts(dest, self.where)
                    with slot.walk(dirs, create=True) as d:
                        if src.lstat(name) is not None:
                            d.copy_from(src, name, leaf, report, replace=True, links=False)
                        else:
                            d.write_atomic(leaf, b"")
            if ok:
                for rel in self.task.copy_file_from_vm:
                    *dirs, leaf = rel_parts(rel, self.where)
                    try:
                        with src.walk(dirs) as s, slot.walk(dirs, create=True) as d:
                            if s.lstat(leaf) is None:
                                missing.append(rel)
                                continue
                            d.copy_from(s, leaf, leaf, report, replace=True, links=False)
                    except UnsafeContent as exc:  # a guest's link or file where a folder was
                        report.skip(rel, str(exc))
        for skipped in report.skipped:
            self.report(f"not copied into the slot: {skipped}")
        if missing and ok and self.result is not None:
            self.error = BadInput(
                f"{self.where}: the VM did not produce {', '.join(missing)} (copy_file_from_VM)",
                hint=f"what it left is in {out}",
            )
            self.result.exit_code = int(self.error.exit_code)

    def fraction(self) -> float | None:
        return self.state.fraction

    @property
    def message(self) -> str:
        return self.state.message

    def cpu_seconds(self) -> float:
        machine = self.machine
        if machine is None or machine.pid is None:
            return self._cpu_done
        if machine.returncode is not None:
            return self._cpu_done + machine.cpu_seconds
        return self._cpu_done + proc_cpu_seconds(machine.pid)

    def _alive(self) -> bool:
        return self.machine is not None and self.machine.poll() is None

    def _control(self, name: str) -> None:
        """QMP ``stop``/``cont``; nothing if QEMU has just ended (``poll`` collects it)."""
        if not self._alive():
            return
        try:
            self._qmp(name)
        except Exception as exc:
            if self._alive():
                raise VMCrashed(f"QMP {name} failed: {exc}") from exc

    def suspend(self) -> None:
        self._control("stop")
        self.suspended = True

    def resume(self) -> None:
        self._control("cont")
        self.suspended = False
        self._tick = time.monotonic()

    # -- checkpoints ------------------------------------------------------------------------

    def checkpoint(self, store: CheckpointStore, meta: dict[str, Any]) -> Checkpoint | None:
        """Save the VM into a new checkpoint in ``store``; None if there is no VM to save
        (it has just ended, or is still loading). The VM runs on afterwards, unless it was
        suspended. Raises a :class:`VmwuError` if the checkpoint could not be written; the
        older checkpoints are kept then."""
        if not self._alive() or self.cfg is None:
            return None
        status = str(self._qmp("query-status").get("status"))
        if status == "inmigrate":
            return None
        was_running = status == "running"
        tmp = store.begin()
        try:
            expect: dict[str, str] = {}
            drives = []
            t0 = time.monotonic()
            try:
                if was_running:
                    self._qmp("stop")
                save_vm(self.machine, tmp / "state")  # type: ignore[arg-type]
                for d in self.cfg.drives:
                    name = f"disk-{d.id}{d.path.suffix}"
                    _, expect[name] = sparse_copy(d.path, tmp / name)
                    drives.append({"id": d.id, "file": name, "format": d.format})
            finally:
                # The copies are complete and fsynced: the guest need not wait for the
                # digests and the manifest.
                if was_running:
                    self._control("cont")
                self.paused_seconds = round(time.monotonic() - t0, 3)
            guest = _guest_summary(self.state)
            full = {**meta, "task": self.index, "warm": self.warm, "drives": drives}
            return store.commit(tmp, {**full, "guest": guest}, expect)
        except BaseException:
            store.abort(tmp)
            raise

    # -- stopping ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the VM without collecting anything (quit, abort, time limit)."""
        if self.machine is not None:
            self.machine.shutdown(timeout=2.0)
            self._cpu_done += self.machine.cpu_seconds
            self.machine = None
        if self.prepared is not None:
            self.prepared.release()
            self.prepared = None


def _guest_summary(state: InstanceState) -> dict[str, Any]:
    return {
        "booted": state.booted_at is not None,
        "started": state.started_at is not None,
        "fraction": state.fraction,
        "message": state.message,
        "exit_code": state.exit_code,
        "disk_full": state.disk_full,
    }


def _restored_state(guest: dict[str, Any]) -> InstanceState:
    """What the host knew of the guest when the checkpoint was taken."""
    now = time.monotonic()
    state = InstanceState(qemu_started=now, phase=Phase.BOOTING)
    if guest.get("booted"):
        state.booted_at = now
    if guest.get("started"):
        state.started_at = now
        state.phase = Phase.RUNNING
    if isinstance(guest.get("fraction"), int | float):
        state.fraction = float(guest["fraction"])
    state.message = str(guest.get("message") or "")
    if isinstance(guest.get("exit_code"), int):
        state.exit_code = guest["exit_code"]
        state.exit_at = now
        state.phase = Phase.SHUTTING_DOWN
    state.disk_full = bool(guest.get("disk_full"))
    return state
