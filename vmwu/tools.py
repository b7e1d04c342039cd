"""The one door for external commands.

Argument lists only (never a shell), the command logged with ``shlex.join`` at debug
level, a typed error carrying the command, exit code and stderr, and ``ToolNotFound``
naming the Debian package to install.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import shlex
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from vmwu.errors import HostDiskFull, ToolFailed, ToolNotFound

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


def which(tool: str) -> str:
    """Absolute path of ``tool``; also looks in the sbin directories (mkfs.ext4, debugfs)
    that are not on an ordinary user's PATH."""
    if os.sep in tool:
        if os.access(tool, os.X_OK):
            return tool
        raise ToolNotFound(tool, TOOL_PACKAGES.get(Path(tool).name))
    found = shutil.which(tool)
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


def child_setup(*, limits: Limits | None = None) -> Callable[[], None] | None:
    """The one ``preexec_fn`` of a child: every setting it needs, applied in order, or
    None when it needs none. Settings that every child gets belong in ``steps`` too."""
    steps: list[Callable[[], None]] = []
    if limits is not None:
        steps.append(limits.apply)
    if not steps:
        return None

    def setup() -> None:
        for step in steps:
            step()

    return setup


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
    limits: Limits | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run an external program and wait for it.

    ``env`` entries are added to the current environment. ``limits`` bounds the CPU time
    and memory of the program (see :class:`Limits`). On a non-zero exit (with
    ``check``) raise :class:`ToolFailed`; if the program reports ENOSPC raise
    :class:`HostDiskFull` naming ``disk_hint`` (or the working directory).
    """
    args = [os.fspath(a) for a in argv]
    args[0] = which(args[0])
    log.debug("run: %s", shlex.join(args))
    full_env = None
    if env:
        full_env = dict(os.environ)
        full_env.update(env)
    try:
        proc = subprocess.run(
            args,
            input=input,
            stdout=stdout,
            stderr=subprocess.PIPE,
            env=full_env,
            cwd=os.fspath(cwd) if cwd is not None else None,
            timeout=timeout,
            check=False,
            preexec_fn=child_setup(limits=limits),
        )
    except OSError as exc:  # exec failure: treat as missing
        if exc.errno in (errno.ENOENT, errno.EACCES):
            raise ToolNotFound(args[0], TOOL_PACKAGES.get(Path(args[0]).name)) from exc
        raise
    if check and proc.returncode != 0:
        stderr = proc.stderr.decode(errors="replace")
        if "No space left on device" in stderr or "ENOSPC" in stderr:
            raise HostDiskFull(disk_hint or os.fspath(cwd or os.getcwd()))
        raise ToolFailed(args, proc.returncode, stderr)
    return proc


def output(argv: Sequence[Arg], **kwargs: object) -> str:
    """Run and return stdout as text (stripped)."""
    proc = run(argv, **kwargs)  # type: ignore[arg-type]
    return proc.stdout.decode(errors="replace").strip()
