"""A running guest, followed: the one loop every VM of vmwu goes through.

:class:`GuestRun` owns one :class:`QemuMachine` and the agent's event stream, and applies
the limits every guest is held to: the boot timeout (the agent must report within it), the
wall-clock timeout, a console or event port that floods the host, and an agent that
reports an error or speaks another protocol. Time spent suspended counts towards neither
timeout. It never blocks: :meth:`poll` says whether QEMU has ended; :meth:`run` loops
until it has.

Users: an instance of a unit (``vmwu.run.instance``: ``vmwu run``, the wrapper's VM
tasks), the warm-start template (``vmwu.vmm.warm``), the guest-packages layer builder
(``vmwu.pack.layer``) and the foreign-architecture base builder
(``vmwu.bases.foreign``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vmwu.errors import GuestNeverBooted, GuestTimeout, VMCrashed, VmwuError
from vmwu.guest.events import EventReader, InstanceState, Phase, check_log_sizes
from vmwu.vmm.qemu import MachineConfig, QemuMachine

log = logging.getLogger(__name__)

Update = Callable[[InstanceState], None]
QMP_TIMEOUT = 60.0  # no QEMU may hang vmwu: every QMP command waits at most this long
_POLL = 0.02  # seconds between looks at the events when nothing wakes us
_UPDATE_EVERY = 0.1
_LOG_CHECK_EVERY = 0.5


class GuestRun:
    """``cfg`` run once in ``workdir`` (where QEMU's own log goes).

    ``timeout``: seconds of (unsuspended) life before the guest is stopped (None: no
    limit); ``boot_timeout``: seconds within which the agent must report (None: the guest
    has no agent, e.g. a second-stage installer); ``on_update``: called with the state
    about ten times a second; ``machine``: a QEMU already running (a pooled VM that
    was just given this guest's disks and files) instead of one to launch."""

    def __init__(
        self,
        cfg: MachineConfig,
        workdir: Path,
        *,
        timeout: float | None = None,
        boot_timeout: float | None = None,
        on_update: Update | None = None,
        state: InstanceState | None = None,
        machine: QemuMachine | None = None,
    ) -> None:
        self.cfg = cfg
        self.workdir = workdir
        self.timeout = timeout
        self.boot_timeout = boot_timeout
        self.on_update = on_update
        self.machine = machine or QemuMachine(cfg, log_path=workdir / "qemu.log")
        self.state = state or InstanceState()
        events = cfg.events_log or workdir / "events.jsonl"
        self.events = EventReader(events)
        self.error: VmwuError | None = None  # why vmwu stopped the guest, if it did
        self.suspended = False
        self._active = 0.0  # seconds run while not suspended
        self._tick = 0.0
        self._last_update = 0.0
        self._last_log_check = 0.0
        self._qmp_ready = False

    # -- life --------------------------------------------------------------------------------

    def launch(self) -> None:
        self.events.path.unlink(missing_ok=True)
        if self.machine.pid is None:
            self.machine.launch()
        self._tick = time.monotonic()
        if not self.state.qemu_started:
            self.state.qemu_started = self.machine.started_at
        if self.state.phase == Phase.PREPARING:
            self.state.phase = Phase.BOOTING

    @property
    def ended(self) -> bool:
        return self.machine.returncode is not None

    def poll(self) -> bool:
        """Take in what happened since the last call; True once QEMU has exited."""
        code = self.machine.poll()
        now = time.monotonic()
        for event in self.events.read():
            self.state.apply(event, now)
        if code is not None:
            return True
        if not self.suspended:
            self._active += now - self._tick
        self._tick = now
        if self.error is None:
            self.error = self._limit_reached(now)
            if self.error is not None:
                self.stop()
                for event in self.events.read():
                    self.state.apply(event, time.monotonic())
                return True
        if self.on_update is not None and now - self._last_update >= _UPDATE_EVERY:
            self.on_update(self.state)
            self._last_update = now
        return False

    def _limit_reached(self, now: float) -> VmwuError | None:
        if self.timeout is not None and self._active > self.timeout:
            return GuestTimeout(
                f"the instance ran longer than --timeout {self.timeout:g} s and was stopped"
            )
        if (
            self.boot_timeout is not None
            and self.state.booted_at is None
            and self._active > self.boot_timeout
        ):
            return GuestNeverBooted(
                f"the guest did not reach the vmwu agent within {self.boot_timeout:g} s"
            )
        if self.state.agent_incompatible:  # nothing it says can be trusted to mean the same
            return GuestNeverBooted(f"the vmwu agent failed: {self.state.agent_error}")
        if now - self._last_log_check >= _LOG_CHECK_EVERY:
            self._last_log_check = now
            flood = check_log_sizes(self.events.path, self.cfg.console_log)
            if flood is not None:
                return VMCrashed(f"{flood}; it was stopped")
        return None

    def run(self) -> None:
        """Poll until QEMU has exited."""
        while not self.poll():
            self.machine.wait_exit_event(_POLL)

    def run_until(self, reached: Callable[[InstanceState], bool], timeout: float) -> bool:
        """Poll until ``reached(state)`` (True), QEMU exits or ``timeout`` s pass (False)."""
        deadline = time.monotonic() + timeout
        while not reached(self.state):
            if self.poll() or time.monotonic() > deadline:
                return reached(self.state)
            self.machine.wait_exit_event(_POLL)
        return True

    def stop(self, timeout: float = 2.0) -> None:
        """End QEMU (QMP quit, then SIGTERM, then SIGKILL) and reap it."""
        self.machine.shutdown(timeout=timeout)

    # -- control -----------------------------------------------------------------------------

    def command(self, name: str, **args: Any) -> Any:
        """A QMP command (connected at first use, every command bounded in time)."""
        if not self._qmp_ready:
            self.machine.qmp().settimeout(QMP_TIMEOUT)
            self._qmp_ready = True
        return self.machine.command(name, **args)

    def suspend(self) -> None:
        """Pause the guest (QMP stop): its clock and both timeouts stop with it."""
        self.poll()
        self.command("stop")
        self.suspended = True

    def resume(self) -> None:
        self.command("cont")
        self.suspended = False
        self._tick = time.monotonic()

    def qemu_seconds(self) -> float:
        """Wall-clock seconds QEMU has run (so far)."""
        end = self.machine.exited_at or time.monotonic()
        return end - self.machine.started_at if self.machine.started_at else 0.0
