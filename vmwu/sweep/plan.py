"""The Nimrod plan language as users wrote it: classic Nimrod/EnFuzion plans (the thesis's
figure 6.9, the Monash Nimrod Portal examples) and Nimrod/G's (nimrodg, Embedded Nimrod)::

    // comments: // or # at the start of a word, /* … */ (outside shell command lines)
    parameter gva text default "phaser.ova.gz";
    parameter index integer range from 1 to 20 step 1;
    parameter x label "X position" float range from 0 to 1 points 5
    parameter mode text select anyof "fast" "exact"
    parameter t text "NimrodDemo"                 # a bare default
    parameter seed integer random from 1 to 1000 points 3
    parameter noise float random from 1 to 2      # one value
    parameter input files select anyof "*.pha"

    task nodestart
        copy model.tgz node:.
    endtask
    task main
        onerror ignore
        redirect stdout to out.txt
        copy ${index}.pha node:input.pha
        node:execute vmwu run ../${gva} -files input.pha > gval.out
        exec echo "$index,$x"
        shexec "zip results.${jobindex}.zip *"
        node:substitute template.txt config.txt
        copy node:gval.out gval_${index}.out
    endtask

One statement per line; a trailing backslash continues a line; a trailing ``;`` is allowed.
docs/sweeps.md has the whole grammar and how it differs from classic Nimrod and nimrodg.
Errors name ``file:line:col``.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path

from vmwu.errors import SpecError
from vmwu.sweep.model import (
    IDENT,
    ROOT_TASKS,
    TASKS,
    DefaultDomain,
    Domain,
    Parameter,
    ParamType,
    Plan,
    RandomDomain,
    RangeDomain,
    SelectDomain,
    Side,
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
    parse_number,
)

SHELL_WORDS = ("execute", "node:execute")
COMMAND_WORDS = (
    "copy",
    "node:copy",
    "substitute",
    "node:substitute",
    "execute",
    "node:execute",
    "shexec",
    "exec",
    "lexec",
    "lpexec",
    "onerror",
    "redirect",
)


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


def _word_start(text: str, i: int) -> bool:
    return i == 0 or text[i - 1].isspace()


def _comment_at(text: str, i: int) -> bool:
    return _word_start(text, i) and (text[i] == "#" or text.startswith("//", i))


# --- tokens --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Token:
    """A word: bare text and "…" (C escapes) or '…' (literal) pieces run together."""

    value: str
    start: int  # index in the line
    positions: tuple[int, ...]  # line index of each character of value
    bare: str  # the leading part of the word that was not quoted
    quoted: bool

    def is_word(self, *words: str) -> bool:
        return not self.quoted and self.value in words


_ESCAPES = {
    "n": "\n",
    "t": "\t",
    "r": "\r",
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "v": "\v",
    "\\": "\\",
    '"': '"',
    "'": "'",
    "?": "?",
}


def tokenize(line: Line, start: int, in_block: bool = False) -> tuple[list[Token], bool]:
    """The words of ``line`` from ``start``; comments end them (``#`` and ``//`` at the
    start of a word, ``/* … */``, which may go on over the next lines: the second value
    says the line ended inside one)."""
    text = line.text
    tokens: list[Token] = []
    i = start
    if in_block:
        end = text.find("*/", i)
        if end == -1:
            return tokens, True
        i = end + 2
    while i < len(text):
        char = text[i]
        if char.isspace():
            i += 1
            continue
        if _comment_at(text, i):
            break
        if text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end == -1:
                return tokens, True
            i = end + 2
            continue
        if char == ";":
            tokens.append(Token(";", i, (i,), ";", False))
            i += 1
            continue
        value: list[str] = []
        positions: list[int] = []
        bare_end: int | None = None
        begin = i
        while i < len(text) and not text[i].isspace() and text[i] != ";":
            char = text[i]
            if char in "\"'":
                if bare_end is None:
                    bare_end = len(value)
                i = _quoted(line, i, value, positions)
            else:
                value.append(char)
                positions.append(i)
                i += 1
        word = "".join(value)
        bare = word if bare_end is None else word[:bare_end]
        tokens.append(Token(word, begin, tuple(positions), bare, bare_end is not None))
    return tokens, False


def _quoted(line: Line, start: int, value: list[str], positions: list[int]) -> int:
    quote, text = line.text[start], line.text
    i = start + 1
    while i < len(text):
        char = text[i]
        if char == quote:
            return i + 1
        if char == "\\" and quote == '"' and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt in _ESCAPES:
                value.append(_ESCAPES[nxt])
                positions.append(i)
                i += 2
                continue
            if nxt in "01234567":
                j = i + 1
                while j < min(i + 4, len(text)) and text[j] in "01234567":
                    j += 1
                value.append(chr(int(text[i + 1 : j], 8)))
                positions.append(i)
                i = j
                continue
            if nxt == "x":
                j = i + 2
                while j < len(text) and text[j] in "0123456789abcdefABCDEF":
                    j += 1
                if j > i + 2:
                    value.append(chr(int(text[i + 2 : j], 16) % 0x110000))
                    positions.append(i)
                    i = j
                    continue
        value.append(char)  # any other backslash stays (\$ is a literal $ in templates)
        positions.append(i)
        i += 1
    raise fail(line.where(start), f"missing closing {quote}")


class Tokens:
    """A cursor over one statement's tokens, with errors at the right column."""

    def __init__(self, line: Line, tokens: list[Token]) -> None:
        self.line = line
        semis = [n for n, t in enumerate(tokens) if t.is_word(";")]
        if semis:
            first = semis[0]
            if any(not t.is_word(";") for t in tokens[first:]):
                raise fail(line.where(tokens[first].start), "';' must end the statement")
            tokens = tokens[:first]
        self.tokens = tokens
        self.i = 0

    def where(self) -> Where:
        if self.i < len(self.tokens):
            return self.line.where(self.tokens[self.i].start)
        return self.line.where(len(self.line.text.rstrip()))

    def peek(self) -> Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def rest(self) -> list[Token]:
        rest, self.i = self.tokens[self.i :], len(self.tokens)
        return rest

    def next(self, what: str) -> Token:
        token = self.peek()
        if token is None:
            raise fail(self.where(), f"expected {what} at the end of the line")
        self.i += 1
        return token

    def word(self, *choices: str) -> str:
        where = self.where()
        token = self.next(" or ".join(choices))
        if not token.is_word(*choices):
            close = difflib.get_close_matches(token.value, choices, n=1)
            hint = f"did you mean '{close[0]}'?" if close else None
            raise fail(where, f"expected {' or '.join(choices)}, found {token.value!r}", hint)
        return token.value

    def accept(self, word: str) -> bool:
        token = self.peek()
        if token is not None and token.is_word(word):
            self.i += 1
            return True
        return False

    def number(self, what: str, p_type: ParamType) -> int | float:
        where = self.where()
        token = self.next(what)
        return parse_number(token.value, where, what, p_type)

    def count(self, what: str) -> int:
        value = self.number(what, ParamType.INTEGER)
        assert isinstance(value, int)
        return value

    def end(self) -> None:
        token = self.peek()
        if token is not None:
            raise fail(self.where(), f"unexpected {token.value!r} at the end of the statement")

    def template(self, token: Token, skip: int = 0) -> Template:
        positions = token.positions[skip:]
        line = self.line
        return Template.parse(
            token.value[skip:],
            lambda i: line.where(positions[i] if i < len(positions) else token.start),
        )


# --- statements ----------------------------------------------------------------------------


def parse_plan(text: str, path: Path, source: str | None = None) -> Plan:
    source = source or str(path)
    parameters: list[Parameter] = []
    tasks: dict[str, Task] = {}
    lines = logical_lines(text, source)
    in_block = False
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        tokens, in_block = tokenize(line, 0, in_block)
        if not tokens:
            continue
        first = tokens[0]
        keyword = first.value if not first.quoted else ""
        if keyword == "parameter":
            param = parse_parameter(line, tokens[1:])
            if any(p.name == param.name for p in parameters):
                raise fail(param.where, f"parameter {param.name} is declared twice")
            parameters.append(param)
        elif keyword == "task":
            task, i = parse_task(lines, i - 1, tokens)
            if task.name in tasks:
                raise fail(task.where, f"task {task.name} is declared twice")
            tasks[task.name] = task
        elif keyword in ("variable", "jobs"):
            raise fail(
                line.where(first.start),
                f"'{keyword}' belongs to nimrodg's compiled run files, not to plans",
                hint="declare parameters: parameter NAME TYPE DOMAIN",
            )
        else:
            close = difflib.get_close_matches(first.value, ["parameter", "task"], n=1)
            hint = f"did you mean '{close[0]}'?" if close else None
            raise fail(
                line.where(first.start),
                f"expected 'parameter' or 'task', found {first.value!r}",
                hint,
            )
    plan = Plan(Path(path), tuple(parameters), tasks)
    check_plan(plan, Where(source, max(1, len(text.splitlines())), 1))
    return plan


def parse_parameter(line: Line, tokens: list[Token]) -> Parameter:
    toks = Tokens(line, tokens)
    where = toks.where()
    name_tok = toks.next("a parameter name")
    if name_tok.quoted or not IDENT.fullmatch(name_tok.value):
        raise fail(where, f"{name_tok.value!r} is not a parameter name (letters, digits, _)")
    label = None
    if toks.accept("label"):
        label = toks.next("the label text").value
    if toks.peek() is None:
        raise fail(
            toks.where(),
            f"parameter {name_tok.value} has no type",
            hint="e.g. parameter x integer range from 1 to 10 step 1",
        )
    p_type = ParamType(toks.word(*ParamType))
    if toks.peek() is None:
        raise fail(
            toks.where(),
            f"empty domain: parameter {name_tok.value} has no values",
            hint="add default V, range from A to B step S, select anyof …, or random …",
        )
    domain_where = toks.where()
    domain = parse_domain(toks, p_type)
    toks.end()
    check_domain(p_type, domain, domain_where)
    return Parameter(name_tok.value, p_type, domain, where, label)


DOMAIN_WORDS = ("default", "range", "select", "random")


def parse_domain(toks: Tokens, p_type: ParamType) -> Domain:
    token = toks.peek()
    if token is not None and not token.is_word(*DOMAIN_WORDS) and len(toks.tokens) == toks.i + 1:
        return DefaultDomain(_value(toks, p_type))  # a bare default: text "NimrodDemo"
    kind = toks.word(*DOMAIN_WORDS)
    if kind == "default":
        return DefaultDomain(_value(toks, p_type))
    if kind in ("range", "random"):
        toks.word("from")
        start = toks.number("from", p_type)
        toks.word("to")
        stop = toks.number("to", p_type)
        if kind == "random":
            points = toks.count("points") if toks.accept("points") else 1
            return RandomDomain(start, stop, points)
        if toks.peek() is None:
            return RangeDomain(start, stop, step=1)  # nimrodg: no step is step 1
        if toks.word("step", "points") == "step":
            return RangeDomain(start, stop, step=toks.number("step", p_type))
        return RangeDomain(start, stop, points=toks.count("points"))
    anyof = toks.word("anyof", "oneof") == "anyof"
    values: list[Value] = []
    while (token := toks.peek()) is not None and not token.is_word("default"):
        values.append(_value(toks, p_type))
    default = _value(toks, p_type) if toks.accept("default") else None
    return SelectDomain(tuple(values), anyof, default)


def _value(toks: Tokens, p_type: ParamType) -> Value:
    where = toks.where()
    token = toks.next("a value")
    return convert(p_type, token.value, where)


# --- tasks ---------------------------------------------------------------------------------


def parse_task(lines: list[Line], i: int, head_tokens: list[Token]) -> tuple[Task, int]:
    head = lines[i]
    toks = Tokens(head, head_tokens[1:])
    where = toks.where()
    name = toks.next("a task name").value
    toks.end()
    if name not in TASKS:
        close = difflib.get_close_matches(name, TASKS, n=1)
        raise fail(
            where,
            f"unknown task {name!r} (tasks: {', '.join(TASKS)})",
            f"did you mean '{close[0]}'?" if close else None,
        )
    task_where = head.where(head_tokens[0].start)
    steps: list[Step] = []
    in_block = False
    i += 1
    while i < len(lines):
        line = lines[i]
        i += 1
        if not in_block:
            match = _FIRST_WORD.match(line.text)
            if match and _is_shell_line(line, match[1], match.end()):
                steps.append(_shell(line, match.start(1), match[1]))
                continue
        tokens, in_block = tokenize(line, 0, in_block)
        if not tokens:
            continue
        first = tokens[0]
        word = "" if first.quoted else first.value
        if word == "endtask":
            Tokens(line, tokens[1:]).end()
            return Task(name, tuple(steps), task_where), i
        if word in ("task", "parameter"):
            raise fail(line.where(first.start), f"missing endtask before this {word}")
        steps.append(parse_step(line, tokens, name))
    raise fail(task_where, f"task {name} has no endtask")


_FIRST_WORD = re.compile(r"\s*(\S+)")


def _is_shell_line(line: Line, word: str, after: int) -> bool:
    """``node:execute CMD``, ``execute CMD`` and ``shexec CMD`` (but not ``shexec "CMD"``)
    take the rest of the line as a shell command."""
    if word in SHELL_WORDS:
        return True
    if word != "shexec":
        return False
    try:
        tokens, _ = tokenize(line, after)
    except SpecError:  # quotes the shell reads differently ('it\'s'): a shell line
        return True
    words = [t for t in tokens if not t.is_word(";")]
    return not (len(words) == 1 and words[0].quoted and words[0].bare == "")


def _shell(line: Line, start: int, word: str) -> Step:
    """The rest of the line as a shell command; a comment (``#`` or ``//`` at the start of a
    word, outside the shell's quotes; for nimrodg's ``shexec`` also ``/* … */``) ends it."""
    text = line.text
    where = line.where(start)
    chars: list[str] = []
    positions: list[int] = []
    state, i = _BARE, start + len(word)
    while i < len(text):
        char = text[i]
        if state == _SINGLE:
            if char == "'":
                state = _BARE
        elif char == "\\" and i + 1 < len(text):
            chars.append(char)  # an escaped character, even a quote or #
            positions.append(i)
            i += 1
            char = text[i]
        elif state == _DOUBLE:
            if char == '"':
                state = _BARE
        elif _comment_at(text, i):
            break
        elif word == "shexec" and text.startswith("/*", i) and _word_start(text, i):
            end = text.find("*/", i + 2)
            if end == -1:
                raise fail(line.where(i), "unterminated /* comment")
            i = end + 2
            continue
        elif char == "'":
            state = _SINGLE
        elif char == '"':
            state = _DOUBLE
        chars.append(char)
        positions.append(i)
        i += 1
    if state != _BARE:
        quote = "'" if state == _SINGLE else '"'
        raise fail(where, f"missing closing {quote} in the command line (the shell needs it)")
    command = "".join(chars)
    lead = len(command) - len(command.lstrip())
    command = command.strip()
    if not command:
        raise fail(where, f"{word} needs a command line")
    template = Template.parse(command, lambda k: line.where(positions[lead + k]))
    return Step(StepKind.EXECUTE, where, (template,), written=word)


_BARE, _SINGLE, _DOUBLE = 0, 1, 2


def parse_step(line: Line, tokens: list[Token], task: str) -> Step:
    first = tokens[0]
    word = "" if first.quoted else first.value
    where = line.where(first.start)
    toks = Tokens(line, tokens[1:])
    if word not in COMMAND_WORDS:
        close = difflib.get_close_matches(first.value, COMMAND_WORDS, n=1)
        raise fail(
            where,
            f"unknown task command {first.value!r} (copy, exec, shexec, node:execute, "
            "node:substitute, onerror, redirect)",
            f"did you mean '{close[0]}'?" if close else None,
        )
    if word == "onerror":
        action = toks.word("fail", "ignore")
        toks.end()
        return Step(StepKind.ONERROR, where, word=action, written=word)
    if word == "redirect":
        stream = toks.word("stdout", "stderr")
        if toks.accept("off"):
            toks.end()
            return Step(StepKind.REDIRECT, where, word=stream, written=word)
        append = toks.accept("append")
        toks.word("to")
        target = toks.next("a file")
        toks.end()
        side, skip = _side(target, Side.NODE if task not in ROOT_TASKS else Side.ROOT)
        if side is not (Side.ROOT if task in ROOT_TASKS else Side.NODE):
            raise fail(where, f"redirect writes a file where task {task} runs: no {side}: here")
        return Step(
            StepKind.REDIRECT,
            where,
            (toks.template(target, skip),),
            word=stream,
            append=append,
            written=word,
        )
    if word == "shexec":  # the one quoted string (else it was a shell line)
        string = toks.next("a command")
        toks.end()
        return Step(StepKind.EXECUTE, where, (toks.template(string),), written=word)
    if word in ("exec", "lexec", "lpexec"):
        argv = toks.rest()
        need = 1 if word == "exec" else 2
        if len(argv) < need:
            what = "a program" if word == "exec" else "a program and its argv[0]"
            raise fail(where, f"{word} needs {what}: {word} PROGRAM [ARGUMENT …]")
        return Step(
            StepKind.EXEC,
            where,
            tuple(toks.template(t) for t in argv),
            search_path=word != "lexec",
            argv0=word != "exec",
            written=word,
        )
    files = toks.rest()
    kind = StepKind.COPY if word.endswith("copy") else StepKind.SUBSTITUTE
    if len(files) != 2:
        raise fail(where, f"{word} takes two files: {word} SOURCE DESTINATION")
    if task in ROOT_TASKS:
        defaults = (Side.ROOT, Side.ROOT)
    elif kind is StepKind.SUBSTITUTE:
        defaults = (Side.NODE if word.startswith("node:") else Side.ROOT, Side.NODE)
    else:
        defaults = (Side.ROOT, Side.ROOT)
    sides, args = [], []
    for token, default in zip(files, defaults, strict=True):
        side, skip = _side(token, default)
        sides.append(side)
        args.append(toks.template(token, skip))
    return Step(kind, where, tuple(args), tuple(sides), written=word)


def _side(token: Token, default: Side) -> tuple[Side, int]:
    """``node:FILE``/``root:FILE`` (the prefix written bare), else the default side."""
    for side in Side:
        if token.bare.startswith(f"{side}:"):
            return side, len(side) + 1
    return default, 0
