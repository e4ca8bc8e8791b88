"""``quantrieve search``: top-k index items for query images, as tables, JSON or a PNG grid."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer
from rich.table import Table

from quantrieve.cli.options import (
    DataDirOpt,
    DatasetOpt,
    DeviceOpt,
    DistanceOpt,
    IndexDirArg,
    JsonOpt,
    RefineDepthOpt,
    RefineExpandOpt,
    RowsOpt,
    check_distance,
    overwrite_option,
)
from quantrieve.cli.queries import read_queries
from quantrieve.cli.terminal import console, progress_bar, stdout
from quantrieve.config import ConfigError
from quantrieve.data import DataError, ImageSet

QueryImagesArg = Annotated[
    list[Path] | None, typer.Argument(help="Query image files (several, or a shell glob).")
]
ImageOpt = Annotated[
    list[Path] | None, typer.Option("--image", help="Query image file (repeatable).")
]
PartOpt = Annotated[str, typer.Option(help="Dataset part of the queries.")]
KOpt = Annotated[int, typer.Option("-k", help="Results per query.")]
GridOpt = Annotated[
    Path | None,
    typer.Option(help="Also draw the queries and their results as a PNG grid here."),
]
OverwriteOpt = overwrite_option("--grid or --out file")
LabelOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--label",
        help="Only items with this class label (repeatable: any of them). Exact, like an "
        "unfiltered search.",
    ),
]
IdPrefixOpt = Annotated[
    str | None,
    typer.Option(
        "--id-prefix",
        help="Only items whose id starts with this (a sub-folder of the indexed folder, e.g. "
        "'2024/').",
    ),
]
BatchOpt = Annotated[
    Path | None,
    typer.Option(
        "--batch",
        help="Search every image of this folder, or of this list file (one path per line), "
        "streaming the results to --out.",
    ),
]
OutOpt = Annotated[
    Path | None,
    typer.Option(
        "--out",
        "-o",
        help="With --batch: results file, .jsonl (a line per query) or .csv (a line per hit).",
    ),
]

if TYPE_CHECKING:
    from quantrieve.api import Retriever


def search(
    index_dir: IndexDirArg,
    query_images: QueryImagesArg = None,
    images: ImageOpt = None,
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    part: PartOpt = "test",
    rows: RowsOpt = None,
    k: KOpt = 10,
    distance: DistanceOpt = None,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
    grid: GridOpt = None,
    overwrite: OverwriteOpt = False,
    refine_depth: RefineDepthOpt = None,
    refine_expand: RefineExpandOpt = None,
    batch: BatchOpt = None,
    out: OutOpt = None,
    label: LabelOpt = None,
    id_prefix: IdPrefixOpt = None,
) -> None:
    """Top-k database items for query images, by ADC with a per-query look-up table."""
    from quantrieve.api import Retriever
    from quantrieve.runtime.outputs import check_new_file

    if k < 1:
        raise ConfigError(f"-k must be >= 1, got {k}")
    check_distance(distance)
    where = {"labels": label or None, "id_prefix": id_prefix}
    refinement = {"refine_depth": refine_depth, "refine_expand": refine_expand}
    if batch is not None or out is not None:
        _search_batch(index_dir, batch, out, k, distance, refinement, device, overwrite, where)
        return
    if grid is not None:
        check_new_file(grid, overwrite, "result grid")
    retriever = Retriever.load(index_dir, device=device, need_index=True)
    queries = read_queries(
        retriever, [*(query_images or []), *(images or [])], dataset, data_dir, part, rows
    )
    bar = progress_bar("embedding queries") if len(queries) > 5000 else None
    results = retriever.search(queries, k, distance, progress=bar, **refinement, **where)
    if grid is not None:
        _draw_grid(retriever, queries, results.indices, grid)
    if as_json:
        payload = [
            {"query": q, "results": [h.__dict__ for h in hits]}
            for q, hits in zip(queries.ids, results.hits, strict=True)
        ]
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
        return
    for q, hits in zip(queries.ids, results.hits, strict=True):
        table = Table(title=f"query {q}")
        for column in ("rank", "item", "id", "distance", "labels"):
            table.add_column(column)
        for h in hits:
            table.add_row(str(h.rank), str(h.item), h.id, f"{h.distance:.4f}", ", ".join(h.labels))
        stdout.print(table)


def _draw_grid(retriever: Retriever, queries: ImageSet, neighbours: np.ndarray, path: Path) -> None:
    """The queries and their results as a PNG; database images come from the index's source."""
    from quantrieve.api import run_parts
    from quantrieve.experiments.figures import plot_retrieval_grid

    assert retriever.index is not None
    part = (retriever.index.meta.get("source") or {}).get("part", "train")
    database = run_parts(retriever, progress=progress_bar("decoding images")).get(part)
    if database.ids != retriever.index.ids:
        raise DataError(
            f"the index's items are not its source images ({part}): they changed since it was "
            "encoded, or the search service added or deleted items, so results cannot be "
            "drawn; search without --grid, or encode it again"
        )
    shown = min(len(queries), 16)
    plot_retrieval_grid(queries.subset(np.arange(shown)), database, neighbours[:shown], path)
    console.print(f"result grid: {path}")


def _search_batch(
    index_dir: Path,
    batch: Path | None,
    out: Path | None,
    k: int,
    distance: str | None,
    refinement: dict[str, int | None],
    device: str,
    overwrite: bool,
    where: dict[str, list[str] | str | None],
) -> None:
    """``--batch SOURCE --out FILE``: every query of a folder or list file, one result line
    per query (JSONL) or per hit (CSV), written as it is found (constant memory)."""
    import csv

    from quantrieve.api import Retriever
    from quantrieve.api.batch_search import query_files, search_files
    from quantrieve.runtime.atomic import atomic_path
    from quantrieve.runtime.outputs import check_new_file

    if batch is None or out is None:
        raise ConfigError(
            "--batch and --out go together: quantrieve search INDEX --batch "
            "FOLDER --out results.jsonl"
        )
    if out.suffix not in (".jsonl", ".csv"):
        raise ConfigError(f"{out}: --out must end in .jsonl or .csv")
    check_new_file(out, overwrite, "results file")
    retriever = Retriever.load(index_dir, device=device, need_index=True)
    searched = failed = 0
    with atomic_path(out) as tmp, tmp.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n") if out.suffix == ".csv" else None
        if writer is not None:
            writer.writerow(["query", "rank", "item", "id", "distance", "labels", "error"])
        files = query_files(batch)
        results = search_files(retriever, files, k, distance, **refinement, **where)
        for result in results:
            searched += 1
            failed += result.error is not None
            if writer is None:
                line = {"query": result.query, "results": [_hit_json(h) for h in result.hits]}
                if result.error is not None:
                    line["error"] = result.error
                handle.write(json.dumps(line) + "\n")
            elif result.error is not None:
                writer.writerow([result.query, "", "", "", "", "", result.error])
            else:
                for h in result.hits:
                    writer.writerow(
                        [result.query, h.rank, h.item, h.id, h.distance, ";".join(h.labels), ""]
                    )
    console.print(f"searched {searched - failed:,} queries ({failed:,} unreadable) -> {out}")


def _hit_json(hit: object) -> dict:
    fields = dict(hit.__dict__)
    fields.pop("row", None)  # a position in one version of the index; items are stable
    return fields
