"""The Nimrod plan language (Nimrod/G, as the thesis's figure 6.9 uses it)::

    parameter gva text default "phaser.ova.gz";
    parameter index integer range from 1 to 20 step 1;
    parameter x label "X position" float range from 0 to 1 points 5;
    parameter mode text select anyof "fast" "exact";
    parameter seed integer random from 1 to 1000 points 3;
    parameter input files select anyof "*.pha";

    task main
        copy ${index}.pha node:input.pha
        node:execute vmwu run ../${gva} -files input.pha > gval.out
        node:substitute template.txt node:config.txt
        copy node:gval.out gval_${index}.out
    endtask

Statements are one per line; a trailing backslash continues a line; ``#`` starts a comment
(in parameter lines anywhere outside quotes, in task lines only at the start: ``#`` means
something to the shell). A ``;`` may end a parameter line. ``${name}`` is a parameter or an
environment variable. Errors name ``file:line:col``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vmwu.errors import SpecError
from vmwu.sweep.model import (
    IDENT,
    TASKS,
    DefaultDomain,
    Domain,
    Parameter,
    ParamType,
    Plan,
    RandomDomain,
    RangeDomain,
    SelectDomain,
    Step,
    StepKind,
    Task,
    Template,
    Value,
    Where,
    check_domain,
    check_plan,
    convert,
    fail,
)

STEP_WORDS: dict[str, StepKind] = {
    "copy": StepKind.COPY,
    "node:copy": StepKind.COPY,
    "execute": StepKind.EXECUTE,
    "exec": StepKind.EXECUTE,
    "node:execute": StepKind.EXECUTE,
    "node:exec": StepKind.EXECUTE,
    "substitute": StepKind.SUBSTITUTE,
    "node:substitute": StepKind.SUBSTITUTE,
}


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise SpecError(str(path), "no such plan file") from None
    except IsADirectoryError:
        raise SpecError(str(path), "is a directory, not a plan file") from None
    except UnicodeDecodeError:
        raise SpecError(str(path), "not a UTF-8 text file") from None
    except OSError as err:
        raise SpecError(str(path), f"cannot read: {err.strerror}") from None


def load_plan(path: Path) -> Plan:
    """A plan file: TOML if it ends in ``.toml``, else the Nimrod form."""
    text = read_text(path)
    if path.suffix.lower() == ".toml":
        from vmwu.sweep.plan_toml import parse_toml_plan

        return parse_toml_plan(text, path)
    return parse_plan(text, path)


# --- lines ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    text: str
    positions: tuple[tuple[int, int], ...]  # (line, col) of every character, 1-based
    source: str

    def where(self, index: int) -> Where:
        if index < len(self.positions):
            line, col = self.positions[index]
            return Where(self.source, line, col)
        line, col = self.positions[-1]  # just past the end of the line
        return Where(self.source, line, col + index - len(self.positions) + 1)


def logical_lines(text: str, source: str) -> list[Line]:
    """Physical lines joined at trailing backslashes, keeping every character's position."""
    lines: list[Line] = []
    chars: list[str] = []
    positions: list[tuple[int, int]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        body = raw
        continued = body.endswith("\\") and not body.endswith("\\\\")
        if continued:
            body = body[:-1]
        for col, char in enumerate(body, start=1):
            chars.append(char)
            positions.append((number, col))
        if not continued:
            if not positions:
                positions.append((number, 1))
                lines.append(Line("", tuple(positions), source))
            else:
                lines.append(Line("".join(chars), tuple(positions), source))
            chars, positions = [], []
    if chars:
        lines.append(Line("".join(chars), tuple(positions), source))
    return lines


# --- tokens of parameter lines -------------------------------------------------------------


@dataclass(frozen=True)
class Token:
    text: str
    quoted: bool
    start: int  # index in the line


def tokenize(line: Line, start: int = 0) -> list[Token]:
    """Words, "quoted strings" (with \\" and \\\\ escapes) and ``;``; ``#`` ends the line."""
    text = line.text
    tokens: list[Token] = []
    i = start
    while i < len(text):
        char = text[i]
        if char.isspace():
            i += 1
        elif char == "#":
            break
        elif char == ";":
            tokens.append(Token(";", False, i))
            i += 1
        elif char in "\"'":
            value, end = _quoted(line, i)
            tokens.append(Token(value, True, i))
            i = end
        else:
            j = i
            while j < len(text) and not text[j].isspace() and text[j] not in ";#\"'":
                j += 1
            tokens.append(Token(text[i:j], False, i))
            i = j
    return tokens


def _quoted(line: Line, start: int) -> tuple[str, int]:
    quote, text = line.text[start], line.text
    out: list[str] = []
    i = start + 1
    while i < len(text):
        char = text[i]
        if char == "\\" and quote == '"' and text[i + 1 : i + 2] in ('"', "\\"):
            out.append(text[i + 1])
            i += 2
        elif char == quote:
            return "".join(out), i + 1
        else:
            out.append(char)
            i += 1
    raise fail(line.where(start), f"missing closing {quote}")


class Tokens:
    """A cursor over one parameter line's tokens, with errors at the right column."""

    def __init__(self, line: Line, tokens: list[Token]) -> None:
        self.line = line
        self.tokens = [t for t in tokens if t.text != ";" or t.quoted]
        self.i = 0
        semis = [t for t in tokens if t.text == ";" and not t.quoted]
        if semis and semis[0] is not tokens[-1]:
            raise fail(line.where(semis[0].start), "';' must end the line")

    def where(self) -> Where:
        if self.i < len(self.tokens):
            return self.line.where(self.tokens[self.i].start)
        return self.line.where(len(self.line.text.rstrip()))

    def peek(self) -> Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def next(self, what: str) -> Token:
        token = self.peek()
        if token is None:
            raise fail(self.where(), f"expected {what} at the end of the line")
        self.i += 1
        return token

    def word(self, *choices: str) -> str:
        where = self.where()
        token = self.next(" or ".join(choices))
        if token.quoted or token.text not in choices:
            close = difflib.get_close_matches(token.text, choices, n=1)
            hint = f"did you mean '{close[0]}'?" if close else None
            raise fail(where, f"expected {' or '.join(choices)}, found {token.text!r}", hint)
        return token.text

    def accept(self, word: str) -> bool:
        token = self.peek()
        if token is not None and not token.quoted and token.text == word:
            self.i += 1
            return True
        return False

    def number(self, what: str) -> float:
        where = self.where()
        token = self.next(what)
        try:
            return float(token.text)
        except ValueError:
            raise fail(where, f"expected a number for {what}, found {token.text!r}") from None

    def integer(self, what: str) -> int:
        where = self.where()
        value = self.number(what)
        if value != int(value):
            raise fail(where, f"{what} must be a whole number")
        return int(value)

    def end(self) -> None:
        token = self.peek()
        if token is not None:
            raise fail(self.where(), f"unexpected {token.text!r} at the end of the statement")


# --- statements ----------------------------------------------------------------------------


def parse_plan(text: str, path: Path, source: str | None = None) -> Plan:
    source = source or str(path)
    parameters: list[Parameter] = []
    tasks: dict[str, Task] = {}
    lines = logical_lines(text, source)
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        stripped = line.text.lstrip()
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(line.text) - len(stripped)
        keyword = stripped.split(None, 1)[0]
        if keyword == "parameter":
            param = parse_parameter(line, indent + len(keyword))
            if any(p.name == param.name for p in parameters):
                raise fail(param.where, f"parameter {param.name} is declared twice")
            parameters.append(param)
        elif keyword == "task":
            task, i = parse_task(lines, i - 1, indent)
            if task.name in tasks:
                raise fail(task.where, f"task {task.name} is declared twice")
            tasks[task.name] = task
        else:
            close = difflib.get_close_matches(keyword, ["parameter", "task"], n=1)
            hint = f"did you mean '{close[0]}'?" if close else None
            raise fail(
                line.where(indent), f"expected 'parameter' or 'task', found {keyword!r}", hint
            )
    plan = Plan(Path(path), tuple(parameters), tasks)
    check_plan(plan, Where(source, max(1, len(text.splitlines())), 1))
    return plan


def parse_parameter(line: Line, start: int) -> Parameter:
    toks = Tokens(line, tokenize(line, start))
    where = toks.where()
    name_tok = toks.next("a parameter name")
    if name_tok.quoted or not IDENT.fullmatch(name_tok.text):
        raise fail(where, f"{name_tok.text!r} is not a parameter name (letters, digits, _)")
    label = None
    if toks.accept("label"):
        label = toks.next("the label text").text
    p_type = ParamType(toks.word(*ParamType))
    if toks.peek() is None:
        raise fail(
            toks.where(),
            f"empty domain: parameter {name_tok.text} has no values",
            hint="add default V, range from A to B step S, select anyof …, or random …",
        )
    domain_where = toks.where()
    domain = parse_domain(toks, p_type)
    toks.end()
    check_domain(p_type, domain, domain_where)
    return Parameter(name_tok.text, p_type, domain, where, label)


def parse_domain(toks: Tokens, p_type: ParamType) -> Domain:
    kind = toks.word("default", "range", "select", "random")
    if kind == "default":
        return DefaultDomain(_value(toks, p_type))
    if kind == "range":
        toks.word("from")
        start = toks.number("from")
        toks.word("to")
        stop = toks.number("to")
        if toks.word("step", "points") == "step":
            return RangeDomain(start, stop, step=toks.number("step"))
        return RangeDomain(start, stop, points=toks.integer("points"))
    if kind == "random":
        toks.word("from")
        start = toks.number("from")
        toks.word("to")
        stop = toks.number("to")
        toks.word("points")
        return RandomDomain(start, stop, toks.integer("points"))
    anyof = toks.word("anyof", "oneof") == "anyof"
    values: list[Value] = []
    while (token := toks.peek()) is not None and not (token.text == "default" and not token.quoted):
        values.append(_value(toks, p_type))
    default = _value(toks, p_type) if toks.accept("default") else None
    return SelectDomain(tuple(values), anyof, default)


def _value(toks: Tokens, p_type: ParamType) -> Value:
    where = toks.where()
    token = toks.next("a value")
    return convert(p_type, token.text, where)


def parse_task(lines: list[Line], i: int, indent: int) -> tuple[Task, int]:
    head = lines[i]
    toks = Tokens(head, tokenize(head, indent + len("task")))
    where = toks.where()
    name = toks.next("a task name").text
    toks.end()
    if name not in TASKS:
        close = difflib.get_close_matches(name, TASKS, n=1)
        raise fail(
            where,
            f"unknown task {name!r} (vmwu runs main, rootstart and rootfinish)",
            f"did you mean '{close[0]}'?" if close else None,
        )
    steps: list[Step] = []
    i += 1
    while i < len(lines):
        line = lines[i]
        i += 1
        stripped = line.text.lstrip()
        if not stripped or stripped.startswith("#"):
            continue
        col = len(line.text) - len(stripped)
        word = stripped.split(None, 1)[0]
        if word == "endtask":
            if stripped.split(None, 1)[1:] and not stripped.split(None, 1)[1].startswith("#"):
                raise fail(line.where(col + len(word) + 1), "unexpected text after endtask")
            return Task(name, tuple(steps), Where(head.source, head.positions[0][0], indent + 1)), i
        if word in ("task", "parameter"):
            raise fail(line.where(col), f"missing endtask before this {word}")
        steps.append(parse_step(line, col, word))
    raise fail(Where(head.source, head.positions[0][0], indent + 1), f"task {name} has no endtask")


def parse_step(line: Line, col: int, word: str) -> Step:
    kind = STEP_WORDS.get(word)
    where = line.where(col)
    if kind is None:
        close = difflib.get_close_matches(word, list(STEP_WORDS), n=1)
        raise fail(
            where,
            f"unknown task command {word!r} (copy, node:execute, exec, node:substitute)",
            f"did you mean '{close[0]}'?" if close else None,
        )
    rest = col + len(word)
    if kind is StepKind.EXECUTE:
        command = line.text[rest:].strip()
        if not command:
            raise fail(where, f"{word} needs a command line")
        offset = line.text.index(command, rest)
        return Step(kind, (Template.parse(command, _shifted(line, offset)),), where)
    tokens = [t for t in tokenize(line, rest) if t.text != ";" or t.quoted]
    if len(tokens) != 2:
        raise fail(where, f"{word} takes two files: {word} SOURCE DESTINATION")
    args = tuple(Template.parse(t.text, _shifted(line, t.start + int(t.quoted))) for t in tokens)
    return Step(kind, args, where)


def _shifted(line: Line, offset: int) -> Callable[[int], Where]:
    return lambda index: line.where(offset + index)
