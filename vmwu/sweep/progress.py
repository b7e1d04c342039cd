"""Live progress of a sweep: a rich bar on a terminal (done/failed/running/pending, rate,
ETA); in a non-interactive log, a plain line every ``interval`` seconds and at the end."""

from __future__ import annotations

import sys
import time
from typing import Any

from vmwu.sweep.journal import State


def progress_line(counts: dict[State, int], rate: float | None) -> str:
    total = sum(counts.values())
    ended = counts[State.DONE] + counts[State.FAILED] + counts[State.CANCELLED]
    queued = counts[State.SUBMITTING] + counts[State.SUBMITTED]
    text = (
        f"{ended}/{total} ended: {counts[State.DONE]} done, {counts[State.FAILED]} failed, "
        f"{counts[State.CANCELLED]} cancelled, {counts[State.RUNNING]} running, "
        f"{queued} queued, {counts[State.PENDING]} pending"
    )
    if rate:
        text += f"; {rate * 60:.1f} jobs/min"
        remaining = total - ended
        if remaining:
            text += f", ETA {_duration(remaining / rate)}"
    return text


def compact_line(counts: dict[State, int], rate: float | None) -> str:
    """The same, short enough to sit beside a bar in 80 columns."""
    waiting = counts[State.PENDING] + counts[State.SUBMITTING] + counts[State.SUBMITTED]
    text = (
        f"done {counts[State.DONE]}  failed {counts[State.FAILED]}  "
        f"running {counts[State.RUNNING]}  pending {waiting}"
    )
    if counts[State.CANCELLED]:
        text += f"  cancelled {counts[State.CANCELLED]}"
    if rate:
        remaining = sum(counts.values()) - counts[State.DONE] - counts[State.FAILED]
        remaining -= counts[State.CANCELLED]
        text += f"  {rate * 60:.1f}/min"
        if remaining:
            text += f"  ETA {_duration(remaining / rate)}"
    return text


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class SweepProgress:
    def __init__(self, *, quiet: bool = False, interval: float = 10.0) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.interval = interval
        self.t0 = time.monotonic()
        self.ended0: int | None = None
        self.last_print = 0.0
        self.last_text = ""
        self._bar: Any = None
        self._task: Any = None

    def _rate(self, ended: int) -> float | None:
        if self.ended0 is None:
            self.ended0 = ended
        elapsed = time.monotonic() - self.t0
        done_here = ended - self.ended0
        return done_here / elapsed if done_here > 0 and elapsed > 0 else None

    def update(self, counts: dict[State, int], *, final: bool = False) -> None:
        if self.quiet:
            return
        total = sum(counts.values())
        ended = counts[State.DONE] + counts[State.FAILED] + counts[State.CANCELLED]
        rate = self._rate(ended)
        text = progress_line(counts, rate)
        if self.tty:
            text = compact_line(counts, rate)
            if self._bar is None:
                from rich.console import Console
                from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

                self._bar = Progress(
                    TextColumn("sweep"),
                    BarColumn(bar_width=16),
                    MofNCompleteColumn(),
                    TextColumn("{task.description}"),
                    console=Console(stderr=True),
                    transient=False,
                )
                self._bar.start()
                self._task = self._bar.add_task(text, total=total)
            self._bar.update(self._task, completed=ended, total=total, description=text)
            if final:
                self.close()
            return
        now = time.monotonic()
        if final or (now - self.last_print >= self.interval and text != self.last_text):
            print(f"vmwu: sweep: {text}", file=sys.stderr, flush=True)
            self.last_print, self.last_text = now, text

    def note(self, message: str) -> None:
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.console.print(f"vmwu: {message}")
        else:
            print(f"vmwu: {message}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
