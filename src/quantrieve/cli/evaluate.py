"""``quantrieve evaluate``: mAP@K, precision@N and the PR curve of labelled queries."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from quantrieve.cli.options import (
    DataDirOpt,
    DatasetOpt,
    DeviceOpt,
    DistanceOpt,
    JsonOpt,
    RefineDepthOpt,
    RefineExpandOpt,
    check_distance,
    overwrite_option,
    positive_ints,
)
from quantrieve.cli.terminal import console, print_result, progress_bar
from quantrieve.config import ConfigError
from quantrieve.data import DataError

IndexDirArg = Annotated[Path, typer.Argument(help="Labelled index directory (the database).")]
PartOpt = Annotated[str, typer.Option(help="Dataset part used as queries.")]
TopkOpt = Annotated[int, typer.Option(help="K of mAP@K.")]
PrecisionAtOpt = Annotated[str, typer.Option(help="Cut-offs of precision@N.")]
PlotOpt = Annotated[Path | None, typer.Option(help="Write the PR curve PNG here.")]
PrQueriesOpt = Annotated[
    int | None,
    typer.Option(
        help="Queries the PR curve is estimated on (0 = all; default: the run's "
        "eval.pr_queries, 2,000). Each ranks the whole index."
    ),
]
OverwriteOpt = overwrite_option("--plot file")


def evaluate(
    index_dir: IndexDirArg,
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    part: PartOpt = "test",
    topk: TopkOpt = 1000,
    precision_at: PrecisionAtOpt = "10,100,1000",
    distance: DistanceOpt = None,
    plot: PlotOpt = None,
    pr_queries: PrQueriesOpt = None,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
    overwrite: OverwriteOpt = False,
    refine_depth: RefineDepthOpt = None,
    refine_expand: RefineExpandOpt = None,
) -> None:
    """mAP@K, precision@N and PR curve of labelled queries against an index."""
    from quantrieve.api import Retriever, run_parts
    from quantrieve.runtime.outputs import check_new_file

    if plot is not None:
        check_new_file(plot, overwrite, "PR curve")
    cuts = positive_ints(precision_at, "--precision-at")
    if topk < 1:
        raise ConfigError(f"--topk must be >= 1, got {topk}")
    if pr_queries is not None and pr_queries < 0:
        raise ConfigError(f"--pr-queries must be >= 0 (0 = every query), got {pr_queries}")
    check_distance(distance)
    retriever = Retriever.load(index_dir, device=device, need_index=True)
    parts = run_parts(
        retriever, dataset=dataset, data_dir=data_dir, progress=progress_bar("decoding images")
    )
    queries = parts.get(part)
    if queries.labels is None:
        raise DataError(f"{parts.dataset}/{part} has no labels; evaluation needs labelled queries")
    result = retriever.evaluate(
        queries,
        topk,
        cuts,
        distance,
        progress_bar("evaluating"),
        pr_queries=pr_queries,
        refine_depth=refine_depth,
        refine_expand=refine_expand,
    )
    index = retriever.index
    assert index is not None
    if plot is not None:
        from quantrieve.experiments.figures import plot_pr_curves, pr_title

        title = pr_title(
            f"{parts.dataset}/{part} ({result.num_queries:,} queries vs "
            f"{result.num_database:,} indexed items)",
            index.bits,
            f"{result.extra['distance']} ADC",
        )
        plot_pr_curves({f"{index.bits} bits": result}, plot, title)
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
        return
    refined = result.extra.get("refine_depth")
    expanded = result.extra.get("refine_expand")
    how = f", first {refined} refined" if refined else ""
    how += f", expanded by {expanded}" if refined and expanded else ""
    print_result(f"{index_dir} ({index.bits} bits, {result.extra['distance']}{how})", result)
    if plot is not None:
        console.print(f"PR curve: {plot}")
