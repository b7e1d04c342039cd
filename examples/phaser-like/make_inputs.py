"""Write N generated input sets for the phaser-like stand-in (thesis figures 6.8, 6.9).

Usage: python make_inputs.py [DIR] [-n N]      (defaults: DIR=out/inputs, N=3)

For each index i in 1..N it writes, following the thesis's naming convention:

    i.pha  the keyword script fed to stdin (it becomes /cdrom/input.pha)
    i.mtz  a stand-in reflection file (text "h k l F SIGF" lines; a real MTZ is
           binary) that becomes /cdrom/phaser.mtz
    i.pdb  a stand-in model in PDB ATOM-record format, becomes /cdrom/phaser.pdb

The scripts say ROOT /output/phaser, not the thesis's ROOT /cdrom/phaser.sum:
the instance ISO at /cdrom is read-only, the output disk is /output.
The data are pseudo-random but fixed per index, so runs are reproducible.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

PHA = """\
MODE MR_AUTO
HKLIN /cdrom/phaser.mtz
LABIN F=F_P321_295 SIGF=SIGF_P321_295
TITLE PxGrid stand-in {index}
SGALTERNATIVE TEST P321
COMPOSITION PROTEIN MW 50000 NUMBER 2
ENSEMBLE pdb PDBFILE /cdrom/phaser.pdb IDENTITY 50
SEARCH ENSEMBLE pdb NUMBER 1
PACK 10
ROOT /output/phaser
"""


def mtz_text(rng: random.Random, index: int, n: int = 200) -> str:
    lines = [f"# phaser-like stand-in reflection data, set {index} (not a real MTZ file)"]
    lines.append("# h k l F SIGF")
    for _ in range(n):
        h, k, l_ = (rng.randint(-20, 20) for _ in range(3))
        f = rng.uniform(10, 1000)
        lines.append(f"{h} {k} {l_} {f:.2f} {f * rng.uniform(0.02, 0.1):.2f}")
    return "\n".join(lines) + "\n"


def pdb_text(rng: random.Random, index: int, n: int = 60) -> str:
    residues = ["ALA", "GLY", "SER", "LEU", "VAL", "LYS"]
    lines = [f"REMARK   1 phaser-like stand-in model, set {index}"]
    for i in range(1, n + 1):
        x, y, z = (rng.uniform(-30, 30) for _ in range(3))
        res = residues[(i - 1) // 4 % len(residues)]
        # PDB fixed columns: serial 7-11, name 13-16, resName 18-20, chain 22,
        # resSeq 23-26, x/y/z 31-54, occupancy, B factor, element 77-78.
        lines.append(
            f"ATOM  {i:5d}  CA  {res} A{(i - 1) // 4 + 1:4d}    "
            f"{x:8.3f}{y:8.3f}{z:8.3f}  1.00{rng.uniform(10, 60):6.2f}           C"
        )
    lines.append("END")
    return "\n".join(lines) + "\n"


def make_inputs(directory: Path, count: int = 3) -> list[Path]:
    """Write count input sets into directory; return the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for index in range(1, count + 1):
        rng = random.Random(index)
        for suffix, text in (
            ("pha", PHA.format(index=index)),
            ("mtz", mtz_text(rng, index)),
            ("pdb", pdb_text(rng, index)),
        ):
            path = directory / f"{index}.{suffix}"
            path.write_text(text)
            written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description="Write stand-in Phaser input sets.")
    parser.add_argument("directory", nargs="?", default="out/inputs", type=Path)
    parser.add_argument("-n", "--count", type=int, default=3, help="number of sets (default 3)")
    args = parser.parse_args()
    if args.count < 1:
        parser.error("--count must be at least 1")
    try:
        paths = make_inputs(args.directory, args.count)
    except OSError as e:
        parser.exit(1, f"make_inputs.py: cannot write in {args.directory}: {e.strerror}\n")
    print(f"wrote {len(paths)} files for {args.count} input set(s) in {args.directory}")


if __name__ == "__main__":
    main()
