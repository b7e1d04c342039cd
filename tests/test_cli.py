"""Command-line parsing of `vmwu pack` (free-form spec overrides) without packing."""

from __future__ import annotations

import pytest

from vmwu.cli import _pack_args
from vmwu.errors import BadInput


@pytest.mark.parametrize(
    "argv",
    [
        ["vmwu.toml", "-q", "-o", "u.ova", "--app-launch", "-x --y", "--compress"],
        ["-q", "vmwu.toml", "-o", "u.ova", "--app-launch", "-x --y", "--compress"],
        ["-q", "-o", "u.ova", "--app-launch", "-x --y", "--compress", "vmwu.toml"],
        ["--output=u.ova", "--app-launch", "-x --y", "--compress", "1", "vmwu.toml", "--quiet"],
    ],
)
def test_pack_arguments_in_any_order(argv: list[str]) -> None:
    spec, output, catalog, quiet, rest = _pack_args(argv)
    assert (spec, output, catalog, quiet) == ("vmwu.toml", "u.ova", None, True)
    assert rest[:2] == ["--app-launch", "-x --y"]
    assert rest[2] == "--compress"


def test_pack_refuses_two_specs() -> None:
    with pytest.raises(BadInput, match="one spec file only"):
        _pack_args(["a.toml", "b.toml"])


def test_pack_flag_without_value() -> None:
    with pytest.raises(BadInput, match="needs a value"):
        _pack_args(["a.toml", "-o"])
