"""One exception root and the exit codes vmwu reserves for its own failures.

Library code raises subclasses of :class:`VmwuError`; only ``cli.main`` turns them into a
one-line message and an exit code. An application's own exit code (0-255) passes through
``vmwu run`` unchanged; vmwu's failures use the reserved range 240-249 and are always
written to ``status.json`` (``"outcome": "vmwu-error"``) so they cannot be confused with an
application that happens to exit with the same number.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes of the ``vmwu`` command for its own failures (docs/exit-codes.md)."""

    OK = 0
    INTERNAL = 240  # a bug in vmwu: please report it (run with --debug for a traceback)
    BAD_INPUT = 241  # bad command line, spec, plan, unit, file or option value
    MISSING_TOOL = 242  # an external program is not installed (the message names the package)
    NEVER_BOOTED = 243  # the guest did not reach the vmwu agent (kernel panic, bad base, hang)
    TIMEOUT = 244  # the instance ran longer than --timeout and was stopped
    VM_CRASHED = 245  # QEMU died, or the guest stopped without reporting the app's exit
    OUTPUT_FULL = 246  # the output disk filled up inside the guest (partial outputs kept)
    HOST_FAILURE = 247  # a host-side operation failed: disk full, permission, tool error
    INTERRUPTED = 248  # vmwu was interrupted (SIGINT/SIGTERM); partial results kept
    BASE_NOT_FOUND = 249  # the base image is missing from the catalog/cache, or its sha256 differs


RESERVED_EXIT_CODES = range(240, 250)


class VmwuError(Exception):
    """Root of every error vmwu reports to users.

    ``message`` says what went wrong and where; ``hint`` says what to do. ``str(err)`` is a
    single line combining both.
    """

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = " ".join(message.split("\n"))
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class BadInput(VmwuError):
    """The user gave us something we cannot use: option, file, spec, unit."""

    exit_code = ExitCode.BAD_INPUT


class SpecError(BadInput):
    """A spec/plan/job file is malformed; ``where`` is ``file:line`` (or ``file:line:col``)."""

    def __init__(self, where: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(f"{where}: {message}", hint=hint)
        self.where = where


class UnitError(BadInput):
    """A ``.ova`` work unit is unreadable, corrupt, unsafe or inconsistent."""


class UnsafeContent(BadInput):
    """Content from a guest or from a unit made elsewhere was refused as unsafe: a name that
    would leave its directory, a link in the way, an image that points at host files, sizes
    that do not add up (docs/security.md)."""


class ToolNotFound(VmwuError):
    """An external program is missing; the message names the Debian package to install."""

    exit_code = ExitCode.MISSING_TOOL

    def __init__(self, tool: str, package: str | None) -> None:
        pkg = f"apt-get install {package}" if package else "install it"
        super().__init__(f"'{tool}' was not found on PATH", hint=pkg)
        self.tool = tool
        self.package = package


class ExtraNotInstalled(VmwuError):
    """An optional feature's Python packages are not installed; the message names the
    extra that installs them (vmwu/extras.py)."""

    exit_code = ExitCode.MISSING_TOOL

    def __init__(self, feature: str, module: str, extra: str) -> None:
        super().__init__(
            f"{feature} needs the Python package '{module}', which is not installed",
            hint=f"pip install 'vmwu[{extra}]'; scripts/setup.sh installs every extra",
        )
        self.module = module
        self.extra = extra


class HostFailure(VmwuError):
    """A host-side operation failed (disk full, permissions, an external tool error)."""

    exit_code = ExitCode.HOST_FAILURE


class ToolFailed(HostFailure):
    """An external program exited non-zero; carries the command and its stderr."""

    def __init__(self, argv: list[str], returncode: int, stderr: str) -> None:
        tail = stderr.strip().splitlines()[-3:] if stderr.strip() else []
        detail = " / ".join(line.strip() for line in tail) or "no error output"
        super().__init__(f"{argv[0]} failed with exit code {returncode}: {detail}")
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr


class HostDiskFull(HostFailure):
    """No space left on a host file system; nothing half-written was kept."""

    def __init__(self, where: str) -> None:
        super().__init__(
            f"no space left on the host file system holding {where}",
            hint="free space there, or point VMWU_CACHE_DIR / --output-directory elsewhere",
        )


class BaseNotFound(VmwuError):
    """A base image named or referenced by sha256 is not available on this node."""

    exit_code = ExitCode.BASE_NOT_FOUND


class GuestNeverBooted(VmwuError):
    exit_code = ExitCode.NEVER_BOOTED


class GuestTimeout(VmwuError):
    exit_code = ExitCode.TIMEOUT


class VMCrashed(VmwuError):
    exit_code = ExitCode.VM_CRASHED


class OutputDiskFull(VmwuError):
    exit_code = ExitCode.OUTPUT_FULL


class Interrupted(VmwuError):
    exit_code = ExitCode.INTERRUPTED
