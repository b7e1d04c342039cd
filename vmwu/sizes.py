"""Sizes written by people: ``64M``, ``2G``, ``1.5GiB``, ``4096`` (bytes).

Parsed exactly (no floating point: ``1e400``, ``nan``, ``inf`` and 400-digit numbers are
refused, not rounded or overflowed), and bounded: a size is at most :data:`MAX_SIZE`
(8 EiB, the largest file offset Linux has). What a disk may be is a policy of its own
(:data:`MAX_DISK_SIZE`, enforced by the spec and the image inspection).
"""

from __future__ import annotations

import re

KiB = 1024
MiB = 1024**2
GiB = 1024**3
TiB = 1024**4

_UNITS = {
    "": 1,
    "b": 1,
    "k": KiB,
    "kb": KiB,
    "kib": KiB,
    "m": MiB,
    "mb": MiB,
    "mib": MiB,
    "g": GiB,
    "gb": GiB,
    "gib": GiB,
    "t": TiB,
    "tb": TiB,
    "tib": TiB,
}

MAX_SIZE = 2**63 - 1
"""The largest size this module returns (the largest file offset, ``off_t``)."""

MAX_DISK_SIZE = 15 * TiB
"""The largest disk vmwu packs, runs or accepts from a unit or an option: a raw image of
it is a file, and the largest file an ext4 host file system holds is just under 16 TiB.
An output disk costs the host what the guest writes to it, not this (docs/spec-options.md)."""

_SIZE_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*")


def parse_size(text: str | int) -> int:
    """Bytes in ``text``. Units are binary (``M`` = MiB). Raises ``ValueError`` with a
    message fit for users."""
    if isinstance(text, bool) or not isinstance(text, int | str):
        raise ValueError(f"expected a size like 64M or 2G, got {text!r}")
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"a size cannot be negative: {text}")
        if text > MAX_SIZE:
            raise ValueError(f"size {text} is too large (at most {MAX_SIZE} bytes)")
        return text
    shown = text if len(text) <= 40 else text[:40] + "…"
    match = _SIZE_RE.fullmatch(text)
    if not match:
        raise ValueError(f"expected a size like 64M, 2G or 4096 (bytes), got {shown!r}")
    number, unit = match.groups()
    factor = _UNITS.get(unit.lower())
    if factor is None:
        raise ValueError(f"unknown size unit {unit!r} in {shown!r} (use K, M, G or T)")
    whole = number.partition(".")[0].lstrip("0")
    if len(whole) > len(str(MAX_SIZE)):  # hundreds of digits: too large, whatever the unit
        raise ValueError(f"size {shown!r} is too large (at most {format_size(MAX_SIZE)})")
    if "." in number:
        from decimal import Decimal, localcontext  # only here: `vmwu run` never needs it

        with localcontext() as ctx:
            ctx.prec = 80  # exact for every numeral that got this far
            size = int(Decimal(number) * factor)
    else:
        size = int(number) * factor
    if size > MAX_SIZE:
        raise ValueError(f"size {shown!r} is too large (at most {format_size(MAX_SIZE)})")
    return size


def format_over(n: int, limit: int) -> str:
    """``n`` as :func:`format_size` shows it, or in bytes when that would look like
    ``limit`` (15.0001T is "15.0 TiB" too)."""
    shown = format_size(n)
    return f"{n} bytes" if shown == format_size(limit) else shown


def format_size(n: int) -> str:
    """``n`` bytes as a short human string (binary units)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
