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
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from vmwu.wrapper.boinc.api import BoincSession, ClientMessage
from vmwu.wrapper.control import Action, Control, Request

SOURCE = "BOINC client"

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
        self._last_checkpoint: Any = None
        self._cpu0 = time.process_time()
        self.last_report: dict[str, Any] = {}

    def requests(self) -> list[Request]:
        ours = [
            Request(_ACTIONS[m], SOURCE if m is not ClientMessage.CLIENT_GONE else "client gone")
            for m in self.session.poll()
        ]
        return ours + super().requests()

    def cpu_time(self, data: dict[str, Any]) -> float:
        """The job's CPU seconds: QEMU's and the host tasks' (every run, from the
        wrapper's status), this wrapper process's own, and never less than the client
        counted for the earlier runs."""
        tasks = float(data.get("cpu_time") or 0.0)
        own = time.process_time() - self._cpu0
        return max(tasks + own, self.session.init.wu_cpu_time)

    def status_changed(self, data: dict[str, Any]) -> None:
        cpu = self.cpu_time(data)
        last = data.get("last_checkpoint")
        if last is not None and last != self._last_checkpoint:
            self._last_checkpoint = last
            self.session.checkpoint_completed(cpu)
        fraction = data.get("fraction_done")
        self.session.report(cpu, None if fraction is None else float(fraction))
        self.last_report = {"cpu_time": cpu, "fraction_done": fraction}
