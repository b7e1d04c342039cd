"""Save a VM's full state into a file, and wait for a saved state to load.

Saving is a QMP migration to a file descriptor passed over the QMP socket (``getfd`` +
``migrate fd:``). When it completes, QEMU leaves the VM paused (run state
``postmigrate``) with its disks flushed and inactivated: their image files then match the
saved memory exactly, so they can be copied. ``cont`` re-activates the disks and resumes
the guest. A VM paused (``stop``) before the save is recorded as paused: QEMU restores it
paused and it needs a ``cont``; one saved while running resumes by itself.

Restoring is QEMU started with the same machine configuration and ``-incoming fd:0``
reading the file (``MachineConfig.incoming``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from vmwu.errors import HostDiskFull, HostFailure, VMCrashed
from vmwu.hostfs import is_disk_full
from vmwu.vmm.qemu import QemuMachine

SAVE_TIMEOUT = 300.0
# QEMU's default migration bandwidth (32 MiB/s) would make a 70 MB state take 2 s.
MAX_BANDWIDTH = 64 * 1024**3


class SaveFailed(HostFailure):
    """QEMU could not write the VM's state (the file is incomplete and must be dropped)."""


def save_vm(vm: QemuMachine, dest: Path, *, timeout: float = SAVE_TIMEOUT) -> None:
    """Write the state of the running (or paused) ``vm`` into ``dest`` and fsync it. The
    VM is left paused in ``postmigrate``."""
    try:
        fh = open(dest, "wb")
    except OSError as exc:
        if is_disk_full(exc):
            raise HostDiskFull(str(dest.parent)) from exc
        raise SaveFailed(f"cannot create {dest}: {exc.strerror}") from exc
    with fh:
        vm.qmp().send_fd_scm(fh.fileno())
        vm.command("getfd", fdname="vmwustate")
        vm.command("migrate-set-parameters", **{"max-bandwidth": MAX_BANDWIDTH})
        vm.command("migrate", uri="fd:vmwustate")
        deadline = time.monotonic() + timeout
        while True:
            info = vm.command("query-migrate")
            status = info.get("status")
            if status == "completed":
                break
            if status in ("failed", "cancelled"):
                desc = str(info.get("error-desc") or status)
                if "No space left" in desc:
                    raise HostDiskFull(str(dest.parent))
                raise SaveFailed(f"saving the VM state into {dest} failed: {desc}")
            if time.monotonic() > deadline:
                vm.command("migrate_cancel")
                raise SaveFailed(f"saving the VM state into {dest} took over {timeout:g} s")
            time.sleep(0.01)
        try:
            os.fsync(fh.fileno())
        except OSError as exc:
            if is_disk_full(exc):
                raise HostDiskFull(str(dest.parent)) from exc
            raise


def wait_incoming(vm: QemuMachine, *, timeout: float) -> str:
    """Wait until a VM started with ``-incoming`` has loaded its state; returns its run
    state (``paused`` or ``running``). Raises :class:`VMCrashed` if QEMU exits first (a
    state that does not load: another QEMU, another machine configuration, a corrupt
    file) or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        if vm.poll() is not None:
            tail = vm.qemu_log_tail() or f"QEMU exited with status {vm.returncode}"
            raise VMCrashed(f"the saved VM state did not load: {tail}")
        try:
            status = str(vm.command("query-status").get("status"))
        except VMCrashed:
            raise
        except Exception:  # noqa: BLE001 - QMP socket not there yet, or QEMU just exited
            status = "inmigrate"
        if status != "inmigrate":
            return status
        if time.monotonic() > deadline:
            raise VMCrashed(f"the saved VM state did not load within {timeout:g} s")
        vm.wait_exit_event(0.02)
