"""The Slurm executor: one ``sbatch`` job array per batch of jobs, followed with
``squeue``/``scontrol``, cancelled with ``scancel``.

- Each batch gets a script and a job list in ``RESULTS/slurm/``; array task *i* runs line
  *i* of the list (``JOBID ATTEMPT`` pairs) through ``vmwu sweep exec-job --list``. A line
  holds one job, or ``--jobs-per-task K`` of them run one after the other in one Python
  process: Slurm starts a task in about a second, which dominates jobs of a few seconds
  (bench/sweep.py). All jobs of a task share its handle; one whose result is missing when
  the task has ended (the task was killed half-way) is retried like a lost node. The Slurm job name
  is ``vmwu-EXPERIMENT-BATCH``, so a driver that died between ``sbatch`` and writing the
  Slurm job id finds the array again by name (:meth:`SlurmExecutor.find`).
- Handles are ``ARRAYID_TASK``. State comes from ``squeue --me -t all`` (jobs of this
  experiment, by name), then ``scontrol show job`` (while younger than MinJobAge), then the
  jobcomp file if the site writes one (``JobCompType=jobcomp/filetxt``). ``sacct`` is not
  used: it needs slurmdbd, which many sites (and our test cluster) do not run.
- How a job ended is read from the results directory, not from Slurm: Slurm only tells
  whether it is queued, running, gone, or CANCELLED (``scancel`` from outside).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from vmwu import tools
from vmwu.errors import HostFailure, ToolFailed, ToolNotFound
from vmwu.sweep.executors import Context, Executor, Observed, Patience, Phase, Submission

tools.TOOL_PACKAGES.update(
    {
        "sbatch": "slurm-client",
        "squeue": "slurm-client",
        "scontrol": "slurm-client",
        "scancel": "slurm-client",
    }
)

QUEUED = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"}
RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING", "SUSPENDED", "RESIZING", "STOPPED"}
MAX_ARRAY = 1000  # Slurm's default MaxArraySize is 1001
PATIENCE = 120.0  # seconds of squeue failures before the driver gives up


class SlurmUnavailable(HostFailure):
    """sbatch/squeue cannot reach slurmctld, or there is no Slurm configuration."""


def phase_of(state: str) -> Phase:
    state = state.split()[0].rstrip("+") if state else ""
    if state in QUEUED:
        return Phase.QUEUED
    if state in RUNNING:
        return Phase.RUNNING
    if state == "CANCELLED":
        return Phase.CANCELLED
    return Phase.ENDED


class SlurmExecutor(Executor):
    name = "slurm"
    poll_interval = 1.0
    max_batch = MAX_ARRAY

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.prefix = f"vmwu-{ctx.experiment}-"
        self._jobcomp: Path | None | bool = False  # False: not looked up yet
        self.patience = Patience(PATIENCE)
        self.jobs_per_task = max(1, int(ctx.options.get("jobs_per_task", 1)))
        self.jobs_share_tasks = self.jobs_per_task > 1

    def output_file(self, handle: str) -> Path | None:
        return self.ctx.layout.slurm / f"{handle}.out"

    def check(self) -> None:
        conf = os.environ.get("SLURM_CONF")
        if conf and not Path(conf).is_file():
            raise SlurmUnavailable(
                f"Slurm is not reachable: SLURM_CONF={conf} does not exist",
                hint="point SLURM_CONF at the cluster's slurm.conf",
            )
        try:
            proc = tools.run(["scontrol", "ping"], check=False, timeout=30)
        except ToolNotFound:
            raise ToolNotFound("sbatch", "slurm-client") from None
        except subprocess.TimeoutExpired:
            raise SlurmUnavailable(
                "Slurm is not reachable: `scontrol ping` got no answer in 30 s"
            ) from None
        text = (proc.stdout + proc.stderr).decode(errors="replace")
        if proc.returncode != 0 or "is UP" not in text:
            first = next((ln.strip() for ln in text.splitlines() if ln.strip("* \t")), "no answer")
            raise SlurmUnavailable(
                f"Slurm is not reachable: {first}",
                hint="is slurmctld running? check SLURM_CONF "
                "(or run scripts/slurm-test-cluster.sh start)",
            )

    # -- submit -----------------------------------------------------------------------------

    def submit(self, subs: Sequence[Submission], batch: str) -> dict[str, str]:
        layout = self.ctx.layout
        layout.slurm.mkdir(exist_ok=True)
        name = self.prefix + batch
        listing = layout.slurm / f"{batch}.list"
        per = self.jobs_per_task
        tasks = [subs[i : i + per] for i in range(0, len(subs), per)]
        listing.write_text(
            "".join(" ".join(f"{s.job_id} {s.attempt}" for s in task) + "\n" for task in tasks)
        )
        script = layout.slurm / f"{batch}.sh"
        script.write_text(
            "#!/bin/sh\n"
            f"# vmwu sweep: batch {batch} of {self.ctx.results} ({len(subs)} jobs)\n"
            f"exec {shlex.quote(sys.executable)} -m vmwu sweep exec-job "
            f"{shlex.quote(str(self.ctx.results))} --list {shlex.quote(str(listing))} "
            '--line "$SLURM_ARRAY_TASK_ID"\n'
        )
        argv = [
            "sbatch",
            "--parsable",
            f"--job-name={name}",
            f"--array=0-{len(tasks) - 1}",
            f"--output={layout.slurm / '%A_%a.out'}",
            f"--chdir={self.ctx.results}",
            "--ntasks=1",
            "--cpus-per-task=1",
            *self.ctx.options.get("sbatch_args", []),
            str(script),
        ]
        try:
            out = tools.output(argv)
        except ToolFailed as err:
            raise SlurmUnavailable(f"sbatch failed: {err.message.split(': ', 1)[-1]}") from None
        array_id = out.split(";")[0].strip()
        if not array_id.isdigit():
            raise SlurmUnavailable(f"sbatch said {out!r}, not a job id")
        return {s.job_id: f"{array_id}_{i}" for i, task in enumerate(tasks) for s in task}

    # -- state ------------------------------------------------------------------------------

    def _squeue(self) -> dict[str, tuple[str, str, str]]:
        """Tasks of this experiment that slurmctld still knows: handle → (state, node, name)."""
        try:
            out = tools.output(
                ["squeue", "--me", "-h", "-r", "-t", "all", "-o", "%i|%T|%N|%j"], timeout=60
            )
        except (ToolFailed, subprocess.TimeoutExpired) as err:
            raise SlurmUnavailable(f"Slurm is not reachable: squeue failed: {err}") from None
        seen: dict[str, tuple[str, str, str]] = {}
        for line in out.splitlines():
            parts = line.split("|")
            if len(parts) == 4 and parts[3].startswith(self.prefix):
                seen[parts[0]] = (parts[1], parts[2], parts[3])
        return seen

    def poll(self, handles: Mapping[str, str]) -> dict[str, Observed]:
        try:
            seen = self._squeue()
        except SlurmUnavailable:
            if self.patience.tolerates():  # the jobs go on; give it a while, then stop
                return {}
            raise
        self.patience.reset()
        out: dict[str, Observed] = {}
        for job, handle in handles.items():
            if handle in seen:
                state, node, _ = seen[handle]
            else:
                state, node = self._gone_state(handle)
            out[job] = Observed(phase_of(state), node or None, state or None)
        return out

    def _gone_state(self, handle: str) -> tuple[str, str]:
        """State of a task squeue no longer lists: scontrol, then the jobcomp file."""
        try:
            proc = tools.run(["scontrol", "show", "job", "-o", handle], check=False, timeout=60)
        except subprocess.TimeoutExpired:
            return "", ""
        text = proc.stdout.decode(errors="replace")
        if proc.returncode == 0 and "JobState=" in text:
            return _field(text, "JobState"), _field(text, "NodeList")
        array_id, _, task = handle.partition("_")
        for line in reversed(self._jobcomp_lines()):
            if f"ArrayJobId={array_id} " in line and f"ArrayTaskId={task} " in line:
                return _field(line, "JobState"), _field(line, "NodeList")
        return "", ""  # unknown: gone; the results directory decides

    def _jobcomp_lines(self) -> list[str]:
        if self._jobcomp is False:
            self._jobcomp = None
            try:
                conf = tools.run(["scontrol", "show", "config"], check=False, timeout=60)
            except subprocess.TimeoutExpired:
                return []
            text = conf.stdout.decode(errors="replace")
            if re.search(r"JobCompType\s*=\s*jobcomp/filetxt", text):
                loc = re.search(r"JobCompLoc\s*=\s*(\S+)", text)
                self._jobcomp = Path(loc[1]) if loc else None
        if not isinstance(self._jobcomp, Path):
            return []
        try:
            return self._jobcomp.read_text(errors="replace").splitlines()
        except OSError:
            return []

    def cancel(self, handles: Mapping[str, str]) -> None:
        ids = sorted(set(handles.values()))
        for i in range(0, len(ids), 500):
            tools.run(["scancel", *ids[i : i + 500]], check=False, timeout=60)

    def find(self, batch: str, subs: Sequence[Submission]) -> dict[str, str]:
        listing = self.ctx.layout.slurm / f"{batch}.list"
        try:  # the array's task i runs line i of the list, whatever order subs come in
            lines = [line.split()[::2] for line in listing.read_text().splitlines() if line]
        except OSError:
            return {}  # the list is written before sbatch: sbatch never ran
        name = self.prefix + batch
        arrays = {h.split("_")[0] for h, (_, _, n) in self._squeue().items() if n == name}
        if not arrays:
            for line in self._jobcomp_lines():
                if f"Name={name} " in line and "ArrayJobId=" in line:
                    arrays.add(_field(line, "ArrayJobId"))
        if not arrays:
            return {}
        array_id = max(arrays, key=int)
        wanted = {s.job_id for s in subs}
        return {
            job: f"{array_id}_{i}" for i, jobs in enumerate(lines) for job in jobs if job in wanted
        }


def _field(text: str, key: str) -> str:
    match = re.search(rf"(?:^|\s){key}=(\S*)", text)
    return match[1] if match else ""
