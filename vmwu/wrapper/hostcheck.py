"""Trouble on this host that a later try may not meet: not enough free memory for the
VM now, the accelerator (KVM) busy or unusable.

vboxwrapper (BOINC's samples/vboxwrapper) makes such a task a temporary exit instead of
a computation error: the client tries it again after a delay, on this host. The wrapper
raises a :class:`HostNotReady`; under a BOINC client that becomes
``boinc_temporary_exit(retry_after, reason)`` (vmwu/wrapper/boinc/main.py), standalone a
host failure (exit 244) that a later run may not meet.
"""

from __future__ import annotations

import re
from pathlib import Path

from vmwu.errors import HostFailure

MEMINFO = Path("/proc/meminfo")
# What QEMU needs beside the guest's memory (its own code and data, TCG's translation
# cache, the migration buffers of a checkpoint): the same allowance docs/boinc.md asks a
# project to add to rsc_memory_bound.
QEMU_OVERHEAD_MIB = 100

# QEMU's words when it cannot use KVM (accel/kvm/kvm-all.c, QEMU 7.2): another hypervisor
# holds the CPU's virtualization (VirtualBox, VMware: "Device or resource busy"), or the
# kernel module refuses.
_ACCEL_FAILED = re.compile(
    r"(Could not access KVM kernel module|ioctl\(KVM_CREATE_VM\) failed|"
    r"failed to initialize kvm)[: ]*((?:(?! / )[^\n])*)"
)


class HostNotReady(HostFailure):
    """Transient trouble on this host: under a BOINC client, a temporary exit of
    ``retry_after`` seconds."""

    retry_after = 3600


class NotEnoughMemory(HostNotReady):
    # Free memory comes and goes with what the volunteer runs: an hour.
    retry_after = 3600


class AcceleratorTrouble(HostNotReady):
    # Another hypervisor holding VT-x/AMD-V stays for a while: a day, as vboxwrapper
    # waits when "VT-x is being used by another hypervisor".
    retry_after = 86400


def mem_available_mib(meminfo: Path = MEMINFO) -> int | None:
    """The kernel's estimate of memory available without swapping (``MemAvailable``),
    in MiB; None where the kernel does not say."""
    try:
        text = meminfo.read_text()
    except OSError:
        return None
    match = re.search(r"^MemAvailable:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(match.group(1)) // 1024 if match else None


def check_memory(guest_mib: int, meminfo: Path = MEMINFO) -> None:
    """Raise :class:`NotEnoughMemory` if the host has less memory available than the
    guest's plus QEMU's own. The message is about the host, not the job: under a client
    the volunteer sees it (in at most 255 characters)."""
    available = mem_available_mib(meminfo)
    needed = guest_mib + QEMU_OVERHEAD_MIB
    if available is not None and available < needed:
        raise NotEnoughMemory(
            f"not enough memory for the VM now: it needs {needed} MiB "
            f"({guest_mib} MiB for the guest, {QEMU_OVERHEAD_MIB} for QEMU) and "
            f"{available} MiB are available (MemAvailable)",
            hint="close programs or run it later",
        )


def accelerator_trouble(qemu_log: str) -> str | None:
    """QEMU's reason when it could not start on KVM (``qemu_log`` is what it wrote),
    else None."""
    match = _ACCEL_FAILED.search(qemu_log)
    if match is None:
        return None
    reason = match.group(2).strip()
    return f"{match.group(1)}: {reason}" if reason else match.group(1)
