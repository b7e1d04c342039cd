"""The Grid Engine executor's readers of qstat, qacct and qconf output (outside input:
property-based tests besides examples captured from Son of Grid Engine 8.1.9), its state
mapping and its qdel ranges. The executor against a real Grid Engine is in
tests/integration/test_sweep_sge.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import run_vmwu
from vmwu.sweep.executors import Phase, check_name
from vmwu.sweep.executors.sge import (
    GridEngineUnavailable,
    Record,
    job_name,
    parse_qacct,
    parse_qstat_xml,
    parse_reporting,
    phase_of,
    seconds,
    task_ids,
    task_ranges,
)

TRIVIAL = "parameter n integer range from 1 to 2 step 1\ntask main\n exec true\nendtask\n"

QSTAT = """<?xml version='1.0'?>
<job_info  xmlns:xsd="http://arc.liv.ac.uk/repos/darcs/sge/source/dist/util/resources/schemas/qstat/qstat.xsd">
  <queue_info>
    <job_list state="running">
      <JB_job_number>12</JB_job_number>
      <JAT_prio>0.50000</JAT_prio>
      <JB_name>vmwu-39c3f0a1b2-b00001</JB_name>
      <JB_owner>root</JB_owner>
      <state>r</state>
      <JAT_start_time>2026-12-06T09:32:20</JAT_start_time>
      <queue_name>all.q@node7</queue_name>
      <slots>1</slots>
      <tasks>1</tasks>
    </job_list>
  </queue_info>
  <job_info>
    <job_list state="pending">
      <JB_job_number>12</JB_job_number>
      <JB_name>vmwu-39c3f0a1b2-b00001</JB_name>
      <state>qw</state>
      <queue_name></queue_name>
      <slots>1</slots>
      <tasks>2-4:1</tasks>
    </job_list>
    <job_list state="pending">
      <JB_job_number>13</JB_job_number>
      <JB_name>other</JB_name>
      <state>Eqw</state>
      <queue_name></queue_name>
      <slots>1</slots>
    </job_list>
  </job_info>
</job_info>
"""

QACCT = """==============================================================
qname        all.q
hostname     node7
jobname      vmwu-39c3f0a1b2-b00001
jobnumber    12
taskid       1
failed       0
exit_status  3
==============================================================
qname        all.q
hostname     node7
jobname      vmwu-39c3f0a1b2-b00001
jobnumber    12
taskid       2
failed       100 : assumedly after job
exit_status  137                  (Killed)
==============================================================
qname        all.q
hostname     node8
jobname      e
jobnumber    14
taskid       undefined
failed       28  : changing into working directory
exit_status  0
"""


def test_qstat_lists_every_task_by_handle() -> None:
    tasks = parse_qstat_xml(QSTAT)
    assert sorted(tasks) == ["12.1", "12.2", "12.3", "12.4", "13.1"]
    assert tasks["12.1"].state == "r" and tasks["12.1"].host == "node7"
    assert tasks["12.3"].state == "qw" and tasks["12.3"].host == ""
    assert tasks["12.4"].name == "vmwu-39c3f0a1b2-b00001"
    assert tasks["13.1"].state == "Eqw"
    assert parse_qstat_xml("<job_info/>") == {}


def test_qstat_output_that_is_not_xml_is_a_host_failure() -> None:
    with pytest.raises(GridEngineUnavailable, match="not XML"):
        parse_qstat_xml("error: unable to contact qmaster")


@given(st.text())
def test_qstat_reader_never_crashes(text: str) -> None:
    try:
        tasks = parse_qstat_xml(text)
    except GridEngineUnavailable:
        return
    assert all(h.split(".")[0].isdigit() and h.split(".")[1].isdigit() for h in tasks)


@given(st.lists(st.tuples(st.integers(1, 10**7), st.integers(1, 5000)), max_size=20))
def test_qstat_reader_finds_what_qstat_listed(pairs: list[tuple[int, int]]) -> None:
    body = "".join(
        f"<job_list><JB_job_number>{j}</JB_job_number><JB_name>n</JB_name><state>r</state>"
        f"<queue_name>q@h</queue_name><tasks>{t}</tasks></job_list>"
        for j, t in pairs
    )
    tasks = parse_qstat_xml(f"<job_info><queue_info>{body}</queue_info></job_info>")
    assert set(tasks) == {f"{j}.{t}" for j, t in pairs}


def test_task_id_ranges() -> None:
    assert task_ids("7") == [7]
    assert task_ids("2-6:2") == [2, 4, 6]
    assert task_ids("1-3:1,9") == [1, 2, 3, 9]
    assert task_ids("") == [] and task_ids("x-y") == []


def test_qacct_records_by_handle() -> None:
    records = parse_qacct(QACCT)
    assert set(records) == {"12.1", "12.2", "14.1"}
    ok = records["12.1"]
    assert ok == Record(host="node7", failed="0", exit_status=3, name="vmwu-39c3f0a1b2-b00001")
    assert ok.observed().phase is Phase.ENDED
    assert ok.observed().detail == "qacct: exit status 3"
    killed = records["12.2"].observed()
    assert killed.phase is Phase.CANCELLED and killed.node == "node7"
    assert killed.detail == (
        "qacct: failed 100 : assumedly after job, exit status 137 (SIGKILL) (qdel or a limit)"
    )
    chdir = records["14.1"].observed()
    assert chdir.phase is Phase.ENDED
    assert chdir.detail == "qacct: failed 28 : changing into working directory, exit status 0"


def test_qacct_keeps_the_last_record_of_a_task_run_twice() -> None:
    again = QACCT.split("==============================================================\n")[1]
    text = QACCT + "=" * 62 + "\n" + again.replace("exit_status  3", "exit_status  0")
    assert parse_qacct(text)["12.1"].exit_status == 0


@given(st.text())
def test_qacct_reader_never_crashes(text: str) -> None:
    for handle, record in parse_qacct(text).items():
        assert handle.split(".")[0].isdigit()
        assert record.observed().phase in (Phase.ENDED, Phase.CANCELLED)


record_fields = st.fixed_dictionaries(
    {
        "jobname": st.from_regex(r"[A-Za-z][A-Za-z0-9_.-]{0,30}", fullmatch=True),
        "jobnumber": st.integers(1, 10**9),
        "taskid": st.one_of(st.integers(1, 75000), st.just("undefined")),
        "hostname": st.from_regex(r"[a-z][a-z0-9.-]{0,20}", fullmatch=True),
        "failed": st.sampled_from(["0", "100 : assumedly after job", "28  : changing into x"]),
        "exit_status": st.integers(0, 255),
    }
)


@given(st.lists(record_fields, max_size=10))
def test_qacct_reader_reads_what_qacct_wrote(records: list[dict[str, object]]) -> None:
    text = "".join(
        "=" * 62 + "\n" + "".join(f"{k:<12} {v}\n" for k, v in r.items()) for r in records
    )
    parsed = parse_qacct(text)
    expected = {}
    for r in records:
        task = r["taskid"] if isinstance(r["taskid"], int) else 1
        expected[f"{r['jobnumber']}.{task}"] = Record(
            str(r["hostname"]), str(r["failed"]), int(str(r["exit_status"])), str(r["jobname"])
        )
    assert parsed == expected


def test_reporting_params_span_two_lines() -> None:
    conf = (
        "min_uid                      0\n"
        "reporting_params             accounting=true reporting=false \\\n"
        "                             flush_time=00:00:01 joblog=false sharelog=00:00:00\n"
        "finished_jobs                100\n"
    )
    assert parse_reporting(conf) == (True, 1.0)
    assert parse_reporting("reporting_params accounting=false flush_time=00:01:00\n") == (
        False,
        60.0,
    )
    assert parse_reporting(
        "reporting_params accounting=true flush_time=00:00:15 accounting_flush_time=00:00:02\n"
    ) == (True, 2.0)
    assert parse_reporting("nothing here") == (True, 15.0)


@given(st.text())
def test_reporting_reader_never_crashes(text: str) -> None:
    accounting, flush = parse_reporting(text)
    assert isinstance(accounting, bool) and flush >= 0


def test_time_values() -> None:
    assert seconds("00:00:15", 9) == 15
    assert seconds("1:30", 9) == 90
    assert seconds("20", 9) == 20
    assert seconds("INFINITY", 9) == 9 and seconds("", 9) == 9 and seconds("1:2:3:4", 9) == 9


def test_states() -> None:
    for queued in ("qw", "hqw", "Eqw", "hRwq", "Rq"):
        assert phase_of(queued) is Phase.QUEUED, queued
    for running in ("r", "t", "Rr", "dr", "dt", "s", "S", "T", "ts"):
        assert phase_of(running) is Phase.RUNNING, running


def test_qdel_ranges() -> None:
    assert task_ranges(["5.1", "5.2", "5.3", "5.7", "6.2", "5.8", "5.3"]) == [
        "5.1-3",
        "5.7-8",
        "6.2",
    ]
    assert task_ranges([]) == []


@given(st.sets(st.tuples(st.integers(1, 50), st.integers(1, 200)), max_size=60))
def test_qdel_ranges_cover_exactly_the_tasks(tasks: set[tuple[int, int]]) -> None:
    covered = set()
    for r in task_ranges(f"{j}.{t}" for j, t in tasks):
        job, _, span = r.partition(".")
        first, _, last = span.partition("-")
        covered |= {(int(job), t) for t in range(int(first), int(last or first) + 1)}
    assert covered == tasks


def test_job_names_are_ones_grid_engine_takes() -> None:
    assert job_name("39c3f0a1b2", "b00001") == "vmwu-39c3f0a1b2-b00001"
    assert job_name("a/b:c@d", "b1") == "vmwu-a_b_c_d-b1"


def test_sge_is_an_executor_and_takes_jobs_per_task(tmp_path: Path) -> None:
    assert check_name("sge") == "sge"
    plan = tmp_path / "p.plan"
    plan.write_text(TRIVIAL)
    bad = run_vmwu("sweep", plan, "--executor", "sge", "--qsub-arg=-q 'x", cwd=tmp_path)
    assert bad.returncode == 241 and "--qsub-arg: No closing quotation" in bad.stderr
    local = run_vmwu("sweep", plan, "--jobs-per-task", "2", cwd=tmp_path)
    assert local.returncode == 241
    assert "--jobs-per-task is for --executor slurm or sge" in local.stderr


def test_grid_engine_not_reachable_is_one_line_before_anything_is_created(
    tmp_path: Path,
) -> None:
    plan = tmp_path / "p.plan"
    plan.write_text(TRIVIAL)
    result = run_vmwu("sweep", plan, "--executor", "sge", cwd=tmp_path, env={"SGE_CELL": "nowhere"})
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    if shutil.which("qstat") is None:
        assert result.returncode == 242 and "gridengine-client" in lines[0]
    else:
        assert result.returncode == 247
        assert "Grid Engine is not reachable" in lines[0] and "nowhere" in lines[0]
        assert "sge-test-cluster.sh start" in lines[0]
    assert not (tmp_path / "p-results").exists()
