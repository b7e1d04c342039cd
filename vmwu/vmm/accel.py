"""Choosing the accelerator (DESIGN 3.5).

``auto`` takes KVM only when ``/dev/kvm`` is usable *and* backed by ``kvm_intel`` or
``kvm_amd`` and the guest has the host's architecture. Some hosts (ours) expose
``/dev/kvm`` through ``kvm_pvm``, under which ordinary guest kernels hang at boot: there,
and everywhere else, TCG.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

from vmwu.errors import BadInput

ACCELS = ("auto", "kvm", "tcg")


@dataclass(frozen=True)
class AccelChoice:
    accel: str  # "kvm" or "tcg"
    reason: str


def _host_arch() -> str:
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def _loaded(module: str, sys_module: Path) -> bool:
    return (sys_module / module).is_dir()


def choose(
    requested: str = "auto",
    *,
    guest_arch: str = "x86_64",
    dev_kvm: Path = Path("/dev/kvm"),
    sys_module: Path = Path("/sys/module"),
) -> AccelChoice:
    """Decide between KVM and TCG and say why."""
    if requested not in ACCELS:
        raise BadInput(f"unknown accelerator {requested!r}: use one of {', '.join(ACCELS)}")
    if requested == "tcg":
        return AccelChoice("tcg", "TCG requested")
    problem = None
    if guest_arch != _host_arch():
        problem = f"the guest is {guest_arch} and the host {_host_arch()}"
    elif not dev_kvm.exists():
        problem = f"{dev_kvm} does not exist"
    elif not os.access(dev_kvm, os.R_OK | os.W_OK):
        problem = f"{dev_kvm} is not readable and writable by this user"
    elif _loaded("kvm_pvm", sys_module):
        problem = f"{dev_kvm} is provided by kvm_pvm, under which ordinary guest kernels hang"
    elif not (_loaded("kvm_intel", sys_module) or _loaded("kvm_amd", sys_module)):
        problem = f"{dev_kvm} is not backed by kvm_intel or kvm_amd"
    if requested == "kvm":
        if problem:
            raise BadInput(f"KVM requested but {problem}", hint="use --accel tcg or auto")
        return AccelChoice("kvm", "KVM requested")
    if problem:
        return AccelChoice("tcg", f"TCG: {problem}")
    return AccelChoice("kvm", f"KVM: {dev_kvm} is usable")
