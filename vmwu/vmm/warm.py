"""Warm start: boot a guest once per node, save it, restore it for every instance.

Booting the kernel is most of an instance's life under TCG (~2 s of ~3). Instead, the
first instance on a node with a given machine configuration boots a *template* VM with
blank disks of fixed capacity attached; the agent (``vmwu.warm=1``) loads its modules,
finds the disks, emits ``ready`` and waits for the instance ISO's label to appear. The
host then pauses the VM and migrates its state into the node cache. Every instance then
starts QEMU with the same devices, its own disks (same capacities), and
``-incoming fd:0`` fed from the saved state: the guest resumes inside its wait loop,
sees its ISO, drops what it had cached of the blank disks, and runs the job.

A base with a root disk (the Debian base: direct kernel boot, root on a ``base`` drive)
warm-starts too. Its root disk is not blank: the template boots over a *frozen overlay*
of the base disk, which is kept beside the saved state (it holds what the boot wrote, and
the saved guest's page cache matches it). Every instance's root disk is then a fresh
overlay over that frozen one, of the base's own capacity, so the resumed guest finds the
disk exactly as it left it.

The saved state is keyed by everything it depends on: the QEMU binary, the machine
options, the kernel, initramfs and command line, the device list and what the base disk
is. A state that fails to load is deleted and the instance boots cold.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import secrets
from pathlib import Path

from vmwu import tools
from vmwu.errors import HostFailure
from vmwu.guest.protocol import WARM_TEMPLATE
from vmwu.images import qemu_img
from vmwu.vmm.guestrun import GuestRun
from vmwu.vmm.qemu import DriveKind, MachineConfig, qmp_socket_path, release_socket_dir
from vmwu.vmm.snapshot import save_vm

log = logging.getLogger(__name__)

# Every disk of a warm-started VM has this capacity (the guest probed it at save time); a
# file system smaller than its device is fine for ext4 and ISO9660. Sparse: costs nothing.
CAPACITY = 256 * 1024**3
BASE = "base"  # the drive id of a base's root disk: it keeps its own capacity
BASE_ROLE = "base-disk"
WARM_KEY = WARM_TEMPLATE
SAVE_TIMEOUT = 180.0


def eligible(cfg: MachineConfig, sizes: dict[str, int]) -> str | None:
    """Why this machine cannot warm-start (None if it can)."""
    if cfg.kernel is None:
        return "the base boots from its own disk"
    if any(d.kind != DriveKind.DISK for d in cfg.drives):
        return "the instance ISO is attached as a CD-ROM"
    big = [name for name, size in sizes.items() if size > CAPACITY and name != BASE_ROLE]
    if big:
        return f"disk {big[0]} is larger than {CAPACITY // 1024**3} GiB"
    return None


def _qemu_identity(executable: str) -> str:
    path = os.path.realpath(tools.which(executable))
    st = os.stat(path)
    return f"{path}:{st.st_size}:{st.st_mtime_ns}"


def with_warm_cmdline(cfg: MachineConfig) -> MachineConfig:
    return dataclasses.replace(cfg, cmdline=f"{cfg.cmdline} {WARM_KEY}".strip())


def state_key(cfg: MachineConfig, executable: str, base_under: Path | None = None) -> str:
    """A name for the saved state of ``cfg`` (already carrying the warm key). The kernel
    and initramfs paths, and ``base_under`` (what the root disk's overlay is over: the
    base disk or the unit's guest-packages layer) are content-addressed cache entries, so
    they stand for their bytes."""
    layout = [(d.id, d.kind.value, d.read_only, d.serial) for d in cfg.drives]
    ident = {
        "v": 1,
        "qemu": _qemu_identity(executable),
        "arch": cfg.arch,
        "accel": cfg.accel,
        "memory": cfg.memory_mib,
        "cpus": cfg.cpus,
        "kernel": os.fspath(cfg.kernel) if cfg.kernel else None,
        "initrd": os.fspath(cfg.initrd) if cfg.initrd else None,
        "cmdline": cfg.cmdline,
        "drives": layout,
        "capacity": CAPACITY,
        "extra": list(cfg.extra_args),
    }
    if base_under is not None:
        ident["base"] = os.fspath(base_under)
    blob = json.dumps(ident, sort_keys=True).encode()
    return "warm-" + hashlib.sha256(blob).hexdigest()[:32]


def virtual_size(path: Path) -> int:
    if path.suffix == ".qcow2":
        return qemu_img.virtual_size(path, "qcow2")
    return path.stat().st_size


def resize(path: Path, size: int) -> None:
    """Set the capacity of a raw or qcow2 instance disk (sparse; shrinking only drops the
    blank tail that growing added)."""
    if path.suffix == ".qcow2":
        tools.run(["qemu-img", "resize", "-q", "--shrink", "-f", "qcow2", path, str(size)])
    else:
        os.truncate(path, size)


class TemplateFailed(HostFailure):
    """The template VM never got ready (a base that does not boot): boot cold instead, so
    that the failure is reported like any other boot failure. ``stopped``: the VM ended
    by itself (it will again), rather than running out of time."""

    def __init__(self, message: str, *, stopped: bool) -> None:
        super().__init__(message)
        self.stopped = stopped


@dataclasses.dataclass(frozen=True)
class FrozenBase:
    """The root disk of a warm-started base: ``under`` (of ``format``) is the base disk
    or layer, ``path`` the frozen overlay over it that the saved state goes with."""

    under: Path
    format: str
    path: Path


def save_state(
    cfg: MachineConfig,
    dest: Path,
    workdir: Path,
    *,
    timeout: float = SAVE_TIMEOUT,
    base: FrozenBase | None = None,
    ram_file: Path | None = None,
) -> None:
    """Boot ``cfg`` with blank disks (and the base's root disk over ``base.under``), wait
    (at most ``timeout`` s) for the agent's ``ready``, save the VM to ``dest`` and, with a
    base disk, its root disk as ``base.path``. With ``ram_file``, the guest's RAM is that
    file (shared mapping) and ``dest`` leaves it out (x-ignore-shared): ~0.5 MB instead
    of ~70 MB; the file is synced before this returns."""
    workdir.mkdir(parents=True, exist_ok=True)
    drives = []
    frozen_tmp: Path | None = None
    for d in cfg.drives:
        if d.id == BASE and base is not None:
            frozen_tmp = base.path.with_name(f".{base.path.name}.{os.getpid()}.tmp")
            qemu_img.create_overlay(base.under, frozen_tmp, backing_format=base.format)
            drives.append(dataclasses.replace(d, path=frozen_tmp, format="qcow2"))
            continue
        blank = workdir / f"blank-{d.id}.raw"
        with open(blank, "wb") as fh:
            fh.truncate(CAPACITY)
        drives.append(dataclasses.replace(d, path=blank, format="raw"))
    events = workdir / "events.jsonl"
    save_cfg = dataclasses.replace(
        cfg,
        drives=tuple(drives),
        console_log=workdir / "console.log",
        events_log=events,
        qmp_socket=qmp_socket_path(workdir),
        ram_file=ram_file,
        ram_share=ram_file is not None,
    )
    try:
        _boot_and_save(save_cfg, dest, workdir, timeout)
        if ram_file is not None:
            with open(ram_file, "rb") as fh:
                os.fsync(fh.fileno())
    except BaseException:
        if frozen_tmp is not None:
            frozen_tmp.unlink(missing_ok=True)
        raise
    finally:
        release_socket_dir(workdir)
    if base is not None and frozen_tmp is not None:
        # the state is renamed into place after this returns: the disk it goes with first
        os.chmod(frozen_tmp, 0o444)
        os.replace(frozen_tmp, base.path)


def _boot_and_save(cfg: MachineConfig, dest: Path, workdir: Path, timeout: float) -> None:
    # The template waits for an instance ISO that never comes unless this process drives
    # it: it dies with this process (the spawn door), and is stopped on the way out.
    guest = GuestRun(cfg, workdir)
    try:
        guest.launch()
        if not guest.run_until(lambda state: state.ready, timeout):
            if guest.ended:
                raise TemplateFailed("it stopped before the agent was ready", stopped=True)
            raise TemplateFailed(f"the agent was not ready within {timeout:g} s", stopped=False)
        if cfg.ram_file is not None:
            guest.command(
                "migrate-set-capabilities",
                capabilities=[{"capability": "x-ignore-shared", "state": True}],
            )
        # Migrate while running (no "stop" first): the stream then records the VM as
        # running, so a restore resumes it by itself, without a QMP "cont".
        save_vm(guest.machine, dest)
        guest.command("quit")
        guest.machine.wait(10)
    finally:
        guest.stop()


# -- guest RAM in a file -----------------------------------------------------------------
#
# The node's saved guest with its RAM in a file of its own (issue 15): an instance maps the
# file privately (copy on write) and loads a ~0.5 MB state instead of ~70 MB, and the pages
# it only reads stay in the host's page cache once for every instance. The cache entry
# ``<key>.shared`` is a small pointer (JSON) naming the RAM file, the state and, for a base
# with a root disk, the frozen overlay, each under a fresh random name: the pointer is
# renamed into place last, so a reader sees all three or none, and a RAM file is never
# rewritten (a new save writes new files; one mapped by a running VM stays as it is).

SHARED_VERSION = 1
_TOKEN_CHARS = frozenset("0123456789abcdef")


@dataclasses.dataclass(frozen=True)
class SharedSave:
    """A saved guest whose RAM is ``ram``; ``state`` leaves that RAM out."""

    ram: Path
    state: Path
    base: Path | None

    def files(self) -> list[Path]:
        return [p for p in (self.state, self.ram, self.base) if p is not None]


def _entry_name(value: object, key: str, what: str) -> str:
    """A file name the pointer may hold: ``<key>.<what>-<hex token>`` (nothing else, so a
    damaged pointer cannot name a file outside the entry)."""
    prefix = f"{key}.{what}-"
    if not isinstance(value, str) or not value.startswith(prefix):
        raise ValueError(f"bad {what} name {value!r}")
    token = value[len(prefix) :].removesuffix(".qcow2")
    if not 8 <= len(token) <= 64 or not set(token) <= _TOKEN_CHARS:
        raise ValueError(f"bad {what} name {value!r}")
    return value


def read_shared(pointer: Path, key: str) -> SharedSave:
    """The files ``pointer`` names (beside it). Raises ValueError for a pointer that is
    not one vmwu wrote, OSError when it or a file it names is gone."""
    save = _parse_shared(pointer, key)
    for path in save.files():
        if not path.is_file():
            raise FileNotFoundError(f"{path.name} is gone")
    return save


def _parse_shared(pointer: Path, key: str) -> SharedSave:
    raw = pointer.read_bytes()
    if len(raw) > 4096:
        raise ValueError("pointer too large")
    data = json.loads(raw)
    if not isinstance(data, dict) or data.get("v") != SHARED_VERSION:
        raise ValueError("unknown pointer version")
    here = pointer.parent
    ram = here / _entry_name(data.get("ram"), key, "ram")
    state = here / _entry_name(data.get("state"), key, "sstate")
    base_name = data.get("base")
    base = None if base_name is None else here / _entry_name(base_name, key, "sbase")
    return SharedSave(ram, state, base)


def save_shared(
    cfg: MachineConfig,
    pointer_tmp: Path,
    derived: Path,
    key: str,
    workdir: Path,
    *,
    timeout: float = SAVE_TIMEOUT,
    base_under: tuple[Path, str] | None = None,
) -> None:
    """Boot and save ``cfg`` with its RAM in a file; move the RAM file, the state (and the
    frozen root disk) into ``derived`` under fresh names and write the pointer naming
    them into ``pointer_tmp`` (the cache renames it into place)."""
    token = secrets.token_hex(8)
    names = {"ram": f"{key}.ram-{token}", "state": f"{key}.sstate-{token}", "base": None}
    ram_tmp = pointer_tmp.with_name(pointer_tmp.name + ".ram")
    state_tmp = pointer_tmp.with_name(pointer_tmp.name + ".state")
    base = None
    if base_under is not None:
        names["base"] = f"{key}.sbase-{token}.qcow2"
        base = FrozenBase(base_under[0], base_under[1], derived / str(names["base"]))
    done: list[Path] = []
    try:
        save_state(cfg, state_tmp, workdir, timeout=timeout, base=base, ram_file=ram_tmp)
        if base is not None:
            done.append(base.path)
        with open(state_tmp, "rb") as fh:
            os.fsync(fh.fileno())
        # QEMU opens mem-path read-write even for a private mapping: owner-writable
        os.chmod(ram_tmp, 0o600)
        os.chmod(state_tmp, 0o444)
        for tmp, name in ((ram_tmp, names["ram"]), (state_tmp, names["state"])):
            os.replace(tmp, derived / str(name))
            done.append(derived / str(name))
        pointer_tmp.write_text(json.dumps({"v": SHARED_VERSION, **names}) + "\n")
    except BaseException:
        for path in (ram_tmp, state_tmp, *done):
            path.unlink(missing_ok=True)
        raise


def drop_shared(pointer: Path, key: str) -> None:
    """Forget a shared-RAM save (it did not load): the pointer first, so that no new
    instance picks it up, then its files (a VM that maps the RAM file keeps its pages)."""
    try:
        save: SharedSave | None = _parse_shared(pointer, key)
    except (OSError, ValueError):
        save = None
    pointer.unlink(missing_ok=True)
    for path in save.files() if save is not None else []:
        path.unlink(missing_ok=True)
