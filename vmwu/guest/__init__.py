"""Files that go into guests: the agent, its helpers, the tiny base's init and the default
auto-run script template. All POSIX sh that runs on busybox."""

from __future__ import annotations

from importlib import resources

AGENT = "vmwu-agent"
PROGRESS = "vmwu-progress"
MOUNT = "vmwu-mount"
FINDLABEL = "vmwu-findlabel"
TINY_INIT = "tiny-init"
DEFAULT_TEMPLATE = "templates/autorun.sh"
# for imported bases with their own script-bin daemon (thesis way; vmwu/bases/importer.py)
THESIS_TEMPLATE = "templates/thesis.sh"
# The Debian base (vmwu/bases/debian.py): initramfs /init, agent start-up, systemd units.
DEBIAN_INITRAMFS_INIT = "debian/initramfs-init"
DEBIAN_START = "debian/vmwu-start"
DEBIAN_SERVICE = "debian/vmwu.service"
DEBIAN_TARGET = "debian/vmwu.target"
# run once, as init, by a foreign-architecture Debian base build (vmwu/bases/foreign.py)
DEBIAN_SECOND_STAGE = "debian/second-stage"


def read(name: str) -> bytes:
    """Contents of a guest file shipped with vmwu."""
    return resources.files(__package__).joinpath(name).read_bytes()
