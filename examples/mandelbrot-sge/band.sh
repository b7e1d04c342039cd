#!/bin/sh
# One Mandelbrot band as a Grid Engine job (submitted by submit.sh):
#   band.sh VMWU UNIT OUTDIR I ARGS...
# runs the work unit with the band's instance arguments and leaves its output, uniquely
# named, in OUTDIR/mandelbrot-I.out (the run's whole output directory stays in OUTDIR/band-I).
VMWU=$1 UNIT=$2 OUT=$3 I=$4
shift 4
rm -rf "$OUT/band-$I" "$OUT/mandelbrot-$I.out"
"$VMWU" run "$UNIT" --quiet --output-directory "$OUT/band-$I" -- "$@"
code=$?
if [ "$code" -eq 0 ]; then
    mv "$OUT/band-$I/mandelbrot.out" "$OUT/mandelbrot-$I.out" || code=1
fi
# 99 would make Grid Engine run the job again, 100 put it in an error state
case $code in 99 | 100) code=1 ;; esac
exit "$code"
