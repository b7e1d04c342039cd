"""A cloud-init NoCloud seed that brings the vmwu agent to a base that lacks it.

A base imported with ``vmwu base import`` knows nothing of vmwu. If it is a cloud image,
cloud-init reads a *seed*: a volume labelled ``cidata`` holding ``user-data`` and
``meta-data`` (the NoCloud data source). For every base without the vmwu agent the
launcher attaches such a seed as the last disk (after the unit's own disks, so the
device names a thesis-style template relies on do not move). Its ``meta-data`` has a
fresh ``instance-id`` per run, so cloud-init treats each instance as a first boot; its
``user-data`` is a ``#cloud-config`` whose ``bootcmd`` (the earliest user hook, in
cloud-init's first networked stage) mounts the seed and runs ``vmwu/boot.sh`` from it:
that installs the agent and its helpers and executes the agent, which mounts the unit's
disks, runs the auto-run script, writes ``status.json`` and ends the VM.

A base that is not a cloud image ignores the seed (it is one more disk).
"""

from __future__ import annotations

import secrets
from pathlib import Path

from vmwu import guest
from vmwu.images.iso import IsoEntry, write_iso
from vmwu.unit.model import BaseRef

SEED_LABEL = "CIDATA"  # NoCloud looks for "cidata" in either case

USER_DATA = """#cloud-config
# vmwu NoCloud seed (docs/bases.md): start the vmwu agent from this seed as early as
# cloud-init runs commands. The agent mounts the work unit's disks, runs its auto-run
# script, writes status.json and ends the VM.
bootcmd:
  - mkdir -p /run/vmwu-seed
  - mount -r LABEL=CIDATA /run/vmwu-seed
  - exec sh /run/vmwu-seed/vmwu/boot.sh
"""

BOOT_SH = """#!/bin/sh
# vmwu: run by cloud-init's bootcmd from the NoCloud seed. Install the agent and its
# helpers, then become the agent (it ends the VM; docs/bases.md).
for f in vmwu-agent vmwu-progress vmwu-mount vmwu-findlabel; do
    cp /run/vmwu-seed/vmwu/$f /usr/local/bin/$f && chmod 0755 /usr/local/bin/$f
done
umount /run/vmwu-seed 2> /dev/null
for mod in virtio_blk isofs; do modprobe -q $mod 2> /dev/null; done
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
exec /usr/local/bin/vmwu-agent < /dev/null > /dev/ttyS0 2>&1
"""


def needs_seed(base: BaseRef) -> bool:
    """A base without the vmwu agent (an imported image) gets a NoCloud seed."""
    return base.agent_version is None


def seed_entries(instance_id: str | None = None) -> list[IsoEntry]:
    iid = instance_id or f"vmwu-{secrets.token_hex(8)}"
    entries = [
        IsoEntry("user-data", data=USER_DATA.encode()),
        IsoEntry("meta-data", data=f"instance-id: {iid}\nlocal-hostname: vmwu\n".encode()),
        IsoEntry("vmwu/boot.sh", data=BOOT_SH.encode(), mode=0o755),
    ]
    for name in (guest.AGENT, guest.PROGRESS, guest.MOUNT, guest.FINDLABEL):
        entries.append(IsoEntry(f"vmwu/{name}", data=guest.read(name), mode=0o755))
    return entries


def write_seed(path: Path, instance_id: str | None = None) -> Path:
    """Write the seed ISO (label ``CIDATA``) at ``path``; returns ``path``."""
    write_iso(path, seed_entries(instance_id), label=SEED_LABEL)
    return path
