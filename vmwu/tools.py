"""The one door for external commands.

Argument lists only (never a shell), the command logged with ``shlex.join`` at debug
level, a typed error carrying the command, exit code and stderr, and ``ToolNotFound``
naming the Debian package to install.

Two entries: :func:`run` runs a program to its end (a helper: ``qemu-img``, ``mkfs.ext4``,
``apt-get``...); :func:`spawn` starts a long-running one (QEMU, a host task, a plan's
``execute`` step, the editor) and returns a :class:`Process`. Both tie what they start to
this process, so that nothing vmwu starts outlives it, whatever kills it (SIGKILL
included; docs/security-processes.md):

- every direct child gets ``PR_SET_PDEATHSIG`` = SIGKILL between fork and exec (checking
  ``getppid`` afterwards, in case this process died in between). The kernel sends it when
  the *thread* that forked the child exits, not the process: start a long-lived child from
  a thread that outlives it. vmwu starts them from its main thread; :func:`run` is safe
  from any thread, since the calling thread waits for the child.
- a command that starts a process tree (``sh -c``, host tasks, ``mmdebstrap``,
  ``apt-get``) is started with ``tree=True`` under :mod:`vmwu.guard`, a small child
  subreaper that ends the whole tree when vmwu dies, or when the command ends. It costs a
  Python start-up (about 20 ms) per spawn, so QEMU and ordinary helpers do without it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import resource
import select
import shlex
import shutil
import signal
import subprocess
import sys
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from vmwu import guard
from vmwu.errors import HostDiskFull, HostFailure, ToolFailed, ToolNotFound

log = logging.getLogger(__name__)

# Every external program vmwu may call, with the Debian package that provides it.
TOOL_PACKAGES: dict[str, str] = {
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-system-aarch64": "qemu-system-arm",
    "qemu-img": "qemu-utils",
    "mkfs.ext4": "e2fsprogs",
    "mke2fs": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "e2fsck": "e2fsprogs",
    "e2image": "e2fsprogs",
    "lz4": "lz4",
    "zstd": "zstd",
    "apt-get": "apt",
    "apt-cache": "apt",
    "dpkg-deb": "dpkg",
    "cp": "coreutils",
    # issue 6: Debian bases (mmdebstrap) and bootable disk images (docs/bases.md)
    "mmdebstrap": "mmdebstrap",
    "dpkg": "dpkg",
    "fakechroot": "fakechroot",
    "sfdisk": "fdisk",
    "mformat": "mtools",
    "mcopy": "mtools",
    "mmd": "mtools",
    "syslinux": "syslinux",
}

# What vmwu needs for the core loop (pack, run, base build tiny); `vmwu doctor` checks these.
CORE_TOOLS = (
    "qemu-system-x86_64",
    "qemu-img",
    "mkfs.ext4",
    "debugfs",
    "lz4",
    "apt-get",
    "apt-cache",
    "dpkg-deb",
    "cp",
)

Arg = str | os.PathLike[str]

_SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def which(tool: str, *, path: str | None = None, cwd: str | None = None) -> str:
    """Absolute path of ``tool`` (looked up in ``path``, default $PATH; a name with a
    ``/`` is taken relative to ``cwd``); also looks in the sbin directories (mkfs.ext4,
    debugfs) that are not on an ordinary user's PATH."""
    if os.sep in tool:
        where = os.path.join(cwd, tool) if cwd is not None else tool
        if os.access(where, os.X_OK) and not os.path.isdir(where):
            return where
        raise ToolNotFound(tool, TOOL_PACKAGES.get(Path(tool).name))
    found = shutil.which(tool, path=path)
    if found is None:
        extra = os.pathsep.join(_SBIN_DIRS)
        found = shutil.which(tool, path=extra)
    if found is None:
        raise ToolNotFound(tool, TOOL_PACKAGES.get(tool))
    return found


def find(tool: str) -> str | None:
    """Like :func:`which` but returns None when missing."""
    try:
        return which(tool)
    except ToolNotFound:
        return None


PR_SET_PDEATHSIG = 1
GRACE = 3.0  # seconds a guarded tree gets between SIGTERM and SIGKILL

# What subprocess accepts for stdin, stdout and stderr.
Stream = int | IO[Any] | None

_libc: Any = None


def parent_death_preexec() -> Callable[[], None]:
    """A ``preexec_fn`` that ties the child to this process (to the calling thread)."""
    global _libc
    if _libc is None:
        import ctypes

        _libc = ctypes.CDLL(None, use_errno=True)
    libc = _libc
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # this process died before prctl took effect
            os._exit(1)

    return preexec


@dataclass(frozen=True)
class Limits:
    """Resource limits of a child process (``setrlimit`` in the child, before exec): for
    programs that read untrusted input, e.g. ``qemu-img info`` of an image from outside."""

    cpu_seconds: int | None = None  # RLIMIT_CPU: SIGXCPU, then SIGKILL
    address_space: int | None = None  # RLIMIT_AS, bytes: allocations beyond it fail
    file_size: int | None = None  # RLIMIT_FSIZE, bytes: SIGXFSZ when a file would grow past it

    def apply(self) -> None:
        """Set the limits on the calling process (runs in the child between fork and
        exec: no allocation-heavy work, no imports)."""
        if self.cpu_seconds is not None:
            resource.setrlimit(resource.RLIMIT_CPU, (self.cpu_seconds, self.cpu_seconds))
        if self.address_space is not None:
            resource.setrlimit(resource.RLIMIT_AS, (self.address_space, self.address_space))
        if self.file_size is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.file_size, self.file_size))


def child_setup(
    *, limits: Limits | None = None, die_with_parent: bool = False
) -> Callable[[], None] | None:
    """The one ``preexec_fn`` of a child: every setting it needs, applied in order, or
    None when it needs none (subprocess then uses vfork, which is cheaper). Settings that
    every child gets belong in ``steps`` too."""
    steps: list[Callable[[], None]] = []
    if die_with_parent:  # first: nothing else runs once this process is gone
        steps.append(parent_death_preexec())
    if limits is not None:
        steps.append(limits.apply)
    if not steps:
        return None

    def setup() -> None:
        for step in steps:
            step()

    return setup


def guard_command() -> list[str]:
    """How to start :mod:`vmwu.guard`: this interpreter in isolated mode without site (the
    standard library is all the guard needs), importing the guard's compiled module from
    where this vmwu is; or in a frozen vmwu (PyInstaller: ``sys.executable`` is vmwu
    itself) the binary with the guard's flag."""
    if getattr(sys, "frozen", False):
        return [sys.executable, guard.FLAG]
    package = Path(guard.__file__).parent
    if (package / "__init__.py").is_file():
        code = (
            f"import sys; sys.path.append({os.fspath(package.parent)!r}); "
            "from vmwu.guard import main; sys.exit(main(sys.argv[1:]))"
        )
        return [sys.executable, "-I", "-S", "-c", code]
    return [sys.executable, "-m", "vmwu", guard.FLAG]


def _merged_env(env: Mapping[str, str] | None) -> dict[str, str] | None:
    if not env:
        return None
    full = dict(os.environ)
    full.update(env)
    return full


def _start_failed(tool: str, exc: OSError, cwd: str | None) -> Exception:
    """The error for a program that could not be started."""
    if cwd is not None and exc.filename == cwd:
        return HostFailure(f"cannot start {tool} in {cwd}: {exc.strerror}")
    if exc.errno in (errno.ENOENT, errno.EACCES, errno.ENOEXEC):
        return ToolNotFound(tool, TOOL_PACKAGES.get(Path(tool).name))
    return HostFailure(f"cannot start {tool}: {exc.strerror or exc}")


class Process:
    """A program started by :func:`spawn`.

    ``pid`` is the process vmwu waits for (the guard, for a tree); ``leader`` the
    command's own pid, which leads its process group when it has one (always, under a
    guard). :meth:`poll` and :meth:`wait` reap it with ``wait4``, keeping its resource
    usage (``rusage``: peak RSS, CPU time of it and of what it waited for).
    """

    def __init__(
        self,
        argv: list[str],
        popen: subprocess.Popen[bytes],
        *,
        leader: int,
        own_group: bool,
        lifeline: int | None = None,
    ) -> None:
        self.argv = argv
        self.popen = popen
        self.pid = popen.pid
        self.leader = leader
        self.own_group = own_group
        self.returncode: int | None = None
        self.rusage: resource.struct_rusage | None = None
        self._release: Callable[[], None] | None = None
        if lifeline is not None:
            # Closed when the process has been reaped, or when this object is dropped:
            # either way the guard ends what is left of the tree.
            self._release = weakref.finalize(self, os.close, lifeline)

    @property
    def guarded(self) -> bool:
        return self._release is not None

    def _exited(self, code: int, usage: resource.struct_rusage | None) -> int:
        self.returncode = code
        self.popen.returncode = code  # reaped here: keep the Popen object consistent
        self.rusage = usage
        self.release()
        return code

    def release(self) -> None:
        """Let go of a guarded tree: its guard ends it (SIGTERM, a grace, SIGKILL)."""
        if self._release is not None:
            self._release()

    def poll(self) -> int | None:
        """The exit status (negative: killed by that signal) once it has ended, else None."""
        if self.returncode is not None:
            return self.returncode
        try:
            pid, status, usage = os.wait4(self.pid, os.WNOHANG)
        except ChildProcessError:  # reaped by the Popen object (communicate)
            code = self.popen.poll()
            return None if code is None else self._exited(code, None)
        if pid == 0:
            return None
        return self._exited(os.waitstatus_to_exitcode(status), usage)

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait up to ``timeout`` seconds (None: for ever) for it to end. A signal handler
        that raises (SIGTERM turned into an exception) interrupts the wait."""
        if self.returncode is not None:
            return self.returncode
        if timeout is None:
            try:
                _, status, usage = os.wait4(self.pid, 0)
            except ChildProcessError:
                return self._exited(self.popen.wait(), None)
            return self._exited(os.waitstatus_to_exitcode(status), usage)
        end = time.monotonic() + timeout
        try:
            pidfd: int | None = os.pidfd_open(self.pid)
        except OSError:
            pidfd = None
        try:
            while (code := self.poll()) is None:
                left = end - time.monotonic()
                if left <= 0:
                    return None
                if pidfd is not None:
                    select.select([pidfd], [], [], left)
                else:
                    time.sleep(min(left, 0.05))
            return code
        finally:
            if pidfd is not None:
                os.close(pidfd)

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the command: to its process group if it has one of its own (a
        guarded command, or one started with ``session``), else to it alone. Under a
        guard this never reaches the guard, which stays to end the tree."""
        if self.returncode is not None:
            return
        try:
            if self.own_group:
                os.killpg(self.leader, sig)
            else:
                os.kill(self.leader, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def terminate(self) -> None:
        self.signal(signal.SIGTERM)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def end(self) -> int:
        """Stop it now and wait: a guarded tree gets SIGTERM, a grace and SIGKILL from its
        guard; a single process SIGKILL."""
        if self.returncode is None:
            if self.guarded:
                self.release()
            else:
                with contextlib.suppress(ProcessLookupError):
                    self.popen.kill()
        code = self.wait()
        assert code is not None
        return code

    def __enter__(self) -> Process:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.returncode is None:
            self.end()


def spawn(
    argv: Sequence[Arg],
    *,
    stdin: Stream = None,
    stdout: Stream = None,
    stderr: Stream = None,
    env: Mapping[str, str] | None = None,
    cwd: Arg | None = None,
    tree: bool = False,
    session: bool = False,
    die_with_parent: bool = True,
    grace: float = GRACE,
    executable: Arg | None = None,
    limits: Limits | None = None,
    _what: str = "spawn",
) -> Process:
    """Start a long-running program; it dies with this process (see the module's text).

    ``env`` entries are added to the current environment. ``session``: the program gets a
    session (and process group) of its own, so a terminal's signals reach only vmwu.
    ``tree``: the program starts processes of its own, which must die too: it runs under
    :mod:`vmwu.guard`, always in a process group of its own, and what it leaves running
    when it ends is ended (SIGTERM, ``grace`` seconds, SIGKILL). ``die_with_parent=False``
    is for a vmwu process that is meant to outlive its starter (a sweep job under Dask)
    and ties its own children to itself. ``executable``: the program to run, when
    ``argv[0]`` is to be something else. The program is looked up in the PATH of ``env``
    (else vmwu's); one that is missing or cannot be executed raises :class:`ToolNotFound`
    (from the ``OSError`` of its ``exec``, if it came that far). ``limits``: resource
    limits of the program (under a guard, the guard's, which its command inherits).
    """
    args = [os.fspath(a) for a in argv]
    where = os.fspath(cwd) if cwd is not None else None
    wanted = os.fspath(executable) if executable is not None else args[0]
    program = which(wanted, path=(env or {}).get("PATH"), cwd=where)
    if executable is None:
        args[0] = program
    full_env = _merged_env(env)
    if tree:
        if not die_with_parent:
            raise ValueError("a guarded tree always dies with its parent")
        log.debug("%s (guarded tree): %s", _what, shlex.join(args))
        return _spawn_guarded(
            program, args, stdin, stdout, stderr, full_env, where, session, grace, limits
        )
    log.debug("%s: %s", _what, shlex.join(args))
    try:
        popen = subprocess.Popen(
            args,
            executable=program,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            env=full_env,
            cwd=where,
            start_new_session=session,
            preexec_fn=child_setup(limits=limits, die_with_parent=die_with_parent),
        )
    except OSError as exc:
        raise _start_failed(args[0], exc, where) from exc
    return Process(args, popen, leader=popen.pid, own_group=session)


def _spawn_guarded(
    program: str,
    args: list[str],
    stdin: Stream,
    stdout: Stream,
    stderr: Stream,
    env: dict[str, str] | None,
    cwd: str | None,
    session: bool,
    grace: float,
    limits: Limits | None,
) -> Process:
    life_r, life_w = os.pipe()  # the guard's lifeline: only this process holds the write end
    stat_r, stat_w = os.pipe()
    argv = [*guard_command(), str(life_r), str(stat_w), "1" if session else "0", f"{grace:g}"]
    argv.append(program)
    try:
        try:
            popen = subprocess.Popen(
                [*argv, "--", *args],
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                env=env,
                cwd=cwd,
                start_new_session=True,  # no terminal signal reaches the guard
                pass_fds=(life_r, stat_w),
                preexec_fn=child_setup(limits=limits),  # (the guard ties itself to vmwu)
            )
        finally:
            os.close(life_r)
            os.close(stat_w)
        chunks = []
        while chunk := os.read(stat_r, 64):
            chunks.append(chunk)
        words = b"".join(chunks).decode(errors="replace").split()
    except OSError as exc:
        os.close(life_w)
        raise HostFailure(f"cannot start vmwu's process guard ({argv[0]}): {exc}") from exc
    except BaseException:  # interrupted while the guard starts: it ends what it started
        os.close(life_w)
        raise
    finally:
        os.close(stat_r)
    if words[:1] == ["ok"] and len(words) == 2:
        return Process(args, popen, leader=int(words[1]), own_group=True, lifeline=life_w)
    os.close(life_w)
    code = popen.wait()
    if words[:1] == ["exec"] and len(words) == 2:
        number = int(words[1])
        failure = OSError(number, os.strerror(number), args[0])
        raise _start_failed(args[0], failure, None) from failure
    raise HostFailure(f"vmwu's process guard for {args[0]} did not start (exit {code})")


def run(
    argv: Sequence[Arg],
    *,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Arg | None = None,
    timeout: float | None = None,
    check: bool = True,
    stdout: int | None = subprocess.PIPE,
    disk_hint: str | None = None,
    tree: bool = False,
    grace: float = GRACE,
    limits: Limits | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run an external program and wait for it (stderr captured).

    ``env`` entries are added to the current environment; ``tree`` and ``grace`` as for
    :func:`spawn` (the program starts processes of its own). ``limits`` bounds the CPU
    time and memory of the program (see :class:`Limits`). On a non-zero exit (with
    ``check``) raise :class:`ToolFailed`; if the program reports ENOSPC raise
    :class:`HostDiskFull` naming ``disk_hint`` (or the working directory). After
    ``timeout`` seconds the program is stopped and :class:`subprocess.TimeoutExpired`
    raised.
    """
    proc = spawn(
        argv,
        stdin=subprocess.PIPE if input is not None else None,
        stdout=stdout,
        stderr=subprocess.PIPE,
        env=env,
        cwd=cwd,
        tree=tree,
        grace=grace,
        limits=limits,
        _what="run",
    )
    try:
        out, err = proc.popen.communicate(input, timeout=timeout)
    except BaseException:  # the timeout, or an interrupt: nothing is left running
        proc.end()
        raise
    code = proc.wait()
    assert code is not None
    result = subprocess.CompletedProcess(proc.argv, code, out, err)
    if check and code != 0:
        stderr = err.decode(errors="replace")
        if "No space left on device" in stderr or "ENOSPC" in stderr:
            raise HostDiskFull(disk_hint or os.fspath(cwd or os.getcwd()))
        raise ToolFailed(proc.argv, code, stderr)
    return result


def output(argv: Sequence[Arg], **kwargs: object) -> str:
    """Run and return stdout as text (stripped)."""
    proc = run(argv, **kwargs)  # type: ignore[arg-type]
    return proc.stdout.decode(errors="replace").strip()
