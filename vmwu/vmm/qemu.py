"""QEMU: the command line (small pure functions) and the VM lifecycle.

``build_argv`` turns a :class:`MachineConfig` into an argument list without starting
anything (``vmwu run --print-cmdline`` prints it; tests check it). :class:`QemuMachine`
owns one QEMU process: the constructor only stores the configuration, ``launch()`` starts
it, ``shutdown()`` tries QMP ``quit`` before killing, and the context manager always
cleans up. QEMU is started through :func:`vmwu.tools.spawn`, so it dies with the vmwu
process that started it (``PR_SET_PDEATHSIG``), whatever kills that process: start it
from a thread that lives as long as the machine (vmwu: the main thread).
"""

from __future__ import annotations

import logging
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any

from vmwu import tools
from vmwu.errors import BadInput, VMCrashed

log = logging.getLogger(__name__)


class DriveKind(StrEnum):
    DISK = "disk"  # virtio-blk
    CDROM = "cdrom"  # scsi-cd on virtio-scsi


@dataclass(frozen=True)
class Drive:
    id: str
    path: Path
    format: str
    read_only: bool = False
    kind: DriveKind = DriveKind.DISK
    serial: str | None = None  # virtio-blk serial: the agent finds disks by it (sysfs)
    bootindex: int | None = None  # firmware boot order (a base that boots from its disk)


@dataclass(frozen=True)
class MachineConfig:
    arch: str = "x86_64"
    accel: str = "tcg"
    memory_mib: int = 512
    cpus: int = 1
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str = ""
    drives: tuple[Drive, ...] = ()
    console_log: Path | None = None
    events_log: Path | None = None
    qmp_socket: Path | None = None
    graphics: bool = False
    executable: str | None = None  # path or name of the qemu-system binary
    bios_dir: Path | None = None  # -L: firmware files when QEMU is not installed system-wide
    extra_args: tuple[str, ...] = field(default_factory=tuple)
    incoming: Path | None = None  # a saved VM state to resume (fed to QEMU on stdin)
    # Guest RAM in a file (memory-backend-file): the warm-start template writes it
    # (share=on) and saves a state without it (x-ignore-shared); an instance maps it
    # privately (share=off) and loads that small state after QMP has set the capability
    # (``-incoming defer``, see :meth:`QemuMachine.launch`).
    ram_file: Path | None = None
    ram_share: bool = False
    # Disks whose image can be swapped while the VM is paused (a pooled VM, vmwu/vmm/
    # pool.py): each is a raw "top" node <id>-top over a file node <id>-ph.
    swappable: bool = False
    start_paused: bool = False  # -S: a restored VM stays paused until "cont"
    # UEFI (issue 6, vmwu/vmm/firmware.py): OVMF code (read-only) and this VM's variables
    pflash: tuple[Path, ...] = ()


def qemu_binary(arch: str) -> str:
    binaries = {
        "x86_64": "qemu-system-x86_64",
        "i386": "qemu-system-x86_64",
        "aarch64": "qemu-system-aarch64",
    }
    try:
        return binaries[arch]
    except KeyError:
        raise BadInput(
            f"no QEMU machine for guest architecture {arch!r}",
            hint=f"supported: {', '.join(sorted(binaries))}",
        ) from None


def opt(value: str | os.PathLike[str]) -> str:
    """Escape a value for a QEMU ``key=value,...`` option (commas are doubled)."""
    return os.fspath(value).replace(",", ",,")


def machine_args(cfg: MachineConfig) -> list[str]:
    args = ["-nodefaults", "-no-user-config", "-no-reboot"]
    if cfg.arch in ("x86_64", "i386"):
        args += ["-machine", "pc"]
    elif cfg.arch == "aarch64":
        args += ["-machine", "virt", "-cpu", "cortex-a57" if cfg.accel == "tcg" else "host"]
    if cfg.accel == "kvm":
        args += ["-accel", "kvm"]
        if cfg.arch in ("x86_64", "i386"):
            args += ["-cpu", "host"]
    else:
        # keep QEMU's default CPU model: -cpu max costs +0.35 s of boot under TCG
        args += ["-accel", "tcg,thread=multi"]
    args += ["-m", str(cfg.memory_mib), "-smp", str(cfg.cpus)]
    if cfg.graphics:
        args += ["-vga", "std"]
    else:
        args += ["-display", "none"]
    if cfg.bios_dir:
        args += ["-L", os.fspath(cfg.bios_dir)]
    return args


def boot_args(cfg: MachineConfig) -> list[str]:
    if cfg.kernel is None:
        return []
    args = ["-kernel", os.fspath(cfg.kernel)]
    if cfg.initrd:
        args += ["-initrd", os.fspath(cfg.initrd)]
    if cfg.cmdline:
        args += ["-append", cfg.cmdline]
    return args


def serial_args(cfg: MachineConfig) -> list[str]:
    """The console (kept as console.log) and the agent's event port: on x86 the first and
    second 8250 UARTs (ttyS0, ttyS1); on the aarch64 "virt" board, which has one UART, the
    PL011 (ttyAMA0) and a virtio console (hvc0)."""
    args: list[str] = []
    for name, path in (("con", cfg.console_log), ("ev", cfg.events_log)):
        if path is None:
            if name == "con" or cfg.arch != "aarch64":
                args += ["-serial", "null"]
            continue
        args += ["-chardev", f"file,id={name},path={opt(path)}"]
        if name == "ev" and cfg.arch == "aarch64":
            args += ["-device", "virtio-serial-pci,id=vser0", "-device", "virtconsole,chardev=ev"]
        else:
            args += ["-serial", f"chardev:{name}"]
    return args


def swappable_drive_args(drives: tuple[Drive, ...]) -> list[str]:
    """Virtio disks over raw "top" nodes: ``blockdev-reopen`` points a top at another
    image while the guest keeps its device (vmwu.vmm.pool)."""
    args: list[str] = []
    for d in drives:
        if d.kind != DriveKind.DISK or d.format != "raw":
            raise ValueError(f"drive {d.id}: only raw virtio disks can be swapped")
        ro = ",read-only=on" if d.read_only else ""
        args += [
            "-blockdev",
            f"driver=file,node-name={d.id}-ph,filename={opt(d.path)},cache.no-flush=on{ro}",
            "-blockdev",
            f"driver=raw,node-name={d.id}-top,file={d.id}-ph,cache.no-flush=on{ro}",
        ]
        serial = f",serial={opt(d.serial)}" if d.serial else ""
        args += ["-device", f"virtio-blk-pci,drive={d.id}-top{serial}"]
    return args


def drive_args(drives: tuple[Drive, ...]) -> list[str]:
    args: list[str] = []
    if any(d.kind == DriveKind.CDROM for d in drives):
        args += ["-device", "virtio-scsi-pci,id=scsi0"]
    for d in drives:
        spec = f"file={opt(d.path)},if=none,id={d.id},format={d.format}"
        # cache=unsafe: guest flushes are not forwarded to the host disk. Instance disks
        # are scratch; QEMU still writes everything before it exits.
        spec += ",cache=unsafe"
        if d.read_only:
            spec += ",readonly=on"
        args += ["-drive", spec]
        if d.kind == DriveKind.CDROM:
            args += ["-device", f"scsi-cd,drive={d.id},bus=scsi0.0"]
        else:
            serial = f",serial={opt(d.serial)}" if d.serial else ""
            boot = f",bootindex={d.bootindex}" if d.bootindex is not None else ""
            args += ["-device", f"virtio-blk-pci,drive={d.id}{serial}{boot}"]
    return args


def pflash_args(cfg: MachineConfig) -> list[str]:
    """UEFI firmware: the first flash is OVMF's code (read-only), the second its variables."""
    args: list[str] = []
    for unit, path in enumerate(cfg.pflash):
        ro = ",readonly=on" if unit == 0 else ""
        args += ["-drive", f"if=pflash,format=raw,unit={unit}{ro},file={opt(path)}"]
    return args


def qmp_args(cfg: MachineConfig) -> list[str]:
    if cfg.qmp_socket is None:
        return []
    return ["-qmp", f"unix:{opt(cfg.qmp_socket)},server=on,wait=off"]


RAM_BACKEND = "vmwu.ram"


def ram_args(cfg: MachineConfig) -> list[str]:
    if cfg.ram_file is None:
        return []
    share = "on" if cfg.ram_share else "off"
    backend = (
        f"memory-backend-file,id={RAM_BACKEND},size={cfg.memory_mib}M,"
        f"mem-path={opt(cfg.ram_file)},share={share}"
    )
    return ["-object", backend, "-machine", f"memory-backend={RAM_BACKEND}"]


def incoming_args(cfg: MachineConfig) -> list[str]:
    if cfg.incoming is None:
        return []
    # with guest RAM from a file, x-ignore-shared must be set before the state is read
    return ["-incoming", "defer" if cfg.ram_file is not None else "fd:0"]


def build_argv(cfg: MachineConfig) -> list[str]:
    exe = cfg.executable or qemu_binary(cfg.arch)
    return [
        exe,
        *machine_args(cfg),
        *pflash_args(cfg),
        *boot_args(cfg),
        *serial_args(cfg),
        *(swappable_drive_args if cfg.swappable else drive_args)(cfg.drives),
        *ram_args(cfg),
        *qmp_args(cfg),
        *incoming_args(cfg),
        *(["-S"] if cfg.start_paused else []),
        *cfg.extra_args,
    ]


class MachineState(StrEnum):
    CONFIGURED = "configured"
    RUNNING = "running"
    EXITED = "exited"


QMP_CONNECT_TIMEOUT = 30.0
QMP_COMMAND_TIMEOUT = 60.0
SUN_PATH_MAX = 107  # bytes of a unix socket's path (sun_path less its NUL)
_SOCKET_DIR_LINK = "qmp-dir"


def qmp_socket_path(workdir: Path) -> Path:
    """A path for a VM's QMP socket that fits in sun_path: ``workdir/qmp.sock``, or, when
    that is too long, one in a private directory under the temporary directory, linked
    from ``workdir/qmp-dir`` (:func:`release_socket_dir` removes it)."""
    path = workdir / "qmp.sock"
    if len(os.fsencode(path)) <= SUN_PATH_MAX:
        return path
    short = Path(tempfile.mkdtemp(prefix="vmwu-"))
    (workdir / _SOCKET_DIR_LINK).symlink_to(short)
    return short / "qmp.sock"


def release_socket_dir(workdir: Path) -> None:
    """Remove the private socket directory :func:`qmp_socket_path` made, if it did."""
    link = workdir / _SOCKET_DIR_LINK
    if link.is_symlink():
        shutil.rmtree(link.resolve(), ignore_errors=True)
        link.unlink(missing_ok=True)


class QemuMachine:
    """One QEMU process. Use as a context manager so it is always cleaned up."""

    def __init__(self, cfg: MachineConfig, *, log_path: Path) -> None:
        self.cfg = cfg
        self.log_path = log_path  # QEMU's own stderr
        self.argv = build_argv(cfg)
        self.state = MachineState.CONFIGURED
        self._proc: tools.Process | None = None
        self._qmp: Any = None
        self.started_at = 0.0
        self.exited_at = 0.0
        self.returncode: int | None = None
        self.peak_rss_kib = 0
        self.cpu_seconds = 0.0
        self._pidfd: int | None = None

    def launch(self) -> None:
        if self.state != MachineState.CONFIGURED:
            raise RuntimeError(f"launch() on a machine that is {self.state}")
        with open(self.log_path, "wb") as err:
            stdin = open(self.cfg.incoming, "rb") if self.cfg.incoming else subprocess.DEVNULL
            try:
                # a session of its own: a terminal's Ctrl-C reaches vmwu, which stops it
                self._proc = tools.spawn(
                    self.argv, stdin=stdin, stdout=err, stderr=err, session=True
                )
            finally:
                if not isinstance(stdin, int):
                    stdin.close()
        self.started_at = time.monotonic()
        self.state = MachineState.RUNNING
        try:
            self._pidfd = os.pidfd_open(self._proc.pid)
        except (AttributeError, OSError):
            self._pidfd = None
        if self.cfg.incoming is not None and self.cfg.ram_file is not None:
            self._start_incoming()

    def _start_incoming(self) -> None:
        """Load the state on QEMU's stdin into guest RAM mapped from ``cfg.ram_file``:
        the state leaves that RAM out (x-ignore-shared), so the capability must be set on
        this side too before the stream is read. Raises :class:`VMCrashed` if QEMU
        exits or does not answer (the caller falls back to a full state)."""
        self.connect_qmp(timeout=QMP_CONNECT_TIMEOUT)
        self.command(
            "migrate-set-capabilities",
            capabilities=[{"capability": "x-ignore-shared", "state": True}],
        )
        self.command("migrate-incoming", uri="fd:0")

    def connect_qmp(self, *, timeout: float) -> None:
        """Connect to the QMP socket of a QEMU that was just started (it appears a few
        milliseconds after the process): retried until ``timeout`` s have passed."""
        deadline = time.monotonic() + timeout
        while True:
            if self.poll() is not None:
                tail = self.qemu_log_tail() or f"QEMU exited with status {self.returncode}"
                raise VMCrashed(f"QEMU exited before its QMP socket was up: {tail}")
            sock = self.cfg.qmp_socket
            if sock is not None and sock.exists():
                try:
                    self.qmp().settimeout(QMP_COMMAND_TIMEOUT)
                    return
                except Exception as exc:  # noqa: BLE001 - not listening yet (OSError, QMP)
                    self._qmp = None
                    if time.monotonic() > deadline:
                        raise VMCrashed(f"QEMU's QMP socket did not answer: {exc}") from exc
            elif time.monotonic() > deadline:
                raise VMCrashed(f"QEMU's QMP socket {sock} did not appear within {timeout:g} s")
            self.wait_exit_event(0.002)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def poll(self) -> int | None:
        """QEMU's exit status if it has exited (reaped with wait4 to get its rusage)."""
        if self._proc is None or self.returncode is not None:
            return self.returncode
        code = self._proc.poll()
        if code is None:
            return None
        usage = self._proc.rusage
        if usage is not None:
            self.peak_rss_kib = usage.ru_maxrss
            self.cpu_seconds = usage.ru_utime + usage.ru_stime
        self._exited(code)
        return code

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait up to ``timeout`` seconds (None: forever) for QEMU to exit."""
        if self._proc is None:
            return None
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            code = self.poll()
            if code is not None:
                return code
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                return None
            self.wait_exit_event(0.05 if left is None else min(left, 0.05))

    def wait_exit_event(self, timeout: float) -> None:
        """Sleep until QEMU exits or ``timeout`` passes (a pidfd wakes us at once)."""
        if self._pidfd is not None:
            select.select([self._pidfd], [], [], timeout)
        else:
            time.sleep(timeout)

    def _exited(self, code: int) -> None:
        self.exited_at = time.monotonic()
        self.returncode = code
        self.state = MachineState.EXITED
        self._close_qmp()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    def qemu_log_tail(self, lines: int = 5) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(max(0, fh.seek(0, os.SEEK_END) - 64 * 1024))
                text = fh.read().decode(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " / ".join(line[:300] for line in text[-lines:])

    # -- QMP (connected lazily: the happy path never needs it) --------------------------

    def qmp(self) -> Any:
        """A connected synchronous QMP client (``qemu.qmp.legacy``)."""
        if self.cfg.qmp_socket is None:
            raise RuntimeError("this machine was started without a QMP socket")
        if self._qmp is None:
            from qemu.qmp.legacy import QEMUMonitorProtocol

            client = QEMUMonitorProtocol(os.fspath(self.cfg.qmp_socket))
            client.connect(negotiate=True)
            self._qmp = client
        return self._qmp

    def command(self, name: str, **args: Any) -> Any:
        if self.state != MachineState.RUNNING:
            raise VMCrashed(f"QMP {name}: the VM is not running (state {self.state})")
        return self.qmp().cmd(name, **args)

    def disconnect_qmp(self) -> None:
        """Close the QMP connection (the next command connects again, from whichever
        thread sends it: a connection is tied to the event loop of the thread that made
        it)."""
        self._close_qmp()

    def _close_qmp(self) -> None:
        if self._qmp is not None:
            try:
                self._qmp.close()
            except Exception:  # noqa: BLE001 - closing a dead socket must not mask the real error
                pass
            self._qmp = None

    def shutdown(self, *, timeout: float = 3.0) -> None:
        """Stop QEMU: QMP ``quit`` if possible, then SIGTERM, then SIGKILL."""
        if self._proc is None or self.state != MachineState.RUNNING:
            return
        if self.poll() is not None:
            return
        if self.cfg.qmp_socket is not None:
            try:
                self.command("quit")
            except Exception as exc:  # noqa: BLE001
                log.debug("QMP quit failed: %s", exc)
            if self.wait(timeout) is not None:
                return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            self._proc.signal(sig)
            if self.wait(timeout) is not None:
                return

    def __enter__(self) -> QemuMachine:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown(timeout=2.0)
