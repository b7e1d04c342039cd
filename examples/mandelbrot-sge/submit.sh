#!/bin/sh
# The thesis's Mandelbrot experiment on Grid Engine (section 6.1.1.2), in one command: "a
# script ... calculate[s] the job parameters and launch[es] the Virtual Machine Work Units
# through the Sun Grid Engine job submission utility", the outputs come back uniquely named
# to one directory, into one tar file, and are combined into the picture.
#
#   bash submit.sh [-u UNIT.ova] [-o OUTDIR] [-q "QSUB ARGS"]
#
# -u  the work unit (default ../mandelbrot/mandelbrot.ova; built and packed if missing)
# -o  the output directory (default ./out); on a real cluster, a directory every node sees
# -q  extra qsub arguments for every job, e.g. -q "-q long.q -l h_rt=1:00:00"
#
# What it does: one `qsub` per band (the 8 lines of ../mandelbrot/jobs.py), each running
# band.sh: `vmwu run UNIT -- ARGS`, output renamed to OUTDIR/mandelbrot-I.out; then one
# combine job held until the 8 are over (`qsub -hold_jid`): combine.sh tars the outputs and
# draws OUTDIR/mandelbrot.png. It waits for the combine job, reads how every job ended from
# Grid Engine's accounting (`qacct`: exit status and "failed"), and prints the PNG's path.
# Exit status: 0 when every job ran and exited 0, 1 otherwise (the failed jobs are named).
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
EXAMPLE=$HERE/../mandelbrot
UNIT=$EXAMPLE/mandelbrot.ova
OUT=$PWD/out
QSUB_ARGS=""

die() { echo "submit.sh: $*" >&2; exit 1; }

while getopts u:o:q: opt; do
    case $opt in
    u) UNIT=$OPTARG ;;
    o) OUT=$OPTARG ;;
    q) QSUB_ARGS=$OPTARG ;;
    *) die "usage: submit.sh [-u UNIT.ova] [-o OUTDIR] [-q \"QSUB ARGS\"]" ;;
    esac
done
case $UNIT in /*) ;; *) UNIT=$PWD/$UNIT ;; esac
case $OUT in /*) ;; *) OUT=$PWD/$OUT ;; esac

for tool in qsub qstat qacct; do
    command -v "$tool" >/dev/null || die "$tool not found (apt-get install gridengine-client)"
done
VMWU=$(command -v vmwu) || die "vmwu is not on PATH"
PYTHON=$(command -v python3) || die "python3 is not on PATH"

if [ ! -f "$UNIT" ]; then
    sh "$EXAMPLE/build.sh" >&2
    "$VMWU" pack "$EXAMPLE/vmwu.toml" -o "$UNIT" -q >&2
fi
mkdir -p "$OUT/logs"

# $QSUB_ARGS is split into words on purpose (no user value reaches a shell otherwise)
# shellcheck disable=SC2086
submit() { qsub -terse -S /bin/sh -V -wd "$OUT" -j y -o ":$OUT/logs/" $QSUB_ARGS "$@"; }

"$PYTHON" "$EXAMPLE/jobs.py" >"$OUT/jobs.txt"
ids=""
i=0
while read -r args; do
    # the job's parameters: the 11 instance arguments of its band, as words
    # shellcheck disable=SC2086
    id=$(submit -N "mandel-$i" "$HERE/band.sh" "$VMWU" "$UNIT" "$OUT" "$i" $args)
    echo "submit.sh: band $i: job $id: $args" >&2
    ids=$ids${ids:+,}$id
    i=$((i + 1))
done <"$OUT/jobs.txt"
combine=$(submit -N mandel-combine -hold_jid "$ids" "$HERE/combine.sh" "$PYTHON" \
    "$EXAMPLE/combine.py" "$OUT")
echo "submit.sh: combine: job $combine, held until jobs $ids are over" >&2

# Wait for the combine job to leave the queue, then read every job's accounting record
# (it is written a moment after the job ends). Not `qsub -sync y`: its exit code says
# nothing true about a deleted job.
while qstat -j "$combine" >/dev/null 2>&1; do sleep 2; done
status=0
for id in $(echo "$ids,$combine" | tr , ' '); do
    n=0
    until record=$(qacct -j "$id" 2>/dev/null); do
        n=$((n + 1))
        [ "$n" -le 60 ] || { echo "submit.sh: job $id: no accounting record (deleted before it ran?)" >&2; status=1; continue 2; }
        sleep 1
    done
    failed=$(echo "$record" | awk '$1 == "failed" { print $2 }')
    code=$(echo "$record" | awk '$1 == "exit_status" { print $2 }')
    if [ "$failed" != 0 ] || [ "$code" != 0 ]; then
        echo "submit.sh: job $id: failed $failed, exit status $code (see $OUT/logs/)" >&2
        status=1
    fi
done
[ "$status" -eq 0 ] && [ -f "$OUT/mandelbrot.png" ] || exit 1
echo "$OUT/mandelbrot.png"
