"""``quantrieve add`` and ``quantrieve sync``: keep an index in step with its image folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from quantrieve.cli.options import DeviceOpt, IndexDirArg
from quantrieve.cli.terminal import console, progress_bar

WorkersOpt = Annotated[
    int | None,
    typer.Option("--workers", min=1, help="Processes decoding the images (default: every core)."),
]


def _summary(report: object) -> None:
    from quantrieve.api.folder_sync import SyncReport

    assert isinstance(report, SyncReport)
    console.print(
        f"added {len(report.added):,}, removed {len(report.removed):,}, replaced "
        f"{len(report.replaced):,} (changed files), unchanged {report.unchanged:,}; index "
        f"version {report.generation}"
    )
    for name, reason in list(report.unreadable.items())[:10]:
        console.print(f"[yellow]skipped[/yellow] {name}: unreadable image ({reason})")
    if len(report.unreadable) > 10:
        console.print(f"[yellow]skipped[/yellow] ... and {len(report.unreadable) - 10} more")


def add(
    index_dir: IndexDirArg,
    paths: Annotated[list[Path], typer.Argument(help="Image files in the index's folder.")],
    workers: WorkersOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Add image files of the index's image folder as new items. The index refers to each file
    (no copy of its bytes); a running service sees the new items when it reloads."""
    from quantrieve.api.folder_sync import add_files

    report = add_files(index_dir, paths, workers, progress_bar("adding"), device)
    _summary(report)
    console.print(
        f"new items: {', '.join(map(str, report.added[:20]))}"
        + (" ..." if len(report.added) > 20 else "")
    )


def sync(
    index_dir: IndexDirArg,
    folder: Annotated[
        Path | None,
        typer.Argument(help="The folder's new place, if it moved (default: where it was)."),
    ] = None,
    workers: WorkersOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Bring an index in step with its image folder: new files added, the items of removed
    files deleted, changed files replaced (new item numbers). Only the index changes, never
    a file of the folder; uploads through the service are kept."""
    from quantrieve.api.folder_sync import sync_folder

    report = sync_folder(index_dir, workers, progress_bar("syncing"), device, folder)
    if folder is not None:
        console.print(f"image folder: {folder.resolve()}")
    _summary(report)
