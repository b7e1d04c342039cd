"""One instance of a work unit, from prepared to collected: the one lifecycle.

::

    Instance(opts) ─ prepare() ─ start() ─┬─ poll() … until True ─ collect() ─ release()
                                          │    (warm start that will not load: boots cold)
                      start_restored(ck) ─┘    suspend() / resume() / stop() at any time

``vmwu run`` (``vmwu.run.launch``) is a short loop over it; the wrapper's VM tasks add
suspend and checkpoints on top (``vmwu.wrapper.tasks_vm``). The guest itself is followed
by :class:`vmwu.vmm.guestrun.GuestRun` (timeouts, floods, events), which the base builders
and the warm-start saver use too.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from vmwu.errors import VMCrashed
from vmwu.guest.events import InstanceState, Phase
from vmwu.run.outcome import RunResult, collect
from vmwu.run.prepare import Prepared, RunOptions, prepare
from vmwu.vmm import warm
from vmwu.vmm.guestrun import GuestRun, Update
from vmwu.vmm.pool import ReadyVM
from vmwu.vmm.qemu import MachineConfig, QemuMachine

log = logging.getLogger(__name__)


class StartMode(StrEnum):
    WARM = "warm"  # resumed the node's saved booted guest
    COLD = "cold"  # booted
    RESTORED = "restored"  # resumed from a checkpoint (the wrapper)


@dataclass(frozen=True)
class Start:
    """How the guest started; ``detail`` is what status.json's ``start`` says."""

    mode: StartMode
    detail: str

    def __str__(self) -> str:
        return self.detail


class ReadySource(Protocol):
    """Where an instance may find a ready VM for its warm configuration (a node pool,
    vmwu.run.pool): ``take`` gives one nobody else will get, or None."""

    def take(self, cfg: MachineConfig) -> ReadyVM | None: ...


class Instance:
    """One instance of ``opts.unit`` (see the module docstring). ``pool``: ready VMs to
    run in, when one fits (else the instance starts its own QEMU)."""

    def __init__(
        self,
        opts: RunOptions,
        *,
        on_update: Update | None = None,
        check_output: bool = True,
        pool: ReadySource | None = None,
    ) -> None:
        self.opts = opts
        self.pool = pool
        self.ready: ReadyVM | None = None  # the pooled VM this instance runs in
        self.on_update = on_update
        self.check_output = check_output
        self.prepared: Prepared | None = None
        self.guest: GuestRun | None = None
        self.started: Start | None = None
        self._cpu_done = 0.0  # CPU seconds of this instance's QEMUs that have exited
        self._t_begin = time.monotonic()
        self._t_launch = 0.0

    # -- prepare, start --------------------------------------------------------------------

    def prepare(self) -> Prepared:
        """Check the options, resolve the unit's files, make the instance directory."""
        self.prepared = prepare(self.opts, check_output=self.check_output)
        return self.prepared

    @property
    def cold_config(self) -> MachineConfig:
        return self._need_prepared().cfg

    def start(self) -> None:
        """Start the guest: resume the node's saved booted guest (saving it first if this
        is the node's first such instance) unless --no-warm or the unit cannot; else boot."""
        prepared = self._need_prepared()
        cfg, how = prepared.warm_config()
        if self.pool is not None and cfg.ram_file is not None and self._start_ready(cfg):
            return
        self.started = Start(StartMode.WARM if cfg.incoming else StartMode.COLD, how)
        try:
            self._launch(cfg, InstanceState())
        except VMCrashed as exc:
            if cfg.ram_file is None:
                raise
            self._shared_ram_instead(self._need_guest(), str(exc))

    def _start_ready(self, cfg: MachineConfig) -> bool:
        """Run in a ready VM of the pool, if it has one for ``cfg``: True if it does."""
        assert self.pool is not None
        vm = self.pool.take(cfg)
        if vm is None:
            return False
        self.ready = vm
        self.started = Start(StartMode.WARM, "warm start: a ready VM of the node's pool")
        try:
            guest = self._launch(cfg, InstanceState(), machine=vm.machine)
            vm.assign(cfg)
        except VMCrashed as exc:
            log.warning("the ready VM could not run this instance: %s", exc)
            self._drop_ready()
            return False
        guest.state.qemu_started = vm.machine.started_at
        return True

    def _drop_ready(self) -> None:
        if self.guest is not None:
            self._cpu_done += self.guest.machine.cpu_seconds
            self.guest = None
        if self.ready is not None:
            self.ready.discard()
            self.ready = None

    def start_restored(
        self, state_file: Path, *, warm_cmdline: bool, name: str, state: InstanceState
    ) -> GuestRun:
        """Start from a saved VM (a checkpoint's ``state_file``, its disks already in
        place); ``state`` is what the host knew of the guest when it was saved."""
        prepared = self._need_prepared()
        cfg = warm.with_warm_cmdline(prepared.cfg) if warm_cmdline else prepared.cfg
        self.started = Start(StartMode.RESTORED, f"restored from checkpoint {name}")
        return self._launch(dataclasses.replace(cfg, incoming=state_file), state)

    def _launch(
        self, cfg: MachineConfig, state: InstanceState, machine: QemuMachine | None = None
    ) -> GuestRun:
        prepared = self._need_prepared()
        timeout = self.opts.timeout if self.opts.timeout is not None else prepared.desc.timeout
        self.guest = GuestRun(
            cfg,
            prepared.inst,
            timeout=timeout,
            boot_timeout=self.opts.boot_timeout,
            on_update=self.on_update,
            state=state,
            machine=machine,
        )
        self._t_launch = self._t_launch or time.monotonic()
        self.guest.launch()
        return self.guest

    # -- running ---------------------------------------------------------------------------

    @property
    def state(self) -> InstanceState:
        return self.guest.state if self.guest is not None else InstanceState()

    def poll(self) -> bool:
        """Take in what the guest did; True once it has ended (a warm start whose saved
        guest did not load is retried as a cold boot first)."""
        guest = self._need_guest()
        if not guest.poll():
            return False
        if self._warm_start_failed(guest):
            if self.ready is not None:  # the pool's VM failed: a VM of this instance's own
                self._drop_ready()
                cfg, how = self._need_prepared().warm_config()
                self.started = Start(StartMode.WARM if cfg.incoming else StartMode.COLD, how)
                self._launch(cfg, InstanceState())
            elif guest.cfg.ram_file is not None:
                tail = guest.machine.qemu_log_tail(1) or f"exit status {guest.machine.returncode}"
                self._shared_ram_instead(guest, tail)
            else:
                self._boot_cold_instead(guest)
            return False
        return True

    def run(self) -> None:
        """Poll until the guest has ended."""
        while not self.poll():
            self._need_guest().machine.wait_exit_event(0.02)

    def _warm_start_failed(self, guest: GuestRun) -> bool:
        started = self.started
        if started is None or started.mode is not StartMode.WARM:
            return False
        return guest.machine.returncode not in (0, None) and not guest.state.event_count

    def _shared_ram_instead(self, failed: GuestRun, reason: str) -> None:
        """The saved guest whose RAM is a file did not load: resume the one whose RAM is
        in its state instead (saving it first if need be)."""
        failed.stop()
        self._cpu_done += failed.machine.cpu_seconds
        prepared = self._need_prepared()
        prepared.shared_ram_failed(reason)
        cfg, how = prepared.warm_config(shared_ram=False)
        self.started = Start(StartMode.WARM if cfg.incoming else StartMode.COLD, how)
        self._launch(cfg, InstanceState())

    def _boot_cold_instead(self, failed: GuestRun) -> None:
        """The node's saved booted guest did not load (QEMU changed underneath?): forget
        it and boot this instance cold."""
        log.warning("warm start failed (%s); booting cold", failed.machine.qemu_log_tail())
        prepared = self._need_prepared()
        if failed.cfg.incoming is not None and failed.cfg.ram_file is None:
            failed.cfg.incoming.unlink(missing_ok=True)
        self._cpu_done += failed.machine.cpu_seconds
        prepared.shrink_disks()
        self.started = Start(StartMode.COLD, "cold boot: the saved guest did not load")
        self._launch(prepared.cfg, InstanceState())

    def suspend(self) -> None:
        self._need_guest().suspend()

    def resume(self) -> None:
        self._need_guest().resume()

    @property
    def suspended(self) -> bool:
        return self.guest is not None and self.guest.suspended

    def cpu_seconds(self) -> float:
        """CPU time of this instance's QEMU processes (one per start: a warm start that
        fell back to a cold boot had two), the one running included."""
        from vmwu.procstat import cpu_seconds

        guest = self.guest
        if guest is None:
            return self._cpu_done
        machine = guest.machine
        if machine.returncode is not None or machine.pid is None:
            return self._cpu_done + machine.cpu_seconds
        return self._cpu_done + cpu_seconds(machine.pid)

    # -- ending ----------------------------------------------------------------------------

    def stop(self) -> None:
        """End the guest without collecting anything (a quit, an abort, a time limit)."""
        if self.guest is not None:
            self.guest.stop()
            self._cpu_done += self.guest.machine.cpu_seconds
            self.guest = None

    def collect(self) -> RunResult:
        """What the ended instance left: outputs copied, how it ended classified, and its
        status.json written."""
        prepared, guest = self._need_prepared(), self._need_guest()
        t_exit = time.monotonic()
        prepared.shrink_disks()
        result = collect(prepared, guest.machine, guest.state, guest.error)
        status = result.status
        assert status is not None and status.timings is not None
        status.timings.prepare = round(self._t_launch - self._t_begin, 3)
        status.timings.qemu = round(t_exit - self._t_launch, 3)
        status.timings.collect = round(time.monotonic() - t_exit, 3)
        status.start = str(self.started) if self.started else None
        if self.opts.keep:
            status.instance_dir = str(prepared.inst)
        guest.state.phase = Phase.DONE
        return result

    def release(self) -> None:
        """Stop the guest if it still runs and remove the instance directory (unless
        --keep)."""
        try:
            if self.guest is not None and not self.guest.ended:
                self.stop()
            if self.ready is not None:  # never given another instance
                self.ready.discard()
                self.ready = None
        finally:
            if self.prepared is not None:
                self.prepared.release()
                self.prepared = None

    def _need_prepared(self) -> Prepared:
        if self.prepared is None:
            raise RuntimeError("the instance is not prepared")
        return self.prepared

    def _need_guest(self) -> GuestRun:
        if self.guest is None:
            raise RuntimeError("the instance has not started")
        return self.guest
