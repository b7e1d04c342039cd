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


def read(name: str) -> bytes:
    """Contents of a guest file shipped with vmwu."""
    return resources.files(__package__).joinpath(name).read_bytes()
