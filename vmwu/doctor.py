"""``vmwu doctor``: what this node has and what vmwu will do with it."""

from __future__ import annotations

import platform
from typing import Any

from vmwu import __version__, paths, tools
from vmwu.errors import VmwuError
from vmwu.sizes import format_size
from vmwu.vmm import accel


def diagnose(*, catalog: str | None = None) -> dict[str, Any]:
    tool_rows = []
    ok = True
    for tool in tools.CORE_TOOLS:
        found = tools.find(tool)
        ok = ok and found is not None
        tool_rows.append({"tool": tool, "path": found, "package": tools.TOOL_PACKAGES.get(tool)})
    choice = accel.choose("auto", guest_arch=_host_arch())
    cat_path = paths.catalog_path(catalog)
    bases: list[str] = []
    cat_error = None
    try:
        from vmwu.bases.catalog import Catalog

        bases = [
            f"{b.name} ({b.architecture}, {b.guest_os})" for b in Catalog.open(cat_path).list()
        ]
    except Exception as exc:  # noqa: BLE001 - doctor reports, it does not fail
        cat_error = str(exc)
    cache = paths.cache_dir()
    limit: int | None = None
    limit_error = None
    try:
        from vmwu.cache import limit_from

        limit = limit_from()
    except VmwuError as exc:  # doctor reports, it does not fail
        limit_error = str(exc)
    return {
        "ok": ok,
        "vmwu_version": __version__,
        "tools": tool_rows,
        "accel": {"choice": choice.accel, "reason": choice.reason},
        "catalog": {
            "path": str(cat_path),
            "exists": cat_path.exists(),
            "bases": bases,
            "error": cat_error,
        },
        "data_dir": {"path": str(paths.data_dir()), "bytes": paths.dir_size(paths.data_dir())},
        "cache_dir": {
            "path": str(cache),
            "bytes": paths.dir_size(cache),
            "limit": limit,
            "limit_error": limit_error,
        },
    }


def _host_arch() -> str:
    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


def format_report(r: dict[str, Any]) -> str:
    lines = [f"vmwu {r['vmwu_version']}", "", "external tools:"]
    for t in r["tools"]:
        if t["path"]:
            lines.append(f"  ok       {t['tool']:<22} {t['path']}")
        else:
            lines.append(f"  MISSING  {t['tool']:<22} apt-get install {t['package']}")
    lines += ["", f"accelerator: {r['accel']['choice']}  ({r['accel']['reason']})", ""]
    c = r["catalog"]
    state = "" if c["exists"] else "  (not created yet)"
    lines.append(f"catalog:  {c['path']}{state}")
    if c["error"]:
        lines.append(f"  error: {c['error']}")
    elif c["bases"]:
        lines += [f"  base {b}" for b in c["bases"]]
    else:
        lines.append("  no bases: run `vmwu base build tiny`")
    lines.append(f"data:     {r['data_dir']['path']}  {format_size(r['data_dir']['bytes'])}")
    cache = r["cache_dir"]
    limit = "no limit" if cache["limit"] is None else f"limit {format_size(cache['limit'])}"
    lines.append(f"cache:    {cache['path']}  {format_size(cache['bytes'])}  ({limit})")
    if cache["limit_error"]:
        lines.append(f"  error: {cache['limit_error']}")
    lines.append("")
    lines.append("all tools present" if r["ok"] else "some tools are missing (see above)")
    return "\n".join(lines)


__all__ = ["diagnose", "format_report"]
