"""``quantrieve compact``: rewrite an index changed by a service into one base and segment."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from quantrieve.cli.terminal import console

IndexDirArg = Annotated[Path, typer.Argument(help="Index directory changed by a service.")]


def compact(index_dir: IndexDirArg) -> None:
    """Rewrite an index without its deleted items, its added items in one segment (item
    numbers kept). The new version is complete before the old one is removed; refused while a
    service writes to the index."""
    from quantrieve.index.compaction import compact as compact_index

    report = compact_index(index_dir)
    console.print(
        f"compacted {index_dir}: {report.items} items ({report.base_items} in the base, "
        f"{report.added_items} added, in one segment); {report.dropped} deleted items dropped, "
        f"{report.segments_before} segments merged; index version {report.generation}"
    )
