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
RefineOpt = Annotated[
    bool,
    typer.Option(
        "--refine/--no-refine",
        help="For an index that refines by backbone vectors: write each query's embedding and "
        "unit backbone vector side by side, the queries its export-faiss file takes "
        "(--no-refine: the embeddings alone, for an export made with --no-refine).",
    ),
]


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
    refine: RefineOpt = True,
) -> None:
    """Write query embeddings (float32 N x M*d .npy), e.g. to search an exported faiss index;
    their ids go to OUT with the suffix .ids.txt. For an index refining by backbone vectors,
    each row is the embedding followed by the unit backbone vector (what export-faiss takes)."""
    import torch

    from quantrieve.api import Retriever
    from quantrieve.runtime.atomic import atomic_path
    from quantrieve.runtime.outputs import check_new_file

    check_new_file(out, overwrite, "embeddings")
    ids_file = out.with_suffix(".ids.txt")
    check_new_file(ids_file, overwrite, "ids")
    retriever = Retriever.load(model, device=device)
    queries = read_queries(retriever, list(query_images or []), dataset, data_dir, part, rows)
    bar = progress_bar("embedding")
    index = retriever.index
    backbone = index is not None and index.refine_source == "backbone"
    if refine and backbone and index is not None and index.refine is not None:
        f, vectors = retriever.embed_for_index(queries, index, progress=bar)
        assert vectors is not None
        embeddings = torch.cat([f, vectors.float()], 1).numpy()
        what = f"embeddings | backbone vectors, {f.shape[1]} + {vectors.shape[1]} floats"
    else:
        embeddings = retriever.embed(queries, progress=bar)
        what = f"embeddings of dimension {embeddings.shape[1]}"
    with atomic_path(out) as tmp, open(tmp, "wb") as handle:
        np.save(handle, embeddings)
    with atomic_path(ids_file) as tmp:
        tmp.write_text("".join(f"{i}\n" for i in queries.ids), encoding="utf-8")
    console.print(f"{len(embeddings)} {what} -> {out}")
