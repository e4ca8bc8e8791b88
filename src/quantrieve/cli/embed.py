"""``quantrieve embed``: query embeddings to a ``.npy`` file, their ids beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from quantrieve.cli.options import (
    DataDirOpt,
    DatasetOpt,
    DeviceOpt,
    RowsOpt,
    out_option,
    overwrite_option,
)
from quantrieve.cli.queries import read_queries
from quantrieve.cli.terminal import console, progress_bar

ModelArg = Annotated[Path, typer.Argument(help="An index directory, a run directory or model.pt.")]
OutOpt = out_option("The .npy file to write.")
ImagesArg = Annotated[
    list[Path] | None, typer.Argument(help="Image files (several, or a shell glob).")
]
PartOpt = Annotated[str, typer.Option(help="Dataset part, when no image files are given.")]
OverwriteOpt = overwrite_option("--out file")


def embed(
    model: ModelArg,
    out: OutOpt,
    query_images: ImagesArg = None,
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    part: PartOpt = "test",
    rows: RowsOpt = None,
    device: DeviceOpt = "auto",
    overwrite: OverwriteOpt = False,
) -> None:
    """Write query embeddings (float32 N x M*d .npy), e.g. to search an exported faiss index;
    their ids go to OUT with the suffix .ids.txt."""
    from quantrieve.api import Retriever
    from quantrieve.runtime.atomic import atomic_path
    from quantrieve.runtime.outputs import check_new_file

    check_new_file(out, overwrite, "embeddings")
    ids_file = out.with_suffix(".ids.txt")
    check_new_file(ids_file, overwrite, "ids")
    retriever = Retriever.load(model, device=device)
    queries = read_queries(retriever, list(query_images or []), dataset, data_dir, part, rows)
    embeddings = retriever.embed(queries, progress=progress_bar("embedding"))
    with atomic_path(out) as tmp, open(tmp, "wb") as handle:
        np.save(handle, embeddings)
    with atomic_path(ids_file) as tmp:
        tmp.write_text("".join(f"{i}\n" for i in queries.ids), encoding="utf-8")
    console.print(f"{len(embeddings)} embeddings of dimension {embeddings.shape[1]} -> {out}")
