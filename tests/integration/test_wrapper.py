"""`vmwu wrap` with real guests (TCG): VM tasks that count, get suspended, checkpointed,
stopped, killed and restored.

The guest app is examples/boinc/count.sh: it counts through N steps, prints each to the
guest console and appends it to steps.log on the output disk. A guest restored from a
checkpoint goes on where it was, so the console of the restored run starts past step 1
and steps.log holds every step exactly once. Nothing asserts on timing; waits poll the
status file with generous deadlines (other engineers boot guests on this machine too).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import textwrap
import time
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.integration.conftest import Vmwu
from tests.integration.sweeps import guest_events
from tests.integration.wrap import Wrap
from tests.processes import carrying, comm, tree
from tests.waits import wait_for
from vmwu.wrapper.checkpoint import CheckpointStore, _checksum
from vmwu.wrapper.fsutil import digest
from vmwu.wrapper.wrapper import WrapOptions, Wrapper

EXAMPLE = ROOT / "examples" / "boinc"
COUNT = (EXAMPLE / "count.sh").read_text()


def vm_events(wrapper: int) -> Path | None:
    """The events file of the VM task's QEMU below the wrapper, once it runs."""
    qemu = next((p for p in tree(wrapper) if comm(p).startswith("qemu-system")), None)
    return guest_events(qemu) if qemu is not None else None


def last_step(events: Path) -> int | None:
    """The last step the guest reported (0 before the first; None once the file is gone,
    with its instance)."""
    try:
        steps = re.findall(r"step (\d+) of", events.read_text(errors="replace"))
    except OSError:
        return None
    return int(steps[-1]) if steps else 0


def console_steps(output: Path) -> list[int]:
    text = (output / "console.log").read_text(errors="replace")
    return [int(n) for n in re.findall(r"count: step (\d+) of", text)]


def counting_job(vmwu: Vmwu, steps: int, *, seconds: float = 0.5, extra: str = "") -> Path:
    """A job whose one task counts ``steps`` steps in a VM packed on the tiny base."""
    project = vmwu.tmp / "project"
    project.mkdir(exist_ok=True)
    shutil.copy(EXAMPLE / "count.sh", project / "count.sh")
    job = project / "job.xml"
    job.write_text(
        textwrap.dedent(
            f"""\
            <job_desc>
              <task>
                <virtualmachine>tiny</virtualmachine>
                <application>$PROJECT_DIR/count.sh</application>
                <copy_app_to_VM>1</copy_app_to_VM>
                <command_line>{steps}</command_line>
                <setenv>STEP_SECONDS={seconds}</setenv>
                <stdout_filename>count.out</stdout_filename>
                <copy_file_from_VM>steps.log</copy_file_from_VM>
                {extra}
              </task>
            </job_desc>
            """
        )
    )
    return job


def assert_counted_once(slot: Path, steps: int) -> None:
    assert (slot / "steps.log").read_text().split("\n")[:-1] == [
        f"step {i}" for i in range(1, steps + 1)
    ]
    assert (slot / "count.out").read_text() == f"counted to {steps}\n"


def test_the_example_job_runs_end_to_end(vmwu: Vmwu) -> None:
    project = vmwu.tmp / "project"
    shutil.copytree(EXAMPLE, project)
    with zipfile.ZipFile(project / "input.zip", "w") as z:
        z.writestr("input/settings.txt", "steps = 6\n")
    wrap = Wrap(vmwu, project / "job.xml", "--checkpoint-interval", "2")
    result = wrap.run()
    assert result.returncode == 0, result.stderr
    slot = wrap.slot
    assert (slot / "prepare.log").read_text() == "the VM task will count 6 steps\n"
    assert (slot / "result.txt").read_text() == "counted 6 steps, each once\n"
    assert_counted_once(slot, 6)
    status = wrap.status()
    assert status["state"] == "done" and status["exit_code"] == 0
    assert status["fraction_done"] == 1.0
    assert status["cpu_time"] > 0
    assert status["last_checkpoint"] is not None  # 6 x 1 s with a checkpoint every 2 s
    assert status["checkpoint"]["size_bytes"] > 0
    assert "started VM task 2" in wrap.log()
    guest = json.loads((wrap.task_output(2) / "status.json").read_text())
    assert guest["exit_code"] == 0 and guest["start"].startswith("warm start")
    assert not (slot / ".vmwu-wrap" / "checkpoints").exists()  # dropped with the job done


def test_a_unit_task_suspends_and_resumes(vmwu: Vmwu) -> None:
    unit = vmwu.pack('/app/count.sh "$@"', name="counter", files={"count.sh": COUNT})
    project = vmwu.tmp / "project"
    project.mkdir()
    job = project / "job.xml"
    job.write_text(
        f"<job_desc><task><virtualmachine>{unit}</virtualmachine>"
        "<command_line>12</command_line><copy_file_from_VM>steps.log</copy_file_from_VM>"
        "<stdout_filename>count.out</stdout_filename></task></job_desc>"
    )
    wrap = Wrap(vmwu, job)
    wrap.start()
    try:
        wait_for(lambda: wrap.step() >= 2, 300, "step 2")
        assert wrap.proc is not None
        pid = wrap.proc.pid
        events = wait_for(lambda: vm_events(pid), 60, "the guest's event file")
        assert wrap.ctl("suspend")["state"] == "suspended"
        assert wrap.ctl("status")["state"] == "suspended"
        # the host has read what the guest said before it was paused
        paused_at = wait_for(
            lambda: (said := last_step(events)) == wrap.step() and said,
            60,
            "the wrapper's status to show the guest's last step",
        )
        # No event marks "nothing happened": watch for three steps' worth (one a second),
        # in which a running guest would have said more.
        time.sleep(3)
        assert (last_step(events), wrap.step()) == (paused_at, paused_at), "not paused"
        assert wrap.ctl("resume")["state"] == "running"
        code, err = wrap.wait()
    finally:
        if wrap.proc is not None:
            wrap.proc.kill()
    assert code == 0, err
    assert_counted_once(wrap.slot, 12)
    assert "suspended (socket)" in wrap.log() and "resumed (socket)" in wrap.log()


def test_sigterm_checkpoints_and_a_restart_goes_on_from_there(vmwu: Vmwu) -> None:
    job = counting_job(vmwu, 14)
    wrap = Wrap(vmwu, job)  # default interval (600 s): only the quit checkpoint
    wrap.start()
    try:
        wait_for(lambda: wrap.step() >= 3, 300, "step 3")
        assert wrap.proc is not None
        wrap.proc.send_signal(signal.SIGTERM)
        code, err = wrap.wait()
    finally:
        if wrap.proc is not None:
            wrap.proc.kill()
    assert code == 248, err
    status = wrap.status()
    assert status["state"] == "temporary-exit"
    assert status["checkpoint"]["name"] == "ck-000001"
    quit_step, cpu_at_quit = wrap.step(), status["cpu_time"]
    assert quit_step >= 3 and cpu_at_quit > 0
    result = wrap.run()
    assert result.returncode == 0, result.stderr
    assert "restored VM task 1 from checkpoint ck-000001" in result.stderr
    steps = console_steps(wrap.task_output(1))
    assert steps[0] > 1  # the restored guest did not count from 0 again
    assert steps[0] >= quit_step
    assert steps == list(range(steps[0], 15))
    assert_counted_once(wrap.slot, 14)
    final = wrap.status()
    assert final["cpu_time"] > cpu_at_quit and final["starts"] == 2
    assert final["restored_from"] == "ck-000001" and final["restore_seconds"] > 0


def test_kill_9_then_restart_resumes_from_the_last_checkpoint(vmwu: Vmwu) -> None:
    job = counting_job(vmwu, 16)
    wrap = Wrap(vmwu, job, "--checkpoint-interval", "2")
    wrap.start()
    try:
        wait_for(
            lambda: wrap.status().get("last_checkpoint") and wrap.step() >= 5,
            300,
            "a checkpoint and step 5",
        )
        inst = json.loads((wrap.slot / "wrapper_checkpoint.json").read_text())["instance_dir"]
        assert wrap.proc is not None
        wrap.proc.send_signal(signal.SIGKILL)
        code, _ = wrap.wait()
    finally:
        if wrap.proc is not None:
            wrap.proc.kill()
    assert code == -signal.SIGKILL
    status = wrap.status()
    cpu_before = status["cpu_time"]
    killed_at = wrap.step()
    # QEMU died with the wrapper (PR_SET_PDEATHSIG): no VM runs on unsupervised
    wait_for(lambda: not carrying(inst), 30, "the task's QEMU to end")
    result = wrap.run()
    assert result.returncode == 0, result.stderr
    restored = re.search(r"restored VM task 1 from checkpoint (ck-\d+)", result.stderr)
    assert restored, result.stderr
    steps = console_steps(wrap.task_output(1))
    assert 1 < steps[0] <= killed_at + 1
    assert_counted_once(wrap.slot, 16)
    assert wrap.status()["cpu_time"] > cpu_before
    assert not Path(inst).exists()  # the killed run's instance directory was cleaned up


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous(vmwu: Vmwu) -> None:
    job = counting_job(vmwu, 16)
    wrap = Wrap(vmwu, job, "--checkpoint-interval", "1.5")
    wrap.start()
    try:
        wait_for(
            lambda: (wrap.status().get("checkpoint") or {}).get("name") == "ck-000002",
            300,
            "the second checkpoint",
        )
        assert wrap.ctl("quit")["state"] == "temporary-exit"
        code, err = wrap.wait()
    finally:
        if wrap.proc is not None:
            wrap.proc.kill()
    assert code == 248, err
    checkpoints = wrap.slot / ".vmwu-wrap" / "checkpoints"
    names = sorted(p.name for p in checkpoints.iterdir())
    assert len(names) == 2
    newest = checkpoints / names[-1]
    with open(newest / "state", "r+b") as fh:  # one flipped byte in the saved memory
        fh.seek(1_000_000)
        byte = fh.read(1)
        fh.seek(1_000_000)
        fh.write(bytes([byte[0] ^ 0xFF]))
    result = wrap.run()
    assert result.returncode == 0, result.stderr
    assert f"checkpoint {names[-1]} is unusable, removing it" in result.stderr
    assert "state does not match its digest" in result.stderr
    assert f"restored VM task 1 from checkpoint {names[0]}" in result.stderr
    assert console_steps(wrap.task_output(1))[0] > 1
    assert_counted_once(wrap.slot, 16)


def test_a_checkpoint_that_will_not_load_means_starting_the_task_afresh(vmwu: Vmwu) -> None:
    job = counting_job(vmwu, 8)
    wrap = Wrap(vmwu, job)
    wrap.start()
    try:
        wait_for(lambda: wrap.step() >= 2, 300, "step 2")
        assert wrap.ctl("quit")["state"] == "temporary-exit"
        code, err = wrap.wait()
    finally:
        if wrap.proc is not None:
            wrap.proc.kill()
    assert code == 248, err
    # A checkpoint that verifies but that QEMU cannot load (as after a QEMU upgrade):
    # garbage with a manifest that vouches for it.
    ck = wrap.slot / ".vmwu-wrap" / "checkpoints" / "ck-000001"
    (ck / "state").write_bytes(b"QEVM" + b"\0" * 100)
    manifest = json.loads((ck / "manifest.json").read_text())
    manifest["files"]["state"] = dict(zip(("size", "digest"), digest(ck / "state"), strict=True))
    manifest["checksum"] = _checksum(manifest)
    (ck / "manifest.json").write_text(json.dumps(manifest))
    result = wrap.run()
    assert result.returncode == 0, result.stderr
    assert "checkpoint ck-000001 did not restore" in result.stderr
    assert "started VM task 1" in result.stderr
    assert console_steps(wrap.task_output(1))[0] == 1
    assert_counted_once(wrap.slot, 8)


def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one(
    vmwu: Vmwu, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In-process, to make every checkpoint after the first write its VM state into
    # /dev/full: QEMU's own write fails with ENOSPC, as on a full disk.
    for key, value in vmwu.env.items():
        monkeypatch.setenv(key, value)
    job = counting_job(vmwu, 10)
    slot = vmwu.tmp / "slot"
    slot.mkdir()
    real_begin = CheckpointStore.begin
    began: list[Path] = []

    def begin(self: CheckpointStore) -> Path:
        tmp = real_begin(self)
        began.append(tmp)
        if len(began) > 1:
            (tmp / "state").symlink_to("/dev/full")
        return tmp

    monkeypatch.setattr(CheckpointStore, "begin", begin)
    opts = WrapOptions(
        job=job, slot=slot, project_dir=job.parent, checkpoint_interval=1.5, quiet=True
    )
    wrapper = Wrapper(opts)
    reports: list[str] = []
    monkeypatch.setattr(wrapper, "report", reports.append)
    assert wrapper.run() == 0
    assert len(began) >= 2, reports
    failed = [r for r in reports if r.startswith("checkpoint failed")]
    assert failed, reports
    assert all(r.startswith("checkpoint failed (ck-000001 is kept): no space left") for r in failed)
    assert_counted_once(slot, 10)  # the guest ran on after each failed checkpoint


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        (
            "<virtualmachine>missing.ova</virtualmachine>",
            241,
            "virtualmachine missing.ova does not exist",
        ),
        (
            "<virtualmachine>no-such-base</virtualmachine><application>true</application>",
            249,
            "no-such-base",
        ),
        (
            "<virtualmachine>tiny</virtualmachine><application>true</application>"
            "<copy_file_to_VM>absent.txt</copy_file_to_VM>",
            241,
            "absent.txt (to copy into the VM) does not exist",
        ),
    ],
)
def test_bad_vm_tasks_get_one_line_errors(vmwu: Vmwu, body: str, code: int, message: str) -> None:
    job = vmwu.tmp / "job.xml"
    job.write_text(f"<job_desc><task>{body}</task></job_desc>")
    result = Wrap(vmwu, job).run()
    assert result.returncode == code, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("vmwu: error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def test_a_failing_vm_app_and_a_missing_output_fail_the_job(vmwu: Vmwu) -> None:
    job = vmwu.tmp / "job.xml"
    job.write_text(
        "<job_desc><task><virtualmachine>tiny</virtualmachine><application>sh</application>"
        "<command_line>-c 'cat; exit 5'</command_line><stdin_filename>in.txt</stdin_filename>"
        "<stdout_filename>out.txt</stdout_filename></task></job_desc>"
    )
    wrap = Wrap(vmwu, job)
    (wrap.slot / "in.txt").write_text("bad\n")
    result = wrap.run()
    assert result.returncode == 5, result.stderr
    assert (wrap.slot / "out.txt").read_text() == "bad\n"
    assert "the application exited with 5" in wrap.status()["message"]
    job.write_text(
        "<job_desc><task><virtualmachine>tiny</virtualmachine><application>true</application>"
        "<copy_file_from_VM>result.dat</copy_file_from_VM></task></job_desc>"
    )
    result = Wrap(vmwu, job, "--fresh").run()
    assert result.returncode == 241, result.stderr
    assert "the VM did not produce result.dat" in result.stderr
