"""What users see while vmwu works: a live status line for a running instance, and step
messages / progress bars for packing and building. rich on a terminal; plain lines
(only at changes) in a log."""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any

from vmwu.guest.events import InstanceState, Phase


class InstanceLine:
    """One live line: phase, elapsed time, the app's progress fraction."""

    def __init__(self, name: str, *, quiet: bool = False) -> None:
        self.name = name
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self._live: Any = None
        self._last_phase: Phase | None = None

    def __enter__(self) -> InstanceLine:
        if self.tty and not self.quiet:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(
                "", console=Console(stderr=True), refresh_per_second=10, transient=True
            )
            self._live.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.__exit__(exc_type, exc, tb)
            self._live = None

    def render(self, state: InstanceState) -> str:
        text = f"{self.name}: {state.phase.value} {state.elapsed():5.1f}s"
        if state.fraction is not None:
            text += f"  {state.fraction * 100:5.1f}%"
            if state.message:
                text += f"  {state.message}"
        return text

    def update(self, state: InstanceState) -> None:
        if self.quiet:
            return
        if self._live is not None:
            self._live.update(self.render(state))
        elif state.phase != self._last_phase:
            print(f"vmwu: {self.render(state)}", file=sys.stderr, flush=True)
        self._last_phase = state.phase


class Steps:
    """Step messages ("building the application disk") and a byte progress bar."""

    def __init__(self, *, quiet: bool = False) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self._t0 = time.monotonic()
        self._status: Any = None
        self._bar: Any = None
        self._task: Any = None

    def step(self, message: str) -> None:
        if self.quiet:
            return
        if self.tty:
            from rich.console import Console

            if self._status is None:
                self._status = Console(stderr=True).status(message)
                self._status.start()
            else:
                self._status.update(message)
        else:
            print(f"vmwu: {message}", file=sys.stderr, flush=True)

    def progress(self, done: int, total: int) -> None:
        """A byte progress bar, shown only when the work is big enough to take a while."""
        if self.quiet or not self.tty or total < 64 * 1024 * 1024:
            return
        if self._bar is None:
            from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

            if self._status is not None:
                self._status.stop()
                self._status = None
            self._bar = Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                DownloadColumn(),
                TimeRemainingColumn(),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task("writing", total=total)
        self._bar.update(self._task, completed=done)

    def close(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
