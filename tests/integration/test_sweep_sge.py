"""The Grid Engine executor against a real single-node Son of Grid Engine (sge_qmaster +
sge_execd from Debian's gridengine-* packages) that these tests start themselves with
scripts/sge-test-cluster.sh (a system service: it is stopped at the end only if the tests
started it). Grid Engine's own tools (qstat, qacct, qdel, qrls) check what it saw."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.integration.conftest import Vmwu
from tests.integration.sweeps import (
    assert_whole_results,
    markers,
    running_app,
    sleeper_plan,
    sleeper_unit,
    start_sweep,
    summary,
)
from tests.waits import wait_for
from vmwu.sweep.executors.sge import Record, parse_qacct, parse_qstat_xml

SCRIPT = ROOT / "scripts" / "sge-test-cluster.sh"
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="module")
def sge() -> Iterator[dict[str, str]]:
    was_up = subprocess.run(["bash", str(SCRIPT), "status"], capture_output=True).returncode == 0
    started = subprocess.run(
        ["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=300
    )
    assert started.returncode == 0, started.stderr
    last = started.stdout.strip().splitlines()[-1]
    assert last.startswith("export SGE_ROOT=")
    env = dict(word.split("=", 1) for word in last.split()[1:])
    try:
        yield env
    finally:
        if not was_up:
            subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True, timeout=300)


@pytest.fixture
def gvmwu(vmwu: Vmwu, sge: dict[str, str]) -> Vmwu:
    vmwu.extra_env.update(sge)
    # the jobs' node directories, to find their processes (qsub -V passes it on)
    vmwu.extra_env["VMWU_SWEEP_SCRATCH"] = str(vmwu.tmp / "scratch")
    return vmwu


def grid(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=120)


def qacct(array: str, tasks: int) -> dict[str, Record]:
    """The accounting records of tasks 1..tasks of an array, once all are written."""

    def records() -> dict[str, Record] | None:
        proc = grid("qacct", "-j", array, check=False)
        found = parse_qacct(proc.stdout) if proc.returncode == 0 else {}
        return found if len(found) == tasks else None

    found: dict[str, Record] = wait_for(records, timeout=60, message=f"qacct of {array}")
    return found


def queued_tasks(array: str) -> list[str]:
    tasks = parse_qstat_xml(grid("qstat", "-xml", "-g", "d").stdout)
    return sorted(h for h in tasks if h.split(".")[0] == array)


def handles(res: Path) -> dict[str, Any]:
    """Job id → (params, handle, state, error) from the journal (none before it exists)."""
    path = res / "journal.sqlite"
    if not path.is_file():
        return {}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT id, params, handle, state, error FROM jobs").fetchall()
    except sqlite3.OperationalError:  # being created
        return {}
    finally:
        db.close()
    return {r[0]: (json.loads(r[1]), r[2], r[3], r[4]) for r in rows}


def by_n(res: Path) -> dict[int, dict[str, Any]]:
    return {j["params"]["n"]: j for j in summary(res)["jobs"]}


def processes_under(path: Path) -> list[str]:
    found = subprocess.run(["pgrep", "-a", "-f", str(path)], capture_output=True, text=True)
    return [ln for ln in found.stdout.splitlines() if "pgrep" not in ln]


def test_a_sweep_on_sge_is_one_array_job(gvmwu: Vmwu) -> None:
    unit = sleeper_unit(gvmwu)
    plan = sleeper_plan(gvmwu.tmp, unit, 3)
    result = gvmwu("sweep", plan, "--executor", "sge", "--results", "res", timeout=600)
    assert result.returncode == 0, result.stderr
    res = gvmwu.tmp / "res"
    assert_whole_results(res, 3)
    jobs = summary(res)["jobs"]
    assert all(j["state"] == "done" and j["attempts"] == 1 for j in jobs)
    for j in jobs:  # the guest's own output (one vmwu run: its files at the top)
        n = j["params"]["n"]
        assert (res / j["result"] / "result.txt").read_text() == f"job {n} slept 0\n"
    assert sorted(p.name for p in (res / "sge").glob("*.sh")) == ["b00001.sh"]
    # the journal keeps Grid Engine's ids: ARRAYID.TASK, tasks 1..3 of one array
    rows = handles(res)
    arrays = {h.split(".")[0] for _, h, _, _ in rows.values()}
    assert len(arrays) == 1
    assert sorted(int(h.split(".")[1]) for _, h, _, _ in rows.values()) == [1, 2, 3]
    (array,) = arrays
    host = summary(res)["jobs"][0]["node"]
    for handle, record in qacct(array, 3).items():
        assert record.failed == "0" and record.exit_status == 0 and record.host == host
        assert (res / "sge" / f"{handle}.out").is_file()
    exp = json.loads((res / "experiment.json").read_text())["id"]
    name = grid("qacct", "-j", f"vmwu-{exp}-b00001").stdout
    assert set(parse_qacct(name)) == {f"{array}.{t}" for t in (1, 2, 3)}


FAILURES = """parameter n integer range from 1 to 4 step 1;
task main
    # 1: fine; 2: the application exits 3; 3: exits 100 (an error state to Grid
    # Engine); 4: waits for the test to kill the job's runner (SIGKILL): no result
    node:execute case ${n} in 2) exit 3 ;; 3) exit 100 ;; 4) sleep 300 ;; esac
endtask
"""


def test_failures_and_exit_codes_come_from_qacct(gvmwu: Vmwu) -> None:
    plan = gvmwu.tmp / "f.plan"
    plan.write_text(FAILURES)
    res = gvmwu.tmp / "res"
    driver = start_sweep(
        gvmwu, plan, "--executor", "sge", "--retries", "0", "--results", res, env=gvmwu.extra_env
    )
    try:

        def runner_of_job_4() -> int | None:
            for m in markers(res):
                params = json.loads((res / "spec" / f"{m['job']}.json").read_text())["params"]
                if params["n"] == 4:
                    return int(m["pid"])
            return None

        os.kill(wait_for(runner_of_job_4, timeout=120, message="job 4 running"), signal.SIGKILL)
        assert driver.wait(timeout=300) == 1
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    jobs = by_n(res)
    assert jobs[1]["state"] == "done" and jobs[1]["exit_code"] == 0
    assert jobs[2]["state"] == "failed" and jobs[2]["exit_code"] == 3
    assert jobs[3]["state"] == "failed" and jobs[3]["exit_code"] == 100
    # no result: what Grid Engine's accounting says is the error
    assert jobs[4]["state"] == "failed" and jobs[4]["result"] is None
    assert "ended without a result" in jobs[4]["error"]
    assert "sge: qacct: exit status 137 (SIGKILL)" in jobs[4]["error"]
    rows = handles(res)
    task = {p["n"]: h for p, h, _, _ in rows.values()}
    (array,) = {h.split(".")[0] for h in task.values()}
    records = qacct(array, 4)
    assert [records[task[n]].exit_status for n in (1, 2, 3, 4)] == [0, 3, 1, 137]
    assert all(r.failed == "0" for r in records.values())
    assert queued_tasks(array) == []  # exit 100 left no task in an error state


def test_a_task_in_an_error_state_ends_its_attempt_with_the_reason(gvmwu: Vmwu) -> None:
    plan = gvmwu.tmp / "h.plan"
    plan.write_text(HELD)
    # a working directory that does not exist: Grid Engine puts the tasks in Eqw, which
    # would wait for an administrator forever; the executor deletes them and retries
    result = gvmwu(
        "sweep", plan, "--executor", "sge", "--retries", "1", "--results", "res",
        f"--qsub-arg=-wd {gvmwu.tmp / 'nowhere'}",
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    res = gvmwu.tmp / "res"
    jobs = by_n(res)
    for job in jobs.values():
        assert job["state"] == "failed" and job["attempts"] == 2 and job["result"] is None
        assert "sge: qacct: failed 28 : changing into working directory" in job["error"]
    assert "retrying" in result.stderr
    arrays = {h.split(".")[0] for _, h, _, _ in handles(res).values()}
    assert all(queued_tasks(a) == [] for a in arrays)


def test_cancel_goes_through_qdel(gvmwu: Vmwu) -> None:
    unit = sleeper_unit(gvmwu)
    plan = sleeper_plan(gvmwu.tmp, unit, 3, seconds="300")
    res = gvmwu.tmp / "res"
    driver = start_sweep(gvmwu, plan, "--executor", "sge", "--results", res, env=gvmwu.extra_env)
    try:
        # two slots: two guests run their application, the third task waits in the queue
        wait_for(
            lambda: sum(running_app(m) is not None for m in markers(res)) == 2,
            timeout=300,
            message="two guests running",
        )
        rows = handles(res)
        victim = markers(res)[0]["job"]
        params, handle, _, _ = rows[victim]
        array = handle.split(".")[0]
        # qdel from outside: Grid Engine kills the task; its record says so
        grid("qdel", handle)
        wait_for(
            lambda: handles(res)[victim][2] == "cancelled",
            timeout=120,
            message="the qdel'ed job cancelled",
        )
        # the freed slot goes to the queued task
        wait_for(
            lambda: sum(running_app(m) is not None for m in markers(res)) == 2,
            timeout=300,
            message="the third guest running",
        )
        cancelled = subprocess.run(
            [sys.executable, "-m", "vmwu", "sweep", "cancel", str(res)],
            env={**os.environ, **gvmwu.env},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert cancelled.returncode == 0, cancelled.stderr
        assert "3 cancelled" in cancelled.stdout
        assert driver.wait(timeout=120) == 1
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    jobs = by_n(res)
    assert all(j["state"] == "cancelled" and j["result"] is None for j in jobs.values())
    assert "qacct: failed 100 : assumedly after job" in jobs[params["n"]]["error"]
    assert "(qdel or a limit)" in jobs[params["n"]]["error"]
    # Grid Engine killed every process of the tasks, the guests included
    wait_for(lambda: queued_tasks(array) == [], timeout=120, message="the array gone")
    wait_for(
        lambda: processes_under(gvmwu.tmp / "scratch") == [],
        timeout=60,
        message="no process of the jobs left",
    )
    assert list((res / "jobs").iterdir()) == []


HELD = """parameter n integer range from 1 to 3 step 1;
task main
    node:execute echo ${n} > n.txt
    copy node:n.txt n.${n}.txt
endtask
"""


def test_a_task_deleted_before_it_started_is_cancelled(gvmwu: Vmwu) -> None:
    plan = gvmwu.tmp / "h.plan"
    plan.write_text(HELD)
    res = gvmwu.tmp / "res"
    # -h: submitted on hold, so the tasks wait until released (qrls)
    driver = start_sweep(
        gvmwu, plan, "--executor", "sge", "--qsub-arg=-h", "--results", res, env=gvmwu.extra_env
    )
    try:
        rows = wait_for(
            lambda: (r := handles(res)) and all(h and "." in h for _, h, _, _ in r.values()) and r,
            timeout=120,
            message="the array submitted",
        )
        task = {p["n"]: h for p, h, _, _ in rows.values()}
        array = task[1].split(".")[0]
        assert len(queued_tasks(array)) == 3
        grid("qdel", task[2])
        grid("qrls", array)
        assert driver.wait(timeout=300) == 1
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    jobs = by_n(res)
    assert jobs[1]["state"] == "done" and jobs[3]["state"] == "done"
    assert (res / "n.3.txt").read_text() == "3\n" and (res / "n.1.txt").is_file()
    assert not (res / "n.2.txt").exists()
    assert jobs[2]["state"] == "cancelled"
    assert "deleted before it started (no accounting record)" in jobs[2]["error"]


def test_kill_9_of_the_driver_then_resume_reattaches(gvmwu: Vmwu) -> None:
    unit = sleeper_unit(gvmwu)
    plan = sleeper_plan(gvmwu.tmp, unit, 3, seconds="4")
    res = gvmwu.tmp / "res"
    driver = start_sweep(gvmwu, plan, "--executor", "sge", "--results", res, env=gvmwu.extra_env)
    wait_for(lambda: markers(res), timeout=300, message="a job running in Grid Engine")
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    resumed = gvmwu("sweep", "resume", res, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    jobs = summary(res)["jobs"]
    assert [j["state"] for j in jobs] == ["done"] * 3
    assert all(j["attempts"] == 1 for j in jobs)
    # re-attached, not resubmitted: still the one batch, one array in Grid Engine's books
    assert sorted(p.name for p in (res / "sge").glob("*.sh")) == ["b00001.sh"]
    exp = json.loads((res / "experiment.json").read_text())["id"]

    def books() -> dict[str, Record] | None:  # once the last task's record is written
        found = parse_qacct(grid("qacct", "-j", f"vmwu-{exp}-*", check=False).stdout)
        return found if len(found) >= 3 else None

    found = wait_for(books, timeout=60, message="3 accounting records")
    assert len({h.split(".")[0] for h in found}) == 1 and len(found) == 3
    assert_whole_results(res, 3)


def test_a_driver_killed_between_qsub_and_its_journal_finds_the_array(gvmwu: Vmwu) -> None:
    plan = gvmwu.tmp / "h.plan"
    plan.write_text(HELD)
    res = gvmwu.tmp / "res"
    driver = start_sweep(
        gvmwu, plan, "--executor", "sge", "--qsub-arg=-h", "--results", res, env=gvmwu.extra_env
    )
    rows = wait_for(
        lambda: (r := handles(res)) and all(h and "." in h for _, h, _, _ in r.values()) and r,
        timeout=120,
        message="the array submitted",
    )
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    before = {job: h for job, (_, h, _, _) in rows.items()}
    # what a driver killed right after qsub leaves: the jobs "submitting", no job ids
    db = sqlite3.connect(res / "journal.sqlite")
    with db:
        db.execute("UPDATE jobs SET state = 'submitting', handle = 'batch:b00001'")
    db.close()
    grid("qrls", next(iter(before.values())).split(".")[0])
    resumed = gvmwu("sweep", "resume", res, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    after = {job: h for job, (_, h, _, _) in handles(res).items()}
    assert after == before  # found by the job name, not submitted again
    assert sorted(p.name for p in (res / "sge").glob("*.sh")) == ["b00001.sh"]
    assert all(j["state"] == "done" and j["attempts"] == 1 for j in summary(res)["jobs"])


def test_jobs_per_task_runs_several_jobs_in_each_array_task(gvmwu: Vmwu) -> None:
    unit = sleeper_unit(gvmwu)
    plan = sleeper_plan(gvmwu.tmp, unit, 5)
    result = gvmwu(
        "sweep", plan, "--executor", "sge", "--jobs-per-task", "2", "--results", "res",
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    res = gvmwu.tmp / "res"
    assert_whole_results(res, 5)
    assert all(j["state"] == "done" and j["attempts"] == 1 for j in summary(res)["jobs"])
    # 5 jobs, 2 per task: tasks 1, 2 and 3 of one array, each job its own result
    tasks = sorted(h for _, h, _, _ in handles(res).values())
    (array,) = {h.split(".")[0] for h in tasks}
    assert sorted(int(h.split(".")[1]) for h in tasks) == [1, 1, 2, 2, 3]
    lines = (res / "sge" / "b00001.list").read_text().splitlines()
    assert [len(line.split()) for line in lines] == [4, 4, 2]
    assert sorted(qacct(array, 3)) == [f"{array}.{t}" for t in (1, 2, 3)]


def test_exported_sge_scripts_run_under_a_real_qsub(gvmwu: Vmwu) -> None:
    unit = sleeper_unit(gvmwu)
    plan = sleeper_plan(gvmwu.tmp, unit, 3, code="$(( ${n} == 3 ? 99 : 0 ))")
    out = gvmwu.tmp / "export dir"  # a space in the path, too
    result = gvmwu("sweep", "export", "--format", "sge", plan, "-o", out)
    assert result.returncode == 0, result.stderr
    sub = subprocess.run(
        ["qsub", "-terse", str(out / "submit.sge")],
        env={**os.environ, **gvmwu.env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert sub.returncode == 0, sub.stderr
    array = sub.stdout.strip().split(".")[0]
    records = qacct(array, 3)
    done = {p.name: p for p in (out / "jobs").iterdir() if p.name.startswith("j-")}
    assert len(done) == 3
    codes = {}
    for job in done.values():
        info = json.loads((job / "job.json").read_text())
        codes[info["exit_code"]] = info["state"]
        # the vmwu run output, kept (task.log says why if not)
        assert (job / "out" / "status.json").is_file(), (job / "task.log").read_text()
    assert codes == {0: "done", 99: "failed"}
    # exit 99 would have made Grid Engine run the task again: each ran once, and said 1
    assert sorted(r.exit_status for r in records.values()) == [0, 0, 1]
    assert all(r.failed == "0" for r in records.values())
    assert len(list((out / "logs").iterdir())) == 3


# -- the thesis's Mandelbrot experiment on Grid Engine (examples/mandelbrot-sge) ---------------


@pytest.fixture(scope="module")
def mandelbrot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two example directories side by side, the application built."""
    dest = tmp_path_factory.mktemp("mandel-sge")
    for name in ("mandelbrot", "mandelbrot-sge"):
        shutil_copy(EXAMPLES / name, dest / name)
    subprocess.run(["bash", str(dest / "mandelbrot" / "build.sh")], check=True, capture_output=True)
    return dest


def shutil_copy(src: Path, dest: Path) -> None:
    import shutil

    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("out", "*.ova", "*-results"))


def test_the_thesis_mandelbrot_flow_on_grid_engine_gives_the_local_sweeps_image(
    gvmwu: Vmwu, mandelbrot: Path
) -> None:
    env = {**os.environ, **gvmwu.env}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    unit = gvmwu.tmp / "mandelbrot.ova"
    out = gvmwu.tmp / "sge-out"
    # one command: packs the unit, submits the eight bands and the combine job, waits
    flow = subprocess.run(
        ["bash", str(mandelbrot / "mandelbrot-sge" / "submit.sh"), "-u", str(unit), "-o", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert flow.returncode == 0, flow.stdout + flow.stderr
    assert flow.stdout.strip().splitlines()[-1] == str(out / "mandelbrot.png")
    assert sorted(p.name for p in out.glob("mandelbrot-*.out")) == [
        f"mandelbrot-{i}.out" for i in range(8)
    ]
    assert (out / "outputs.tar").is_file()
    plan = mandelbrot / "mandelbrot" / "mandelbrot.plan"
    local = gvmwu("sweep", plan, "--set", f"unit={unit}", "--results", "local", timeout=900)
    assert local.returncode == 0, local.stderr
    on_sge = gvmwu(
        "sweep", plan, "--set", f"unit={unit}", "--executor", "sge", "--results", "sge",
        timeout=900,
    )  # fmt: skip
    assert on_sge.returncode == 0, on_sge.stderr
    image = (gvmwu.tmp / "local" / "mandelbrot.png").read_bytes()
    assert (out / "mandelbrot.png").read_bytes() == image
    assert (gvmwu.tmp / "sge" / "mandelbrot.png").read_bytes() == image
