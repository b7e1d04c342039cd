"""Print the instance arguments of the thesis Mandelbrot experiment (section 6.1.1).

The 1600x800 image of [-2.0, 1.0] x [-1.0, 1.0] at 100 iterations is split into
jobs of 100 rows each, so 8 jobs. Each printed line is one job's instance
parameters (what ends up in /cdrom/param), e.g.:

    -2.0 1.0 -1.0 1.0 1600 800 100 0 0 1600 100

Usage: python jobs.py [--rows-per-job N]

A shell loop over them:

    i=0
    python jobs.py | while read -r args; do
        vmwu run mandelbrot.ova --output-directory out/$i -- $args
        i=$((i + 1))
    done
"""

from __future__ import annotations

import argparse

XMIN, XMAX, YMIN, YMAX = "-2.0", "1.0", "-1.0", "1.0"
WIDTH, HEIGHT, ITERATIONS = 1600, 800, 100


def jobs(rows_per_job: int = 100) -> list[list[str]]:
    """Argument lists (without OUTFILE) covering the image in bands of rows."""
    if rows_per_job < 1:
        raise ValueError("rows_per_job must be at least 1")
    out = []
    for y0 in range(0, HEIGHT, rows_per_job):
        y1 = min(y0 + rows_per_job, HEIGHT)
        region = [0, y0, WIDTH, y1]  # X0 Y0 X1 Y1, half-open
        out.append([XMIN, XMAX, YMIN, YMAX, *map(str, (WIDTH, HEIGHT, ITERATIONS, *region))])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="Print the Mandelbrot job argument lists.")
    parser.add_argument("--rows-per-job", type=int, default=100, metavar="N")
    args = parser.parse_args()
    if args.rows_per_job < 1:
        parser.error("--rows-per-job must be at least 1")
    for job in jobs(args.rows_per_job):
        print(" ".join(job))


if __name__ == "__main__":
    main()
