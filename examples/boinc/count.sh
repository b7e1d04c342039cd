#!/bin/sh
# The VM task: counts through N steps (N from steps.txt, else $1, else 30), one step of
# STEP_SECONDS of work each, and reports its progress to the host with vmwu-progress.
#
# It runs in /output, the output disk. The counter lives there too, as an application's
# own checkpoint would: a guest that booted again on this disk would go on from it. A
# guest restored from one of the wrapper's checkpoints does not even need it: memory,
# disks and all, it goes on from the instruction it was paused at.
N=$(cat steps.txt 2> /dev/null || echo "${1:-30}")
STEP_SECONDS=${STEP_SECONDS:-1}
i=0
[ -r counter ] && read -r i < counter
while [ "$i" -lt "$N" ]; do
    sleep "$STEP_SECONDS"
    i=$((i + 1))
    echo "$i" > counter.tmp && mv counter.tmp counter
    echo "step $i" >> steps.log
    # on the console (console.log on the host): where a restored guest goes on from
    echo "count: step $i of $N" > /dev/console
    vmwu-progress "$(awk "BEGIN { print $i / $N }")" "step $i of $N"
done
echo "counted to $N"
