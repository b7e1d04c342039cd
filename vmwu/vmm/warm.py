"""Warm start: boot a guest once per node, save it, restore it for every instance.

Booting the kernel is most of an instance's life under TCG (~2 s of ~3). Instead, the
first instance on a node with a given machine configuration boots a *template* VM with
blank disks of fixed capacity attached; the agent (``vmwu.warm=1``) loads its modules,
finds the disks, emits ``ready`` and waits for the instance ISO's label to appear. The
host then pauses the VM and migrates its state into the node cache. Every instance then
starts QEMU with the same devices, its own disks (same capacities), and
``-incoming fd:0`` fed from the saved state: the guest resumes inside its wait loop,
sees its ISO, drops what it had cached of the blank disks, and runs the job.

The saved state is keyed by everything it depends on: the QEMU binary, the machine
options, the kernel, initramfs and command line, and the device list. A state that fails
to load is deleted and the instance boots cold.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from pathlib import Path

from vmwu import tools
from vmwu.errors import HostFailure
from vmwu.events import EventReader
from vmwu.vmm.qemu import DriveKind, MachineConfig, QemuMachine
from vmwu.vmm.snapshot import save_vm

log = logging.getLogger(__name__)

# Every disk of a warm-started VM has this capacity (the guest probed it at save time); a
# file system smaller than its device is fine for ext4 and ISO9660. Sparse: costs nothing.
CAPACITY = 256 * 1024**3
WARM_KEY = "vmwu.warm=1"
SAVE_TIMEOUT = 180.0


def eligible(cfg: MachineConfig, sizes: dict[str, int]) -> str | None:
    """Why this machine cannot warm-start (None if it can)."""
    if cfg.kernel is None:
        return "the base boots from its own disk"
    if any(d.kind != DriveKind.DISK for d in cfg.drives):
        return "the instance ISO is attached as a CD-ROM"
    if any(d.id == "base" for d in cfg.drives):
        return "the base has a disk"
    big = [name for name, size in sizes.items() if size > CAPACITY]
    if big:
        return f"disk {big[0]} is larger than {CAPACITY // 1024**3} GiB"
    return None


def _qemu_identity(executable: str) -> str:
    path = os.path.realpath(tools.which(executable))
    st = os.stat(path)
    return f"{path}:{st.st_size}:{st.st_mtime_ns}"


def with_warm_cmdline(cfg: MachineConfig) -> MachineConfig:
    return dataclasses.replace(cfg, cmdline=f"{cfg.cmdline} {WARM_KEY}".strip())


def state_key(cfg: MachineConfig, executable: str) -> str:
    """A name for the saved state of ``cfg`` (already carrying the warm key). The kernel
    and initramfs paths are content-addressed cache entries, so they stand for their
    bytes."""
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
    blob = json.dumps(ident, sort_keys=True).encode()
    return "warm-" + hashlib.sha256(blob).hexdigest()[:32]


def virtual_size(path: Path) -> int:
    if path.suffix == ".qcow2":
        from vmwu.images import qemu_img

        return int(qemu_img.info(path)["virtual-size"])
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


def save_state(
    cfg: MachineConfig, dest: Path, workdir: Path, *, timeout: float = SAVE_TIMEOUT
) -> None:
    """Boot ``cfg`` with blank disks, wait (at most ``timeout`` s) for the agent's
    ``ready``, save the VM to ``dest``."""
    workdir.mkdir(parents=True, exist_ok=True)
    drives = []
    for d in cfg.drives:
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
        qmp_socket=workdir / "qmp.sock" if len(os.fsencode(workdir)) < 90 else cfg.qmp_socket,
    )
    reader = EventReader(events)
    # The template waits for an instance ISO that never comes unless this process drives
    # it: if this process is killed (kill -9), the template must die too.
    with QemuMachine(save_cfg, log_path=workdir / "qemu.log", die_with_parent=True) as vm:
        vm.launch()
        deadline = time.monotonic() + timeout
        while not any(e.get("event") == "ready" for e in reader.read()):
            if vm.poll() is not None:
                raise TemplateFailed("it stopped before the agent was ready", stopped=True)
            if time.monotonic() > deadline:
                raise TemplateFailed(f"the agent was not ready within {timeout:g} s", stopped=False)
            vm.wait_exit_event(0.02)
        # Migrate while running (no "stop" first): the stream then records the VM as
        # running, so a restore resumes it by itself, without a QMP "cont".
        save_vm(vm, dest)
        vm.command("quit")
        vm.wait(10)
