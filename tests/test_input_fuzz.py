"""Property-based tests of the user-written inputs' readers (issue 11): whatever text a
spec (TOML or the thesis's .gvap), a job.xml or a `vmwu run` command line holds, reading
it raises nothing but vmwu's own one-line errors.

Inputs are random text and edits of real files: the thesis's figures, the examples'
specs and the BOINC example's job.xml. ``VMWU_FUZZ_EXAMPLES`` sets the number of
examples per test (CI runs a few hundred)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ROOT
from vmwu.errors import VmwuError
from vmwu.runopts import parse_run_args
from vmwu.spec import load_spec
from vmwu.wrapper.jobxml import parse_job

EXAMPLES = int(os.environ.get("VMWU_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

SPECS = {
    path.name: path.read_text()
    for path in [
        ROOT / "tests/data/thesis/mandelbrot.gvap",
        ROOT / "tests/data/thesis/phaser.gvap",
        ROOT / "examples/mandelbrot/vmwu.toml",
        ROOT / "examples/mandelbrot/mandelbrot.gvap",
        ROOT / "examples/phaser-like/vmwu.toml",
    ]
}
JOB = (ROOT / "examples/boinc/job.xml").read_text()
TOKENS = [
    "=",
    '"',
    "'",
    "\\",
    "\n",
    "[",
    "]",
    "{",
    "}",
    "-",
    "--",
    "nan",
    "inf",
    "1e999",
    "0x",
    "app-output-size",
    "vmm-memory",
    "package-name",
    "app-launch",
    "../",
    "/",
    "\0",
    "\ud800",
    "<",
    ">",
    "&",
    "<!DOCTYPE x [<!ENTITY a 'b'>]>",
    "&a;",
    "<task>",
    "</task>",
    "]]>",
]


def mutate(text: str, edits: list[tuple[int, int, str]]) -> str:
    for pos, cut, insert in edits:
        at = pos % (len(text) + 1)
        text = text[:at] + insert + text[at + cut :]
    return text


edits = st.lists(
    st.tuples(
        st.integers(0, 10_000),
        st.integers(0, 8),
        st.one_of(st.sampled_from(TOKENS), st.text(max_size=12)),
    ),
    min_size=1,
    max_size=6,
)


def only_vmwu_errors(call: object) -> None:
    try:
        call()  # type: ignore[operator]
    except VmwuError as exc:
        assert "\n" not in str(exc)


@FUZZ
@given(name=st.sampled_from(sorted(SPECS)), changes=edits)
def test_spec_files(tmp_path: Path, name: str, changes: list[tuple[int, int, str]]) -> None:
    spec = tmp_path / name
    spec.write_text(mutate(SPECS[name], changes), errors="surrogatepass")
    (tmp_path / "app").mkdir(exist_ok=True)
    only_vmwu_errors(lambda: load_spec(spec, cwd=tmp_path))


@FUZZ
@given(text=st.text(max_size=400), suffix=st.sampled_from([".toml", ".gvap"]))
def test_spec_files_of_any_text(tmp_path: Path, text: str, suffix: str) -> None:
    spec = tmp_path / f"any{suffix}"
    spec.write_bytes(text.encode(errors="surrogatepass"))
    only_vmwu_errors(lambda: load_spec(spec, cwd=tmp_path))


@FUZZ
@given(changes=edits)
def test_job_files(changes: list[tuple[int, int, str]]) -> None:
    data = mutate(JOB, changes).encode(errors="surrogatepass")
    only_vmwu_errors(lambda: parse_job(data, "job.xml"))


@FUZZ
@given(data=st.binary(max_size=600))
def test_job_files_of_any_bytes(data: bytes) -> None:
    only_vmwu_errors(lambda: parse_job(data, "job.xml"))


@FUZZ
@given(
    argv=st.lists(
        st.one_of(
            st.sampled_from(
                [
                    "--files",
                    "--files-destination",
                    "--timeout",
                    "--vmm-memory",
                    "--cpus",
                    "--output-filename",
                    "-gva",
                    "--",
                    "nan",
                    "inf",
                    "-1",
                    "0",
                    "1e999",
                    "a,b",
                ]
            ),
            st.text(max_size=10),
        ),
        max_size=8,
    )
)
def test_run_command_lines(tmp_path: Path, argv: list[str]) -> None:
    unit = tmp_path / "u.ova"
    unit.write_bytes(b"")
    only_vmwu_errors(lambda: parse_run_args(["u.ova", *argv], cwd=tmp_path))


def test_the_seeds_are_valid(tmp_path: Path) -> None:
    """The mutations start from inputs that read (so edits reach deep, not just the first
    line)."""
    assert parse_job(JOB.encode(), "job.xml").tasks
    with pytest.raises(VmwuError):
        parse_job(b"<job_desc/>", "job.xml")
