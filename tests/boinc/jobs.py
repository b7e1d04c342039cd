"""Jobs for ``vmwu wrap`` under the real client (tests/integration/test_boinc_wrap.py)."""

from __future__ import annotations

from pathlib import Path

# A host task that upper-cases its input line by line, one line per --step-seconds,
# writing its fraction done and a checkpoint (the line it is at) as it goes, so that a
# restarted run goes on where it stopped.
WORK_SH = r"""#!/bin/sh
# work.sh INPUT STEP_SECONDS: upper-case INPUT into stdout, one line per step.
in=$1; step=${2:-0.2}
total=$(wc -l < "$in")
done=0
[ -r ck ] && read -r done < ck
echo "work.sh: starting at line $done of $total" >&2
i=0
while IFS= read -r line; do
    i=$((i + 1))
    [ "$i" -le "$done" ] && continue
    sleep "$step"
    printf '%s\n' "$line" | tr a-z A-Z
    echo "$i" > ck.tmp && mv ck.tmp ck
    awk "BEGIN { print $i / $total }" > fd
done < "$in"
"""

HOST_JOB = """<job_desc>
  <task>
    <application>sh</application>
    <command_line>$PROJECT_DIR/work.sh boinc_resolve(in.txt) {step}</command_line>
    <stdout_filename>out.txt</stdout_filename>
    <checkpoint_filename>ck</checkpoint_filename>
    <fraction_done_filename>fd</fraction_done_filename>
  </task>
</job_desc>
"""


def host_job_files(where: Path, step: float = 0.2) -> dict[str, Path]:
    """job.xml and work.sh in ``where``: the app files of a host-task job."""
    where.mkdir(parents=True, exist_ok=True)
    (where / "job.xml").write_text(HOST_JOB.format(step=step))
    (where / "work.sh").write_text(WORK_SH)
    return {"job.xml": where / "job.xml", "work.sh": where / "work.sh"}


def lines(n: int) -> bytes:
    return "".join(f"line {i} of the input\n" for i in range(1, n + 1)).encode()
