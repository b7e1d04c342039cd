"""Architecture and operating-system names, and which application runs on which guest.

The thesis's ``app-architecture`` / ``app-os`` options (e.g. ``x86`` / ``linux2.6``) are
matched against the base catalog's ``architecture`` / ``guest_os`` columns. Architecture
aliases are folded to one canonical name (the Linux ``uname -m`` spelling, as QEMU uses);
OS names are ``<family><version>`` and a guest satisfies a request of the same family and
an equal or newer version.
"""

from __future__ import annotations

import re

from vmwu.errors import BadInput

# canonical name -> aliases (each canonical name is its own alias too)
_ALIASES: dict[str, tuple[str, ...]] = {
    "x86_64": ("x86_64", "amd64", "x86-64", "x64"),
    "i386": ("i386", "x86", "i486", "i586", "i686", "ia32"),
    "aarch64": ("aarch64", "arm64"),
    "arm": ("arm", "armhf", "armv7l", "armv7"),
    "riscv64": ("riscv64",),
    "ppc64le": ("ppc64le",),
    "s390x": ("s390x",),
}
_CANONICAL = {alias: canon for canon, aliases in _ALIASES.items() for alias in aliases}

# Guests that can also run applications built for another architecture (in-kernel
# compat layers that every mainstream distribution kernel enables). arm on aarch64 is
# deliberately absent: many arm64 CPUs and kernels lack AArch32 support.
_COMPAT: dict[str, frozenset[str]] = {"x86_64": frozenset({"i386"})}

_QEMU_SYSTEM = {
    "x86_64": "qemu-system-x86_64",
    "i386": "qemu-system-x86_64",  # a 64-bit machine boots 32-bit guests too
    "aarch64": "qemu-system-aarch64",
    "arm": "qemu-system-arm",
    "riscv64": "qemu-system-riscv64",
    "ppc64le": "qemu-system-ppc64",
    "s390x": "qemu-system-s390x",
}

KNOWN_ARCHITECTURES = tuple(_ALIASES)


def canonical_arch(name: str) -> str:
    """The canonical name of architecture ``name`` (case-insensitive): ``amd64`` -> ``x86_64``,
    ``x86``/``i686`` -> ``i386``, ``arm64`` -> ``aarch64``, ``armhf`` -> ``arm``.

    Raises :class:`BadInput` listing the known names for anything else.
    """
    canon = _CANONICAL.get(name.strip().lower())
    if canon is None:
        known = ", ".join(f"{c} ({'/'.join(a[1:])})" if a[1:] else c for c, a in _ALIASES.items())
        raise BadInput(f"unknown architecture {name!r}: expected one of {known}")
    return canon


def guest_can_run(app_arch: str, guest_arch: str) -> bool:
    """Whether an application built for ``app_arch`` runs on a guest of ``guest_arch``:
    the same architecture, or an i386 application on an x86_64 guest (IA32 emulation).
    32-bit arm applications on aarch64 guests are *not* assumed to run."""
    app, guest = canonical_arch(app_arch), canonical_arch(guest_arch)
    return app == guest or app in _COMPAT.get(guest, frozenset())


def qemu_system_binary(arch: str) -> str:
    """The ``qemu-system-*`` program that emulates a machine of ``arch``."""
    return _QEMU_SYSTEM[canonical_arch(arch)]


_OS_RE = re.compile(r"(?P<family>[a-z][a-z_]*?)[ _-]?(?P<version>\d+(?:\.\d+)*)?")


def parse_os(name: str) -> tuple[str, tuple[int, ...] | None]:
    """``"linux2.6"`` -> ``("linux", (2, 6))``; ``"Linux"`` -> ``("linux", None)``;
    ``"freebsd13"`` -> ``("freebsd", (13,))``. A separator (``linux-6.1``, ``linux 6.1``)
    is accepted. Raises :class:`BadInput` for anything else."""
    match = _OS_RE.fullmatch(name.strip().lower())
    if match is None:
        raise BadInput(
            f"bad operating system name {name!r}: expected a family and an optional "
            "version, such as linux, linux2.6, linux6.1, freebsd13"
        )
    version = match["version"]
    return match["family"], tuple(int(p) for p in version.split(".")) if version else None


def _padded(version: tuple[int, ...], length: int) -> tuple[int, ...]:
    return version + (0,) * (length - len(version))


def os_matches(app_os: str, guest_os: str) -> bool:
    """Whether an application needing ``app_os`` runs on a guest running ``guest_os``.

    - the families must be equal (case-insensitive): ``linux`` never matches ``freebsd``;
    - an application OS without a version (``linux``) matches any guest of that family,
      versioned or not; an empty ``app_os`` matches every guest;
    - an application OS with a version (``linux2.6``) needs a guest of an equal or newer
      version (``linux6.1``): the Linux syscall ABI is backward compatible. Versions compare
      numerically part by part, missing parts count as 0 (``linux2.6`` == ``linux2.6.0``);
    - a guest without a version matches only an unversioned request: nothing says it is
      new enough.

    Raises :class:`BadInput` if either name cannot be parsed (see :func:`parse_os`).
    """
    if not app_os.strip():
        return True
    app_family, app_version = parse_os(app_os)
    guest_family, guest_version = parse_os(guest_os)
    if app_family != guest_family:
        return False
    if app_version is None:
        return True
    if guest_version is None:
        return False
    length = max(len(app_version), len(guest_version))
    return _padded(guest_version, length) >= _padded(app_version, length)
