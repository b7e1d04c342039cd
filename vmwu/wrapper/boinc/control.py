"""The BOINC client as a control source for the wrapper's loop.

:class:`BoincControl` is a :class:`~vmwu.wrapper.control.Control` (so signals and
``vmwu wrap ctl`` keep working in a BOINC slot) whose requests also come from the client:
each :meth:`requests` call polls the shared memory, and every status the wrapper writes
is reported to the client as app status. Nothing else in the wrapper knows BOINC is there.

============================  ====================================================
client                        wrapper request
============================  ====================================================
``<suspend/>``, ``<resume/>``   suspend, resume
``<quit/>``                   quit (checkpoint, stop; the client restarts us later)
``<abort/>``                  abort
no heartbeat for 30 s,        quit
client process gone
============================  ====================================================

The app status carries the job's CPU time as the BOINC API counts it (see
:meth:`BoincControl.cpu_times`) and its fraction done (task weights and the guest's own
progress, ``vmwu-progress``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vmwu.wrapper.boinc.api import BoincSession, ClientMessage
from vmwu.wrapper.control import Action, Control, Request

SOURCE = "BOINC client"
GONE = "client gone"
# Seconds before the client starts the task again after a quit it did not ask for (a
# signal, `vmwu wrap ctl quit`): main.py makes that a temporary exit.
RESTART_AFTER_STOP = 60

_ACTIONS = {
    ClientMessage.SUSPEND: Action.SUSPEND,
    ClientMessage.RESUME: Action.RESUME,
    ClientMessage.QUIT: Action.QUIT,
    ClientMessage.ABORT: Action.ABORT,
    ClientMessage.CLIENT_GONE: Action.QUIT,
}


class BoincControl(Control):
    def __init__(self, socket_path: Path, session: BoincSession) -> None:
        super().__init__(socket_path)
        self.session = session
        self.last_report: dict[str, Any] = {}

    def requests(self) -> list[Request]:
        ours = [
            Request(_ACTIONS[m], SOURCE if m is not ClientMessage.CLIENT_GONE else GONE)
            for m in self.session.poll()
        ]
        return ours + super().requests()

    def resume_hint(self, slot: Path, source: str) -> str:
        """Under the client, nobody runs the wrapper again by hand: the client does."""
        if source == SOURCE:
            return "the BOINC client starts the task again when it next runs it"
        if source == GONE:
            return "the BOINC client starts the task again when it runs again"
        return f"a temporary exit: the BOINC client starts the task again in {RESTART_AFTER_STOP} s"

    def cpu_times(self, data: dict[str, Any]) -> tuple[float, float]:
        """(current, checkpoint) CPU seconds as the BOINC API counts them: the client's
        ``wu_cpu_time`` (its CPU time of the job at the checkpoint this run went on from)
        plus this run's CPU time (QEMU's, the host tasks', this wrapper's), now and when
        this run last wrote a checkpoint (``boinc_checkpoint_completed``)."""
        start = self.session.init.wu_cpu_time
        run = float(data.get("run_cpu_time") or 0.0)
        at_checkpoint = data.get("checkpoint_run_cpu_time")
        checkpoint = start if at_checkpoint is None else start + float(at_checkpoint)
        return start + run, checkpoint

    def status_changed(self, data: dict[str, Any]) -> None:
        cpu, checkpoint = self.cpu_times(data)
        fraction = data.get("fraction_done")
        fraction = None if fraction is None else float(fraction)
        self.session.report(cpu, fraction, checkpoint_cpu_time=checkpoint)
        self.last_report = {
            "cpu_time": cpu,
            "checkpoint_cpu_time": checkpoint,
            "fraction_done": fraction,
        }
