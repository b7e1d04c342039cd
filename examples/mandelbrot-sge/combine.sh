#!/bin/sh
# The last Grid Engine job of submit.sh, held until the bands are over:
#   combine.sh PYTHON COMBINE.PY OUTDIR
# the bands' outputs into one tar file (as the thesis returned them) and into the picture.
PYTHON=$1 COMBINE=$2 OUT=$3
cd "$OUT" || exit 1
tar -cf outputs.tar mandelbrot-*.out || exit 1
exec "$PYTHON" "$COMBINE" mandelbrot.png mandelbrot-*.out
