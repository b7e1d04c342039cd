"""The guest protocol: everything the host and the vmwu agent agree on, in one place.

The agent and its helpers are POSIX sh (``vmwu/guest/``); this module is their Python
side. ``tests/test_guest_protocol.py`` reads the shell scripts and checks that they use
exactly these names, so the two cannot drift apart. docs/guest-contract.md explains them.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Final

# The protocol's version. The agent reports it in its ``booted`` and ``resumed`` events;
# the catalog records it per base (``agent_version``). Raise it on any change a host of
# the previous version would misread, and keep the host reading the versions it knows.
AGENT_VERSION: Final = 1
KNOWN_AGENT_VERSIONS: Final = frozenset({1})

# A base's agent version as the catalog and a unit's vmwu:AgentVersion write it: the
# version's decimal number, or "none" for an image without the vmwu agent (an imported
# image; the launcher brings the agent on a cloud-init seed). In Python it is an
# ``int | None``; only these two functions see the text.
NO_AGENT_TEXT: Final = "none"
_VERSION_TEXT = re.compile(r"[0-9]{1,6}")


class Label(StrEnum):
    """Disk labels (and virtio serial numbers): disks are found by these, never by name."""

    APP = "VMWU-APP"  # the application disk (ext4), mounted at app-dir (/app)
    OUTPUT = "VMWU-OUT"  # the output disk (ext4), mounted at app-output-dir (/output)
    INSTANCE = "VMWU-INST"  # the instance ISO, mounted at app-cdrom-dir (/cdrom)
    BASE = "VMWU-BASE"  # a base's root disk (Debian), the serial of its drive
    SEED = "VMWU-SEED"  # a cloud-init NoCloud seed (imported bases without the agent)
    WARM_UP = "VMWU-WARM"  # a pooled VM's warm-up disks (mounted once before its job)
    ROOT = "VMWU-ROOT"  # the file system label of a Debian base's root


class Event(StrEnum):
    """The agent's events: one JSON object per line, ``{"event": NAME, ...}``."""

    BOOTED = "booted"  # {"agent": VERSION}: the agent runs (a cold boot)
    READY = "ready"  # a warm-start template has found its blank disks and waits
    RESUMED = "resumed"  # {"agent": VERSION}: a saved guest resumed and found its disks
    WARMED = "warmed"  # a pooled VM mounted its warm-up disks once and waits for its job
    STARTED = "started"  # {"script": NAME}: the application script starts
    PROGRESS = "progress"  # {"fraction": 0..1, "message": TEXT}
    EXIT = "exit"  # {"code": 0..255, "disk_full": bool}: the application ended
    ERROR = "error"  # {"message": TEXT}: the agent cannot go on


class KernelOption(StrEnum):
    """``vmwu.KEY=VALUE`` settings the agent reads from the kernel command line."""

    APP_DIR = "vmwu.app"
    OUTPUT_DIR = "vmwu.out"
    CDROM_DIR = "vmwu.cdrom"
    CDROM_DEVICE = "vmwu.cdrom_dev"  # "scsi": the instance ISO is a SCSI CD-ROM
    WAIT_LABELS = "vmwu.wait"
    WAIT_SECONDS = "vmwu.waitsec"
    EVENTS = "vmwu.events"  # the event port's device (default /dev/ttyS1)
    POWEROFF = "vmwu.poweroff"
    WARM = "vmwu.warm"  # 1: a warm-start template (wait for the instance ISO)


WARM_TEMPLATE: Final = f"{KernelOption.WARM}=1"
CDROM_SCSI: Final = f"{KernelOption.CDROM_DEVICE}=scsi"

# Mount points when the unit does not choose others (app-dir, app-output-dir, app-cdrom-dir)
DEFAULT_APP_DIR: Final = "/app"
DEFAULT_OUTPUT_DIR: Final = "/output"
DEFAULT_CDROM_DIR: Final = "/cdrom"

# On the instance ISO
PARAM_FILE: Final = "param"  # the thesis's space-separated parameters (parameters-filename)
PARAM_ARGV: Final = "param.argv"  # one argument per line
PARAM_SH: Final = "param.sh"  # `set -- 'a' 'b'`, exact for any argument
ISO_TIME: Final = ".vmwu/time"  # the host's clock, set by a resumed guest
ISO_SEED: Final = ".vmwu/seed"  # entropy stirred into a resumed guest's pool
ISO_INSTANCE_SCRIPT: Final = ".vmwu/instance-script"  # run launch --instance-script
ISO_INSTANCE_POST_SCRIPT: Final = ".vmwu/instance-post-script"

# On the application disk: the script-bin, run in name order, the auto-run script first
SCRIPT_BIN: Final = ".vmwu/bin"
AUTORUN_NAME_FILE: Final = ".vmwu/autorun"  # holds the auto-run script's name

# On the output disk: the agent's own folder, read back by the host, never copied out
GUEST_STATE_DIR: Final = ".vmwu"
GUEST_STATUS: Final = "status.json"


def known_agent(version: object) -> bool:
    """Whether the host can talk to an agent that reported ``version``."""
    return (
        isinstance(version, int)
        and not isinstance(version, bool)
        and (version in KNOWN_AGENT_VERSIONS)
    )


def agent_version_text(version: int | None) -> str:
    """How the catalog and a unit's descriptor write ``version`` (``None``: no agent)."""
    return NO_AGENT_TEXT if version is None else str(version)


def parse_agent_version(text: str) -> int | None:
    """The agent version written as ``text`` by :func:`agent_version_text`. An empty text
    (a catalog row or a unit from before the field was filled) is this vmwu's agent, as
    pack has always read it. Raises ValueError with one line for anything else."""
    value = text.strip()
    if not value:
        return AGENT_VERSION
    if value == NO_AGENT_TEXT:
        return None
    if _VERSION_TEXT.fullmatch(value):
        return int(value)
    raise ValueError(f"agent version {text[:40]!r} is neither a number nor {NO_AGENT_TEXT!r}")
