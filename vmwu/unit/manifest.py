"""The ``.mf`` manifest of a ``.ova``: ``SHA256(member)= hex`` lines (docs/ova-layout.md).

vmwu writes SHA256 only, and reads SHA256 only: a unit from another tool that lists SHA1 or
SHA512 digests is refused rather than verified more weakly.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from vmwu.errors import UnitError
from vmwu.unit.descriptor import SHA256_RE, member_name_problem

# The manifest's size limit; anything bigger is not a manifest we wrote.
MAX_MANIFEST_BYTES: Final = 1024 * 1024

_MANIFEST_RE: Final = re.compile(r"SHA256\((?P<name>.+)\)=[ \t]*(?P<digest>[0-9A-Fa-f]{64})")


def render_manifest(entries: Sequence[tuple[str, str]]) -> bytes:
    """``SHA256(member)= hex`` lines, in the given order."""
    lines = []
    for name, digest in entries:
        if member_name_problem(name) or not SHA256_RE.fullmatch(digest):
            raise ValueError(f"bad manifest entry {name!r}: {digest!r}")
        lines.append(f"SHA256({name})= {digest}\n")
    return "".join(lines).encode("utf-8")


def parse_manifest(data: bytes, where: str) -> dict[str, str]:
    """Member name -> lowercase hex SHA256. Only SHA256 lines are accepted (no SHA1 or
    SHA512: vmwu writes SHA256 and will not weaken verification for other tools' units)."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise UnitError(f"{where} is {len(data)} bytes, too large for a manifest")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UnitError(f"{where} is not UTF-8 text") from None
    digests: dict[str, str] = {}
    for lineno, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        match = _MANIFEST_RE.fullmatch(line)
        if not match:
            hint = None
            if re.match(r"(SHA1|SHA512|SHA384|MD5)\(", line):
                hint = "vmwu accepts SHA256 manifests only"
            raise UnitError(
                f"{where}:{lineno}: expected 'SHA256(member)= hex', got {line[:120]!r}",
                hint=hint,
            )
        name = match["name"]
        if name in digests:
            raise UnitError(f"{where}:{lineno}: {name} is listed twice")
        digests[name] = match["digest"].lower()
    return digests
