"""VM tasks: one instance of a work unit, driven by the wrapper instead of ``vmwu run``.

The instance is prepared as ``vmwu run`` prepares it (``vmwu.run.prepare.prepare``: node
cache, overlays, output disk, instance ISO, warm start) and collected the same way
(``vmwu.run.outcome.collect``), but in between the wrapper can pause it (QMP ``stop``),
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
    HostFailure,
    UnsafeContent,
    VMCrashed,
    VmwuError,
)
from vmwu.guest.events import InstanceState, Phase
from vmwu.hostfs import Report as CopyReport
from vmwu.hostfs import SafeDir, rel_parts
from vmwu.images import qemu_img
from vmwu.run.instance import Instance
from vmwu.run.outcome import RunResult
from vmwu.run.prepare import Prepared, RunOptions, UnitTooLarge
from vmwu.vmm import warm
from vmwu.vmm.guestrun import GuestRun
from vmwu.vmm.snapshot import save_vm, wait_incoming
from vmwu.wrapper import hostcheck, vmunit
from vmwu.wrapper.checkpoint import Checkpoint, CheckpointStore
from vmwu.wrapper.fsutil import sparse_copy
from vmwu.wrapper.jobxml import TaskSpec

log = logging.getLogger(__name__)

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
        self.instance: Instance | None = None
        self.result: RunResult | None = None
        self.error: VmwuError | None = None
        self.paused_seconds: float | None = None  # how long the last checkpoint paused it
        self._cpu_done = 0.0  # CPU of this task's instances that have ended

    @property
    def label(self) -> str:
        what = self.task.application or self.task.virtualmachine or "?"
        return f"{what} in VM {self.task.virtualmachine}"

    @property
    def instance_dir(self) -> Path | None:
        prepared = self.instance.prepared if self.instance else None
        return prepared.inst if prepared else None

    @property
    def start_how(self) -> str:
        started = self.instance.started if self.instance else None
        return str(started) if started else ""

    @property
    def state(self) -> InstanceState:
        return self.instance.state if self.instance else InstanceState()

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
        from vmwu.bases.catalog import Catalog
        from vmwu.pack.build import pack
        from vmwu.pack.spec import load_spec

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
            shared_ram=False,  # checkpoints must load into a plain QEMU (RunOptions)
        )

    def _prepare(self) -> Instance:
        opts = self.run_options()
        shutil.rmtree(self.task_dir / "output", ignore_errors=True)  # from an earlier run
        self.instance = Instance(opts)
        try:
            prepared = self.instance.prepare()
        except UnitTooLarge as exc:
            # more than this host's memory: under a BOINC client a temporary exit, as for
            # memory that is not available now (another host may get the workunit)
            hostcheck.check_memory(exc.memory_mib)
            raise
        try:
            hostcheck.check_memory(prepared.cfg.memory_mib)
        except hostcheck.NotEnoughMemory:
            self.stop()
            raise
        return self.instance

    # -- starting --------------------------------------------------------------------------

    def start(self, *, suspended: bool = False) -> None:
        """Start the task afresh (resuming the node's saved booted guest if it can)."""
        instance = self._prepare()
        instance.start()
        if suspended:
            self.suspend()

    def restore(self, ck: Checkpoint, *, suspended: bool = False) -> None:
        """Resume the task from ``ck``; raises :class:`RestoreFailed` if it will not."""
        manifest = ck.manifest
        instance = self._prepare()
        warm_cmdline = bool(manifest.get("warm"))
        try:
            assert instance.prepared is not None
            self._restore_disks(instance.prepared, ck, grown=warm_cmdline)
            guest = instance.start_restored(
                ck.file("state"),
                warm_cmdline=warm_cmdline,
                name=ck.name,
                state=_restored_state(manifest.get("guest", {})),
            )
            status = wait_incoming(guest.machine, timeout=self.settings.boot_timeout)
        except (VmwuError, OSError) as exc:
            self.stop()
            message = exc.message if isinstance(exc, VmwuError) else str(exc)
            raise RestoreFailed(f"checkpoint {ck.name} did not restore: {message}") from None
        guest.suspended = status != "running"  # saved paused: restored paused
        if suspended and not guest.suspended:
            self.suspend()
        elif not suspended and guest.suspended:
            self.resume()

    def _restore_disks(self, prepared: Prepared, ck: Checkpoint, *, grown: bool) -> None:
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
            if grown:
                prepared.grown[drive.path] = own_size

    # -- running ---------------------------------------------------------------------------

    def poll(self) -> int | None:
        """The exit code once the instance has ended and been collected, else None."""
        if self.result is not None:
            return self.result.exit_code
        instance = self.instance
        if instance is None or instance.guest is None or not instance.poll():
            return None
        return self._finish(instance)

    def _finish(self, instance: Instance) -> int:
        self._check_accelerator(instance)
        result = instance.collect()
        assert result.status is not None and instance.prepared is not None
        result.status.write(instance.prepared.out_dir)
        self._cpu_done += instance.cpu_seconds()
        instance.release()
        self.instance = None
        self.result = result
        self.error = result.error
        self._copy_outputs(result.output_dir, ok=result.exit_code == 0)
        return self.result.exit_code

    def _check_accelerator(self, instance: Instance) -> None:
        """QEMU that ended at once because it could not use KVM (another hypervisor holds
        the CPU's virtualization, say): trouble of this host, not of the job."""
        guest = instance.guest
        if guest is None or guest.state.event_count or guest.machine.returncode in (0, None):
            return
        reason = hostcheck.accelerator_trouble(guest.machine.qemu_log_tail(20))
        if reason is not None:
            self.stop()
            raise hostcheck.AcceleratorTrouble(
                f"QEMU could not use the accelerator: {reason}",
                hint="close the other virtual machine program (VirtualBox, VMware)",
            )

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
        """CPU time of this task's QEMU processes (the running one included)."""
        return self._cpu_done + (self.instance.cpu_seconds() if self.instance else 0.0)

    def _alive(self) -> GuestRun | None:
        guest = self.instance.guest if self.instance else None
        return guest if guest is not None and guest.machine.poll() is None else None

    def _control(self, pause: bool) -> None:
        """Pause or resume the guest; nothing if QEMU has just ended (``poll`` collects
        it)."""
        guest = self._alive()
        if guest is None:
            return
        try:
            guest.suspend() if pause else guest.resume()
        except Exception as exc:
            if self._alive():
                raise VMCrashed(f"QMP {'stop' if pause else 'cont'} failed: {exc}") from exc

    @property
    def suspended(self) -> bool:
        return self.instance is not None and self.instance.suspended

    def suspend(self) -> None:
        self._control(True)

    def resume(self) -> None:
        self._control(False)

    # -- checkpoints ------------------------------------------------------------------------

    def checkpoint(self, store: CheckpointStore, meta: dict[str, Any]) -> Checkpoint | None:
        """Save the VM into a new checkpoint in ``store``; None if there is no VM to save
        (it has just ended, or is still loading). The VM runs on afterwards, unless it was
        suspended. Raises a :class:`VmwuError` if the checkpoint could not be written; the
        older checkpoints are kept then."""
        guest = self._alive()
        if guest is None or self.instance is None:
            return None
        status = str(guest.command("query-status").get("status"))
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
                    guest.suspend()
                save_vm(guest.machine, tmp / "state")
                for d in guest.cfg.drives:
                    name = f"disk-{d.id}{d.path.suffix}"
                    _, expect[name] = sparse_copy(d.path, tmp / name)
                    drives.append({"id": d.id, "file": name, "format": d.format})
            finally:
                # The copies are complete and fsynced: the guest need not wait for the
                # digests and the manifest.
                if was_running:
                    self._control(False)
                self.paused_seconds = round(time.monotonic() - t0, 3)
            warm_cmdline = warm.WARM_KEY in guest.cfg.cmdline.split()
            full = {**meta, "task": self.index, "warm": warm_cmdline, "drives": drives}
            return store.commit(tmp, {**full, "guest": _guest_summary(self.state)}, expect)
        except BaseException:
            store.abort(tmp)
            raise

    # -- stopping ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the VM without collecting anything (quit, abort, time limit)."""
        if self.instance is not None:
            self.instance.stop()
            self._cpu_done += self.instance.cpu_seconds()
            self.instance.release()
            self.instance = None


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
