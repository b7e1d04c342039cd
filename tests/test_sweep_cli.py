"""`vmwu sweep` as users run it, with plans whose tasks are plain shell commands (no QEMU):
bad input and faults give one line and a documented exit code; the local executor, the
node-side runner, resume, status, cancel, report and export end to end."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_vmwu
from tests.faults import fill_disk_for
from tests.processes import MARK, assert_all_gone, comm, tree
from tests.waits import wait_for
from vmwu.errors import HostDiskFull


def one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("vmwu: error: ")
    assert "Traceback" not in result.stderr
    return lines[0]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


SIMPLE = """parameter n integer range from 1 to 3 step 1
parameter word text select anyof "a b" "it's $HOME"
task main
    copy input.txt node:in.txt
    node:execute printf '%s|%s\\n' ${n} ${word} > out.txt; cat in.txt >> out.txt
    node:substitute node:out.txt node:sub.txt
    copy node:out.txt out_${jobindex}.txt
    copy node:sub.txt sub_$jobname.txt
endtask
task rootfinish
    execute cat out_*.txt | sort > all.txt
endtask
"""


@pytest.fixture
def plan(tmp_path: Path) -> Path:
    write(tmp_path / "input.txt", "input ${n}\n")
    return write(tmp_path / "t.plan", SIMPLE)


def sweep(*args: Any, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_vmwu("sweep", *args, cwd=cwd, timeout=120)


def test_a_local_sweep_end_to_end(plan: Path, tmp_path: Path) -> None:
    result = sweep(plan, "--results", "res", "-j", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    res = tmp_path / "res"
    jobs = sorted((res / "jobs").iterdir())
    assert len(jobs) == 6
    for job in jobs:
        info = json.loads((job / "job.json").read_text())
        assert info["state"] == "done" and info["exit_code"] == 0 and info["final"]
        assert (job / "task.log").is_file()
    # values are shell-quoted in execute lines: spaces, quotes and $ arrive intact
    all_txt = (res / "all.txt").read_text().splitlines()
    assert "1|a b" in all_txt and "3|it's $HOME" in all_txt
    # root-side outputs are in the experiment's directory, one per job ($jobindex)
    assert sorted(p.name for p in res.glob("out_*.txt")) == [f"out_{i}.txt" for i in range(1, 7)]
    # substitute replaced ${n} in the node file; copy kept the literal text
    assert (res / "out_1.txt").read_text() == "1|a b\ninput ${n}\n"
    assert (res / "sub_1.txt").read_text() == "1|a b\ninput 1\n"
    assert (res / "sub_6.txt").read_text() == "3|it's $HOME\ninput 3\n"
    # each job's result says which outputs it wrote
    written = sorted(
        f for j in jobs for f in json.loads((j / "job.json").read_text())["root_files"]
    )
    assert written == sorted(
        [f"out_{i}.txt" for i in range(1, 7)] + [f"sub_{i}.txt" for i in range(1, 7)]
    )
    csv_rows = (res / "results.csv").read_text().splitlines()
    assert csv_rows[0].startswith("job,n,word,state,exit_code,attempts,node")
    assert len(csv_rows) == 7
    status = run_vmwu("sweep", "status", res)
    assert "6: 6 done, 0 failed" in status.stdout
    # a second run of the same plan adds nothing and runs nothing
    again = sweep(plan, "--results", "res", cwd=tmp_path)
    assert again.returncode == 0
    assert "6 jobs (0 new)" in again.stderr
    events = json.loads(run_vmwu("sweep", "status", res, "--json").stdout)
    assert all(j["attempts"] == 1 for j in events["jobs"])
    # the timeline
    report = run_vmwu("sweep", "report", res)
    assert report.returncode == 0, report.stderr
    png = Path(report.stdout.strip())
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dry_run_lists_the_jobs(plan: Path, tmp_path: Path) -> None:
    result = sweep(plan, "--dry-run", cwd=tmp_path)
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert len(lines) == 6 and lines[0].startswith("j-")
    assert not (tmp_path / "t-results").exists()


def test_failed_jobs_are_recorded_not_retried(tmp_path: Path) -> None:
    p = write(
        tmp_path / "f.plan",
        "parameter n integer range from 1 to 2 step 1\n"
        "task main\n  node:execute exit $((${n} + 1))\nendtask\n",
    )
    result = sweep(p, cwd=tmp_path)
    assert result.returncode == 1
    data = json.loads((tmp_path / "f-results" / "results.json").read_text())
    assert [(j["state"], j["exit_code"], j["attempts"]) for j in data["jobs"]] == [
        ("failed", 2, 1),
        ("failed", 3, 1),
    ]
    # ...unless asked
    retried = sweep(p, "--results", "r2", "--retry-app-failures", "--retries", "1", cwd=tmp_path)
    assert retried.returncode == 1
    data = json.loads((tmp_path / "r2" / "results.json").read_text())
    assert [j["attempts"] for j in data["jobs"]] == [2, 2]
    assert (tmp_path / "r2" / "attempts").is_dir()


@pytest.mark.parametrize(
    ("plan_text", "expected"),
    [
        (
            "parameter n integer range from 1 to 3 stp 1\ntask main\nexec true\nendtask\n",
            "t.plan:1:39: expected step or points, found 'stp' (did you mean 'step'?)",
        ),
        (
            "parameter n integer default 1\ntask main\n  exec echo ${m}\nendtask\n",
            "t.plan:3:13: unknown parameter ${m}",
        ),
        (
            "parameter n integer\ntask main\nexec true\nendtask\n",
            "t.plan:1:20: empty domain: parameter n has no values",
        ),
        (
            "parameter n integer range from 1 to 3 step 0\ntask main\nexec true\nendtask\n",
            "t.plan:1:21: step 0",
        ),
        (
            "parameter n integer range from 1 to 2 step 1\n"
            "task main\n  copy ${n}.dat node:in\nendtask\n",
            "t.plan:3:3: copy: 1.dat does not exist in",
        ),
    ],
)
def test_bad_plans(tmp_path: Path, plan_text: str, expected: str) -> None:
    p = write(tmp_path / "t.plan", plan_text)
    line = one_line_error(sweep(p, cwd=tmp_path), 241)
    assert f"vmwu: error: {tmp_path}/{expected}" in line
    assert not (tmp_path / "t-results").exists()


def test_unknown_executor(plan: Path, tmp_path: Path) -> None:
    line = one_line_error(sweep(plan, "--executor", "slrum", cwd=tmp_path), 241)
    assert "unknown executor 'slrum'" in line and "did you mean 'slurm'" in line


def test_missing_plan_and_bad_options(tmp_path: Path) -> None:
    assert "no such plan file" in one_line_error(sweep("nope.plan", cwd=tmp_path), 241)
    assert "unrecognized arguments" in one_line_error(sweep("x.plan", "--bogus", cwd=tmp_path), 241)
    line = one_line_error(run_vmwu("sweep", "status", tmp_path), 241)
    assert "is not a sweep results directory" in line


def test_jobs_per_task_is_for_slurm_or_sge_and_positive(plan: Path, tmp_path: Path) -> None:
    line = one_line_error(sweep(plan, "--jobs-per-task", "4", cwd=tmp_path), 241)
    assert "--jobs-per-task is for --executor slurm or sge" in line
    line = one_line_error(sweep(plan, "--jobs-per-task", "0", cwd=tmp_path), 241)
    assert "must be 1 or more" in line


def test_exec_job_runs_the_jobs_of_one_list_line_in_order(plan: Path, tmp_path: Path) -> None:
    """What a Slurm array task with --jobs-per-task runs, without Slurm."""
    assert sweep(plan, "--results", "res", cwd=tmp_path).returncode == 0
    res = tmp_path / "res"
    for job in (res / "jobs").iterdir():  # forget the results, keep the jobs' specs
        if job.name.startswith("j-"):
            os.rename(job, tmp_path / job.name)
    jobs = sorted(p.stem for p in (res / "spec").glob("j-*.json"))
    listing = write(tmp_path / "b.list", f"{jobs[0]} 1 {jobs[1]} 1\n{jobs[2]} 1\n")
    done = run_vmwu("sweep", "exec-job", res, "--list", listing, "--line", "0", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert {p.name for p in (res / "jobs").iterdir() if p.name.startswith("j-")} == {
        jobs[0],
        jobs[1],
    }
    bad = run_vmwu("sweep", "exec-job", res, "--list", listing, "--line", "7", cwd=tmp_path)
    assert "has no line 7" in one_line_error(bad, 241)
    both = run_vmwu("sweep", "exec-job", res, jobs[2], "--list", listing, cwd=tmp_path)
    assert "needs --line N and no JOB" in one_line_error(both, 241)


def test_results_of_another_plan_are_refused_unless_forced(plan: Path, tmp_path: Path) -> None:
    assert sweep(plan, "--results", "res", cwd=tmp_path).returncode == 0
    other = write(tmp_path / "other.plan", SIMPLE.replace("to 3 step 1", "to 4 step 1"))
    line = one_line_error(sweep(other, "--results", "res", cwd=tmp_path), 241)
    assert "holds the results of another plan" in line and "--force" in line
    forced = sweep(other, "--results", "res", "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert "8 jobs (2 new)" in forced.stderr  # the 6 jobs with the same values are kept
    # a directory with other files in it is not a results directory
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x").write_text("x")
    assert "is not empty" in one_line_error(sweep(plan, "--results", "junk", cwd=tmp_path), 241)


def test_slurm_not_reachable(plan: Path, tmp_path: Path) -> None:
    conf = tmp_path / "slurm.conf"
    conf.write_text(
        "ClusterName=nowhere\nSlurmctldHost=localhost\nSlurmctldPort=1\n"
        "NodeName=localhost CPUs=1\nPartitionName=p Nodes=localhost Default=YES\n"
    )
    result = run_vmwu(
        "sweep",
        plan,
        "--executor",
        "slurm",
        cwd=tmp_path,
        env={"SLURM_CONF": str(conf)},
        timeout=120,
    )
    line = one_line_error(result, 247)
    assert "Slurm is not reachable" in line
    missing = run_vmwu(
        "sweep",
        plan,
        "--executor",
        "slurm",
        "--results",
        "r2",
        cwd=tmp_path,
        env={"SLURM_CONF": str(tmp_path / "nope.conf")},
    )
    assert "SLURM_CONF" in one_line_error(missing, 247)


def test_runner_leaves_no_half_written_result_when_the_disk_fills(
    plan: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vmwu.sweep.experiment import SweepOptions, create
    from vmwu.sweep.runner import exec_job

    exp = create(plan, tmp_path / "res", SweepOptions())
    job = exp.journal.jobs()[0].id
    fill_disk_for(monkeypatch, lambda p: f"/jobs/.{job}.tmp-" in p and "job.json" in p)
    with pytest.raises(HostDiskFull, match="no space left"):
        exec_job(exp.results, job, 1)
    assert os.listdir(exp.results / "jobs") == []  # neither a result nor a temporary one
    assert os.listdir(exp.results / "run") == []


def test_kill_9_of_the_driver_then_resume(tmp_path: Path) -> None:
    p = write(
        tmp_path / "s.plan",
        "parameter n integer range from 1 to 6 step 1\n"
        "task main\n  node:execute sleep 1; echo ${n} > o\n  copy node:o o.$n\nendtask\n",
    )
    driver = subprocess.Popen(
        [sys.executable, "-m", "vmwu", "sweep", str(p), "-j", "2", "-q"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    res = tmp_path / "s-results"
    wait_for(lambda: list((res / "jobs").glob("j-*")), 60, "a first job's result")
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    result = run_vmwu("sweep", "resume", res, timeout=120)
    assert result.returncode == 0, result.stderr
    data = json.loads((res / "results.json").read_text())
    assert [j["state"] for j in data["jobs"]] == ["done"] * 6
    assert all(j["attempts"] == 1 for j in data["jobs"])  # nothing ran twice
    names = sorted(os.listdir(res / "jobs"))
    assert len(names) == 6 and all(n.startswith("j-") for n in names)
    for name in names:
        assert (res / "jobs" / name / "job.json").is_file()


def test_cancel_stops_a_running_sweep(tmp_path: Path, process_mark: str) -> None:
    p = write(
        tmp_path / "c.plan",
        "parameter n integer range from 1 to 4 step 1\ntask main\n  exec sleep 60\nendtask\n",
    )
    driver = subprocess.Popen(
        [sys.executable, "-m", "vmwu", "sweep", str(p), "-j", "2", "-q"],
        cwd=tmp_path,
        env={**os.environ, MARK: process_mark},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    res = tmp_path / "c-results"

    def two_sleeping() -> dict[int, int] | None:
        below = tree(driver.pid)  # the driver, its two forked runners and their steps
        return below if len([p for p in below if comm(p) == "sleep"]) == 2 else None

    snapshot = wait_for(two_sleeping, 60, "two jobs' steps running")
    assert len(list((res / "run").glob("*.json"))) == 2  # two runners, each with its marker
    result = run_vmwu("sweep", "cancel", res, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "4 cancelled" in result.stdout
    assert driver.wait(timeout=60) == 1
    assert list((res / "jobs").iterdir()) == []
    # the runners (children of the driver, in sessions of their own) and their steps
    assert_all_gone(process_mark, snapshot)


def test_export_runs_without_the_driver(plan: Path, tmp_path: Path) -> None:
    for fmt in ("slurm", "sge", "htcondor"):
        result = run_vmwu("sweep", "export", "--format", fmt, plan, "-o", tmp_path / fmt)
        assert result.returncode == 0, result.stderr
    out = tmp_path / "sge"
    assert "#$ -t 1-6" in (out / "submit.sge").read_text()
    assert "#SBATCH --array=1-6" in (tmp_path / "slurm" / "submit.slurm").read_text()
    assert "queue job from" in (tmp_path / "htcondor" / "submit.htcondor").read_text()
    assert len((out / "jobs.tsv").read_text().splitlines()) == 6
    for n in range(1, 7):
        run = subprocess.run(["sh", str(out / "task.sh"), str(n)], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
    done = sorted((out / "jobs").iterdir())
    assert len(done) == 6
    # the same outputs as the driver's, in the export directory
    assert (out / "out_1.txt").read_text() == "1|a b\ninput ${n}\n"
    assert (out / "sub_6.txt").read_text() == "3|it's $HOME\ninput 3\n"
    finish = subprocess.run(["sh", str(out / "rootfinish.sh")], capture_output=True, text=True)
    assert finish.returncode == 0, finish.stderr
    assert "3|it's $HOME" in (out / "all.txt").read_text()
    # a job run again (its result removed) does not overwrite what is there
    first = out / "jobs" / (out / "jobs.tsv").read_text().split("\t")[1]
    shutil.rmtree(first)
    again = subprocess.run(["sh", str(out / "task.sh"), "1"], capture_output=True, text=True)
    assert "out_1.txt is already in" in again.stderr
    # the same ids as the driver would give
    dry = sweep(plan, "--dry-run", cwd=tmp_path).stdout.split()
    assert {d.name for d in done} == {w for w in dry if w.startswith("j-")}


def test_exported_jobs_copying_one_file_to_node_dotdot_at_once_each_see_it_whole(
    tmp_path: Path,
) -> None:
    """The exported scripts of jobs sharing a node (Grid Engine runs two at once here)
    copy the same file to node:..; a job must never read it half-written by another."""
    (tmp_path / "big.bin").write_bytes(os.urandom(1 << 22))
    p = write(
        tmp_path / "d.plan",
        "parameter n integer range from 1 to 8 step 1\n"
        "task main\n"
        "  copy big.bin node:..\n"
        "  node:execute cmp ../big.bin ${ROOT}/big.bin\n"
        "endtask\n".replace("${ROOT}", str(tmp_path)),
    )
    out = tmp_path / "sge"
    result = run_vmwu("sweep", "export", "--format", "sge", p, "-o", out)
    assert result.returncode == 0, result.stderr
    env = {**os.environ, "VMWU_SWEEP_SCRATCH": str(tmp_path / "scratch")}
    for _ in range(3):
        jobs = [
            subprocess.Popen(
                ["sh", str(out / "task.sh"), str(n)], env=env, stderr=subprocess.PIPE, text=True
            )
            for n in range(1, 9)
        ]
        codes = [job.wait(timeout=120) for job in jobs]
        logs = [(d / "task.log").read_text() for d in (out / "jobs").iterdir()]
        assert codes == [0] * 8, logs
        shutil.rmtree(out / "jobs")
        (out / "jobs").mkdir()


def test_a_toml_plan_end_to_end(tmp_path: Path) -> None:
    p = write(
        tmp_path / "t.toml",
        """
[[parameter]]
name = "x"
type = "float"
range = { from = 0.5, to = 1.5, points = 3 }

[task.main]
steps = [
    { execute = "echo ${x} > x.txt" },
    { copy = "node:x.txt", to = "x_${x}.txt" },
]
""",
    )
    result = sweep(p, "--results", "res", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    values = {f.name: f.read_text().strip() for f in (tmp_path / "res").glob("x_*.txt")}
    assert values == {"x_0.5.txt": "0.5", "x_1.txt": "1", "x_1.5.txt": "1.5"}  # Nimrod's 1
