"""The terminal: rich progress bars with ETA, and the consoles results and messages go to.

Only the command line imports this module. Library code reports progress through the
``progress(done, total)`` callback of :mod:`quantrieve.runtime.progress`; :func:`progress_bar`
turns such calls into a bar."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# Progress and status go to stderr; results (tables, JSON) go to stdout so they can be piped.
console = Console(stderr=True)
stdout = Console()


class Bar:
    """One task on a rich progress display; ``update(advance, **fields)`` shows the fields."""

    def __init__(self, total: int, description: str) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._task = self._progress.add_task(description, total=total, info="")
        self._progress.start()

    def update(self, advance: int = 1, **fields: Any) -> None:
        info = " ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items()
        )
        self._progress.update(self._task, advance=advance, info=info)

    def set(self, completed: int) -> None:
        self._progress.update(self._task, completed=completed)

    def close(self) -> None:
        self._progress.stop()


class CountingProgress:
    """A ``progress(done, total)`` callback that opens a bar on first use and closes it when
    ``done`` reaches ``total``; a later call opens a new bar."""

    def __init__(self, description: str) -> None:
        self.description = description
        self._bar: Bar | None = None

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            self._bar = Bar(total, self.description)
        self._bar.set(done)
        if done >= total:
            self._bar.close()
            self._bar = None


def progress_bar(description: str) -> CountingProgress:
    """A ``progress(done, total)`` callback drawing a bar named ``description``."""
    return CountingProgress(description)
