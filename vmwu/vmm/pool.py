"""A ready VM: the node's saved guest restored ahead of its job, paused, disks swappable.

A :class:`ReadyVM` is started from the saved guest whose RAM is a file
(:class:`vmwu.vmm.warm.SharedSave`) with ``-S``, so that it stays paused once the state
has loaded; its disks are raw "top" nodes over placeholder files of the saved capacity
(one set per VM: QEMU locks the images it opens). :meth:`ReadyVM.assign` gives it one
instance: the instance's images are added as block nodes, each top node is reopened over
its image (``blockdev-reopen``), the placeholders are deleted, the console and the event
port are pointed at the instance's files (``chardev-change``), and the VM continues: the
agent, in the wait loop the guest was saved in, finds the instance ISO and runs the job.
That takes a few milliseconds of QMP instead of a new QEMU restoring and re-translating.

A ready VM runs one instance and ends with it: its memory then holds that instance's
data, so it is never given another (``assign`` refuses a second time).

The QEMU is started through :func:`vmwu.tools.spawn` like every other
(:class:`vmwu.vmm.qemu.QemuMachine`): it dies with the process, and with the *thread*,
that started it (``PR_SET_PDEATHSIG``), so whoever keeps ready VMs starts them from a
thread that lives as long as they do (:mod:`vmwu.run.pool`).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import shutil
import time
from pathlib import Path
from typing import Any

from vmwu.errors import VMCrashed
from vmwu.guest.events import EventReader, InstanceState
from vmwu.guest.protocol import Event, Label
from vmwu.vmm import warm
from vmwu.vmm.qemu import (
    Drive,
    DriveKind,
    MachineConfig,
    QemuMachine,
    qmp_socket_path,
    release_socket_dir,
)
from vmwu.vmm.snapshot import wait_incoming

RESTORE_TIMEOUT = 60.0
WARM_UP_TIMEOUT = 30.0
WARM_UP_EXT4 = 4 * 1024**2
_serial = itertools.count()


@dataclasses.dataclass(frozen=True)
class WarmUp:
    """Disks a ready VM mounts once before its job (the agent's warm-up: TCG then has
    the mount code translated): an ext4 image for every writable disk, an ISO labelled
    VMWU-WARM for the read-only one. Made once per pool; each VM gets copies."""

    ext4: Path
    iso: Path

    @classmethod
    def make(cls, directory: Path) -> WarmUp:
        from vmwu.images import ext4
        from vmwu.images.iso import IsoEntry, write_iso

        directory.mkdir(parents=True, exist_ok=True)
        image, iso = directory / "warm-up.ext4", directory / "warm-up.iso"
        ext4.make_image(image, WARM_UP_EXT4, label=Label.WARM_UP)
        write_iso(iso, [IsoEntry("warm-up", data=b"warm-up\n")], label=Label.WARM_UP)
        return cls(image, iso)


def poolable(cfg: MachineConfig) -> str | None:
    """Why an instance with the warm configuration ``cfg`` cannot run in a ready VM
    (None if it can): its guest RAM must come from a file and its disks be virtio disks
    that are each one image (raw or qcow2 over a cached image)."""
    if cfg.ram_file is None or cfg.incoming is None:
        return "the saved guest's RAM is not in a file"
    for d in cfg.drives:
        if d.kind != DriveKind.DISK:
            return f"drive {d.id} is not a virtio disk"
        if d.format not in ("raw", "qcow2"):
            return f"drive {d.id} is a {d.format} image"
        if d.id == warm.BASE:
            return "the base has a root disk"
    if cfg.pflash:
        return "UEFI firmware"
    return None


def _node_options(d: Drive, name: str) -> dict[str, Any]:
    """``blockdev-add`` arguments for an instance image (as ``-drive cache=unsafe``)."""
    options: dict[str, Any] = {
        "driver": d.format,
        "node-name": name,
        "read-only": d.read_only,
        "cache": {"no-flush": True},
        "file": {
            "driver": "file",
            "filename": os.fspath(d.path),
            "read-only": d.read_only,
            "cache": {"no-flush": True},
        },
    }
    return options


class ReadyVM:
    """One VM restored from ``cfg`` (an instance's warm configuration: its memory, kernel,
    command line, device list, saved state and RAM file), paused, in ``workdir``."""

    def __init__(self, cfg: MachineConfig, workdir: Path, warm_up: WarmUp | None = None) -> None:
        reason = poolable(cfg)
        if reason is not None:
            raise ValueError(f"cannot pool this machine: {reason}")
        self.workdir = workdir
        self.warm_up = warm_up
        self.warmed = False
        placeholders = []
        for d in cfg.drives:
            path = workdir / f"ph-{d.id}.raw"
            placeholders.append(dataclasses.replace(d, path=path, format="raw"))
        self.cfg = dataclasses.replace(
            cfg,
            drives=tuple(placeholders),
            console_log=workdir / "console.log",
            events_log=workdir / "events.jsonl",
            qmp_socket=qmp_socket_path(workdir),
            swappable=True,
            start_paused=True,
        )
        self.machine = QemuMachine(self.cfg, log_path=workdir / "qemu.log")
        self.used = False

    def launch(self) -> None:
        """Start QEMU and wait until the saved state has loaded (the VM is paused)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        for d in self.cfg.drives:
            if self.warm_up is not None:
                shutil.copyfile(self.warm_up.iso if d.read_only else self.warm_up.ext4, d.path)
            with open(d.path, "ab") as fh:
                fh.truncate(warm.CAPACITY)
        self.machine.launch()
        status = wait_incoming(self.machine, timeout=RESTORE_TIMEOUT)
        if status != "paused":
            raise VMCrashed(f"a ready VM is {status} instead of paused")
        if self.warm_up is not None:
            self._warm_up()
        # The QMP client belongs to this thread's event loop, which this thread goes on
        # running for the next VMs: the instance that takes this VM connects anew.
        self.machine.disconnect_qmp()

    def _warm_up(self) -> None:
        """Let the guest mount its warm-up disks once (event ``warmed``), then pause it.
        An agent without the warm-up goes on waiting: the VM is paused all the same."""
        assert self.cfg.events_log is not None
        events = EventReader(self.cfg.events_log)
        state = InstanceState()
        self.machine.command("cont")
        deadline = time.monotonic() + WARM_UP_TIMEOUT
        while time.monotonic() < deadline and self.machine.poll() is None:
            for event in events.read():
                state.apply(event, time.monotonic())
                self.warmed = self.warmed or event.get("event") == Event.WARMED
            if self.warmed:
                break
            self.machine.wait_exit_event(0.01)
        self.machine.command("stop")

    @property
    def alive(self) -> bool:
        return self.machine.poll() is None

    def assign(self, cfg: MachineConfig) -> QemuMachine:
        """Give this VM the instance whose warm configuration is ``cfg`` (same machine,
        its own images, console and event files) and let it run. Raises
        :class:`VMCrashed` if QEMU refuses (the caller stops it and starts the instance
        another way); the VM is then used all the same."""
        if self.used:
            raise RuntimeError("a ready VM runs one instance only")
        self.used = True
        if not self.alive:
            raise VMCrashed("the ready VM has ended")
        vm = self.machine
        job = next(_serial)
        try:
            for d in cfg.drives:
                node = f"j{job}-{d.id}"
                vm.command("blockdev-add", **_node_options(d, node))
                top: dict[str, Any] = {"driver": "raw", "node-name": f"{d.id}-top"}
                top.update(file=node, cache={"no-flush": True}, **{"read-only": d.read_only})
                vm.command("blockdev-reopen", options=[top])
                vm.command("blockdev-del", **{"node-name": f"{d.id}-ph"})
            for name, path in (("con", cfg.console_log), ("ev", cfg.events_log)):
                if path is not None:
                    backend = {"type": "file", "data": {"out": os.fspath(path)}}
                    vm.command("chardev-change", id=name, backend=backend)
            vm.started_at = time.monotonic()
            vm.command("cont")
        except VMCrashed:
            raise
        except Exception as exc:  # noqa: BLE001 - QMP errors: one line for the caller
            raise VMCrashed(f"the ready VM did not take the instance: {exc}") from exc
        return vm

    def discard(self) -> None:
        """Stop the VM (if it still runs) and remove its directory."""
        try:
            self.machine.shutdown(timeout=1.0)
        finally:
            release_socket_dir(self.workdir)
            shutil.rmtree(self.workdir, ignore_errors=True)


def pool_key(cfg: MachineConfig) -> str:
    """What ready VMs for ``cfg`` must share with it: everything but the instance's own
    files (its images, console and event files, QMP socket). Instances with the same key
    can run in each other's ready VMs."""
    shape = dataclasses.replace(
        cfg,
        drives=tuple(dataclasses.replace(d, path=Path(d.id)) for d in cfg.drives),
        console_log=None,
        events_log=None,
        qmp_socket=None,
    )
    return repr(shape)
