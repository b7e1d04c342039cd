"""Base-image builders, one module per kind, and registration of existing images."""

from __future__ import annotations

from typing import Any

from vmwu.bases.catalog import BaseImage, Catalog
from vmwu.errors import BadInput

BUILDERS = ("tiny", "debian")


def build_base(kind: str, catalog: Catalog, **kwargs: Any) -> BaseImage:
    """Build a base of ``kind`` and register it in ``catalog``."""
    if kind == "tiny":
        from vmwu.bases.tiny import build_tiny

        return build_tiny(catalog, **kwargs)
    if kind == "debian":
        from vmwu.bases.debian import build_debian

        return build_debian(catalog, **kwargs)
    raise BadInput(f"unknown base kind {kind!r}: use one of {', '.join(BUILDERS)}")


__all__ = ["BUILDERS", "build_base"]
