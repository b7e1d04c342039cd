#!/bin/sh
# Host pre-processing: read the unpacked settings, write what the VM task needs.
set -e
settings=${1:-input/settings.txt}
steps=$(sed -n 's/^steps *= *//p' "$settings")
case "$steps" in '' | *[!0-9]*) echo "no steps = N in $settings" >&2; exit 2 ;; esac
echo "$steps" > steps.txt
echo "the VM task will count $steps steps"
