"""The terminal: rich progress bars with ETA, the consoles results and messages go to, and the
lines and tables several commands print (an epoch's summary, a retrieval result).

Only the command line imports this module. Library code reports progress through the
``progress(done, total)`` callback of :mod:`quantrieve.runtime.progress`; :func:`progress_bar`
turns such calls into a bar."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

if TYPE_CHECKING:  # annotations only: the command line starts without importing torch
    from quantrieve.evaluate import RetrievalResult
    from quantrieve.train.trainer import EpochSummary

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


def print_epoch(summary: EpochSummary, total: int) -> None:
    """One line per training epoch: loss, speed, validation mAP and P@10, and the epoch kept so
    far with its mAP (kept by ``train.labelled_select``: mAP alone, or mAP + P@10)."""
    line = (
        f"epoch {summary.epoch}/{total}  loss {summary.loss:.4f}  "
        f"{summary.images_per_second:.0f} img/s"
    )
    if summary.val_map is not None:
        line += f"  val mAP {summary.val_map:.4f}"
        if summary.val_p10 is not None:
            line += f"  P@10 {summary.val_p10:.4f}"
    if summary.best_val_map is not None:
        line += f"  (kept {summary.best_val_map:.4f} @ epoch {summary.best_epoch})"
    console.print(line)


def print_result(title: str, result: RetrievalResult) -> None:
    """A retrieval result as a table on stdout: mAP@K, precision@N, sizes, seconds."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row(f"mAP@{result.k}", f"{result.map_at_k:.4f}")
    for n, v in result.precision_at.items():
        table.add_row(f"precision@{n}", f"{v:.4f}")
    table.add_row("queries x database", f"{result.num_queries} x {result.num_database}")
    table.add_row("seconds", f"{result.seconds:.2f}")
    stdout.print(table)
