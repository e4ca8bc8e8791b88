"""``quantrieve baseline``: a shallow method on raw pixels, scored like the deep ones."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from quantrieve.cli.options import JsonOpt, check_distance, data_dir_option
from quantrieve.cli.terminal import print_result, progress_bar
from quantrieve.config import METHODS
from quantrieve.data import DataError

_NAMES = [name for name, method in METHODS.items() if method.kind == "shallow"]
MethodArg = Annotated[
    str, typer.Argument(help=f"{', '.join(_NAMES[:-1])} or {_NAMES[-1]} (on raw pixels).")
]
BitsOpt = Annotated[int, typer.Option(help="Code length (M * log2(K)).")]
CodewordsOpt = Annotated[int, typer.Option("--codewords", help="K.")]
RunOpt = Annotated[
    Path | None,
    typer.Option(help="A run or index: its database and queries (held-out ones included)."),
]
DatasetOpt = Annotated[
    str | None, typer.Option(help="Dataset reader name (default: the run's, or fashion-mnist).")
]
DataDirOpt = data_dir_option("Dataset folder (default: the run's).")
TopkOpt = Annotated[int, typer.Option(help="K of mAP@K.")]
DistanceOpt = Annotated[str, typer.Option(help="ADC distance for pq/opq.")]


def baseline(
    method: MethodArg,
    bits: BitsOpt = 32,
    num_codewords: CodewordsOpt = 16,
    run: RunOpt = None,
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    topk: TopkOpt = 1000,
    distance: DistanceOpt = "sqeuclidean",
    as_json: JsonOpt = False,
) -> None:
    """A shallow baseline on raw pixels (train part = database, test part = queries)."""
    from quantrieve.api import run_parts
    from quantrieve.baselines import fit_baseline
    from quantrieve.config import num_books_for_bits
    from quantrieve.evaluate import evaluate_distances

    check_distance(distance)
    parts = run_parts(
        run, dataset=dataset, data_dir=data_dir, progress=progress_bar("decoding images")
    )
    database, queries = parts.get(), parts.get("test")
    if queries.labels is None or database.labels is None:
        raise DataError(
            f"{parts.dataset} at {parts.root} is unlabelled; a baseline needs labels to be scored"
        )
    books = num_books_for_bits(bits, num_codewords)
    fitted = fit_baseline(method, database.images, queries.images, books, num_codewords, distance)
    result = evaluate_distances(fitted.distances, queries.labels, database.labels, topk)
    if as_json:
        sys.stdout.write(
            json.dumps({"method": method, "bits": fitted.bits, **result.to_dict()}) + "\n"
        )
        return
    print_result(f"{method} on raw pixels, {fitted.bits or 'full-precision'} bits", result)
