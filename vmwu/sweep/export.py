"""``vmwu sweep export --format slurm|htcondor|sge PLAN -o DIR``: submit scripts that run
the plan's jobs on a cluster without vmwu's driver (each job still calls ``vmwu run``
through the plan's commands; vmwu must be installed on the nodes).

DIR gets a job array submit file, one file per job (``params/N.sh``: the job id, the
parameters as shell variables, and the job's commands with every value already substituted,
exactly as the driver would run them), a generic ``task.sh N`` that runs job N's commands
(after ``task nodestart``, once per node) and ``jobs.tsv`` (N, job id, parameters). Results
go to ``DIR/jobs/JOBID/`` by a rename, as with the driver; root-side outputs
(``copy node:X Y``) to ``DIR/Y``, never over an existing file. rootstart/rootfinish
become ``rootstart.sh``/``rootfinish.sh`` to run by hand before and after.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path

from vmwu.errors import BadInput
from vmwu.sweep.expand import (
    DEFAULT_MAX_JOBS,
    NIMROD_VAR,
    Job,
    job_values,
    node_relative,
    root_output,
    root_relative,
    source_path,
)
from vmwu.sweep.model import (
    DEV_NULL,
    ROOT_TASKS,
    Plan,
    Side,
    Step,
    StepKind,
    Task,
    Value,
    format_value,
)
from vmwu.sweep.plan import load_plan

FORMATS = ("slurm", "htcondor", "sge")

# Replace $name and ${name} by the exported variable's value, literally (values may hold
# anything); $name only when no letter, digit or _ follows.
_AWK_SUBSTITUTE = r"""BEGIN { n = split(names, a, " ") }
{ line = $0
  for (i = 1; i <= n; i++) {
    v = ENVIRON[a[i]]
    k = "${" a[i] "}"; out = ""
    while ((p = index(line, k)) > 0) {
      out = out substr(line, 1, p - 1) v; line = substr(line, p + length(k))
    }
    line = out line
    k = "$" a[i]; out = ""
    while ((p = index(line, k)) > 0) {
      c = substr(line, p + length(k), 1)
      if (c ~ /[A-Za-z0-9_]/) { out = out substr(line, 1, p + length(k) - 1) }
      else { out = out substr(line, 1, p - 1) v }
      line = substr(line, p + length(k))
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
    max_jobs: int | None = None,
) -> Path:
    from vmwu.sweep.experiment import prepare

    plan = load_plan(plan_path)
    input_dir = (input_dir or plan_path.absolute().parent).absolute()
    prepared = prepare(plan, input_dir, overrides or [], max_jobs or DEFAULT_MAX_JOBS)
    jobs = prepared.jobs
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
    with open(out / "jobs.tsv", "w", encoding="utf-8") as tsv:
        for job in jobs:
            tsv.write(f"{job.index}\t{job.id}\t{json.dumps(job.params, sort_keys=True)}\n")
            text = _job_file(plan, job, input_dir)
            (out / "params" / f"{job.index}.sh").write_text(text, encoding="utf-8")
    if "nodestart" in plan.tasks:
        text = _task_function(plan.tasks["nodestart"], prepared.single, input_dir, "nodestart")
        (out / "params" / "nodestart.sh").write_text(_exports(prepared.single) + text)
    _write_exec(out / "task.sh", _task_script(plan))
    for name in ROOT_TASKS:
        if name in plan.tasks:
            _write_exec(
                out / f"{name}.sh", _root_script(plan.tasks[name], prepared.single, input_dir)
            )
    (out / "jobs.list").write_text("".join(f"{n}\n" for n in range(1, len(jobs) + 1)))
    submit = {"slurm": _slurm, "sge": _sge, "htcondor": _htcondor}[fmt](out, len(jobs))
    _write_exec(out / f"submit.{fmt}", submit)
    return out


def _write_exec(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    os.chmod(path, 0o755)


def _exports(values: Mapping[str, Value]) -> str:
    lines = []
    for name, value in values.items():
        text = shlex.quote(format_value(value))
        lines.append(f"export {name}={text} {NIMROD_VAR}{name}={text}")
    lines.append(f"PARAM_NAMES={shlex.quote(' '.join(values))}")
    return "\n".join(lines) + "\n"


def _job_file(plan: Plan, job: Job, input_dir: Path) -> str:
    values = job_values(job.params, job.index)
    head = [
        f"# job {job.index}: {job.id}",
        f"JOB_ID={shlex.quote(job.id)}",
        f"export NIMROD_JOBINDEX={job.index} NIMROD_JOBNAME={job.index}",
    ]
    body = _task_function(plan.main, values, input_dir, "main")
    return "\n".join(head) + "\n" + _exports(values) + body


def _task_function(task: Task, values: Mapping[str, Value], input_dir: Path, name: str) -> str:
    """A shell function running the task's commands with every value substituted."""
    lines = [f"{name}() {{"]
    for i, step in enumerate(task.steps, start=1):
        lines.append(f"    {_step(i, step, values, input_dir, task.name)} || return")
    lines.append("    :")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _q(text: str) -> str:
    return shlex.quote(text)


def _step(i: int, step: Step, values: Mapping[str, Value], input_dir: Path, task: str) -> str:
    head = f"step {i} {_q(str(step.where))}"
    env = dict(os.environ)
    if step.kind is StepKind.ONERROR:
        return f"{head} onerror {step.word}"
    if step.kind is StepKind.REDIRECT:
        if not step.args:
            return f"{head} redirect {step.word} off"
        text = step.args[0].render(values, env=env)
        mode = "append" if step.append else "to"
        return f"{head} redirect {step.word} {mode} {_path(text, task)}"
    if step.kind is StepKind.EXECUTE:
        return f"{head} shell {_q(step.args[0].render_shell(values))}"
    if step.kind is StepKind.EXEC:
        words = [a.render(values, env=env) for a in step.args]
        if step.argv0:
            words = [words[0], *words[2:]]
        return f"{head} run_argv {' '.join(_q(w) for w in words)}"
    src, dest = (a.render(values, env=env) for a in step.args)
    s_src, s_dest = step.sides
    if s_src is Side.NODE:
        source = _path(src, task)
    else:  # the plan's inputs, for root tasks too
        source = _q(str(source_path(src, input_dir)))
    if step.kind is StepKind.SUBSTITUTE:
        return f"{head} substitute {source} {_path(dest, task)}"
    if s_dest is Side.ROOT and task not in ROOT_TASKS:
        return f"{head} copy_root {source} {_q(root_output(dest, src, str(step.where)))}"
    return f"{head} copy_to {source} {_path(dest, task)}"


def _path(text: str, task: str) -> str:
    if text == DEV_NULL:
        return DEV_NULL
    if task in ROOT_TASKS:
        return _q(root_relative(text, task))
    return '"$WORK"/' + _q(node_relative(text, task))


_LIBRARY = r"""
src() {
    case "$1" in /*) printf '%s' "$1" ;; *) printf '%s/%s' "$INPUT_DIR" "$1" ;; esac
}

substitute() {
    mkdir -p "$(dirname "$2")" &&
    awk -v names="$PARAM_NAMES" AWK "$1" > "$2"
}

copy_to() {  # appears whole (copied under a temporary name, then renamed): jobs that share
    # node:.. on a node copy the same file there at once and read it at once
    if [ -d "$2" ] && [ ! -L "$2" ]; then
        d=$2 t=$2/$(basename "$1")
    else
        d=$(dirname "$2") t=$2
    fi
    mkdir -p "$d" || return 1
    if [ -d "$1" ] && [ ! -L "$1" ] && [ -d "$t" ] && [ ! -L "$t" ]; then
        cp -RP -- "$1"/. "$t"/  # a directory merges into one that is there
        return
    fi
    n=$d/.vmwu-copy.$JOB_ID.$$
    rm -rf -- "$n" && cp -RP -- "$1" "$n" || { rm -rf -- "$n"; return 1; }
    mv -fT -- "$n" "$t" 2>/dev/null || { rm -rf -- "$t" && mv -fT -- "$n" "$t"; } ||
        { rm -rf -- "$n"; return 1; }
}

copy_root() {  # a root-side output: kept with the result, put in the experiment at the end
    [ -L "$1" ] && { echo "$1 is a symbolic link: not followed" >&2; return 1; }
    mkdir -p "$(dirname "$TMP/.root/$2")" && rm -rf -- "$TMP/.root/$2" &&
    cp -RP -- "$1" "$TMP/.root/$2" && printf '%s
' "$2" >> "$TMP/.root.list"
}

shell() { sh -c "$1"; }
run_argv() { "$@"; }

redirect() {  # redirect stdout|stderr off | to FILE | append FILE
    case "$2" in
        off) f=$LOG ;;
        to) f=$3; mkdir -p "$(dirname "$f")" && : > "$f" || return 1 ;;
        *) f=$3; mkdir -p "$(dirname "$f")" && touch "$f" || return 1 ;;
    esac
    if [ "$1" = stdout ]; then OUT=$f; else ERR=$f; fi
}

onerror() { POLICY=$1; }

step() {
    n=$1 where=$2
    shift 2
    echo "vmwu: step $n ($where): $*" >> "$LOG"
    case "$1" in
        onerror|redirect) "$@"; return ;;
    esac
    "$@" >> "$OUT" 2>> "$ERR" < /dev/null
    code=$?
    [ "$code" -eq 0 ] && return
    if [ "$POLICY" = ignore ]; then
        echo "vmwu: $where: exited with $code (onerror ignore: going on)" >> "$LOG"
        return
    fi
    FAILED_AT=$where
    return "$code"
}
"""


def _task_script(plan: Plan) -> str:
    bindir = _q(str(Path(sys.executable).parent))
    library = _LIBRARY.replace("AWK", _q(_AWK_SUBSTITUTE))
    nodestart = ""
    if "nodestart" in plan.tasks:
        nodestart = """
# task nodestart: once per node (the first job runs it, the others wait), in
# $SCRATCH/nodestart; every job starts with (links to) what it left
while ! mkdir "$SCRATCH/.nodestart.lock" 2>/dev/null; do sleep 1; done
if [ ! -e "$SCRATCH/.nodestart.done" ]; then
    rm -rf "$SCRATCH/nodestart" && mkdir -p "$SCRATCH/nodestart"
    ( . "$HERE/params/nodestart.sh"; WORK=$SCRATCH/nodestart; cd "$WORK" && nodestart )
    ns=$?
    [ "$ns" -eq 0 ] && touch "$SCRATCH/.nodestart.done"
fi
rmdir "$SCRATCH/.nodestart.lock"
[ -e "$SCRATCH/.nodestart.done" ] || finish 1 "task nodestart"
cp -RPl "$SCRATCH/nodestart/." "$WORK/" 2>/dev/null || cp -RP "$SCRATCH/nodestart/." "$WORK/"
"""
    return f"""#!/bin/sh
# Job N of the plan {plan.source}, exported by `vmwu sweep export`: sh task.sh N
# Runs the plan's task main in a private directory and leaves the result in
# jobs/JOB_ID/ (renamed into place whole; task.log and job.json included).
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
N=${{1:?usage: task.sh N}}
. "$HERE/params/$N.sh"
SCRATCH=${{VMWU_SWEEP_SCRATCH:-${{TMPDIR:-/tmp}}}}/vmwu-export-$(basename "$HERE")
WORK=$SCRATCH/$JOB_ID.$$
TMP=$HERE/jobs/.$JOB_ID.tmp.$$
mkdir -p "$WORK" "$TMP" || exit 1
LOG=$TMP/task.log OUT=$TMP/task.log ERR=$TMP/task.log POLICY=fail FAILED_AT=
# the vmwu that wrote these scripts first (if the node has it), then the node's own
PATH={bindir}:$PATH
export PATH VMWU_JOB_ID="$JOB_ID" VMWU_WORK_DIR="$WORK"
STARTED=$(date +%s)
{library}
finish() {{
    for s in "$WORK"/*/status.json; do
        [ -f "$s" ] && cp -RP -- "$(dirname "$s")" "$TMP"/
    done
    state=done; [ "$1" -eq 0 ] || state=failed
    printf '{{"job": "%s", "index": %d, "state": "%s", "exit_code": %d, "node": "%s", ' \
        "$JOB_ID" "$N" "$state" "$1" "$(hostname)" > "$TMP/job.json"
    printf '"started": %s, "finished": %s, "failed_step": "%s"}}\n' \
        "$STARTED" "$(date +%s)" "$2" >> "$TMP/job.json"
    if mv -T "$TMP" "$HERE/jobs/$JOB_ID" 2>/dev/null; then
        # root-side outputs: into the experiment's directory, never over a file
        [ -f "$HERE/jobs/$JOB_ID/.root.list" ] && while IFS= read -r rel; do
            if [ -e "$HERE/$rel" ] || [ -L "$HERE/$rel" ]; then
                echo "vmwu: $rel is already in $HERE: not overwritten" >&2
            else
                mkdir -p "$(dirname "$HERE/$rel")" &&
                mv -- "$HERE/jobs/$JOB_ID/.root/$rel" "$HERE/$rel"
            fi
        done < "$HERE/jobs/$JOB_ID/.root.list"
    else
        rm -rf "$TMP"
    fi
    cd / && rm -rf "$WORK"
    rmdir "$SCRATCH" 2>/dev/null
    exit "$1"
}}
{nodestart}
cd "$WORK" || finish 1 "cd"
main
code=$?
finish "$code" "$FAILED_AT"
"""


def _root_script(task: Task, values: Mapping[str, Value], input_dir: Path) -> str:
    library = _LIBRARY.replace("AWK", _q(_AWK_SUBSTITUTE))
    return (
        "#!/bin/sh\n"
        f"# task {task.name} of the plan, to run by hand: sh {task.name}.sh\n"
        'cd "$(dirname "$0")" || exit 1\n'
        "LOG=root.log OUT=root.log ERR=root.log POLICY=fail FAILED_AT=\n"
        + library
        + _exports(values)
        + _task_function(task, values, input_dir, "root_task")
        + 'root_task || { echo "task failed at $FAILED_AT (see root.log)" >&2; exit 1; }\n'
    )


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
