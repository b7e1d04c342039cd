#!/usr/bin/env bash
# Sets everything up and runs the main job: the thesis's Mandelbrot experiment (6.1.1) as
# a work unit: pack once, run 8 instances of 100 rows each, combine into mandelbrot.png.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VMWU=.venv/bin/vmwu
EX=examples/mandelbrot
WORK=${DEMO_DIR:-work/demo}
rm -rf "$WORK" && mkdir -p "$WORK"

bash "$EX/build.sh"
$VMWU pack "$EX/vmwu.toml" -o "$WORK/mandelbrot.ova"
i=0
.venv/bin/python "$EX/jobs.py" | while read -r -a job; do
    $VMWU run "$WORK/mandelbrot.ova" --output-directory "$WORK/out/$i" -- "${job[@]}"
    i=$((i + 1))
done
.venv/bin/python "$EX/combine.py" "$WORK/mandelbrot.png" "$WORK"/out/*/mandelbrot.out
