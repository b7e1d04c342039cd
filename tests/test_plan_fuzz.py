"""Property-based tests of the plan readers (issue 11): on arbitrary text and on mutations
of real plans (the published ones in tests/data/plans, the examples, their TOML forms),
reading, counting, expanding and checking a plan raise nothing but vmwu's own errors; and
whatever a value holds, a path that passes the checks stays where it belongs."""

from __future__ import annotations

import subprocess
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ROOT
from vmwu.errors import VmwuError
from vmwu.sweep.expand import (
    check_paths,
    check_references,
    count_jobs,
    expand,
    node_relative,
    root_output,
    single_values,
)
from vmwu.sweep.model import Plan, Template, Where
from vmwu.sweep.plan import parse_plan
from vmwu.sweep.plan_toml import parse_toml_plan

REAL_PLANS = [
    *sorted((ROOT / "tests" / "data" / "plans").glob("*.pln")),
    ROOT / "examples" / "mandelbrot" / "mandelbrot.plan",
    ROOT / "examples" / "phaser-like" / "phaser.plan",
]
SEEDS = [p.read_text() for p in REAL_PLANS]

TOML_SEED = """
[[parameter]]
name = "x"
type = "float"
range = { from = 0.5, to = 1.5, points = 3 }

[[parameter]]
name = "f"
type = "files"
select = ["*.dat"]

[task.nodestart]
steps = [ { copy = "a.dat", to = "node:." } ]

[task.main]
steps = [
    { onerror = "ignore" },
    { redirect = "stdout", to = "out", append = true },
    { copy = "${f}", to = "node:in" },
    { exec = ["echo", "$x"] },
    { shexec = "echo ${x} > x.txt" },
    { substitute = "node:in", to = "node:sub" },
    { copy = "node:x.txt", to = "x_${x}_$jobindex.txt" },
]
"""

WORDS = [
    "parameter", "task", "main", "nodestart", "rootstart", "rootfinish", "endtask",
    "integer", "float", "text", "files", "label", "range", "from", "to", "step", "points",
    "select", "anyof", "oneof", "default", "random", "copy", "node:", "root:", "exec",
    "lexec", "lpexec", "shexec", "node:execute", "execute", "substitute", "node:substitute",
    "onerror", "fail", "ignore", "redirect", "stdout", "stderr", "append", "off", "${x}",
    "$x", "$jobindex", "\\$", '"', "'", "\\", "\n", ";", "#", "//", "/*", "*/", " ", "\t",
    "1e-300", "1e999", "nan", "inf", "-1", "0", "1.5", "2", "*.dat", "..", "../", "/",
    "\x00", "variable", "jobs", "\\x41", "\\777", "{", "}", "$", "x", "=", "[", "]",
]  # fmt: skip

plan_text = st.lists(st.one_of(st.sampled_from(WORDS), st.text(max_size=8)), max_size=60).map(
    "".join
)


@st.composite
def mutated(draw: st.DrawFn, seeds: list[str]) -> str:
    """A real plan with a few edits: a piece cut, a piece inserted, a line repeated."""
    text = draw(st.sampled_from(seeds))
    for _ in range(draw(st.integers(1, 4))):
        edit = draw(st.sampled_from(["cut", "insert", "repeat", "replace"]))
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 40)))
        if edit == "cut":
            text = text[:i] + text[j:]
        elif edit == "insert":
            text = text[:i] + draw(st.sampled_from(WORDS) | st.text(max_size=5)) + text[i:]
        elif edit == "repeat":
            text = text[:j] + text[i:j] + text[j:]
        else:
            text = text[:i] + draw(st.sampled_from(WORDS)) + text[j:]
    return text


@pytest.fixture(scope="module")
def input_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("inputs")
    for name in ("a.dat", "b.dat", "A380.dat", "737-400.dat", "inputfile", "wing_test.zip"):
        (d / name).write_text("x")
    return d


def exercise(plan: Plan, input_dir: Path) -> None:
    """Everything a sweep does with a plan before anything runs."""
    check_references(plan, {"HOME": "/root"})
    if count_jobs(plan, input_dir, max_jobs=200) <= 200:
        jobs = expand(plan, input_dir, max_jobs=200)
        single = single_values(plan, input_dir)
        check_references(plan, {"HOME": "/root"}, single)
        check_paths(plan, jobs, input_dir, single, {"HOME": "/root"})


FUZZ = settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(text=plan_text)
def test_arbitrary_text_gives_vmwu_errors_only(text: str, input_dir: Path) -> None:
    try:
        exercise(parse_plan(text, Path("f.plan")), input_dir)
    except VmwuError:
        pass


@FUZZ
@given(text=mutated(SEEDS))
def test_mutated_real_plans_give_vmwu_errors_only(text: str, input_dir: Path) -> None:
    try:
        exercise(parse_plan(text, Path("f.plan")), input_dir)
    except VmwuError:
        pass


@FUZZ
@given(text=st.one_of(plan_text, mutated([TOML_SEED])))
def test_toml_plans_give_vmwu_errors_only(text: str, input_dir: Path) -> None:
    try:
        exercise(parse_toml_plan(text, Path("f.toml")), input_dir)
    except VmwuError:
        pass


def test_the_seeds_themselves_are_good(input_dir: Path) -> None:
    parse_toml_plan(TOML_SEED, Path("f.toml"))
    for path in REAL_PLANS[:1]:
        parse_plan(path.read_text(), path)


@settings(max_examples=500, deadline=None)
@given(value=st.lists(st.sampled_from(["a", ".", "/", "~", "\\", " ", "\x00", ".."])).map("".join))
def test_whatever_a_value_holds_an_accepted_path_stays_inside(value: str) -> None:
    where = Where("f.plan", 1, 1)
    try:
        rel = root_output(f"out/{value}", "o", where)
    except VmwuError:
        pass
    else:
        parts = PurePosixPath(rel).parts
        assert not rel.startswith("/") and ".." not in parts and parts[0] == "out"
    try:
        node = node_relative(value, where)
    except VmwuError:
        pass
    else:
        # at most one step up: node:.. is the node's shared folder, nothing above
        parts = PurePosixPath(node).parts
        assert not node.startswith("/") and parts.count("..") <= 1
        assert ".." not in parts[1:]


@settings(max_examples=60, deadline=None)
@given(value=st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00")))
def test_a_value_stays_its_text_wherever_it_stands_in_a_shell_line(value: str) -> None:
    template = Template.parse(
        "printf '[%s]' $v \"$v\" '$v' x${v}y", lambda i: Where("f.plan", 1, i + 1)
    )
    line = template.render_shell({"v": value})
    out = subprocess.run(["sh", "-c", line], capture_output=True, check=True).stdout
    assert out.decode("utf-8", "surrogateescape") == f"[{value}][{value}][{value}][x{value}y]"
