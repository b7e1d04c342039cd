"""A Debian base of another architecture than the host's, without binfmt_misc or root.

``mmdebstrap`` cannot run an arm64 package's maintainer scripts on an amd64 host unless
qemu-user is registered with the kernel's binfmt_misc, which takes root on the host (and,
in a container, changes the host kernel for everyone). vmwu does what debootstrap's
``--foreign`` / ``--second-stage`` do, with the emulation it already has:

1. on the host, ``mmdebstrap --variant=extract`` unpacks minbase's packages and keeps
   their ``.deb`` files in the tree (vmwu.bases.mmdebstrap, ``foreign=True``);
2. the tree becomes the root disk as usual (``mkfs.ext4 -d``), with the script
   ``guest/debian/second-stage`` in it;
3. the tree's own kernel boots it once under ``qemu-system-<arch>`` (TCG), with that
   script as ``init=``: it installs the packages with dpkg (maintainer scripts, triggers
   and all), removes the ``.deb`` files and powers off;
4. the host reads the script's verdict back from the disk with ``debugfs``.

Step 3 takes minutes under emulation; it runs once per base, not per unit or instance.
"""

from __future__ import annotations

import logging
from pathlib import Path

from vmwu import guest
from vmwu.bases.mmdebstrap import SECOND_STAGE_DEBS
from vmwu.errors import GuestTimeout, HostFailure
from vmwu.images import ext4_read, rootfs
from vmwu.vmm.qemu import Drive, MachineConfig, QemuMachine

log = logging.getLogger(__name__)

SCRIPT = str(Path(SECOND_STAGE_DEBS).parent / "run")
STATUS = "/var/lib/vmwu/second-stage.status"
TIMEOUT = 3600.0


def add_script(staged: rootfs.Staged) -> None:
    staged.add_file(SCRIPT, guest.read(guest.DEBIAN_SECOND_STAGE), mode=0o755)


def run(
    disk: Path,
    *,
    arch: str,
    kernel: Path,
    initrd: Path,
    cmdline: str,
    work: Path,
    console: Path,
    timeout: float = TIMEOUT,
) -> None:
    """Boot the raw root ``disk`` once with the second stage as init; raise unless it
    reported success. The guest's console goes to ``console`` (kept on failure)."""
    cfg = MachineConfig(
        arch=arch,
        accel="tcg",  # a foreign architecture is always emulated
        memory_mib=1024,
        cpus=2,
        kernel=kernel,
        initrd=initrd,
        cmdline=f"{cmdline} init={SCRIPT}",
        drives=(Drive("root", disk, "raw"),),
        console_log=console,
    )
    with QemuMachine(cfg, log_path=work / "qemu.log") as vm:
        vm.launch()
        code = vm.wait(timeout)
        if code is None:
            raise GuestTimeout(
                f"the {arch} second stage did not finish in {timeout:.0f} s: {_tail(console)}",
                hint=f"the guest's console is kept in {console}",
            )
    verdict = (ext4_read.read_file(disk, STATUS) or b"").decode(errors="replace").strip()
    if verdict != "ok":
        raise HostFailure(
            f"installing the {arch} packages in the guest failed: "
            f"{verdict or 'no verdict written'}; console: {_tail(console)}",
            hint=f"the guest's console is kept in {console}",
        )


def _tail(console: Path, lines: int = 3) -> str:
    try:
        text = console.read_text(errors="replace")
    except OSError:
        return "(no console output)"
    return " / ".join(text.strip().splitlines()[-lines:]) or "(no console output)"
