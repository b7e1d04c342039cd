"""``vmwu sweep export --format slurm|htcondor|sge PLAN -o DIR``: submit scripts that run
the plan's jobs on a cluster without vmwu's driver (each job still calls ``vmwu run``
through the plan's execute lines; vmwu must be installed on the nodes).

DIR gets a job array submit file, one parameter file per job (``params/N.sh``: the job id,
the parameters as shell variables, and the job's execute lines with the values already
substituted, exactly as the driver would run them), a generic ``task.sh N`` that performs
the main task's steps for job N, and ``jobs.tsv`` (N, job id, parameters). Results go to
``DIR/jobs/JOBID/`` by a rename, as with the driver. rootstart/rootfinish become
``rootstart.sh``/``rootfinish.sh`` to run by hand before and after.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from pathlib import Path

from vmwu.errors import BadInput
from vmwu.sweep.expand import Job
from vmwu.sweep.model import NODE, REF, ROOT, Plan, Step, StepKind, Task, format_value
from vmwu.sweep.plan import load_plan

FORMATS = ("slurm", "htcondor", "sge")

# Replace ${name} by the exported variable's value, literally (values may hold anything).
_AWK_SUBSTITUTE = r"""BEGIN { n = split(names, a, " ") }
{ line = $0
  for (i = 1; i <= n; i++) {
    k = "${" a[i] "}"; v = ENVIRON[a[i]]; out = ""
    while ((p = index(line, k)) > 0) {
      out = out substr(line, 1, p - 1) v; line = substr(line, p + length(k))
    }
    line = out line
  }
  print line }"""


def export_plan(
    plan_path: Path,
    fmt: str,
    out: Path,
    *,
    overrides: list[str] | None = None,
    input_dir: Path | None = None,
) -> Path:
    from vmwu.sweep.experiment import prepare_jobs

    plan = load_plan(plan_path)
    input_dir = (input_dir or plan_path.absolute().parent).absolute()
    jobs = prepare_jobs(plan, input_dir, overrides or [])
    out = out.absolute()
    if fmt == "sge" and ('"' in str(out) or "\n" in str(out)):
        raise BadInput(
            f"export directory {out}: Grid Engine's #$ lines cannot hold a path with "
            "double quotes or line breaks",
            hint="choose another -o directory",
        )
    if out.exists() and any(out.iterdir()):
        raise BadInput(f"export directory {out} is not empty", hint="choose a new -o directory")
    for sub in ("params", "jobs", "logs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    execute_steps = [i for i, s in enumerate(plan.main.steps) if s.kind is StepKind.EXECUTE]
    with open(out / "jobs.tsv", "w", encoding="utf-8") as tsv:
        for n, job in enumerate(jobs, start=1):
            tsv.write(f"{n}\t{job.id}\t{json.dumps(job.params, sort_keys=True)}\n")
            (out / "params" / f"{n}.sh").write_text(_params_file(plan, job, execute_steps))
    _write_exec(out / "task.sh", _task_script(plan, input_dir))
    for name in ("rootstart", "rootfinish"):
        if name in plan.tasks:
            _write_exec(out / f"{name}.sh", _root_script(plan.tasks[name], input_dir))
    (out / "jobs.list").write_text("".join(f"{n}\n" for n in range(1, len(jobs) + 1)))
    submit = {"slurm": _slurm, "sge": _sge, "htcondor": _htcondor}[fmt](out, len(jobs))
    _write_exec(out / f"submit.{fmt}", submit)
    return out


def _write_exec(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    os.chmod(path, 0o755)


def _params_file(plan: Plan, job: Job, execute_steps: list[int]) -> str:
    lines = [f"# job {job.id}", f"JOB_ID={shlex.quote(job.id)}"]
    for name, value in job.params.items():
        lines.append(f"export {name}={shlex.quote(format_value(value))}")
    lines.append(f"PARAM_NAMES={shlex.quote(' '.join(job.params))}")
    for i in execute_steps:
        command = plan.main.steps[i].args[0].render(job.params, quote=True)
        lines.append(f"STEP_{i + 1}={shlex.quote(command)}")
    return "\n".join(lines) + "\n"


def _shell_word(text: str) -> str:
    """Text as a double-quoted shell word in which ``${name}`` expands the variable, which
    holds the value literally (like the driver's substitution in paths)."""
    out, pos = [], 0
    for match in REF.finditer(text):
        out.append(_dq(text[pos : match.start()]))
        out.append("${" + match[1] + "}")
        pos = match.end()
    out.append(_dq(text[pos:]))
    return '"' + "".join(out) + '"'


def _dq(text: str) -> str:
    return "".join("\\" + c if c in '"\\$`' else c for c in text)


def _path(text: str) -> str:
    if text.startswith(NODE):
        return '"$WORK"/' + _shell_word(text[len(NODE) :])
    # relative to the input directory unless the value turns out absolute
    return f'"$(src {_shell_word(text.removeprefix(ROOT))})"'


def _step(i: int, step: Step) -> str:
    where = shlex.quote(str(step.where))
    if step.kind is StepKind.EXECUTE:
        return f'run {i} {where} sh -c "$STEP_{i}"'
    src, dest = (a.text for a in step.args)
    if step.kind is StepKind.SUBSTITUTE:
        target = _path(dest if dest.startswith(NODE) else NODE + dest)
        return f"run {i} {where} substitute {_path(src)} {target}"
    target = (
        _path(dest) if dest.startswith(NODE) else '"$TMP"/' + _shell_word(dest.removeprefix(ROOT))
    )
    return f"run {i} {where} copy_to {_path(src)} {target}"


def _task_script(plan: Plan, input_dir: Path) -> str:
    steps = "\n".join(_step(i, s) for i, s in enumerate(plan.main.steps, start=1))
    awk = shlex.quote(_AWK_SUBSTITUTE)
    input_q = shlex.quote(str(input_dir))
    bindir = shlex.quote(str(Path(sys.executable).parent))
    return f"""#!/bin/sh
# Job N of the plan {plan.source}, exported by `vmwu sweep export`: sh task.sh N
# Performs the plan's task main in a private directory and leaves the result in
# jobs/JOB_ID/ (renamed into place whole; task.log and job.json included).
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
N=${{1:?usage: task.sh N}}
. "$HERE/params/$N.sh"
SCRATCH=${{VMWU_SWEEP_SCRATCH:-${{TMPDIR:-/tmp}}}}/vmwu-export-$(basename "$HERE")
WORK=$SCRATCH/$JOB_ID.$$
TMP=$HERE/jobs/.$JOB_ID.tmp.$$
INPUT_DIR={input_q}
mkdir -p "$WORK" "$TMP" || exit 1
# the vmwu that wrote these scripts first (if the node has it), then the node's own
PATH={bindir}:$PATH
export PATH VMWU_JOB_ID="$JOB_ID" VMWU_WORK_DIR="$WORK"
cd "$WORK" || exit 1
STARTED=$(date +%s)

src() {{
    case "$1" in /*) printf '%s' "$1" ;; *) printf '%s/%s' "$INPUT_DIR" "$1" ;; esac
}}

substitute() {{
    awk -v names="$PARAM_NAMES" {awk} "$1" > "$2"
}}

copy_to() {{
    if [ -d "$2" ]; then
        cp -R -- "$1" "$2"/
    else
        mkdir -p "$(dirname "$2")" && cp -R -- "$1" "$2"
    fi
}}

finish() {{
    for s in "$WORK"/*/status.json; do
        [ -f "$s" ] && cp -R -- "$(dirname "$s")" "$TMP"/
    done
    state=done; [ "$1" -eq 0 ] || state=failed
    printf '{{"job": "%s", "state": "%s", "exit_code": %d, "node": "%s", ' \\
        "$JOB_ID" "$state" "$1" "$(hostname)" > "$TMP/job.json"
    printf '"started": %s, "finished": %s, "failed_step": "%s"}}\\n' \\
        "$STARTED" "$(date +%s)" "$2" >> "$TMP/job.json"
    mv -T "$TMP" "$HERE/jobs/$JOB_ID" 2>/dev/null || rm -rf "$TMP"
    cd / && rm -rf "$WORK"
    exit "$1"
}}

run() {{
    step=$1 where=$2
    shift 2
    echo "vmwu: step $step ($where)" >> "$TMP/task.log"
    "$@" >> "$TMP/task.log" 2>&1 < /dev/null
    code=$?
    [ "$code" -eq 0 ] || finish "$code" "$where"
}}

{steps}
finish 0 ""
"""


def _root_script(task: Task, input_dir: Path) -> str:
    lines = [
        "#!/bin/sh",
        f"# task {task.name} of the plan, to run by hand in this directory",
        "set -eu",
        'cd "$(dirname "$0")"',
        f"INPUT_DIR={shlex.quote(str(input_dir))}",
        "src() {",
        '    case "$1" in /*) printf \'%s\' "$1" ;; *) printf \'%s/%s\' "$INPUT_DIR" "$1" ;; esac',
        "}",
    ]
    for step in task.steps:
        if step.kind is StepKind.EXECUTE:
            lines.append(step.args[0].render({}))
        else:
            src, dest = step.args
            lines.append(f"cp -R -- {_path(src.text)} {_shell_word(dest.text)}")
    return "\n".join(lines) + "\n"


def _slurm(out: Path, n: int) -> str:
    return f"""#!/bin/sh
#SBATCH --job-name=vmwu-{out.name}
#SBATCH --array=1-{n}
#SBATCH --output={out}/logs/%A_%a.out
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
# submit: sbatch {out}/submit.slurm   (more than MaxArraySize jobs: sbatch --array=1001-2000 …)
exec sh {shlex.quote(str(out))}/task.sh "$SLURM_ARRAY_TASK_ID"
"""


def _sge(out: Path, n: int) -> str:
    # qsub reads "#$" lines with double quotes (not shell quoting); a leading ':' keeps a
    # ':' in the path from being read as HOST:PATH
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"vmwu-{out.name}")
    return f"""#!/bin/sh
#$ -N {name}
#$ -t 1-{n}
#$ -S /bin/sh
#$ -V
#$ -j y
#$ -o ":{out}/logs/"
# submit: qsub {shlex.quote(str(out / "submit.sge"))}
# (-V: the jobs see the submitting shell's environment, as sbatch gives it by default)
sh {shlex.quote(str(out))}/task.sh "$SGE_TASK_ID"
code=$?
# 99 would make Grid Engine run the task again, 100 put it in an error state
case $code in 99|100) code=1 ;; esac
exit $code
"""


def _htcondor(out: Path, n: int) -> str:
    return f"""# submit: condor_submit {out}/submit.htcondor   ({n} jobs)
universe = vanilla
executable = /bin/sh
arguments = {out}/task.sh $(job)
output = {out}/logs/$(job).out
error = {out}/logs/$(job).err
log = {out}/logs/condor.log
getenv = True
should_transfer_files = NO
request_cpus = 1
queue job from {out}/jobs.list
"""
