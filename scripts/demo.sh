#!/usr/bin/env bash
# Sets everything up and runs the main job: the thesis's Mandelbrot experiment (6.1.1) as a
# sweep: pack the unit once, run examples/mandelbrot/mandelbrot.plan (8 jobs of 100 rows,
# `vmwu sweep` with the local executor), whose rootfinish task combines the bands into
# mandelbrot.png. The last line printed is the path of that image.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VMWU=.venv/bin/vmwu
EX=examples/mandelbrot
WORK=${DEMO_DIR:-work/demo}
rm -rf "$WORK" && mkdir -p "$WORK"
UNIT=$(realpath "$WORK")/mandelbrot.ova

bash "$EX/build.sh"
$VMWU pack "$EX/vmwu.toml" -o "$UNIT"
$VMWU sweep "$EX/mandelbrot.plan" --set unit="$UNIT" --results "$WORK/sweep"
cp "$WORK/sweep/mandelbrot.png" "$WORK/mandelbrot.png"
echo "$WORK/mandelbrot.png"
