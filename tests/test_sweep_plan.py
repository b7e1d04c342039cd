"""Plans: the Nimrod form (the thesis's figure 6.9 and the core of Nimrod/G's language), the
TOML form, expansion into jobs, and every error naming file:line:col."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ROOT
from vmwu.errors import BadInput, SpecError
from vmwu.sweep.expand import (
    check_references,
    check_sources,
    expand,
    job_id,
    parse_overrides,
    values_of,
)
from vmwu.sweep.model import ParamType, StepKind
from vmwu.sweep.plan import load_plan, parse_plan
from vmwu.sweep.plan_toml import parse_toml_plan

# Thesis figure 6.9, verbatim (the launcher line, one line in the file, is joined below).
THESIS_PLAN = """
parameter gva text default "phaser.ova.gz";
parameter index integer range from 1 to 20 step 1;

task main
    copy ${gva} node:..
    copy ${index}.pha node:input.pha
    copy ${index}.mtz node:phaser.mtz
    copy ${index}.pdb node:phaser.pdb
    node:execute ${HOME}/gva/GridVirtualApplianceLauncher.pl -gva ${gva} -compressed \
-vmm-type QEMU -cdrom-as-hard-disk -files "input.pha,phaser.mtz,phaser.pdb" > gval.out 2> gval.err
    copy node:output.img output_${index}.img
    copy node:gval.out gval_${index}.out
    copy node:gval.err gval_${index}.err
endtask
"""


def parse(text: str) -> object:
    return parse_plan(text, Path("t.plan"))


def error_of(text: str) -> str:
    with pytest.raises(SpecError) as info:
        parse(text)
    return str(info.value)


def test_the_thesis_plan_parses_as_written() -> None:
    plan = parse_plan(THESIS_PLAN, Path("phaser.plan"))
    assert [p.name for p in plan.parameters] == ["gva", "index"]
    assert plan.parameters[1].type is ParamType.INTEGER
    steps = plan.main.steps
    assert [s.kind for s in steps] == [StepKind.COPY] * 4 + [StepKind.EXECUTE] + [StepKind.COPY] * 3
    assert steps[4].args[0].text.startswith("${HOME}/gva/GridVirtualApplianceLauncher.pl")
    check_references(plan, {"HOME": "/root"})  # ${HOME} is the environment's
    jobs = expand(plan, Path("."))
    assert len(jobs) == 20
    assert jobs[0].params == {"gva": "phaser.ova.gz", "index": 1}


def test_the_example_phaser_plan_differs_from_the_thesis_only_in_the_launcher_line() -> None:
    ours = (ROOT / "examples/phaser-like/phaser.plan").read_text().splitlines()
    thesis = THESIS_PLAN.replace("\\\n", "").splitlines()
    assert len(ours) == len(thesis)
    changed = [(a, b) for a, b in zip(thesis, ours, strict=True) if a != b]
    assert len(changed) == 1
    assert "GridVirtualApplianceLauncher" in changed[0][0]
    assert changed[0][1].strip().startswith("node:execute vmwu run ")


def test_example_plans_load() -> None:
    for plan_file in ("mandelbrot/mandelbrot.plan", "phaser-like/phaser.plan"):
        plan = load_plan(ROOT / "examples" / plan_file)
        check_references(plan, {})
    mandel = load_plan(ROOT / "examples/mandelbrot/mandelbrot.plan")
    assert len(expand(mandel, ROOT / "examples/mandelbrot")) == 8
    assert "rootfinish" in mandel.tasks


def test_domains() -> None:
    plan = parse(
        """
parameter a integer range from 1 to 10 step 3;
parameter b float range from 0 to 1 points 5
parameter c label "the mode" text select anyof "fast" "exact mode"
parameter d float range from 1 to 0 step -0.25
parameter e text select oneof "x" "y" default "y"
parameter f integer random from 1 to 100 points 3
parameter g float default 2.5
task main
    execute true
endtask
"""
    )
    vals = {p.name: values_of(p, Path(".")) for p in plan.parameters}  # type: ignore[attr-defined]
    assert vals["a"] == [1, 4, 7, 10]
    assert vals["b"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert vals["c"] == ["fast", "exact mode"]
    assert vals["d"] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert vals["e"] == ["y"]
    assert len(vals["f"]) == 3 and all(1 <= v <= 100 for v in vals["f"])  # type: ignore[operator]
    assert vals["g"] == [2.5]
    assert plan.parameters[2].label == "the mode"  # type: ignore[attr-defined]


def test_float_steps_have_no_binary_noise() -> None:
    plan = parse(
        "parameter x float range from 0.1 to 0.5 step 0.1\ntask main\nexec true\nendtask\n"
    )
    assert values_of(plan.parameters[0], Path(".")) == [0.1, 0.2, 0.3, 0.4, 0.5]  # type: ignore[attr-defined]


def test_random_is_reproducible() -> None:
    text = "parameter s integer random from 1 to 1000000 points 4\ntask main\nexec true\nendtask\n"
    first = [j.params for j in expand(parse(text), Path("."))]  # type: ignore[arg-type]
    second = [j.params for j in expand(parse(text), Path("."))]  # type: ignore[arg-type]
    assert first == second


def test_cross_product_order_and_stable_ids() -> None:
    text = (
        "parameter a integer range from 1 to 2 step 1\n"
        'parameter b text select anyof "x" "y" "z"\n'
        "task main\n  exec echo ${a} ${b}\nendtask\n"
    )
    jobs = expand(parse(text), Path("."))  # type: ignore[arg-type]
    assert [tuple(j.params.values()) for j in jobs] == [
        (1, "x"),
        (1, "y"),
        (1, "z"),
        (2, "x"),
        (2, "y"),
        (2, "z"),
    ]
    assert len({j.id for j in jobs}) == 6
    assert jobs[0].id == job_id({"b": "x", "a": 1}) == job_id({"a": 1, "b": "x"})
    # re-expanding, even with reordered declarations, gives the same ids
    swapped = (
        'parameter b text select anyof "x" "y" "z"\n'
        "parameter a integer range from 1 to 2 step 1\n"
        "task main\n  exec echo ${a} ${b}\nendtask\n"
    )
    assert {j.id for j in expand(parse(swapped), Path("."))} == {j.id for j in jobs}  # type: ignore[arg-type]


def test_files_parameters_glob_in_the_input_directory(tmp_path: Path) -> None:
    for name in ("b.pha", "a.pha", "c.txt"):
        (tmp_path / name).write_text("x")
    plan = parse('parameter f files select anyof "*.pha"\ntask main\ncopy ${f} node:in\nendtask\n')
    assert values_of(plan.parameters[0], tmp_path) == ["a.pha", "b.pha"]  # type: ignore[attr-defined]
    empty = parse('parameter f files select anyof "*.nope"\ntask main\nexec true\nendtask\n')
    with pytest.raises(SpecError, match=r"t.plan:1:11: empty domain: no file matches"):
        values_of(empty.parameters[0], tmp_path)  # type: ignore[attr-defined]


def test_overrides() -> None:
    plan = parse("parameter n integer range from 1 to 5 step 1\ntask main\nexec true\nendtask\n")
    jobs = expand(plan, Path("."), parse_overrides(plan, ["n=7"]))  # type: ignore[arg-type]
    assert [j.params for j in jobs] == [{"n": 7}]
    with pytest.raises(BadInput, match="no parameter 'nn'.*did you mean 'n'"):
        parse_overrides(plan, ["nn=1"])  # type: ignore[arg-type]
    with pytest.raises(BadInput, match="--set n=x: 'x' is not a whole number"):
        parse_overrides(plan, ["n=x"])  # type: ignore[arg-type]
    with pytest.raises(BadInput, match="--set n=nan: 'nan' is not a whole number"):
        parse_overrides(plan, ["n=nan"])  # type: ignore[arg-type]


def test_line_continuations_and_comments() -> None:
    plan = parse(
        "# comment\nparameter n integer default 1 # trailing\n"
        "task main\n  # a comment line\n  node:execute echo a \\\n     b ${n}\nendtask\n"
    )
    assert plan.main.steps[0].args[0].text == "echo a      b ${n}"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "parameter x integr default 1\ntask main\nexec true\nendtask\n",
            "t.plan:1:13: expected integer or float or text or files, found 'integr' "
            "(did you mean 'integer'?)",
        ),
        (
            "paramter x integer default 1\n",
            "t.plan:1:1: expected 'parameter' or 'task', found 'paramter' "
            "(did you mean 'parameter'?)",
        ),
        (
            "parameter x integer range from 1 to 5 step 0\ntask main\nexec true\nendtask\n",
            "t.plan:1:21: step 0: the range would never end",
        ),
        (
            "parameter x integer range from 5 to 1 step 1\ntask main\nexec true\nendtask\n",
            "t.plan:1:21: empty domain: range from 5 to 1 step 1 has no values",
        ),
        (
            "parameter x integer\ntask main\nexec true\nendtask\n",
            "t.plan:1:20: empty domain: parameter x has no values",
        ),
        (
            "parameter x text select anyof\ntask main\nexec true\nendtask\n",
            "t.plan:1:18: empty domain: select needs at least one value",
        ),
        (
            "parameter x integer range from 1 to 2.5 step 1\ntask main\nexec true\nendtask\n",
            "t.plan:1:37: to 2.5 is not a whole number (the parameter is integer)",
        ),
        (
            'parameter x text default "a\ntask main\nexec true\nendtask\n',
            't.plan:1:26: missing closing "',
        ),
        (
            "parameter x integer default 1\ntask main\n  exec true\n",
            "t.plan:2:1: task main has no endtask",
        ),
        (
            "parameter x integer default 1\ntask main\n  exceute true\nendtask\n",
            "t.plan:3:3: unknown task command 'exceute'",
        ),
        (
            "parameter x integer default 1\ntask main\n  copy a\nendtask\n",
            "t.plan:3:3: copy takes two files",
        ),
        (
            "parameter x integer default 1\ntask main\n  copy a b\nendtask\n",
            "t.plan:3:3: copy needs node: on one side",
        ),
        (
            "parameter x integer default 1\ntask main\n  copy node:a ../b\nendtask\n",
            "t.plan:3:3: copy destination '../b' must be a relative path",
        ),
        ("parameter x integer default 1\ntask mian\nendtask\n", "t.plan:2:6: unknown task 'mian'"),
        ("parameter x integer default 1\n", "the plan has no 'task main"),
        (
            "parameter x integer default 1\nparameter x integer default 2\n"
            "task main\nexec true\nendtask\n",
            "t.plan:2:11: parameter x is declared twice",
        ),
        (
            "parameter x integer default 1\ntask main\n  exec echo ${x\nendtask\n",
            "t.plan:3:13: unterminated ${",
        ),
        (
            "parameter x integer default 1 2\ntask main\nexec true\nendtask\n",
            "t.plan:1:31: unexpected '2' at the end of the statement",
        ),
    ],
)
def test_syntax_errors_name_file_line_column(text: str, expected: str) -> None:
    assert expected in error_of(text)


def test_unknown_parameter_reference() -> None:
    plan = parse(
        "parameter index integer default 1\ntask main\n  copy ${indx}.pha node:in\nendtask\n"
    )
    with pytest.raises(SpecError) as info:
        check_references(plan, {"HOME": "/root"})  # type: ignore[arg-type]
    assert str(info.value).startswith("t.plan:3:8: unknown parameter ${indx}")
    assert "did you mean 'index'?" in str(info.value)
    # an environment variable of the driver is fine; ${x:-y} is shell syntax, not a reference
    ok = parse(
        "parameter i integer default 1\ntask main\n exec echo ${HOME} ${X:-y} ${i}\nendtask\n"
    )
    check_references(ok, {"HOME": "/root"})  # type: ignore[arg-type]


def test_missing_copy_sources_are_found_before_anything_runs(tmp_path: Path) -> None:
    (tmp_path / "1.pha").write_text("x")
    plan = parse(
        "parameter index integer range from 1 to 2 step 1\n"
        "task main\n  copy ${index}.pha node:input.pha\n  exec true\nendtask\n"
    )
    jobs = expand(plan, tmp_path)  # type: ignore[arg-type]
    with pytest.raises(SpecError) as info:
        check_sources(plan, jobs, tmp_path, {})  # type: ignore[arg-type]
    message = str(info.value)
    assert message.startswith("t.plan:3:3: copy: 2.pha does not exist")
    assert "index=2" in message


TOML_PLAN = """
[[parameter]]
name = "gva"
type = "text"
default = "phaser.ova.gz"

[[parameter]]
name = "index"
type = "integer"
range = { from = 1, to = 20, step = 1 }

[task.main]
steps = [
    { copy = "${gva}", to = "node:.." },
    { copy = "${index}.pha", to = "node:input.pha" },
    { execute = "vmwu run ../${gva} --files input.pha > gval.out 2> gval.err" },
    { copy = "node:gval.out", to = "gval_${index}.out" },
]
"""


def test_toml_plans_mean_the_same() -> None:
    plan = parse_toml_plan(TOML_PLAN, Path("p.toml"))
    nimrod = parse_plan(THESIS_PLAN, Path("p.plan"))
    assert {j.id for j in expand(plan, Path("."))} == {j.id for j in expand(nimrod, Path("."))}
    assert [s.kind for s in plan.main.steps] == [
        StepKind.COPY,
        StepKind.COPY,
        StepKind.EXECUTE,
        StepKind.COPY,
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[[parameter]]\nname = 'x'\ntype = 'integr'\ndefault = 1\n",
            "p.toml:3:1: parameter x: type must be integer, float, text or files",
        ),
        (
            "[[parameter]]\nname = 'x'\ntype = 'integer'\nrange = { from = 1, to = 3, step = 0 }\n",
            "p.toml:4:1: step 0",
        ),
        (
            "[[parameter]]\nname = 'x'\ntype = 'integer'\n",
            "empty domain: parameter x has no values",
        ),
        (
            "[[parameter]]\nname = 'x'\ntype = 'integer'\ndefualt = 1\n",
            "p.toml:4:1: unknown parameter key 'defualt' (did you mean 'default'?)",
        ),
        (
            "[task.main]\nsteps = [ { execute = 'echo ${y}' } ]\n[task.mian]\nsteps = []\n",
            "unknown task 'mian'",
        ),
        ("x = [\n", "p.toml:1:1: invalid TOML"),
        ("x = 1\ny = \n", "p.toml:2:5: invalid TOML"),
    ],
)
def test_toml_errors(text: str, expected: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_toml_plan(text, Path("p.toml"))
    assert expected in str(info.value)


def test_toml_unknown_reference_points_into_the_string() -> None:
    text = (
        "[[parameter]]\nname = 'x'\ntype = 'integer'\ndefault = 1\n"
        "[task.main]\nsteps = [ { execute = 'echo ${y}' } ]\n"
    )
    plan = parse_toml_plan(text, Path("p.toml"))
    with pytest.raises(SpecError, match=r"p.toml:6:29: unknown parameter \$\{y\}"):
        check_references(plan, {})


def test_toml_plans_have_every_command_and_task() -> None:
    plan = parse_toml_plan(
        """
[[parameter]]
name = "x"
type = "float"
random = { from = 1, to = 2 }

[task.nodestart]
steps = [ { copy = "model.dat", to = "node:." } ]

[task.main]
steps = [
    { onerror = "ignore" },
    { redirect = "stdout", to = "out.txt", append = true },
    { redirect = "stderr" },
    { exec = ["echo", "$x"] },
    { shexec = "echo ${x} > x.txt" },
    { copy = "node:x.txt", to = "x_$jobindex.txt" },
]

[task.rootfinish]
steps = [ { execute = "ls" } ]
""",
        Path("p.toml"),
    )
    assert list(plan.tasks) == ["nodestart", "main", "rootfinish"]
    steps = plan.main.steps
    assert [s.kind for s in steps] == [
        StepKind.ONERROR,
        StepKind.REDIRECT,
        StepKind.REDIRECT,
        StepKind.EXEC,
        StepKind.EXECUTE,
        StepKind.COPY,
    ]
    assert steps[1].append and steps[1].args[0].text == "out.txt" and steps[2].args == ()
    assert [a.text for a in steps[3].args] == ["echo", "$x"]
    assert len(values_of(plan.parameters[0], Path("."))) == 1  # random without points
