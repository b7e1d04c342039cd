"""Combine Mandelbrot region files into one PNG (the thesis's "combining utility").

Usage: python combine.py OUT.png FILE...

Each FILE is the output of `mandelbrot` (format documented in
src/mandelbrot.cpp): an ASCII header line

    MANDEL 1 W H ITERS X0 Y0 X1 Y1 XMIN XMAX YMIN YMAX

followed by (X1-X0)*(Y1-Y0) little-endian uint16 iteration counts. The files
may come in any order; together they must tile the W x H image exactly (no
gaps, no overlaps) and agree on the image parameters. Standard library only.
"""

from __future__ import annotations

import struct
import sys
import zlib
from array import array
from dataclasses import dataclass
from pathlib import Path


class CombineError(Exception):
    """A problem with the input files, reported as one line."""


@dataclass
class Region:
    path: Path
    image: tuple[str, ...]  # W H ITERS XMIN XMAX YMIN YMAX, compared between files
    width: int
    height: int
    iters: int
    x0: int
    y0: int
    x1: int
    y1: int
    counts: array  # uint16 per pixel of the region, row-major


def read_region(path: Path) -> Region:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CombineError(f"{path}: cannot read: {e.strerror}") from None
    header, sep, body = data.partition(b"\n")
    fields = header.decode("ascii", "replace").split()
    if not sep or len(fields) != 13 or fields[:2] != ["MANDEL", "1"]:
        raise CombineError(f"{path}: not a mandelbrot output file (bad header)")
    try:
        w, h, iters, x0, y0, x1, y1 = (int(f) for f in fields[2:9])
    except ValueError:
        raise CombineError(f"{path}: bad header numbers: {header!r}") from None
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise CombineError(f"{path}: region {x0},{y0}..{x1},{y1} outside {w}x{h} image")
    expected = (x1 - x0) * (y1 - y0) * 2
    if len(body) != expected:
        raise CombineError(f"{path}: expected {expected} bytes of pixels, found {len(body)}")
    counts = array("H")
    counts.frombytes(body)
    if sys.byteorder == "big":
        counts.byteswap()
    image = (fields[2], fields[3], fields[4], *fields[9:13])
    return Region(path, image, w, h, iters, x0, y0, x1, y1, counts)


def assemble(regions: list[Region]) -> tuple[int, int, int, array]:
    """Place the regions into one W*H count array, checking the tiling."""
    if not regions:
        raise CombineError("no input files")
    first = regions[0]
    w, h = first.width, first.height
    for r in regions[1:]:
        if r.image != first.image:
            raise CombineError(
                f"{r.path}: image parameters {' '.join(r.image)} differ from "
                f"{first.path}: {' '.join(first.image)}"
            )
    owner: list[Path | None] = [None] * (w * h)  # which file set each pixel
    pixels = array("H", bytes(2 * w * h))
    for r in regions:
        cols = r.x1 - r.x0
        for row in range(r.y0, r.y1):
            start = row * w + r.x0
            for i in range(start, start + cols):
                if owner[i] is not None:
                    raise CombineError(
                        f"{r.path} overlaps {owner[i]} at pixel (x={i - row * w}, y={row})"
                    )
                owner[i] = r.path
            src = (row - r.y0) * cols
            pixels[start : start + cols] = r.counts[src : src + cols]
    missing = [i for i, o in enumerate(owner) if o is None]
    if missing:
        rows = sorted({i // w for i in missing})
        raise CombineError(
            f"gap: {len(missing)} pixels not covered by any file, in rows "
            f"{rows[0]}..{rows[-1]} (first at x={missing[0] % w}, y={missing[0] // w})"
        )
    return w, h, first.iters, pixels


def palette(iters: int) -> list[bytes]:
    """RGB colour for each count 0..iters: a smooth blue-gold ramp, the set black."""
    colours = []
    for n in range(iters + 1):
        if n >= iters:
            colours.append(b"\x00\x00\x00")
            continue
        # sqrt spreads the many low counts (most of the picture) over more colours;
        # n + 1 keeps points that escape at once (n = 0) blue rather than black.
        t = ((n + 1) / (iters + 1)) ** 0.5
        # Bernstein-polynomial ramp: deep blue -> cyan/white -> orange, continuous in t.
        r = 9 * (1 - t) * t**3
        g = 15 * (1 - t) ** 2 * t**2
        b = 8.5 * (1 - t) ** 3 * t
        colours.append(bytes(min(255, int(c * 255 + 0.5)) for c in (r, g, b)))
    return colours


def write_png(path: Path, width: int, height: int, rows: list[bytes]) -> None:
    """Write 8-bit RGB rows (without filter bytes) as a PNG."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    raw = b"".join(b"\x00" + row for row in rows)  # filter type 0 (None) on every row
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit, truecolour
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )
    path.write_bytes(png)


def combine(out: Path, files: list[Path]) -> Path:
    w, h, iters, pixels = assemble([read_region(f) for f in files])
    colours = palette(iters)
    top = len(colours) - 1  # clamp counts from a corrupt file instead of an IndexError
    rows = [b"".join(colours[min(v, top)] for v in pixels[y * w : (y + 1) * w]) for y in range(h)]
    write_png(out, w, h, rows)
    return out


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: python combine.py OUT.png FILE...", file=sys.stderr)
        return 2
    try:
        out = combine(Path(argv[0]), [Path(a) for a in argv[1:]])
    except CombineError as e:
        print(f"combine.py: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"combine.py: cannot write {argv[0]}: {e.strerror}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
