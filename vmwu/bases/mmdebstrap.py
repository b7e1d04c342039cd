"""Running ``mmdebstrap``: a Debian root file system as a tarball, without root.

The mode is ``unshare`` (Linux user namespaces; as root it still unshares the mount
namespace, so nothing is mounted on the host) when it works here, else ``fakechroot``.
Which one works is found out once per process with a trivial ``mmdebstrap --mode=...
--variant=custom`` run. The output is always a tarball: it carries owners, modes and
device nodes the same way in every mode (vmwu.images.rootfs turns it into ext4).

mmdebstrap's own failures are turned into one line: an unknown release and a package
that does not exist are bad input (exit 241); anything else (no network, mirror down) is
a host failure (247) quoting apt's first error.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vmwu import tools
from vmwu.errors import BadInput, HostFailure, ToolFailed

log = logging.getLogger(__name__)

DEFAULT_MIRROR = "http://deb.debian.org/debian"  # mmdebstrap's; it adds -updates, -security
MODES = ("unshare", "fakechroot")
# Debian architecture names of vmwu's canonical ones.
DEBIAN_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "i386": "i386", "arm": "armhf"}

_mode_cache: dict[str, str] = {}
CLEANUP = 30.0  # seconds mmdebstrap gets to clean up when vmwu ends it


@dataclass(frozen=True)
class Bootstrap:
    """What to bootstrap: a release (suite or codename) for a Debian architecture, with
    ``packages`` on top of the ``variant``."""

    release: str
    arch: str = "amd64"
    packages: tuple[str, ...] = ()
    variant: str = "minbase"
    mirror: str | None = None  # None: mmdebstrap's default (with -updates and -security)
    # Another architecture than the host's: extract only, keep the .debs for the guest to
    # install (vmwu.bases.foreign), as nothing of that architecture can run here.
    foreign: bool = False
    # dpkg path excludes: documentation and translations nobody reads in a work unit
    excludes: tuple[str, ...] = (
        "/usr/share/doc/*",
        "/usr/share/man/*",
        "/usr/share/info/*",
        "/usr/share/locale/*",
    )


def check_names(release: str, packages: Sequence[str]) -> None:
    """Refuse names that cannot be a Debian release or package before anything runs."""
    if not re.fullmatch(r"[a-z][a-z0-9.+-]{0,63}", release):
        raise BadInput(
            f"bad Debian release {release!r}: expected a codename or suite such as "
            "bookworm, bullseye, trixie, stable"
        )
    for pkg in packages:
        if not re.fullmatch(r"[a-z0-9][a-z0-9.+-]+(:[a-z0-9]+)?(=[A-Za-z0-9.+~:-]+)?", pkg):
            raise BadInput(f"bad Debian package name {pkg!r}")


def choose_mode() -> str:
    """``unshare`` if user namespaces work here, else ``fakechroot`` (cached)."""
    if "mode" in _mode_cache:
        return _mode_cache["mode"]
    tools.which("mmdebstrap")
    for mode in MODES:
        if mode == "fakechroot" and tools.find("fakechroot") is None:
            continue
        try:
            tools.run(
                [
                    "mmdebstrap",
                    f"--mode={mode}",
                    "--variant=custom",
                    "--skip=update",
                    "--skip=setup",
                    "--skip=cleanup",
                    "--format=null",
                    "--quiet",
                    "unstable",
                    "/dev/null",
                    "deb http://localhost/unused unstable main",
                ],
                timeout=60,
                tree=True,
            )
        except (ToolFailed, OSError) as exc:
            log.info("mmdebstrap --mode=%s does not work here: %s", mode, exc)
            continue
        _mode_cache["mode"] = mode
        return mode
    raise HostFailure(
        "mmdebstrap can use neither user namespaces nor fakechroot on this host",
        hint="allow unprivileged user namespaces (kernel.unprivileged_userns_clone=1 and "
        "/etc/subuid, /etc/subgid entries), or apt-get install fakechroot",
    )


# Where a foreign bootstrap leaves its .debs in the tree (the guest's second stage).
SECOND_STAGE_DEBS = "/var/lib/vmwu/second-stage/debs"
MERGED_USR_SETUP = "/usr/share/mmdebstrap/hooks/merged-usr/setup00.sh"


def host_arch() -> str:
    """The host's Debian architecture (amd64 here)."""
    return tools.run(["dpkg", "--print-architecture"]).stdout.decode().strip()


def bootstrap_argv(spec: Bootstrap, mode: str, target: Path) -> list[str]:
    argv = [
        "mmdebstrap",
        f"--mode={mode}",
        f"--variant={'extract' if spec.foreign else spec.variant}",
        f"--architectures={spec.arch}",
        "--format=tar",
    ]
    if spec.foreign:
        # minbase's package set (essential + required + apt) named as apt patterns, since
        # the extract variant installs nothing by itself; each its own --include, as a
        # pattern may hold commas. The .debs are copied aside before mmdebstrap's cleanup.
        argv += [
            "--skip=check/qemu",
            "--include=?essential",
            "--include=?priority(required)",
            # /usr merged by mmdebstrap's own hook, as the minbase variant would have it
            # (usr-is-merged then stands for usrmerge and its conversion script)
            "--include=apt,usr-is-merged",
            f"--setup-hook={MERGED_USR_SETUP}",
            f'--extract-hook=mkdir -p "$1{SECOND_STAGE_DEBS}" && '
            f'cp "$1"/var/cache/apt/archives/*.deb "$1{SECOND_STAGE_DEBS}/"',
        ]
    if spec.packages:
        argv.append("--include=" + ",".join(spec.packages))
    argv += [f"--dpkgopt=path-exclude={p}" for p in spec.excludes]
    argv += [spec.release, os.fspath(target)]
    if spec.mirror:
        argv.append(spec.mirror)
    return argv


def bootstrap(spec: Bootstrap, target: Path, *, timeout: float = 3600) -> None:
    """Write the root file system of ``spec`` as a tarball at ``target``."""
    check_names(spec.release, spec.packages)
    mode = choose_mode()
    argv = bootstrap_argv(spec, mode, target)
    try:
        # mmdebstrap is a tree (its namespaces, apt, dpkg, hooks): it runs under
        # vmwu.guard, so all of it dies with vmwu. On SIGTERM it removes its temporary
        # root (hundreds of MB), which took up to 16 s here under load: it gets that long.
        tools.run(argv, timeout=timeout, disk_hint=str(target.parent), tree=True, grace=CLEANUP)
    except ToolFailed as exc:
        raise explain_failure(exc.stderr, spec) from None


def explain_failure(stderr: str, spec: Bootstrap) -> Exception:
    """One line for a failed mmdebstrap run, from apt's messages in its stderr."""
    text = stderr.replace("\r", "")
    if "does not have a Release file" in text or re.search(
        r"Release' (?:is not signed|no longer has a Release file)", text
    ):
        return BadInput(
            f"unknown Debian release {spec.release!r}: "
            f"{spec.mirror or DEFAULT_MIRROR} has no such suite",
            hint="use a codename or suite such as bookworm, bullseye, trixie, stable",
        )
    missing = re.findall(r"Unable to locate package (\S+)", text)
    missing += re.findall(r"Package '?([^' ]+)'? has no installation candidate", text)
    missing += re.findall(r"Couldn't find any package by (?:glob|regex) '([^']+)'", text)
    if missing:
        names = ", ".join(dict.fromkeys(missing))
        return BadInput(
            f"Debian {spec.release} ({spec.arch}) has no package {names}",
            hint="check the name with `apt-cache policy NAME` (or on packages.debian.org)",
        )
    if "unmet dependencies" in text.lower() or "Unable to correct problems" in text:
        line = _first_error(text) or "unmet dependencies"
        return BadInput(f"cannot install the packages on Debian {spec.release}: {line}")
    if re.search(r"(?:Temporary failure resolving|Could not resolve|Failed to fetch)", text):
        return HostFailure(
            f"cannot download Debian {spec.release} from {spec.mirror or DEFAULT_MIRROR}: "
            f"{_first_error(text)}",
            hint="check the network or pass --mirror URL",
        )
    return HostFailure(f"mmdebstrap failed: {_first_error(text) or text.strip()[-300:]}")


def _first_error(text: str) -> str:
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("E: ") and "failed" not in line[:60].lower():
            return line[3:]
    for line in text.splitlines():
        if line.strip().startswith("E: "):
            return line.strip()[3:]
    return ""
