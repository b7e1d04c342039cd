"""Auto-run script templates and the ``###TOKEN###`` substitution of thesis Appendix B."""

from __future__ import annotations

import re
from collections.abc import Mapping

from vmwu.errors import SpecError

# The 13 tokens of thesis Appendix B.
TOKENS = (
    "APPLICATION_DIRECTORY",
    "CDROM_DIRECTORY",
    "CDROM_FILESYSTEM_FORMAT",
    "CDROM_MOUNT_DEVICE",
    "INPUT_DIRECTORY",
    "INPUT_MOUNT_DEVICE",
    "INSTANCE_COMMAND",
    "INSTANCE_POST_COMMAND",
    "LAUNCHING_COMMAND",
    "OUTPUT_DIRECTORY",
    "OUTPUT_FILESYSTEM_FORMAT",
    "OUTPUT_MOUNT_DEVICE",
    "WORKING_DIRECTORY",
)

_TOKEN_RE = re.compile(r"###([A-Z_]+)###")


def render(template: str, values: Mapping[str, str], where: str) -> str:
    """Replace every ``###TOKEN###``; an unknown token is an error naming ``where:line``."""
    missing = set(TOKENS) - set(values)
    if missing:
        raise ValueError(f"no value for tokens {sorted(missing)}")  # a bug, not user input
    for lineno, line in enumerate(template.splitlines(), start=1):
        for match in _TOKEN_RE.finditer(line):
            if match.group(1) not in values:
                raise SpecError(
                    f"{where}:{lineno}",
                    f"unknown template token ###{match.group(1)}###",
                    hint="known tokens: " + ", ".join(TOKENS),
                )
    return _TOKEN_RE.sub(lambda m: values[m.group(1)], template)
