"""Fetching Debian packages for a base with ``apt-get download`` (no root needed).

For the host's own architecture the system's package lists are used. For another one
(an arm64 base on an amd64 host) vmwu keeps a private apt state in its cache — the host's
``sources.list``, but lists and archives of the foreign architecture — so nothing on the
host changes (no ``dpkg --add-architecture``) and no root is needed.
"""

from __future__ import annotations

import re
from pathlib import Path

from vmwu import paths, tools
from vmwu.errors import HostFailure, ToolFailed


def host_deb_arch() -> str:
    return tools.output(["dpkg", "--print-architecture"])


class Apt:
    """apt-get/apt-cache for one Debian architecture (``amd64``, ``arm64``)."""

    def __init__(self, deb_arch: str) -> None:
        self.deb_arch = deb_arch
        self.foreign = deb_arch != host_deb_arch()
        self.state = paths.cache_dir() / "apt" / deb_arch

    def _options(self) -> list[str]:
        if not self.foreign:
            return ["-o", "APT::Sandbox::User=root"]
        return [
            "-o", f"Dir::State={self.state / 'state'}",
            "-o", "Dir::State::status=/var/lib/dpkg/status",
            "-o", f"Dir::Cache={self.state / 'cache'}",
            "-o", f"APT::Architecture={self.deb_arch}",
            "-o", f"APT::Architectures={self.deb_arch}",
            "-o", "Debug::NoLocking=1",
            "-o", "APT::Sandbox::User=root",
        ]  # fmt: skip

    def update(self) -> None:
        """Refresh the private lists of a foreign architecture (once per build)."""
        if not self.foreign:
            return
        for sub in ("state/lists/partial", "cache/archives/partial"):
            (self.state / sub).mkdir(parents=True, exist_ok=True)
        try:
            # apt-get starts its download methods as children: a tree (vmwu.guard)
            tools.run(
                ["apt-get", "-q", *self._options(), "update"],
                disk_hint=str(self.state),
                tree=True,
            )
        except ToolFailed as exc:
            raise HostFailure(
                f"apt-get update for {self.deb_arch} failed: {_last_line(exc)}",
                hint="check the network access to the Debian mirror",
            ) from exc

    def depends(self, package: str) -> str:
        out = tools.output(["apt-cache", *self._options(), "depends", package])
        match = re.search(r"Depends:\s*(\S+)", out)
        if not match:
            raise HostFailure(
                f"cannot find the package behind {package} ({self.deb_arch})",
                hint="run `apt-get update`, or pass the .deb files explicitly",
            )
        return match.group(1)

    def download(self, packages: list[str], dest: Path) -> list[Path]:
        """``apt-get download`` into ``dest``; returns the .deb files, in order."""
        dest.mkdir(parents=True, exist_ok=True)
        try:
            tools.run(
                ["apt-get", *self._options(), "download", *packages],
                cwd=dest,
                disk_hint=str(dest),
                tree=True,
            )
        except ToolFailed as exc:
            raise HostFailure(
                f"apt-get download {' '.join(packages)} failed: {_last_line(exc)}",
                hint="run `apt-get update` (as root) or pass the .deb files explicitly",
            ) from exc
        debs = []
        for pkg in packages:
            found = sorted(dest.glob(f"{pkg}_*_{self.deb_arch}.deb")) or sorted(
                dest.glob(f"{pkg}_*_all.deb")
            )
            if not found:
                raise HostFailure(f"apt-get download did not produce {pkg}_*.deb in {dest}")
            debs.append(found[-1])
        return debs


def _last_line(exc: ToolFailed) -> str:
    lines = [line for line in exc.stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else f"exit code {exc.returncode}"
