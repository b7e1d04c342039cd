"""Children that do not outlive the process that started them.

A wrapper killed with ``kill -9`` cannot stop its QEMU or its host tasks; the kernel can:
``prctl(PR_SET_PDEATHSIG, SIGKILL)`` in the child, between fork and exec, makes it
receive SIGKILL when its parent dies. (Strictly: when the *thread* that forked it exits,
so start such children from the main thread.)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
import signal
import subprocess
from collections.abc import Callable

PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], None]:
    """A ``preexec_fn`` for :class:`subprocess.Popen` that ties the child to this process."""
    parent = os.getpid()
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

    def preexec() -> None:
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def reap(proc: subprocess.Popen[bytes]) -> tuple[int, resource.struct_rusage] | None:
    """(exit code, resource usage) of ``proc`` if it has exited, reaping it with ``wait4``
    (``Popen.poll`` would lose the usage: peak RSS, CPU time); None while it runs."""
    pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
    if pid == 0:
        return None
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code  # reaped here: keep the Popen object consistent
    return code, usage
