"""vmwu's process guard: a command's whole process tree dies with the vmwu process that
started it, whatever kills that process (SIGKILL included).

``PR_SET_PDEATHSIG`` only reaches a *direct* child. A plan's ``sh -c`` step, a host task
or ``mmdebstrap`` start trees: shells, their children, daemons that ``setsid`` and fork
twice. :func:`vmwu.tools.spawn` (``tree=True``) starts such a command under this guard::

    vmwu ──lifeline pipe──► guard (child subreaper) ──► command ──► ... ──► its descendants

- The guard is a **child subreaper** (``PR_SET_CHILD_SUBREAPER``): every orphan of the
  tree (a daemon whose parent exited) is re-parented to it, not to init, so the whole tree
  stays below it and it reaps all of it.
- It holds the read end of a **lifeline pipe** whose write end only vmwu holds. When vmwu
  dies, however it dies, the kernel closes the write end and the guard reads EOF. (Unlike
  ``PR_SET_PDEATHSIG``, which fires when the *thread* that forked a child exits, a pipe
  belongs to the process: the guard may be started from any thread.) The guard also sets
  ``PR_SET_PDEATHSIG`` to **SIGCONT**: SIGCONT wakes a guard that a batch system stopped
  together with the rest of the job (SIGSTOP), so it notices the EOF even then.
- It then ends the tree: SIGTERM and SIGCONT to every descendant (found through
  ``/proc``; a stopped process acts on SIGTERM only once continued), up to ``GRACE``
  seconds for them to exit, then SIGKILL again and again until nothing is left below it.
- When the command itself exits, what it left running (background jobs, daemons) is ended
  the same way, and the guard exits with the command's status (killed by signal N: the
  guard kills itself with N, so the caller sees the same thing as without a guard).
- The command runs in a process group of its own (or a session of its own), so the guard
  never receives what is sent to the command's group (suspend's SIGSTOP, a terminal's
  signals). The guard ignores SIGTERM, SIGINT, SIGHUP and SIGQUIT: it only ends when the
  command has ended, or vmwu has.
- The command gets ``PR_SET_PDEATHSIG`` = SIGKILL: if the guard itself is killed with -9,
  its command dies too (its descendants may then survive: do not SIGKILL the guard alone).

Protocol (vmwu side in :mod:`vmwu.tools`): ``guard LIFELINE_FD STATUS_FD SESSION GRACE
PROGRAM -- ARGV...`` (PROGRAM, a path, is executed with ARGV as it is, ARGV[0] included).
The guard writes one line on STATUS_FD and closes it: ``ok PID`` once the command runs,
``exec ERRNO`` if it could not be executed (the guard then exits 127), or ``gone`` if vmwu
died before the command was started.

This module uses the standard library only and imports nothing of vmwu: it runs in
``python -I -S`` (no site: a bare interpreter start-up plus this module's imports, about
15-25 ms of CPU), or, in a frozen vmwu, as ``vmwu --vmwu-process-guard ...``
(``vmwu/__main__.py`` and ``vmwu.cli.main`` hand that over to :func:`main` before anything
else is imported). It also runs as a script (``python -I -S .../vmwu/guard.py ...``).
"""

from __future__ import annotations

import errno
import os
import resource
import select
import sys
import time

try:  # the C module: `signal` itself imports enum, which is a third of the start-up
    import _signal as signal  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # not CPython
    import signal  # type: ignore[no-redef,unused-ignore]

FLAG = "--vmwu-process-guard"

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

# What the guard does not die of (it ends with its command, or with vmwu).
IGNORED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
# What wakes its loop (handlers that do nothing: the wakeup fd is what matters).
WAKERS = (signal.SIGCHLD, signal.SIGCONT)


def _nothing(signum: int, frame: object) -> None:
    pass


def _children(pid: int) -> list[int] | None:
    """The children of ``pid`` from /proc/PID/task/TID/children (None: no such files)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    kids: list[int] = []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as fh:
                kids += [int(word) for word in fh.read().split()]
        except FileNotFoundError:
            if not os.path.exists(f"/proc/{pid}/task/{tid}"):
                continue  # that thread just ended
            return None  # a kernel without CONFIG_PROC_CHILDREN
        except OSError:
            continue
    return kids


def descendants(root: int) -> list[int]:
    """Every process below ``root``: walked down the children lists, or found in a scan
    of all of /proc (pid -> parent pid) where the kernel has no children lists."""
    out: list[int] = []
    todo = [root]
    while todo:
        kids = _children(todo.pop())
        if kids is None:
            return _scan(root)
        out += kids
        todo += kids
    return out


def _scan(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        # the command name (field 2) may hold spaces and parentheses
        fields = data[data.rfind(b")") + 2 :].split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(entry))
    out: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class Guard:
    def __init__(self, lifeline: int, status: int, session: bool, grace: float) -> None:
        self.lifeline = lifeline
        self.status = status
        self.session = session
        self.grace = grace
        self.me = os.getpid()
        self.command = 0
        self.command_status: int | None = None
        import ctypes  # here, not at the top: vmwu.tools imports this module

        self.libc = ctypes.CDLL(None, use_errno=True)
        # signals ignored when the guard started (nohup's SIGHUP): the command inherits that
        self.ignored = {s for s in (*IGNORED, *WAKERS) if signal.getsignal(s) == signal.SIG_IGN}
        self.wake_r, wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        for sig in IGNORED:
            signal.signal(sig, signal.SIG_IGN)
        for sig in WAKERS:
            signal.signal(sig, _nothing)
        self.libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        self.libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGCONT), 0, 0, 0)

    # -- vmwu's side -------------------------------------------------------------------------

    def vmwu_gone(self) -> bool:
        """Has the lifeline's write end been closed (vmwu died or let go)?"""
        try:
            ready, _, _ = select.select([self.lifeline], [], [], 0)
            if not ready:
                return False
            return os.read(self.lifeline, 64) == b""
        except OSError:
            return True

    def report(self, line: str) -> None:
        try:
            os.write(self.status, line.encode() + b"\n")
            os.close(self.status)
        except OSError:
            pass

    # -- the command -------------------------------------------------------------------------

    def start(self, program: str, argv: list[str]) -> int | None:
        """Fork and exec the command; its errno if it could not be executed."""
        err_r, err_w = os.pipe()  # close-on-exec: EOF means the exec worked
        pid = os.fork()
        if pid == 0:  # the command, until exec
            try:
                signal.set_wakeup_fd(-1)
                for sig in (*IGNORED, *WAKERS):
                    signal.signal(sig, signal.SIG_IGN if sig in self.ignored else signal.SIG_DFL)
                for sig in (signal.SIGPIPE, signal.SIGXFSZ):  # as subprocess does
                    signal.signal(sig, signal.SIG_DFL)
                self.libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
                if os.getppid() != self.me:
                    os._exit(1)
                if self.session:
                    os.setsid()
                else:
                    os.setpgid(0, 0)
                os.execv(program, argv)
            except OSError as exc:
                os.write(err_w, str(exc.errno or 0).encode())
            except BaseException:
                os.write(err_w, b"0")
            os._exit(127)
        os.close(err_w)
        if not self.session:
            try:  # also from here, so the group exists whichever runs first
                os.setpgid(pid, pid)
            except OSError:
                pass
        chunks = []
        while True:
            try:
                chunk = os.read(err_r, 64)
            except InterruptedError:
                continue
            if not chunk:
                break
            chunks.append(chunk)
        os.close(err_r)
        self.command = pid
        if chunks:
            os.waitpid(pid, 0)
            return int(b"".join(chunks) or b"0") or errno.ENOEXEC
        return None

    def reap(self) -> bool:
        """Reap what has exited; whether anything is left below the guard. (As a
        subreaper, the guard has no child left exactly when nothing is left below it:
        every orphan comes to it.)"""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return False
            except InterruptedError:
                continue
            if pid == 0:
                return True
            if pid == self.command:
                self.command_status = status

    def sleep(self, seconds: float, *, lifeline: bool = False) -> None:
        """Wait for a signal (a child exiting, SIGCONT), or with ``lifeline`` for vmwu's
        end, at most ``seconds``."""
        watched = [self.wake_r, self.lifeline] if lifeline else [self.wake_r]
        try:
            select.select(watched, [], [], seconds)
        except InterruptedError:
            pass
        try:
            while os.read(self.wake_r, 512):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def end_tree(self) -> None:
        """SIGTERM (and SIGCONT) to everything below, ``grace`` seconds, then SIGKILL until
        nothing is left."""
        if not self.reap():
            return
        self.signal_all(signal.SIGTERM)
        self.signal_all(signal.SIGCONT)  # a stopped process acts on SIGTERM once continued
        deadline = time.monotonic() + self.grace
        while (left := deadline - time.monotonic()) > 0:
            self.sleep(min(left, 0.5))
            if not self.reap():
                return
        pause = 0.01
        while self.reap():
            self.signal_all(signal.SIGKILL)
            self.sleep(pause)
            pause = min(pause * 2, 0.5)

    def signal_all(self, sig: int) -> None:
        for pid in descendants(self.me):
            try:
                os.kill(pid, sig)
            except OSError:
                pass

    def run(self, program: str, argv: list[str]) -> int:
        if self.vmwu_gone():
            self.report("gone")
            return 1
        failed = self.start(program, argv)
        if failed is not None:
            self.report(f"exec {failed}")
            return 127
        self.report(f"ok {self.command}")
        while True:
            self.reap()
            if self.command_status is not None:
                self.end_tree()
                return self.exit_like(self.command_status)
            if self.vmwu_gone():
                self.end_tree()
                return 1
            self.sleep(5.0, lifeline=True)

    def exit_like(self, status: int) -> int:
        """The command's exit code; if a signal killed it, die of the same signal."""
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            for step in (
                lambda: resource.setrlimit(resource.RLIMIT_CORE, (0, 0)),  # no core of ours
                lambda: signal.signal(sig, signal.SIG_DFL),  # (not for SIGKILL: EINVAL)
                lambda: signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig]),
                lambda: os.kill(self.me, sig),
            ):
                try:
                    step()
                except (OSError, ValueError):
                    pass
            return 128 + sig
        return os.waitstatus_to_exitcode(status)


def main(argv: list[str]) -> int:
    """``LIFELINE_FD STATUS_FD SESSION GRACE PROGRAM -- ARGV...``"""
    try:
        sep = argv.index("--")
        lifeline, status, session, grace, program = argv[:sep]
        command = argv[sep + 1 :]
        if not command:
            raise ValueError("no command")
        guard = Guard(int(lifeline), int(status), session == "1", float(grace))
    except ValueError as exc:
        print(f"vmwu process guard: bad arguments {argv!r}: {exc}", file=sys.stderr)
        return 2
    # Nothing of vmwu's reaches the command but stdin, stdout and stderr.
    os.set_inheritable(guard.lifeline, False)
    os.set_inheritable(guard.status, False)
    return guard.run(program, command)


def host_library_path(environ: dict[str, str] | os._Environ[str]) -> None:
    """Give ``environ`` the host's ``LD_LIBRARY_PATH`` back, in a frozen vmwu.

    PyInstaller's one-file bootloader puts the directory it unpacked its libraries into
    (``sys._MEIPASS``) first on ``LD_LIBRARY_PATH`` and keeps the original value in
    ``LD_LIBRARY_PATH_ORIG`` if there was one; a process it starts as a sub-process of an
    unpacked vmwu (the guard) may find either. QEMU and the host tasks must load the
    host's libraries, not vmwu's."""
    original = environ.pop("LD_LIBRARY_PATH_ORIG", None)
    if original is not None:
        environ["LD_LIBRARY_PATH"] = original
        return
    bundle = getattr(sys, "_MEIPASS", None)
    current = environ.get("LD_LIBRARY_PATH")
    if bundle is None or current is None:
        return
    kept = [d for d in current.split(":") if d and os.path.normpath(d) != os.path.normpath(bundle)]
    if kept:
        environ["LD_LIBRARY_PATH"] = ":".join(kept)
    else:
        del environ["LD_LIBRARY_PATH"]


def dispatch() -> None:
    """In a frozen vmwu: become the guard if called as one (before importing anything).
    The command it starts gets the host's library path and none of PyInstaller's own
    variables (a frozen program among the host tasks must start as itself)."""
    if sys.argv[1:2] == [FLAG]:
        host_library_path(os.environ)
        for name in [n for n in os.environ if n.startswith("_PYI_") or n == "_MEIPASS2"]:
            del os.environ[name]
        sys.exit(main(sys.argv[2:]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
