"""Nimrod plans as their users wrote them (issue 14 section 2): published plans of the
Nimrod family (tests/data/plans/README.md says where each comes from) read and run as
their documentation says, and the language's pieces one by one: values printed as Nimrod
prints them, $jobindex/$jobname, $x and ${x}, parameter types and domains, the commands
(copy with root:/node:, exec, shexec, node:execute, redirect, onerror, substitute), the
four tasks in Nimrod's order, comments and trailing semicolons. Plans run here for real
with the local executor (their commands are host commands; no QEMU)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, run_vmwu
from vmwu.errors import SpecError
from vmwu.sweep.expand import (
    check_references,
    count_jobs,
    expand,
    job_values,
    values_of,
)
from vmwu.sweep.model import (
    DefaultDomain,
    ParamType,
    RandomDomain,
    RangeDomain,
    SelectDomain,
    Side,
    StepKind,
    format_value,
)
from vmwu.sweep.plan import load_plan, parse_plan

PLANS = ROOT / "tests" / "data" / "plans"


def parse(text: str) -> Any:
    return parse_plan(text, Path("t.plan"))


def error_of(text: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(SpecError) as info:
        check_references(parse(text), environ or {})
    return str(info.value)


def sweep(*args: Any, cwd: Path, env: dict[str, str] | None = None) -> Any:
    scratch = cwd / "scratch"
    scratch.mkdir(exist_ok=True)
    return run_vmwu(
        "sweep", *args, cwd=cwd, env={"VMWU_SWEEP_SCRATCH": str(scratch), **(env or {})}
    )


def one_line(result: Any, code: int = 241) -> str:
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vmwu: error: "), result.stderr
    assert "Traceback" not in result.stderr
    return str(lines[0])


def jobs_json(results: Path) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads((results / "results.json").read_text())["jobs"]
    return data


# --- published plans -------------------------------------------------------------------------


def test_the_portal_first_example_yields_output_1_to_500_in_the_experiment_directory(
    tmp_path: Path,
) -> None:
    """The Nimrod Portal manual: "The output files will look like output.1, output.2, ...,
    output.500" (a float range printed as Nimrod prints it, end included, each job's
    file copied back into the experiment's directory)."""
    shutil.copy(PLANS / "portal-example1.pln", tmp_path)
    (tmp_path / "inputfile").write_text("input\n")
    result = sweep("portal-example1.pln", "-j", "2", "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    res = tmp_path / "portal-example1-results"
    outputs = {p.name for p in res.iterdir() if p.name.startswith("output.")}
    assert outputs == {f"output.{i}" for i in range(1, 501)}
    uname = os.uname()
    for i in (1, 250, 500):
        text = (res / f"output.{i}").read_text()
        assert text.startswith("input\n") and uname.sysname in text and uname.release in text
    jobs = jobs_json(res)
    assert len(jobs) == 500 and {j["state"] for j in jobs} == {"done"}
    # nothing is left on the node's scratch
    assert list((tmp_path / "scratch").iterdir()) == []


def test_the_nimrodg_aero_plan(tmp_path: Path) -> None:
    """nimrodg's aero-onlyvars.pln (its wiki's example): files chosen by glob patterns in
    the plan's directory (nimrodg's own test data files), a float range with a
    fractional step, labels, random without points (one value), $jobindex in outputs."""
    for name in ("A380.dat", "A381.dat", "737-400.dat", "A320.txt", "wing_test.zip"):
        (tmp_path / name).write_text(name)
    shutil.copy(PLANS / "nimrodg-aero-onlyvars.pln", tmp_path)
    plan = load_plan(tmp_path / "nimrodg-aero-onlyvars.pln")
    params = {p.name: p for p in plan.parameters}
    assert params["AoA"].label == "Angle of attack"
    assert params["turbulence"].domain == RandomDomain(1.0, 2.0, 1)
    models = values_of(params["aircraft_model"], tmp_path)
    assert models == ["A380.dat", "A381.dat", "737-400.dat"]  # pattern by pattern
    aoa = values_of(params["AoA"], tmp_path)
    assert len(aoa) == 37 and aoa[0] == -45.0 and aoa[-1] == 45.0 and 2.5 in aoa
    assert [format_value(v) for v in aoa[:3]] == ["-45", "-42.5", "-40"]
    assert count_jobs(plan, tmp_path) == 3 * 37 * 4 * 12 * 1
    steps = plan.main.steps
    assert [s.kind for s in steps] == [
        StepKind.COPY,
        StepKind.COPY,
        StepKind.EXEC,
        StepKind.EXECUTE,
        StepKind.EXECUTE,
        StepKind.COPY,
    ]
    assert steps[0].sides == (Side.ROOT, Side.NODE) and steps[5].sides == (Side.NODE, Side.ROOT)
    # validated for its 5328 jobs: every source exists, every output name is its own
    result = sweep("nimrodg-aero-onlyvars.pln", "--dry-run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 5328


def test_the_embedded_nimrod_sample_plan_runs(tmp_path: Path) -> None:
    """Embedded Nimrod's sample: // comments (also after commands), a bare text default,
    onerror, redirect of both streams, exec without a shell, and outputs named by
    $t and $jobindex under root:OE/."""
    shutil.copy(PLANS / "embedded-nimrod-demo.pln", tmp_path)
    result = sweep("embedded-nimrod-demo.pln", "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    oe = tmp_path / "embedded-nimrod-demo-results" / "OE"
    lines = sorted((oe / f"NimrodDemo.out.{n}.txt").read_text() for n in range(1, 13))
    # x is a float range 5.0E2 to 5.2E2 step 0.2E2: printed 500 and 520, as Nimrod does
    assert lines[0] == "1,500,1.5\n" and lines[-1] == "3,520,1.7\n"
    assert len(set(lines)) == 12
    assert all((oe / f"NimrodDemo.err.{n}.txt").read_text() == "" for n in range(1, 13))


def test_the_embedded_nimrod_files_plan(tmp_path: Path) -> None:
    """The files sweep of Embedded Nimrod's README: "INPUTS/*.xml" matched in the plan's
    directory, copy root:$f node:$f, root-side outputs under two directories."""
    shutil.copy(PLANS / "embedded-nimrod-files.pln", tmp_path)
    (tmp_path / "INPUTS").mkdir()
    for name in ("a.xml", "b.xml"):
        (tmp_path / "INPUTS" / name).write_text(f"<{name}/>\n")
    code = tmp_path / "build" / "CODE"
    code.mkdir(parents=True)
    (code / "myprogram.exe").write_text('#!/bin/sh\necho "ran on $2" > "$4"\n')
    (code / "myprogram.exe").chmod(0o755)
    subprocess.run(["tar", "cf", str(tmp_path / "CODE.tar"), "-C", str(code.parent), "CODE"])
    result = sweep("embedded-nimrod-files.pln", "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    res = tmp_path / "embedded-nimrod-files-results"
    assert (res / "OUTPUTS" / "ThisRun.1.dat").read_text() == "ran on INPUTS/a.xml\n"
    assert (res / "OUTPUTS" / "ThisRun.2.dat").read_text() == "ran on INPUTS/b.xml\n"
    assert "OUTPUTS" in (res / "OE" / "ThisRun.out.2.txt").read_text()  # exec ls -salR


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "nimrodg-invalid-variable-substitution.pln",
            ":4:15: unknown parameter $y",
        ),
        ("nimrodg-test_badtask.pln", ":3:6: unknown task 'mai'"),
        (
            "nimrodg-test_truncparam.pln",
            ":2:1: expected 'parameter' or 'task', found 'param' (did you mean 'parameter'?)",
        ),
        # nimrodg never ran it either: it names ${nimrod_jobindex}, which is no name
        ("nimrodg-test2.pln", ":14:39: unknown parameter ${nimrod_jobindex}"),
    ],
)
def test_nimrodgs_bad_plans_are_one_line_at_parse_time(
    tmp_path: Path, name: str, expected: str
) -> None:
    shutil.copy(PLANS / name, tmp_path)
    for f in ("A380.dat", "737-400.dat", "wing_test.zip"):
        (tmp_path / f).write_text("x")
    line = one_line(sweep(name, cwd=tmp_path))
    assert f"vmwu: error: {name}{expected}" in line
    assert not (tmp_path / f"{Path(name).stem}-results").exists()


# --- values ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (500.0, "500"),
        (-45.0, "-45"),
        (0.0, "0"),
        (-0.0, "0"),
        (2.5, "2.5"),
        (0.1, "0.1"),
        (1e-07, "1e-07"),
        (1e22, "1e+22"),
        (123456789.0, "123456789"),
        (0.30000000000000004, "0.30000000000000004"),  # shortest text that reads back
        (7, "7"),
        ("it's", "it's"),
    ],
)
def test_values_print_as_nimrod_prints_them(value: Any, text: str) -> None:
    assert format_value(value) == text
    if isinstance(value, float):
        assert float(text) == value


def test_ranges_end_included_and_without_binary_noise() -> None:
    plan = parse(
        "parameter a float range from 1 to 500 step 1\n"
        "parameter b float range from 0.1 to 0.3 step 0.1\n"
        "parameter c integer range from 1 to 10\n"  # nimrodg: no step is step 1
        "parameter d float range from 0 to 1 points 3\n"
        "parameter e integer range from 10 to 0 step -5\n"
        "task main\n exec true\nendtask\n"
    )
    vals = {p.name: values_of(p, Path(".")) for p in plan.parameters}
    assert vals["a"] == [float(i) for i in range(1, 501)]
    assert [format_value(v) for v in vals["a"][-2:]] == ["499", "500"]
    assert vals["b"] == [0.1, 0.2, 0.3]
    assert vals["c"] == list(range(1, 11))
    assert vals["d"] == [0.0, 0.5, 1.0]
    assert vals["e"] == [10, 5, 0]


def test_jobindex_jobname_and_both_reference_forms() -> None:
    plan = parse(
        "parameter x integer range from 1 to 2 step 1\n"
        "task main\n"
        '  shexec "echo $x ${x} $jobindex ${jobname} \\$x $HOME $1"\n'
        "endtask\n"
    )
    check_references(plan, {"HOME": "/home/u"})
    template = plan.main.steps[0].args[0]
    jobs = expand(plan, Path("."))
    assert [j.index for j in jobs] == [1, 2]
    line = template.render_shell(job_values(jobs[1].params, jobs[1].index))
    # \$x is a $ the shell gets; names that are not the plan's are the shell's
    assert line == "echo 2 2 2 2 $x $HOME $1"


def test_values_keep_their_text_where_they_stand_in_a_shell_line() -> None:
    plan = parse(
        'parameter w text select anyof "a b" "it\'s $HOME" "q\\"x"\n'
        "task main\n"
        "  node:execute printf '%s|' ${w} \"[$w]\" '<$w>' > out\n"
        "endtask\n"
    )
    for job in expand(plan, Path(".")):
        line = plan.main.steps[0].args[0].render_shell(job.params)
        out = subprocess.run(["sh", "-c", line.replace("> out", "")], capture_output=True)
        w = job.params["w"]
        assert out.stdout.decode() == f"{w}|[{w}]|<{w}>|"


def test_an_undefined_name_is_an_error_when_the_plan_is_read() -> None:
    text = "parameter index integer default 1\ntask main\n  copy ${indx}.pha node:in\nendtask\n"
    assert error_of(text).startswith("t.plan:3:8: unknown parameter ${indx}")
    assert "did you mean 'index'?" in error_of(text)
    shell = "parameter n integer default 1\ntask main\n  node:execute for f in *; do ls $f; done\n"
    assert "(a variable of the shell? write \\$f)" in error_of(shell + "endtask\n")
    # an environment variable of the driver is the shell's to expand
    check_references(parse(shell.replace("$f", "$HOME") + "endtask\n"), {"HOME": "/root"})


def test_root_and_node_tasks_see_only_single_valued_parameters(tmp_path: Path) -> None:
    text = (
        'parameter t text "Demo"\n'
        "parameter n integer range from 1 to 3 step 1\n"
        "task main\n  exec true\nendtask\n"
        'task rootfinish\n  shexec "tar cf $t.tar OE"\n  exec echo ${REF}\nendtask\n'
    )
    single = {"t": "Demo"}
    check_references(parse(text.replace("${REF}", "$t")), {}, single)
    with pytest.raises(SpecError) as info:
        check_references(parse(text.replace("${REF}", "${n}")), {}, single)
    assert str(info.value).startswith("t.plan:8:13: task rootfinish runs once, not once per job")
    with pytest.raises(SpecError, match="t.plan:8:13: \\$jobindex is a job's number"):
        check_references(parse(text.replace("${REF}", "$jobindex")), {}, single)


# --- types and domains -----------------------------------------------------------------------


def test_every_type_and_domain(tmp_path: Path) -> None:
    for name in ("b.pha", "a.pha", "c.txt"):
        (tmp_path / name).write_text("x")
    plan = parse(
        "parameter a integer range from 1 to 10 step 3;\n"
        "parameter b float range from 0 to 1 points 5\n"
        'parameter c label "the mode" text select anyof "fast" "exact mode"\n'
        'parameter d text select oneof "x" "y" default "y"\n'
        "parameter e integer random from 1 to 100 points 3\n"
        "parameter f float random from 1 to 2\n"
        'parameter g text "NimrodDemo"\n'
        "parameter h float default 2.5\n"
        'parameter i files select anyof "*.pha"\n'
        "parameter j integer select anyof 1 3 5\n"
        "parameter k float select anyof 1.51 5.0E2\n"
        "parameter l integer 7\n"
        "task main\n  exec true\nendtask\n"
    )
    p = {q.name: q for q in plan.parameters}
    vals = {name: values_of(q, tmp_path) for name, q in p.items()}
    assert vals["a"] == [1, 4, 7, 10]
    assert vals["b"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert vals["c"] == ["fast", "exact mode"] and p["c"].label == "the mode"
    assert vals["d"] == ["y"]
    assert len(vals["e"]) == 3 and all(isinstance(v, int) and 1 <= v <= 100 for v in vals["e"])
    assert len(vals["f"]) == 1 and 1 <= vals["f"][0] <= 2  # type: ignore[operator]
    assert p["g"].domain == DefaultDomain("NimrodDemo")
    assert vals["h"] == [2.5]
    assert vals["i"] == ["a.pha", "b.pha"]
    assert vals["j"] == [1, 3, 5] and vals["k"] == [1.51, 500.0] and vals["l"] == [7]
    assert isinstance(p["a"].domain, RangeDomain) and p["i"].type is ParamType.FILES
    assert isinstance(p["c"].domain, SelectDomain)
    # random values are the same every time the plan is read (seeded by the declaration)
    again = parse("parameter e integer random from 1 to 100 points 3\ntask main\nendtask\n")
    assert values_of(again.parameters[0], tmp_path) == vals["e"]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("parameter x float range from nan to 1 step 1", "expected a number for from, found 'nan'"),
        ("parameter x float default inf", "expected a number for the value, found 'inf'"),
        ("parameter x float default -Infinity", "found '-Infinity'"),
        ("parameter x float range from 0 to 1 step 1e999", "step 1e+999 is too large"),
        ("parameter x integer range from 0 to 1e30", "to 1e+30 is too large"),
        ("parameter x float select anyof 1 NaN", "found 'NaN'"),
        ("parameter x integer random from 1 to 2 points 0", "points must be at least 1"),
        ("parameter x integer range from 1 to 2 step 0.5", "step 0.5 is not a whole number"),
        ("parameter x text range from 1 to 2", "a text parameter cannot take a range"),
        ("parameter x", "parameter x has no type"),
        ("parameter jobindex integer default 1", "jobindex is the name Nimrod gives each job"),
        ('parameter x text "a\\0b"', "a NUL character cannot be part of a plan's text"),
    ],
)
def test_bad_numbers_and_domains_are_refused_where_they_are(line: str, expected: str) -> None:
    with pytest.raises(SpecError) as info:
        parse(line + "\ntask main\n  exec true\nendtask\n")
    assert str(info.value).startswith("t.plan:1:")
    assert expected in str(info.value)


# --- commands --------------------------------------------------------------------------------


def test_commands_parse_as_nimrod_writes_them() -> None:
    plan = parse(
        "parameter x integer default 1\n"
        "task main\n"
        "  onerror ignore ; \n"
        "  redirect stdout append to out.$x\n"
        "  redirect stderr off\n"
        '  copy root:in.dat node:"my in.dat"\n'
        "  node:copy node:a root:b.$x;\n"
        "  exec echo copy back files\n"  # nimrodg's execWithCopyAsArgumentTest
        '  lpexec python "" /path/to/script.py\n'  # nimrodg's nonQuotedArgumentSeparationTest
        '  shexec "/absolute/path/folder/"\n'
        "  shexec ./run.sh ${x} > out /* a comment */\n"
        "  node:execute echo it\\'s # a comment\n"
        "  substitute skel.txt input.txt\n"
        "  node:substitute skel.txt input.txt\n"
        "endtask\n"
    )
    s = plan.main.steps
    assert (s[0].kind, s[0].word) == (StepKind.ONERROR, "ignore")
    assert (s[1].kind, s[1].word, s[1].append, s[1].args[0].text) == (
        StepKind.REDIRECT,
        "stdout",
        True,
        "out.$x",
    )
    assert s[2].args == ()
    assert s[3].sides == (Side.ROOT, Side.NODE) and s[3].args[1].text == "my in.dat"
    assert s[4].sides == (Side.NODE, Side.ROOT) and s[4].args[1].text == "b.$x"
    assert [a.text for a in s[5].args] == ["echo", "copy", "back", "files"]
    assert [a.text for a in s[6].args] == ["python", "", "/path/to/script.py"] and s[6].argv0
    assert s[7].kind is StepKind.EXECUTE and s[7].args[0].text == "/absolute/path/folder/"
    assert s[8].args[0].text == "./run.sh ${x} > out"
    assert s[9].args[0].text == "echo it\\'s"
    assert s[10].sides == (Side.ROOT, Side.NODE) and s[11].sides == (Side.NODE, Side.NODE)


def test_comments_and_semicolons() -> None:
    plan = parse(
        "// I AM A COMMENT\n"
        "# I AM ALSO A COMMENT\n"
        "/* a block\n   comment */ parameter x integer range from 0 to 100 step 1; // after\n"
        "parameter y text select anyof a#b c // a#b is a value: # starts a comment only at a word\n"
        "task main // the task\n"
        "    onerror fail;\n"
        "    exec echo http://x/y # the shell would not see this\n"
        "endtask;\n"
    )
    assert [p.name for p in plan.parameters] == ["x", "y"]
    assert values_of(plan.parameters[1], Path(".")) == ["a#b", "c"]
    assert [a.text for a in plan.main.steps[1].args] == ["echo", "http://x/y"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("copy node:/etc/passwd out", "t.plan:3:3: node:/etc/passwd: '/etc/passwd' is an absolute"),
        ("copy in node:/tmp/x", "is an absolute path, not a path in the job's working directory"),
        ("copy node:o ../o", "copy destination '../o' must be a relative path inside the"),
        ("copy node:o /tmp/o", "is an absolute path, not a path in the experiment's directory"),
        ("copy a b", "copy needs node: on one side"),
        ("redirect stdout to root:x", "redirect writes a file where task main runs: no root:"),
        ("onerror maybe", "expected fail or ignore, found 'maybe'"),
        ("exec", "exec needs a program"),
        ("exceute true", "unknown task command 'exceute'"),
        ('shexec "unterminated', 'missing closing " in the command line'),
        ("node:execute echo 'it", "missing closing ' in the command line"),
    ],
)
def test_bad_commands_are_refused_when_the_plan_is_read(text: str, expected: str) -> None:
    with pytest.raises(SpecError) as info:
        parse(f"parameter x integer default 1\ntask main\n  {text}\nendtask\n")
    assert expected in str(info.value)


# --- runs ------------------------------------------------------------------------------------


def write_plan(tmp_path: Path, text: str, name: str = "t.plan") -> Path:
    plan = tmp_path / name
    plan.write_text(text)
    return plan


def test_exec_runs_without_a_shell_and_shexec_with_one(tmp_path: Path) -> None:
    write_plan(
        tmp_path,
        'parameter w text select anyof "a b" "$HOME;x"\n'
        "task main\n"
        "  exec sh -c 'echo \"$0\" > exec.out' $w\n"  # argv: $w is one argument
        "  exec echo a > b\n"  # no shell: '>' and 'b' are arguments
        '  shexec "echo $w > shexec.out"\n'
        "  node:execute cat exec.out shexec.out > all.out; echo $NIMROD_VAR_w >> all.out\n"
        "  copy node:all.out all.$jobindex\n"
        "endtask\n",
    )
    result = sweep("t.plan", "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    res = tmp_path / "t-results"
    assert (res / "all.1").read_text() == "a b\na b\na b\n"
    assert (res / "all.2").read_text() == "$HOME;x\n$HOME;x\n$HOME;x\n"
    log = next((res / "jobs").iterdir()) / "task.log"
    assert "a > b\n" in log.read_text()


def test_onerror_and_redirect_change_what_follows(tmp_path: Path) -> None:
    write_plan(
        tmp_path,
        "parameter n integer range from 1 to 2 step 1\n"
        "task main\n"
        "  redirect stdout to out\n"
        "  redirect stderr append to out\n"
        "  onerror ignore\n"
        '  shexec "echo one; echo err >&2; exit 3"\n'
        "  exec no-such-program\n"
        "  onerror fail\n"
        "  redirect stdout off\n"
        '  shexec "echo to-the-log"\n'
        "  copy node:out out.$n\n"
        '  shexec "test $n = 1"\n'
        "  exec echo never-for-2\n"
        "endtask\n",
    )
    result = sweep("t.plan", "-q", cwd=tmp_path)
    assert result.returncode == 1  # job 2 failed at the test
    res = tmp_path / "t-results"
    assert (res / "out.1").read_text() == "one\nerr\n"
    jobs = {j["params"]["n"]: j for j in jobs_json(res)}
    assert jobs[1]["state"] == "done" and jobs[2]["state"] == "failed"
    assert jobs[2]["exit_code"] == 1 and "t.plan:12:3: shexec exited with 1" in jobs[2]["error"]
    info = json.loads((res / jobs[1]["result"] / "job.json").read_text())
    assert info["ignored_failures"] == 2
    assert [s.get("ignored", False) for s in info["steps"][:5]] == [False] * 3 + [True, True]
    log = (res / jobs[1]["result"] / "task.log").read_text()
    assert "to-the-log" in log and "never-for-2" in log and "no-such-program: not found" in log
    assert "never-for-2" not in (res / jobs[2]["result"] / "task.log").read_text()


def test_substitute_fills_a_skeleton_with_the_jobs_values(tmp_path: Path) -> None:
    (tmp_path / "skel.txt").write_text("x=$x y=${x}z $xy ${HOME} $1 \\$x job=$jobindex\n")
    write_plan(
        tmp_path,
        "parameter x float select anyof 1.5 2\n"
        "task main\n"
        "  substitute skel.txt input.txt\n"
        "  copy skel.txt node:skel\n"
        "  node:substitute skel out/input2.txt\n"
        "  copy node:input.txt input.$x\n"
        "  copy node:out/input2.txt input2.$x\n"
        "endtask\n",
    )
    result = sweep("t.plan", "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    res = tmp_path / "t-results"
    assert (res / "input.2").read_text() == "x=2 y=2z $xy ${HOME} $1 \\2 job=2\n"
    assert (res / "input2.1.5").read_text() == (res / "input.1.5").read_text()


def test_tasks_run_in_nimrods_order_each_seeing_what_nimrod_lets_it(tmp_path: Path) -> None:
    (tmp_path / "model.dat").write_text("model\n")
    write_plan(
        tmp_path,
        'parameter t text "Run"\n'
        "parameter n integer range from 1 to 4 step 1\n"
        "task rootstart\n"
        '  shexec "echo rootstart $t > order"\n'
        "endtask\n"
        "task nodestart\n"
        "  copy model.dat node:model.dat\n"
        '  shexec "echo nodestart $t >> $VMWU_RESULTS/order"\n'
        "endtask\n"
        "task main\n"
        '  shexec "cat model.dat > seen; echo main $n >> $VMWU_RESULTS/order"\n'
        "  copy node:seen seen.$n\n"
        "endtask\n"
        "task rootfinish\n"
        '  shexec "ls seen.* | wc -l > count; echo rootfinish >> order"\n'
        "endtask\n",
    )
    result = sweep("t.plan", "-q", "-j", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    res = tmp_path / "t-results"
    order = (res / "order").read_text().splitlines()
    assert order[0] == "rootstart Run" and order[1] == "nodestart Run"  # once for 4 jobs
    assert sorted(order[2:6]) == [f"main {n}" for n in range(1, 5)]
    assert order[6:] == ["rootfinish"]
    assert (res / "count").read_text().strip() == "4"
    assert all((res / f"seen.{n}").read_text() == "model\n" for n in range(1, 5))
    assert list((tmp_path / "scratch").iterdir()) == []


def test_environment_holds_the_values(tmp_path: Path) -> None:
    write_plan(
        tmp_path,
        "parameter x float range from 0.5 to 1 step 0.5\n"
        "task main\n"
        "  exec sh -c 'env | grep ^NIMROD_ | sort > env'\n"
        "  copy node:env env.$jobname\n"
        "endtask\n",
    )
    assert sweep("t.plan", "-q", cwd=tmp_path).returncode == 0
    env = (tmp_path / "t-results" / "env.2").read_text().splitlines()
    assert "NIMROD_VAR_x=1" in env and "NIMROD_JOBINDEX=2" in env and "NIMROD_JOBNAME=2" in env


def test_exported_scripts_run_the_same_commands(tmp_path: Path) -> None:
    """`vmwu sweep export`: the same commands, values and outputs without the driver."""
    shutil.copy(PLANS / "embedded-nimrod-demo.pln", tmp_path / "demo.pln")
    (tmp_path / "model.dat").write_text("model\n")
    text = (tmp_path / "demo.pln").read_text()
    (tmp_path / "demo.pln").write_text(
        text.replace(
            "task main", "task nodestart\n  copy model.dat node:.\nendtask\ntask main"
        ).replace("exec echo", 'shexec "cat model.dat >&2"\n  exec echo')
    )
    out = tmp_path / "export"
    result = run_vmwu("sweep", "export", "--format", "slurm", tmp_path / "demo.pln", "-o", out)
    assert result.returncode == 0, result.stderr
    env = {**os.environ, "VMWU_SWEEP_SCRATCH": str(tmp_path / "scratch")}
    for n in range(1, 13):
        run = subprocess.run(
            ["sh", str(out / "task.sh"), str(n)], capture_output=True, text=True, env=env
        )
        assert run.returncode == 0, run.stderr
    lines = sorted((out / "OE" / f"NimrodDemo.out.{n}.txt").read_text() for n in range(1, 13))
    assert lines[0] == "1,500,1.5\n" and lines[-1] == "3,520,1.7\n" and len(set(lines)) == 12
    assert (out / "OE" / "NimrodDemo.err.5.txt").read_text() == "model\n"  # nodestart's file
    assert sorted(os.listdir(tmp_path / "scratch")) == ["vmwu-export-export"]
    leftover = os.listdir(tmp_path / "scratch" / "vmwu-export-export")
    assert sorted(leftover) == [".nodestart.done", "nodestart"]


def test_nimrodgs_webtest_plan_has_its_1818_jobs() -> None:
    """nimrodg's ParseTests.webtest (the plan inline in its tests; it asserts 1818 jobs)."""
    plan = parse(
        'parameter file text select anyof "1kb" "5kb" "10kb" "100kb" "500kb" "1mb" "100mb" '
        '"500mb" "1000mb"\n'
        'parameter op text select anyof "GET" "POST"\n'
        "parameter x integer range from 0 to 100 step 1\n"
        "\n"
        "task main\n"
        "\tonerror fail\n"
        '\tshexec "/home/uqzvanim/nimbench.sh $op $file"\n'
        "endtask"
    )
    assert count_jobs(plan, Path(".")) == 1818
    check_references(plan, {})
    job = expand(plan, Path("."))[1]
    assert plan.main.steps[1].args[0].render_shell(job.params) == (
        "/home/uqzvanim/nimbench.sh GET 1kb"
    )


def test_nimrodgs_redirect_syntax() -> None:
    """nimrodg's ParseTests.redirectSyntaxTest, every form."""
    plan = parse(
        "parameter x integer range from 0 to 100 step 1\n"
        "task main\n"
        "    redirect stdout off\n"
        "    redirect stderr off\n"
        "    redirect stdout to /dev/null\n"
        "    redirect stdout append to stdout.$x\n"
        "    redirect stderr append to stderr.$x\n"
        "endtask"
    )
    assert [(s.word, s.append, [a.text for a in s.args]) for s in plan.main.steps] == [
        ("stdout", False, []),
        ("stderr", False, []),
        ("stdout", False, ["/dev/null"]),
        ("stdout", True, ["stdout.$x"]),
        ("stderr", True, ["stderr.$x"]),
    ]
    # nimrodg lets a redirect go anywhere; vmwu to /dev/null or the job's own files
    with pytest.raises(SpecError, match="redirect to: '/tmp/log' is an absolute path"):
        parse("parameter x integer default 1\ntask main\n redirect stdout to /tmp/log\nendtask\n")
