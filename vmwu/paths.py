"""Where vmwu keeps things on a node.

- data (catalog + base files): ``$VMWU_HOME/data``, else ``$XDG_DATA_HOME/vmwu``,
  else ``~/.local/share/vmwu``;
- node cache (unpacked unit disks, derived kernels, instance dirs): ``$VMWU_CACHE_DIR``,
  else ``$VMWU_HOME/cache``, else ``$XDG_CACHE_HOME/vmwu``, else ``~/.cache/vmwu``
  (a site can put it on local scratch);
- catalog: ``--catalog`` / spec ``vmddb``, else ``$VMWU_CATALOG``, else
  ``<data>/catalog.sqlite``.
"""

from __future__ import annotations

import os
from pathlib import Path


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value).expanduser() if value else None


def data_dir() -> Path:
    home = _env_path("VMWU_HOME")
    if home:
        return home / "data"
    xdg = _env_path("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return xdg / "vmwu"


def cache_dir() -> Path:
    explicit = _env_path("VMWU_CACHE_DIR")
    if explicit:
        return explicit
    home = _env_path("VMWU_HOME")
    if home:
        return home / "cache"
    xdg = _env_path("XDG_CACHE_HOME") or Path.home() / ".cache"
    return xdg / "vmwu"


def catalog_path(override: str | os.PathLike[str] | None = None) -> Path:
    if override:
        return Path(override).expanduser()
    env = _env_path("VMWU_CATALOG")
    if env:
        return env
    return data_dir() / "catalog.sqlite"


def bases_dir() -> Path:
    """Where ``vmwu base build`` writes the files of the bases it builds."""
    return data_dir() / "bases"


def dir_size(path: Path) -> int:
    """Bytes used by regular files under ``path`` (0 if it does not exist)."""
    total = 0
    if not path.exists():
        return 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass
    return total
