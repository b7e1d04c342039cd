"""Optional features and the packages they need (pyproject.toml's optional dependencies).

The Dask executor and ``vmwu sweep report`` are the only users of dask, distributed and
matplotlib; a node that runs neither installs vmwu without them. Each feature calls
:func:`require` before it imports its packages, so a missing one is one line naming the
extra to install (exit 242, as for a missing program), never a traceback.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Final

from vmwu.errors import ExtraNotInstalled

EXTRAS: Final[Mapping[str, tuple[str, ...]]] = {
    "dask": ("dask", "distributed"),
    "report": ("matplotlib",),
}


def require(extra: str, feature: str) -> None:
    """Import the packages of ``extra``; ExtraNotInstalled naming ``feature`` if one of
    them cannot be."""
    for module in EXTRAS[extra]:
        try:
            importlib.import_module(module)
        except ImportError:
            raise ExtraNotInstalled(feature, module, extra) from None
