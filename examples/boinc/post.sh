#!/bin/sh
# Host post-processing: check the VM task's step log and summarise it.
set -e
log=${1:-steps.log}
out=${2:-result.txt}
want=$(cat steps.txt)
got=$(grep -c '^step ' "$log")
uniq=$(sort -u "$log" | grep -c '^step ')
if [ "$got" -ne "$want" ] || [ "$uniq" -ne "$want" ]; then
    echo "expected $want distinct steps, found $got ($uniq distinct)" >&2
    exit 1
fi
echo "counted $want steps, each once" > "$out"
cat "$out"
