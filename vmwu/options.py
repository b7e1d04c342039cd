"""Options declared once, read from files and command lines, converted with their origin.

A table of :class:`OptionDef` (see ``vmwu.pack.spec.OPTIONS``) feeds the config-file readers,
the command-line parser, ``--help`` and the docs. Readers only produce :class:`RawValue`
lists; :func:`resolve` maps names (aliases, ``_`` ≡ ``-``, any case) to options, converts
values by kind and remembers where each came from, so every error names ``file:line`` or
the flag. Readers:

- :func:`parse_gvap` — the thesis form: ``option=value`` lines (value optionally quoted),
  ``#`` comments, and command-line style ``-option value`` lines;
- :func:`parse_toml` — top-level ``option = value`` keys;
- :func:`parse_cli` — ``--option value``, ``-option=value``, ``--flag``, ``--no-flag``.
"""

from __future__ import annotations

import difflib
import math
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

from vmwu.errors import BadInput, SpecError
from vmwu.sizes import parse_size

RawScalar = str | bool | int | float
Value = str | bool | int | float | None
T = TypeVar("T", str, bool, int, float)

_MIB = 1024**2


class OptionKind(StrEnum):
    STR = "str"  # text; empty means "not set" (the default)
    PATH = "path"  # a host path, kept as text here (the consumer resolves it)
    BOOL = "bool"  # 1/0, true/false, yes/no, on/off
    SIZE = "size"  # bytes: 64M, 2G, 4096; a TOML integer is bytes
    MIB = "mib"  # memory in MiB: 512 (MiB), 512M, 1G; a TOML integer is MiB
    INT = "int"
    FLOAT = "float"
    COMMAND = "command"  # a shell command line; may be empty


@dataclass(frozen=True)
class OptionDef:
    name: str  # canonical, hyphenated: "app-launch"
    kind: OptionKind
    default: Value
    help: str  # one line, for --help and the docs
    aliases: tuple[str, ...] = ()
    unsupported: str | None = None  # reason; a truthy value is an error
    cli_only: bool = False  # e.g. "config": meaningless inside a file


@dataclass(frozen=True)
class RawValue:
    name: str  # as written (alias, underscores, any case)
    value: RawScalar  # text from .gvap/command line; TOML scalars; True for a bare flag
    origin: str  # "mandelbrot.gvap:3", "command line (--app-launch)"


@dataclass(frozen=True)
class Resolved:
    """Converted value and origin of every option (``"default"`` when not given)."""

    values: Mapping[str, Value]
    origins: Mapping[str, str]
    from_cli: frozenset[str] = field(default_factory=frozenset)

    def get(self, name: str, kind: type[T]) -> T:
        value = self.optional(name, kind)
        if value is None:
            raise TypeError(f"option {name} has no value")
        return value

    def optional(self, name: str, kind: type[T]) -> T | None:
        value = self.values[name]
        if value is None or isinstance(value, kind):
            return value
        raise TypeError(f"option {name} is {type(value).__name__}, not {kind.__name__}")

    def origin(self, name: str) -> str:
        return self.origins[normalize(name)]


def normalize(name: str) -> str:
    """Option names are case-insensitive and ``_`` ≡ ``-``."""
    return name.strip().lower().replace("_", "-")


# --- readers ------------------------------------------------------------------------------

_NAME = r"(?P<name>[A-Za-z][\w-]*)"
_ASSIGN_LINE = re.compile(_NAME + r"\s*=\s*(?P<value>.*)")
_DASHED_LINE = re.compile(r"--?" + _NAME + r"(?:\s*=\s*|\s+)(?P<value>.*)")
_FLAG_LINE = re.compile(r"--?" + _NAME)
_QUOTE_HINT = 'quote the whole value, e.g. app-launch="/app/run \\"a b\\" > /output/out"'


def read_config(path: Path, *, source: str | None = None) -> list[RawValue]:
    """Raw values of a config file: TOML if it ends in ``.toml``, else the .gvap form.
    ``source`` is how origins name the file (default: ``str(path)``)."""
    source = source or str(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise SpecError(source, "no such file") from None
    except UnicodeDecodeError:
        raise SpecError(source, "not a UTF-8 text file") from None
    except OSError as err:
        raise SpecError(source, f"cannot read: {err.strerror}") from None
    if path.suffix.lower() == ".toml":
        return parse_toml(text, source)
    return parse_gvap(text, source)


def parse_gvap(text: str, source: str) -> list[RawValue]:
    values: list[RawValue] = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source}:{number}"
        match = (
            _DASHED_LINE.fullmatch(line) if line.startswith("-") else _ASSIGN_LINE.fullmatch(line)
        )
        if match:
            value: RawScalar = _unquote(match["value"], where)
        elif match := _FLAG_LINE.fullmatch(line):
            value = True
        else:
            raise SpecError(
                where, "expected option=value", hint='e.g. app-launch="/app/run > /output/out"'
            )
        values.append(RawValue(match["name"], value, where))
    return values


def _unquote(text: str, where: str) -> str:
    """Strip one matching pair of quotes; in double quotes ``\\"`` and ``\\\\`` are escapes.
    Unquoted values are trimmed; a ``# comment`` may follow a closing quote."""
    if not text or text[0] not in "\"'":
        return text.strip()
    quote, out, i = text[0], [], 1
    while i < len(text):
        char = text[i]
        if quote == '"' and char == "\\" and text[i + 1 : i + 2] in ('"', "\\"):
            out.append(text[i + 1])
            i += 2
            continue
        if char == quote:
            rest = text[i + 1 :].strip()
            if rest and not rest.startswith("#"):
                raise SpecError(
                    where, f"unexpected text after the closing quote: {rest!r}", hint=_QUOTE_HINT
                )
            return "".join(out)
        out.append(char)
        i += 1
    raise SpecError(where, f"missing closing {quote}", hint=_QUOTE_HINT)


_TOML_AT = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


def parse_toml(text: str, source: str) -> list[RawValue]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        message = str(err)
        if match := _TOML_AT.search(message):
            where = f"{source}:{match[1]}"
            message = f"{message[: match.start()]} (column {match[2]})"
        else:  # "(at end of document)"
            where = f"{source}:{max(1, len(text.splitlines()))}"
            message = message.replace("(at end of document)", "(at the end of the file)")
        raise SpecError(where, f"invalid TOML: {message}") from None
    values: list[RawValue] = []
    for key, value in data.items():
        line = _toml_key_line(text, key)
        where = f"{source}:{line}" if line else source
        if isinstance(value, dict):
            raise SpecError(
                where,
                f"tables are not used ([{key}] or {key}.…)",
                hint="write every option as a top-level key: option = value",
            )
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            value = ",".join(value)  # a list of words: guest-packages = ["g++", "make"]
        if not isinstance(value, str | bool | int | float):
            raise SpecError(
                where, f"{key}: expected a string, number or boolean, got a {type(value).__name__}"
            )
        values.append(RawValue(key, value, where))
    return values


def _toml_key_line(text: str, key: str) -> int | None:
    """Line of ``key = …``, ``key.x = …`` or ``[key]`` in ``text`` (1-based), if found."""
    k = re.escape(key)
    pattern = rf"^[ \t]*(?:\[+[ \t]*)?(?:{k}|\"{k}\"|'{k}')[ \t]*[=.\]]"
    match = re.search(pattern, text, re.MULTILINE)
    return text.count("\n", 0, match.start()) + 1 if match else None


def parse_cli(args: Sequence[str], options: Sequence[OptionDef]) -> list[RawValue]:
    """Raw values of command-line overrides: ``--name value``, ``-name value``,
    ``--name=value``; a bool needs no value when the next token starts with ``-`` (or there
    is none); ``--no-NAME`` sets a bool to false. Other options take the next token as their
    value even if it starts with ``-``."""
    lookup = _lookup(options)
    values: list[RawValue] = []
    i = 0
    while i < len(args):
        token = args[i]
        i += 1
        if not token.startswith("-") or token.strip("-") == "":
            raise BadInput(f"unexpected argument {token!r}", hint="write options as --name value")
        flag, has_value, inline = token.partition("=")
        key = normalize(flag.lstrip("-"))
        origin = f"command line ({flag})"
        option = lookup.get(key)
        if option is None and key.startswith("no-"):
            negated = lookup.get(key[3:])
            if negated is not None and negated.kind is OptionKind.BOOL:
                if has_value:
                    raise SpecError(origin, f"{flag} takes no value")
                values.append(RawValue(negated.name, False, origin))
                continue
        if option is None:
            raise _unknown(key, origin, lookup)
        value: RawScalar
        if has_value:
            value = inline
        elif option.kind is OptionKind.BOOL and (i == len(args) or args[i].startswith("-")):
            value = True
        elif i < len(args):
            value = args[i]
            i += 1
        else:
            raise SpecError(origin, f"{flag} needs a value")
        values.append(RawValue(key, value, origin))
    return values


# --- resolution and conversion ------------------------------------------------------------


def resolve(
    options: Sequence[OptionDef],
    file_values: Sequence[RawValue] = (),
    cli_values: Sequence[RawValue] = (),
) -> Resolved:
    """Typed values of all ``options``: defaults, then the file, then the command line.
    An option given twice in the file is an error; on the command line the last wins."""
    lookup = _lookup(options)
    values: dict[str, Value] = {o.name: o.default for o in options}
    origins = dict.fromkeys(values, "default")
    first_seen: dict[str, str] = {}
    for raw in file_values:
        option = _find(raw, lookup)
        if option.cli_only:
            raise SpecError(
                raw.origin,
                f"{option.name} is a command-line option",
                hint=f"pass --{option.name} to the command instead",
            )
        if option.name in first_seen:
            raise SpecError(
                raw.origin,
                f"{option.name} is given twice (first at {first_seen[option.name]})",
                hint="keep one of them",
            )
        first_seen[option.name] = raw.origin
        values[option.name], origins[option.name] = convert(option, raw), raw.origin
    from_cli: set[str] = set()
    for raw in cli_values:
        option = _find(raw, lookup)
        values[option.name], origins[option.name] = convert(option, raw), raw.origin
        from_cli.add(option.name)
    return Resolved(values, origins, frozenset(from_cli))


def convert(option: OptionDef, raw: RawValue) -> Value:
    """``raw.value`` converted to ``option.kind``; an empty text value means the default
    (except for commands, where empty is a value)."""
    value = raw.value
    if isinstance(value, str) and not value.strip() and option.kind is not OptionKind.COMMAND:
        return option.default
    try:
        result = _CONVERTERS[option.kind](value)
    except ValueError as err:
        raise SpecError(raw.origin, f"bad value for {option.name}: {err}") from None
    if option.unsupported and result:
        raise SpecError(raw.origin, f"option {option.name} is not supported: {option.unsupported}")
    return result


def _to_text(value: RawScalar) -> str:
    if isinstance(value, bool):
        raise ValueError(f"expected text, got {_show(value)}")
    return str(value)


def _to_bool(value: RawScalar) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    word = str(value).strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected 1/0, true/false, yes/no or on/off, got {_show(value)}")


def _to_size(value: RawScalar) -> int:
    if isinstance(value, float):
        raise ValueError(f"expected a size like 64M, 2G or 4096 (bytes), got {value}")
    return parse_size(value)


def _to_mib(value: RawScalar) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        return int(value)
    try:
        size = _to_size(value)
    except ValueError:
        size = -1
    if size < 0 or size % _MIB:
        raise ValueError(f"expected a whole number of MiB like 512, 512M or 2G, got {_show(value)}")
    return size // _MIB


def _to_int(value: RawScalar) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return int(_to_text(value).strip())
    except ValueError:
        raise ValueError(f"expected a whole number, got {_show(value)}") from None


def _to_float(value: RawScalar) -> float:
    try:
        result = float(_to_text(value).strip())
    except ValueError:
        result = math.nan
    if not math.isfinite(result):
        raise ValueError(f"expected a number, got {_show(value)}")
    return result


def _show(value: RawScalar) -> str:
    return str(value).lower() if isinstance(value, bool) else repr(value)


_CONVERTERS: dict[OptionKind, Callable[[RawScalar], Value]] = {
    OptionKind.STR: _to_text,
    OptionKind.PATH: _to_text,
    OptionKind.COMMAND: _to_text,
    OptionKind.BOOL: _to_bool,
    OptionKind.SIZE: _to_size,
    OptionKind.MIB: _to_mib,
    OptionKind.INT: _to_int,
    OptionKind.FLOAT: _to_float,
}


def _lookup(options: Sequence[OptionDef]) -> dict[str, OptionDef]:
    lookup: dict[str, OptionDef] = {}
    for option in options:
        for name in (option.name, *option.aliases):
            if normalize(name) in lookup:
                raise ValueError(f"option name {name!r} is declared twice")
            lookup[normalize(name)] = option
    return lookup


def _find(raw: RawValue, lookup: Mapping[str, OptionDef]) -> OptionDef:
    option = lookup.get(normalize(raw.name))
    if option is None:
        raise _unknown(raw.name, raw.origin, lookup)
    return option


def _unknown(name: str, origin: str, lookup: Mapping[str, OptionDef]) -> SpecError:
    close = difflib.get_close_matches(normalize(name), list(lookup), n=1)
    hint = f"did you mean '{close[0]}'?" if close else None
    return SpecError(origin, f"unknown option '{name}'", hint=hint)
