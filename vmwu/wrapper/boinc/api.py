"""The app side of BOINC's client protocol, in Python (docs/boinc.md says why not
libboinc_api through ctypes).

A :class:`BoincSession` is what ``boinc_init`` + the BOINC API's timer thread do, turned
into calls that the app's own loop makes (no thread, no signal):

- :meth:`~BoincSession.poll` reads the heartbeat and process-control channels and
  returns what the client asked, typed (:class:`ClientMessage`): suspend, resume, quit,
  abort, and ``CLIENT_GONE`` once the client process has died or no heartbeat came for
  30 s (the API's ``HEARTBEAT_GIVEUP_SECS``);
- :meth:`~BoincSession.report` sends the app status (current CPU time, CPU time at the
  last checkpoint, fraction done mapped into the client's ``fraction_done_start..end``),
  skipped while the client has not read the last one, as the API does;
- :meth:`~BoincSession.finish` and :meth:`~BoincSession.temporary_exit` write the files
  the client reads after the app exits (``boinc_finish_called``,
  ``boinc_temporary_exit``) and return the exit status for the caller to exit with.

Messages for the volunteer go to stderr, which the client appends to ``stderr.txt`` in the
slot and sends back with the result.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from vmwu.errors import BadInput, VmwuError
from vmwu.hostfs import write_atomic
from vmwu.wrapper.boinc.initdata import INIT_DATA_FILE, InitData, read_init_data
from vmwu.wrapper.boinc.links import LogicalNames
from vmwu.wrapper.boinc.shmem import MMAP_FILE, Channel, SharedMemory

HEARTBEAT_GIVEUP = 30.0  # seconds without a heartbeat: the client is gone
EXIT_ABORTED_BY_CLIENT = 194  # lib/error_numbers.h
LOCKFILE = "boinc_lockfile"
FINISH_FILE = "boinc_finish_called"
TEMPORARY_EXIT_FILE = "boinc_temporary_exit"
MAX_TEMPORARY_DELAY = 86400  # the client reads a longer delay as 300 s


class ClientMessage(StrEnum):
    SUSPEND = "suspend"
    RESUME = "resume"
    QUIT = "quit"  # the client is shutting down: checkpoint, exit; it restarts the task later
    ABORT = "abort"  # the task is aborted: stop everything, exit
    CLIENT_GONE = "client-gone"  # the client died: exit (it restarts the task when it's back)


# In the order BOINC's handle_process_control_msg looks for them.
_CONTROL_TAGS = (
    ("<suspend/>", ClientMessage.SUSPEND),
    ("<resume/>", ClientMessage.RESUME),
    ("<quit/>", ClientMessage.QUIT),
    ("<abort/>", ClientMessage.ABORT),
)


class SlotBusy(VmwuError):
    """Another app holds the slot's ``boinc_lockfile``."""


def running_under_client(slot: Path) -> bool:
    """The BOINC client started us: its ``init_data.xml`` and ``boinc_mmap_file`` are in
    the slot (our working directory)."""
    return (slot / INIT_DATA_FILE).is_file() and (slot / MMAP_FILE).is_file()


def parse_control(text: str) -> list[ClientMessage]:
    """The requests in one process-control message, in BOINC's order."""
    return [message for tag, message in _CONTROL_TAGS if tag in text]


def status_message(
    cpu_time: float, checkpoint_cpu_time: float, fraction_done: float | None, init: InitData
) -> str:
    """The ``app_status`` text, as ``update_app_progress`` formats it."""
    text = (
        f"<current_cpu_time>{cpu_time:e}</current_cpu_time>\n"
        f"<checkpoint_cpu_time>{checkpoint_cpu_time:e}</checkpoint_cpu_time>\n"
        "<want_network>0</want_network>\n"
    )
    if fraction_done is not None:
        fraction = min(max(fraction_done, 0.0), 1.0)
        start, end = init.fraction_done_start, init.fraction_done_end
        text += f"<fraction_done>{start + fraction * (end - start):e}</fraction_done>\n"
    return text


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class ClientState:
    suspended: bool = False
    quit_requested: bool = False
    abort_requested: bool = False
    client_gone: bool = False
    heartbeats: int = 0
    working_set_size: float = 0.0
    max_working_set_size: float = 0.0


class BoincSession:
    """An app's session with the BOINC client that started it in ``slot``."""

    def __init__(
        self,
        slot: Path,
        *,
        clock: Callable[[], float] = time.monotonic,
        pid_alive: Callable[[int], bool] = _pid_alive,
        stderr: Callable[[str], None] | None = None,
    ) -> None:
        self.slot = slot.absolute()
        self.init = read_init_data(self.slot / INIT_DATA_FILE)
        self.names = LogicalNames(self.slot, Path(self.init.project_dir or self.slot))
        self._clock = clock
        self._pid_alive = pid_alive
        self._stderr = stderr
        self.state = ClientState()
        self._last_heartbeat = clock()
        self._lock_fd: int | None = None
        self._take_lock()
        try:
            self.shm = SharedMemory(self.slot / MMAP_FILE)
        except BaseException:
            self._release_lock()
            raise
        self.checkpoint_cpu_time = self.init.wu_cpu_time
        self.last_status: str | None = None

    # -- the slot lock ------------------------------------------------------------------------

    def _take_lock(self) -> None:
        """What ``boinc_init`` does with ``boinc_lockfile``: one app per slot."""
        path = self.slot / LOCKFILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise BadInput(f"cannot open {path}: {exc.strerror}") from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise SlotBusy(f"another app holds {path}") from None
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.lockf(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def close(self) -> None:
        self.shm.close()
        self._release_lock()

    def __enter__(self) -> BoincSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- messages -----------------------------------------------------------------------------

    def log(self, message: str) -> None:
        """A line in the task's ``stderr.txt``, prefixed as the BOINC API prefixes its own."""
        line = f"{time.strftime('%H:%M:%S')} ({os.getpid()}): {message}"
        if self._stderr is not None:
            self._stderr(line)
        else:
            print(line, file=sys.stderr, flush=True)

    def poll(self) -> list[ClientMessage]:
        """What the client asked since the last poll. Call it often (BOINC's timer does
        ten times a second): a request left unread for 180 s gets the app killed."""
        now = self._clock()
        beat = self.shm.receive(Channel.HEARTBEAT)
        if beat is not None:
            if "<heartbeat/>" in beat:
                self._last_heartbeat = now
                self.state.heartbeats += 1
            wss, max_wss = _float_in(beat, "wss"), _float_in(beat, "max_wss")
            if wss is not None:
                self.state.working_set_size = wss
            if max_wss is not None:
                self.state.max_working_set_size = max_wss
        messages: list[ClientMessage] = []
        request = self.shm.receive(Channel.PROCESS_CONTROL_REQUEST)
        if request is not None:
            for message in parse_control(request):
                if message is ClientMessage.SUSPEND:
                    self.state.suspended = True
                elif message is ClientMessage.RESUME:
                    self.state.suspended = False
                elif message is ClientMessage.QUIT:
                    self.state.quit_requested = True
                elif message is ClientMessage.ABORT:
                    self.state.abort_requested = True
                messages.append(message)
        if not self.state.client_gone and self._gone(now):
            self.state.client_gone = True
            messages.append(ClientMessage.CLIENT_GONE)
        return messages

    def _gone(self, now: float) -> bool:
        pid = self.init.client_pid
        if pid > 0 and not self._pid_alive(pid):
            self.log("BOINC client no longer exists - exiting")
            return True
        if now - self._last_heartbeat > HEARTBEAT_GIVEUP:
            self.log(f"No heartbeat from client for {HEARTBEAT_GIVEUP:g} sec - exiting")
            return True
        return False

    def report(
        self,
        cpu_time: float,
        fraction_done: float | None,
        *,
        checkpoint_cpu_time: float | None = None,
        force: bool = False,
    ) -> bool:
        """Send the app status: ``cpu_time`` of the whole job (earlier runs included,
        ``init.wu_cpu_time`` is where this run started), the job's fraction done (0..1, or
        None when not known yet). Skipped (False) while the client has not read the last
        one, and while suspended, as the BOINC API does, unless ``force``."""
        if checkpoint_cpu_time is not None:
            self.checkpoint_cpu_time = checkpoint_cpu_time
        if self.state.suspended and not force:
            return False
        text = status_message(cpu_time, self.checkpoint_cpu_time, fraction_done, self.init)
        sent = self.shm.send(Channel.APP_STATUS, text)
        if sent:
            self.last_status = text
        return sent

    def checkpoint_completed(self, cpu_time: float) -> None:
        """``boinc_checkpoint_completed``: the job's CPU time at its last checkpoint,
        which the client keeps and logs as "checkpointed"."""
        self.checkpoint_cpu_time = cpu_time

    # -- the end ------------------------------------------------------------------------------

    def flush_status(
        self,
        cpu_time: float,
        fraction_done: float | None,
        wait: float,
        *,
        checkpoint_cpu_time: float | None = None,
        until_read: bool = False,
    ) -> bool:
        """The last app status. The client takes one a second; if the one before is
        still unread after ``wait`` seconds, it is replaced (this one supersedes it).
        With ``until_read``, wait (within the same ``wait``) for the client to take this
        one too. True if the client has taken it (or it was not asked to wait)."""
        if checkpoint_cpu_time is not None:
            self.checkpoint_cpu_time = checkpoint_cpu_time
        end = self._clock() + wait
        while not self.report(cpu_time, fraction_done, force=True):
            if self._clock() >= end:
                text = status_message(cpu_time, self.checkpoint_cpu_time, fraction_done, self.init)
                self.shm.send(Channel.APP_STATUS, text, overwrite=True)
                self.last_status = text
                break
            time.sleep(0.1)
        while until_read and self.shm.pending(Channel.APP_STATUS):
            if self._clock() >= end:
                return False
            time.sleep(0.1)
        return True

    def finish(
        self,
        status: int,
        *,
        cpu_time: float,
        message: str | None = None,
        notice: bool = False,
        wait: float = 2.0,
    ) -> int:
        """``boinc_finish_message``: report fraction done 1 (status 0), write
        ``boinc_finish_called`` and return ``status`` for the caller to exit with. An exit
        0 without that file would be a "premature exit" the client restarts."""
        self.log(f"called boinc_finish({status})")
        self.flush_status(cpu_time, 1.0 if status == 0 else None, wait)
        text = f"{status}\n"
        if message:
            text += f"{_one_line(message)}\n{'notice' if notice else ''}\n"
        _write_file(self.slot / FINISH_FILE, text)
        return status

    def temporary_exit(self, delay: float, reason: str, *, notice: bool = False) -> int:
        """``boinc_temporary_exit``: the client restarts the task after ``delay`` seconds
        (at most a day) instead of failing it, and shows ``reason``. Returns 0, the status
        to exit with."""
        self.log(f"temporary exit for {int(min(max(delay, 0), MAX_TEMPORARY_DELAY))} s: {reason}")
        return write_temporary_exit(self.slot, delay, reason, notice=notice)


def write_temporary_exit(slot: Path, delay: float, reason: str, *, notice: bool = False) -> int:
    """Write ``boinc_temporary_exit`` into ``slot`` (also without a session, e.g. when
    another app holds the slot); returns 0, the status to exit with."""
    seconds = int(min(max(delay, 0), MAX_TEMPORARY_DELAY))
    # The client only takes the file as a temporary exit if it has a reason line.
    text = f"{seconds}\n{_one_line(reason) or 'temporary exit'}\n"
    if notice:
        text += "notice\n"
    _write_file(slot / TEMPORARY_EXIT_FILE, text)
    return 0


def _one_line(text: str) -> str:
    return " ".join(text.split())[:250]


def _float_in(text: str, tag: str) -> float | None:
    start = text.find(f"<{tag}>")
    end = text.find(f"</{tag}>", start + 1)
    if start < 0 or end < 0:
        return None
    try:
        return float(text[start + len(tag) + 2 : end])
    except ValueError:
        return None


def _write_file(path: Path, text: str) -> None:
    """Replace ``path`` atomically (a reader never sees half of it), durably."""
    write_atomic(path, text.encode(), durable=True)
