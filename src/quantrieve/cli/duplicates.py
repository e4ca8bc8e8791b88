"""``quantrieve duplicates``: groups of duplicate and near-duplicate images of an index."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from quantrieve.cli.options import IndexDirArg, overwrite_option
from quantrieve.cli.terminal import console, progress_bar
from quantrieve.errors import QuantrieveError
from quantrieve.index.duplicates import DEFAULT_MIN_SIMILARITY

if TYPE_CHECKING:
    from quantrieve.index.duplicates import DuplicateGroup
    from quantrieve.index.live import LiveIndex

SHEET_COLUMNS = 8  # images shown per group

OutFile = Annotated[
    Path,
    typer.Option(
        "--out", "-o", help="Groups file: .jsonl (one group per line) or .csv (one item per line)."
    ),
]
SheetOpt = Annotated[
    Path | None,
    typer.Option(help="Also draw the largest groups side by side into this PNG file."),
]


def duplicates(
    index_dir: IndexDirArg,
    out: OutFile,
    min_similarity: Annotated[
        float,
        typer.Option(
            help="Least cosine similarity of two near-duplicates' embeddings (1.0: exact "
            "copies only). See docs/method.md, 'Duplicates'."
        ),
    ] = DEFAULT_MIN_SIMILARITY,
    sheet: SheetOpt = None,
    sheet_groups: Annotated[int, typer.Option(min=1, help="Groups drawn on the sheet.")] = 12,
    overwrite: overwrite_option("groups file or sheet") = False,
) -> None:
    """Find groups of copies (same pixels) and near-copies (resized, re-compressed, lightly
    edited) among the items of an index, as the index is now (added and deleted items
    included). Near-copies need the embeddings of an index encoded with --refine-depth."""
    from quantrieve.index.duplicates import find_duplicates, group_records
    from quantrieve.index.live import open_live
    from quantrieve.runtime.atomic import atomic_write_text
    from quantrieve.runtime.outputs import check_new_file

    if out.suffix not in (".jsonl", ".csv"):
        raise QuantrieveError(f"{out}: --out must end in .jsonl or .csv")
    check_new_file(out, overwrite, "groups file")
    if sheet is not None:
        check_new_file(sheet, overwrite, "contact sheet")
    live = open_live(index_dir)
    index = live.index
    if index.refine is None:
        console.print(
            "[yellow]warning:[/yellow] this index keeps no embeddings (encode with "
            "--refine-depth): only exact copies (the same pixels) are found"
        )
    progress = progress_bar("comparing candidates")
    groups = find_duplicates(index.codes, index.refine, index.content, min_similarity, progress)
    records = group_records(groups, live.keys, index.ids)
    if out.suffix == ".jsonl":
        text = "".join(json.dumps(r) + "\n" for r in records)
    else:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["group", "item", "id", "exact", "min_similarity"])
        for r in records:
            for item, item_id in zip(r["items"], r["ids"], strict=True):
                writer.writerow([r["group"], item, item_id, r["exact"], r["min_similarity"]])
        text = buffer.getvalue()
    atomic_write_text(text, out)
    grouped = sum(len(g) for g in groups)
    largest = len(groups[0]) if groups else 0
    exact = sum(g.exact for g in groups)
    console.print(
        f"{len(groups):,} groups ({exact:,} of exact copies) hold {grouped:,} of the "
        f"{len(index):,} items; the largest has {largest:,}; written to {out}"
    )
    if sheet is not None and groups:
        _draw_sheet(index_dir, live, groups[:sheet_groups], sheet)
        console.print(
            f"contact sheet of the {min(sheet_groups, len(groups))} largest groups: {sheet}"
        )


def _draw_sheet(index_dir: Path, live: LiveIndex, groups: list[DuplicateGroup], path: Path) -> None:
    """A PNG with one row per group: its first images, as the service shows them."""
    from PIL import Image

    from quantrieve.api import Retriever
    from quantrieve.experiments.figures import contact_sheet
    from quantrieve.runtime.atomic import atomic_path
    from quantrieve.serve.sources import ImageUnavailableError, ItemImages

    model = Retriever.load(index_dir, device="cpu").model
    images = ItemImages(dict(live.index.meta.get("source") or {}), model.image_size, model.channels)
    rows = []
    for group in groups:
        row = []
        for r in group.rows[:SHEET_COLUMNS]:
            try:
                data, _ = images.thumbnail(live, int(r))
                row.append(Image.open(io.BytesIO(data)).convert("RGB"))
            except ImageUnavailableError:
                row.append(None)
        rows.append(row)
    labels = [f"{len(g)} items{' (exact)' if g.exact else ''}" for g in groups]
    with atomic_path(path) as tmp:
        contact_sheet(rows, labels).save(tmp, format="PNG")
