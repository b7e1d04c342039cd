"""Checkpoints of VM tasks under `vmwu wrap`: cost, restore time, work lost. Prints JSON.

    .venv/bin/python bench/checkpoint.py [--trials 5] [--interval 3] [--home DIR]

Each trial runs a job whose VM task (examples/boinc/count.sh on the tiny base) counts
``--steps`` steps of ``--step-seconds`` each, with a checkpoint every ``--interval``
seconds, kills the wrapper with SIGKILL at a random moment of the VM task's run, and
starts it again to the end. Figures (medians unless said otherwise):

- ``checkpoint_s``: one periodic checkpoint, from pausing the guest to the sealed
  checkpoint (state saved, disks copied, digests, manifest, rename);
  ``checkpoint_guest_paused_s``: the part of it the guest stands still (it resumes
  before the digests and the manifest);
- ``checkpoint_size_bytes``: bytes a checkpoint holds on disk (its 256 GiB sparse
  disks count what they hold); ``checkpoint_state_bytes``: the VM state file alone;
- ``restore_to_running_s``: from the restarted wrapper looking for its checkpoints to
  the guest running again: verifying the newest (digests of every file), a fresh
  instance, working copies of the disks, QEMU loading the state, ``cont`` (as the
  wrapper measures it; Python's start-up before that is not counted);
- ``work_lost_s``: per trial, the guest's steps done before the kill that it did again
  after the restart, times ``--step-seconds`` (read from the two runs' guest consoles);
  ``work_lost_max_s`` <= ``interval_s`` is the target (no more than one interval).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VMWU = [sys.executable, "-m", "vmwu"]


def med(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 3) if xs else None


def job_file(project: Path, steps: int, step_seconds: float) -> Path:
    shutil.copy(ROOT / "examples" / "boinc" / "count.sh", project / "count.sh")
    job = project / "job.xml"
    job.write_text(
        textwrap.dedent(
            f"""\
            <job_desc><task>
              <virtualmachine>tiny</virtualmachine>
              <application>$PROJECT_DIR/count.sh</application>
              <copy_app_to_VM>1</copy_app_to_VM>
              <command_line>{steps}</command_line>
              <setenv>STEP_SECONDS={step_seconds}</setenv>
              <copy_file_from_VM>steps.log</copy_file_from_VM>
            </task></job_desc>
            """
        )
    )
    return job


def status(slot: Path) -> dict[str, Any]:
    try:
        return json.loads((slot / "wrapper_status.json").read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return {}


def console_steps(path: Path) -> list[int]:
    text = path.read_text(errors="replace") if path.exists() else ""
    return [int(n) for n in re.findall(r"count: step (\d+) of", text)]


def checkpoints_in_log(slot: Path) -> list[tuple[float, float]]:
    """(seconds, guest paused seconds) of every checkpoint the wrapper logged."""
    text = (slot / ".vmwu-wrap" / "wrapper.log").read_text()
    pattern = r"checkpoint ck-\d+: \S+ \S+ in ([\d.]+) s \(guest paused ([\d.]+) s\)"
    return [(float(s), float(p)) for s, p in re.findall(pattern, text)]


def trial(
    env: dict[str, str], work: Path, n: int, args: argparse.Namespace, rng: random.Random
) -> dict[str, Any]:
    project, slot = work / f"project{n}", work / f"slot{n}"
    project.mkdir()
    slot.mkdir()
    job = job_file(project, args.steps, args.step_seconds)
    argv = [*VMWU, "wrap", str(job), "--slot-dir", str(slot), "-q"]
    argv += ["--checkpoint-interval", str(args.interval)]
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while "step" not in ((status(slot).get("task") or {}).get("message") or ""):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the VM task did not start: {proc.communicate()[1]}")
        time.sleep(0.05)
    run_for = args.steps * args.step_seconds
    time.sleep(rng.uniform(0, run_for * 0.8))
    sizes = {}
    ck_dir = slot / ".vmwu-wrap" / "checkpoints"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    inst = json.loads((slot / "wrapper_checkpoint.json").read_text()).get("instance_dir")
    done_before = console_steps(Path(inst) / "console.log") if inst else []
    for ck in sorted(ck_dir.glob("ck-??????")):
        state = ck / "state"
        sizes[ck.name] = (
            sum(f.stat().st_blocks * 512 for f in ck.iterdir()),
            state.stat().st_size if state.exists() else 0,
        )
    t0 = time.monotonic()
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise SystemExit(f"the restarted wrapper failed: {result.stderr}")
    st = status(slot)
    after = console_steps(slot / ".vmwu-wrap" / "tasks" / "1" / "output" / "console.log")
    last_before = done_before[-1] if done_before else 0
    resumed_at = (after[0] - 1) if after else 0
    lost_steps = max(0, last_before - resumed_at)
    return {
        "killed_after_step": last_before,
        "resumed_after_step": resumed_at,
        "work_lost_s": round(lost_steps * args.step_seconds, 3),
        "restored_from": st.get("restored_from"),
        "restore_to_running_s": st.get("restore_seconds"),
        "restart_wall_s": round(time.monotonic() - t0, 3),
        "checkpoints": checkpoints_in_log(slot),
        "sizes": list(sizes.values()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--interval", type=float, default=3.0, help="--checkpoint-interval (s)")
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--step-seconds", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument(
        "--home", help="a VMWU_HOME with the tiny base (default: build one in a temp dir)"
    )
    args = ap.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="vmwu-bench-ck-") as tmp:
        work = Path(tmp)
        env = dict(os.environ)
        env["VMWU_HOME"] = args.home or str(work / "home")
        if not args.home:
            subprocess.run([*VMWU, "base", "build", "tiny", "-q"], env=env, check=True)
        trials = [trial(env, work, n, args, rng) for n in range(args.trials)]
    cks = [c for t in trials for c in t["checkpoints"]]
    sizes = [s for t in trials for s in t["sizes"]]
    lost = [t["work_lost_s"] for t in trials]
    restores = [t["restore_to_running_s"] for t in trials if t["restore_to_running_s"]]
    result = {
        "interval_s": args.interval,
        "trials": args.trials,
        "checkpoints_taken": len(cks),
        "checkpoint_s": med([s for s, _ in cks]),
        "checkpoint_s_max": max((s for s, _ in cks), default=None),
        "checkpoint_guest_paused_s": med([p for _, p in cks]),
        "checkpoint_size_bytes": int(statistics.median([s for s, _ in sizes])) if sizes else None,
        "checkpoint_state_bytes": int(statistics.median([s for _, s in sizes])) if sizes else None,
        "restore_to_running_s": med(restores),
        "work_lost_s": lost,
        "work_lost_max_s": max(lost),
        "work_lost_within_one_interval": max(lost) <= args.interval,
        "per_trial": [
            {k: v for k, v in t.items() if k not in ("checkpoints", "sizes")} for t in trials
        ],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
