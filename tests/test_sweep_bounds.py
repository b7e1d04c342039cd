"""A plan's bounds (issue 11, points 4 and 7, for sweeps): its jobs are counted before they
are made, numbers are finite, every path stays where it belongs after substitution (a
value holding ``../`` gets no further than a literal one), outputs are never written over
another job's file or through a link, and sweeps leave nothing on the node's scratch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_vmwu
from vmwu.errors import SpecError
from vmwu.sweep.expand import count_jobs
from vmwu.sweep.plan import parse_plan
from vmwu.sweep.plan_toml import parse_toml_plan


def sweep(*args: Any, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return run_vmwu(
        "sweep",
        *args,
        cwd=cwd,
        env={"VMWU_SWEEP_SCRATCH": str(cwd / "scratch")},
        timeout=timeout,
    )


def one_line(result: subprocess.CompletedProcess[str], code: int = 241) -> str:
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vmwu: error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def results_json(res: Path) -> dict[str, dict[str, Any]]:
    jobs = json.loads((res / "results.json").read_text())["jobs"]
    return {str(j["params"].get("n", j["job"])): j for j in jobs}


# --- counting --------------------------------------------------------------------------------


def test_a_plan_of_10_to_the_300_jobs_is_refused_at_once(tmp_path: Path) -> None:
    """It was expanded before it was counted (gigabytes of memory); now one line. The
    subprocess timeout only guards the test run: the refusal is a count, not a loop."""
    (tmp_path / "t.plan").write_text(
        "parameter x float range from 0 to 1 step 1e-300\ntask main\n  exec true\nendtask\n"
    )
    for extra in ([], ["--dry-run"], ["--max-jobs", "1000000000"]):
        line = one_line(sweep("t.plan", *extra, cwd=tmp_path, timeout=60))
        assert "t.plan:1:11: the plan makes about 10^300 jobs" in line
        assert "x alone has about 10^300 values" in line and "--max-jobs N raises" in line
    export = run_vmwu("sweep", "export", "--format", "slurm", "t.plan", "-o", "e", cwd=tmp_path)
    assert "about 10^300 jobs" in one_line(export)
    assert not (tmp_path / "t-results").exists()


def test_the_job_limit_and_the_option_that_raises_it(tmp_path: Path) -> None:
    plan = parse_plan(
        "parameter a integer range from 1 to 2000 step 1\n"
        "parameter b integer range from 1 to 100 step 1\ntask main\n exec true\nendtask\n",
        Path("t.plan"),
    )
    with pytest.raises(SpecError, match="makes 200000 jobs .* more than the limit of 100000"):
        count_jobs(plan, tmp_path)
    assert count_jobs(plan, tmp_path, max_jobs=200_000) == 200_000
    write(
        tmp_path / "s.plan",
        "parameter n integer range from 1 to 6\ntask main\n exec true\nendtask\n",
    )
    line = one_line(sweep("s.plan", "--max-jobs", "5", cwd=tmp_path))
    assert "the plan makes 6 jobs (n alone has 6 values), more than the limit of 5" in line
    assert "must be at least 1" in one_line(sweep("s.plan", "--max-jobs", "0", cwd=tmp_path))
    listed = sweep("s.plan", "--max-jobs", "6", "--dry-run", cwd=tmp_path)
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 6


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("range = { from = nan, to = 1, step = 1 }", "from must be a finite number, not nan"),
        ("range = { from = 0, to = inf, step = 1 }", "to must be a finite number, not inf"),
        ("range = { from = 0, to = 1, step = -inf }", "step must be a finite number"),
        ("default = nan", "the value must be a finite number, not nan"),
        ("select = [1.0, inf]", "the value must be a finite number, not inf"),
        ("random = { from = 0, to = nan }", "to must be a finite number"),
        ("range = { from = 0, to = 1, points = 0 }", "points must be a whole number, at least 1"),
    ],
)
def test_toml_plans_refuse_nan_and_infinities(domain: str, expected: str) -> None:
    text = f'[[parameter]]\nname = "x"\ntype = "float"\n{domain}\n[task.main]\nsteps = []\n'
    with pytest.raises(SpecError) as info:
        parse_toml_plan(text, Path("p.toml"))
    assert str(info.value).startswith("p.toml:4:") and expected in str(info.value)


def test_set_refuses_nan(tmp_path: Path) -> None:
    write(tmp_path / "t.plan", "parameter x float default 1\ntask main\n exec true\nendtask\n")
    line = one_line(sweep("t.plan", "--set", "x=nan", "--dry-run", cwd=tmp_path))
    assert "--set x=nan: 'nan' is not a finite number (the parameter is float)" in line


# --- paths after substitution ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "value", "expected"),
    [
        # the value brings the ../ that a literal destination may not have
        ("copy node:o out/${d}", "../../etc/x", "'out/../../etc/x' is not a relative path"),
        ("copy node:o ${d}", "/etc/x", "'/etc/x' is not a relative path"),
        ("copy node:o ${d}", "journal.sqlite", "journal.sqlite is vmwu's own"),
        ("copy node:o ${d}/", "jobs", "jobs is vmwu's own"),
        ("copy node:${d} o", "/etc/passwd", "node:/etc/passwd is an absolute path"),
        ("copy node:o node:${d}", "../../x", "node:../../x is outside the job's node directories"),
        ("redirect stdout to ${d}", "../../log", "node:../../log is outside"),
        ("node:substitute in node:${d}", "/tmp/x", "node:/tmp/x is an absolute path"),
    ],
)
def test_a_substituted_value_gets_no_further_than_a_literal(
    tmp_path: Path, command: str, value: str, expected: str
) -> None:
    write(tmp_path / "in", "x")
    write(
        tmp_path / "t.plan",
        f'parameter d text select anyof "ok" "{value}"\n'
        "task main\n  copy in node:in\n  exec touch o\n"
        f"  {command}\nendtask\n",
    )
    line = one_line(sweep("t.plan", cwd=tmp_path))
    assert "t.plan:5:3:" in line and expected in line
    assert f"for job 2 (d={value})" in line
    assert not (tmp_path / "t-results").exists()


def test_copy_node_absolute_is_refused_when_the_plan_is_read(tmp_path: Path) -> None:
    write(
        tmp_path / "t.plan",
        "parameter n integer default 1\ntask main\n copy node:/etc/passwd pw\nendtask\n",
    )
    line = one_line(sweep("t.plan", cwd=tmp_path))
    assert "t.plan:3:2: node:/etc/passwd: '/etc/passwd' is an absolute path" in line


def test_two_jobs_writing_one_output_is_an_error(tmp_path: Path) -> None:
    write(
        tmp_path / "t.plan",
        "parameter x float range from 1 to 3 step 1\n"
        "task main\n  exec touch output\n  copy node:output output\nendtask\n",
    )
    line = one_line(sweep("t.plan", cwd=tmp_path))
    assert "t.plan:4:3: jobs 1 (x=1) and 2 (x=2) would both write output" in line
    assert "put a parameter or ${jobname} in the destination" in line
    # ... and so is a directory destination that gives them one name
    (tmp_path / "t.plan").write_text(
        (tmp_path / "t.plan").read_text().replace("node:output output", "node:output root:.")
    )
    assert "would both write output" in one_line(sweep("t.plan", cwd=tmp_path))


# --- what jobs leave ---------------------------------------------------------------------------


def test_an_existing_output_is_not_overwritten_and_the_job_says_so(tmp_path: Path) -> None:
    write(
        tmp_path / "t.plan",
        "parameter n integer range from 1 to 2 step 1\n"
        'task rootstart\n  shexec "echo precious > out.2"\nendtask\n'
        'task main\n  shexec "echo new $n > o"\n  copy node:o out.$n\nendtask\n',
    )
    result = sweep("t.plan", "-q", cwd=tmp_path)
    assert result.returncode == 1
    res = tmp_path / "t-results"
    assert (res / "out.1").read_text() == "new 1\n"
    assert (res / "out.2").read_text() == "precious\n"
    jobs = results_json(res)
    assert jobs["1"]["state"] == "done" and jobs["2"]["state"] == "failed"
    assert "its output out.2 was not put in" in jobs["2"]["error"]
    assert "not written by this sweep" in jobs["2"]["error"]
    kept = res / jobs["2"]["result"] / ".root" / "out.2"
    assert kept.read_text() == "new 2\n"  # the job's copy is kept with its result
    # once the user moves the file away, running the job again puts its output there
    (res / "out.2").unlink()
    again = run_vmwu("sweep", "resume", res, "--retry-failed", "-q", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert (res / "out.2").read_text() == "new 2\n"


def test_a_job_run_again_replaces_its_own_output(tmp_path: Path) -> None:
    write(
        tmp_path / "t.plan",
        "parameter n integer range from 1 to 2 step 1\n"
        "task main\n"
        '  shexec "echo attempt $VMWU_JOB_ATTEMPT > o"\n'
        "  copy node:o out.$n\n"
        '  shexec "test $n = 1 || test -e $VMWU_RESULTS/fixed"\n'
        "endtask\n",
    )
    assert sweep("t.plan", "-q", cwd=tmp_path).returncode == 1
    res = tmp_path / "t-results"
    assert (res / "out.2").read_text() == "attempt 1\n"  # a failed job's outputs are kept
    (res / "fixed").write_text("")
    again = run_vmwu("sweep", "resume", res, "--retry-failed", "-q", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert (res / "out.2").read_text() == "attempt 2\n"
    assert (res / "out.1").read_text() == "attempt 1\n"


def test_links_a_job_leaves_are_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    write(outside / "secret", "host file\n")
    write(tmp_path / "in", "input\n")
    write(
        tmp_path / "t.plan",
        "parameter n integer range from 1 to 3 step 1\n"
        "task main\n"
        f'  shexec "ln -s {outside}/secret link; ln -s {outside} dir; echo o > o"\n'
        "  onerror ignore\n"
        "  copy node:link leaked.$n\n"  # a link is not copied through
        "  copy in node:dir/written\n"  # nor written through
        "  copy node:o node:dir/\n"
        "  redirect stdout to dir/log\n"
        "  onerror fail\n"
        "  copy node:o o.$n\n"
        "endtask\n",
    )
    result = sweep("t.plan", "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    res = tmp_path / "t-results"
    assert sorted(os.listdir(outside)) == ["secret"]
    assert not list(res.glob("leaked.*"))
    info = json.loads(next(p for p in (res / "jobs").glob("j-*/job.json")).read_text())
    errors = [s["error"] for s in info["steps"] if s.get("error")]
    assert len(errors) == 4, errors
    assert "link is a symbolic link; vmwu does not follow links a job leaves" in errors[0]
    assert all("dir is not a directory (a link or a file)" in e for e in errors[1:]), errors


def test_output_directories_are_not_followed_through_links(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    write(
        tmp_path / "t.plan",
        "parameter n integer range from 1 to 2 step 1\n"
        f"task rootstart\n  exec ln -s {outside} OE\nendtask\n"
        "task main\n  exec touch o\n  copy node:o OE/o.$n\nendtask\n",
    )
    result = sweep("t.plan", "-q", cwd=tmp_path)
    assert result.returncode == 1
    assert os.listdir(outside) == []
    errors = [j["error"] for j in results_json(tmp_path / "t-results").values()]
    assert all("OE is not a directory (a link or a file)" in e for e in errors), errors


def test_sweeps_leave_nothing_in_tmp(tmp_path: Path) -> None:
    """The default scratch ($TMPDIR): no empty vmwu-sweep-* folder after a sweep, whether
    its jobs succeeded, failed or copied files to node:.. (the node's shared folder)."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    write(tmp_path / "in", "x")
    write(
        tmp_path / "t.plan",
        "parameter n integer range from 1 to 4 step 1\n"
        'task main\n  copy in node:..\n  shexec "test $n != 3"\nendtask\n',
    )
    env = {**os.environ, "TMPDIR": str(tmp)}
    env.pop("VMWU_SWEEP_SCRATCH", None)
    result = subprocess.run(
        [sys.executable, "-m", "vmwu", "sweep", "t.plan", "-q", "-j", "2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr  # job 3 failed
    assert os.listdir(tmp) == []


def test_a_status_json_link_is_not_taken_for_a_vmwu_run(tmp_path: Path) -> None:
    """A job (a guest's output) leaving d/status.json as a link to a host file that looks
    like vmwu's: not read through, so d is not kept as a vmwu run's outputs."""
    host = write(tmp_path / "host.json", '{"vmwu_version": "0", "outcome": "ok", "exit_code": 0}\n')
    write(
        tmp_path / "t.plan",
        "parameter n integer default 1\n"
        f'task main\n  shexec "mkdir d; ln -s {host} d/status.json; echo f > d/f"\nendtask\n',
    )
    result = sweep("t.plan", "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    job = next((tmp_path / "t-results" / "jobs").glob("j-*"))
    assert sorted(os.listdir(job)) == ["job.json", "task.log"]
    assert json.loads((job / "job.json").read_text())["vmwu_run"] is None


@pytest.mark.parametrize(("recorded", "infra"), [(0, True), (247, False)])
def test_a_vmwu_run_code_no_status_json_records_is_vmwu_s_own_failure(
    tmp_path: Path, recorded: int, infra: bool
) -> None:
    """A step exiting 247 after its `vmwu run` wrote a status.json of another outcome (a
    node pool service that ended before it answered) failed for the infrastructure and is
    retried; one whose status.json says the application itself exited 247 is not."""
    status = {"vmwu_version": "0", "outcome": "app", "exit_code": recorded}
    made = write(tmp_path / "status.json", json.dumps(status))
    write(
        tmp_path / "t.plan",
        "parameter n integer default 1\ntask main\n"
        f'  shexec "mkdir -p out && cp {made} out/ && exit 247"\nendtask\n',
    )
    result = sweep("t.plan", "-q", "--retries", "1", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    job = next((tmp_path / "t-results" / "jobs").glob("j-*"))
    info = json.loads((job / "job.json").read_text())
    assert (info["attempt"], info["infrastructure_failure"]) == ((2, True) if infra else (1, False))
