"""``quantrieve encode``: a dataset part into an index directory, chunk by chunk."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from quantrieve.cli.options import (
    DataDirOpt,
    DatasetOpt,
    DeviceOpt,
    check_distance,
    out_option,
    overwrite_option,
)
from quantrieve.cli.terminal import console, progress_bar
from quantrieve.config import DISTANCES, ConfigError
from quantrieve.pq import DEFAULT_REFINE_DEPTH
from quantrieve.pq.settings import DEFAULT_REFINE_EXPAND, DEFAULT_REFINE_SOURCE, REFINE_SOURCES

ModelArg = Annotated[Path, typer.Argument(help="A run directory or its model.pt.")]
OutOpt = out_option("Index directory to write.")
PartOpt = Annotated[
    str | None,
    typer.Option(help="Dataset part to encode (default: the part the run trained on)."),
]
DistanceOpt = Annotated[str, typer.Option(help=f"Default ranking distance: {DISTANCES}.")]
OverwriteOpt = overwrite_option("index at --out")
ChunkOpt = Annotated[
    int, typer.Option(help="Images per chunk: the unit of memory, progress and resumption.")
]
ShardOpt = Annotated[
    str | None,
    typer.Option(help="i/n: encode chunks i, i+n, ... only (one job of a cluster array)."),
]
RefineDepthOpt = Annotated[
    int,
    typer.Option(
        help="R > 0: keep a finer vector of each item in float16 (2 bytes a dimension) and "
        "re-score the first R results of every search with it; 0: codes alone."
    ),
]
RefineSourceOpt = Annotated[
    str,
    typer.Option(
        help="The finer vector of --refine-depth: 'backbone' (the backbone's representation "
        "before the projection head, at unit length; the better top 10, see docs/results.md) "
        "or 'embedding' (the embedding the code quantizes; half the bytes for the small CNN)."
    ),
]

RefineExpandOpt = Annotated[
    int | None,
    typer.Option(
        help="With --refine-depth: n > 0 re-scores each search's refined head once more "
        "against the mean of the query and its first n refined results (query expansion; "
        f"docs/results.md, 'Query expansion'); 0: off. Default: {DEFAULT_REFINE_EXPAND} with "
        "--refine-depth."
    ),
]


def _shard(text: str | None) -> tuple[int, int] | None:
    """``--shard i/n`` as ``(i, n)``."""
    if text is None:
        return None
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard must be i/n (e.g. 0/4), got '{text}'") from None
    if not 0 <= index < count:
        raise ConfigError(f"--shard i/n needs 0 <= i < n, got '{text}'")
    return index, count


def encode(
    model: ModelArg,
    out: OutOpt,
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    part: PartOpt = None,
    distance: DistanceOpt = "l2",
    device: DeviceOpt = "auto",
    overwrite: OverwriteOpt = False,
    chunk: ChunkOpt = 8192,
    shard: ShardOpt = None,
    refine_depth: RefineDepthOpt = 0,
    refine_source: RefineSourceOpt = DEFAULT_REFINE_SOURCE,
    refine_expand: RefineExpandOpt = None,
) -> None:
    """Encode a dataset part into an index directory (uint8 codes + codebooks + ids + labels).

    Chunk by chunk into OUT.encoding/ (bounded memory; a rerun continues a killed job), then
    into the index. Under torchrun each process takes its share of the chunks; with --shard,
    the shard that finds every chunk done builds the index."""
    import torch

    from quantrieve.api import Retriever, run_parts
    from quantrieve.api.encode_job import EncodeJob
    from quantrieve.index.directory import check_index_output
    from quantrieve.runtime.distributed import setup as setup_distributed
    from quantrieve.runtime.distributed import shutdown

    check_distance(distance)
    if refine_depth < 0:
        raise ConfigError(f"--refine-depth must be >= 0 (0 = off), got {refine_depth}")
    if refine_source not in REFINE_SOURCES:
        raise ConfigError(f"--refine-source must be one of {REFINE_SOURCES}, got '{refine_source}'")
    if refine_expand is not None and refine_expand < 0:
        raise ConfigError(f"--refine-expand must be >= 0 (0 = off), got {refine_expand}")
    if refine_expand and not refine_depth:
        raise ConfigError("--refine-expand expands the refined head: give --refine-depth too")
    if refine_expand is None:
        refine_expand = DEFAULT_REFINE_EXPAND if refine_depth else 0
    share = _shard(shard)
    check_index_output(out, overwrite)
    retriever = Retriever.load(model, device=device)
    place = setup_distributed(retriever.device)
    if place.enabled and retriever.device.type == "cuda":
        retriever.device = torch.device("cuda", place.local_rank)
    if share is None:
        share = (place.rank, place.world_size)
    parts = run_parts(
        retriever, dataset=dataset, data_dir=data_dir, progress=progress_bar("decoding images")
    )
    database = parts.get(part)
    job = EncodeJob(
        retriever,
        database,
        out.with_name(out.name + ".encoding"),
        chunk,
        refine=refine_depth > 0,
        refine_source=refine_source,
    )
    job.run(share, progress_bar("encoding database"))
    shutdown(place)  # every rank's chunks are written
    if not place.is_main:
        return
    if not job.finished():
        left = job.num_chunks - len(job.done_chunks())
        console.print(
            f"shard {share[0]}/{share[1]} done; {left} of {job.num_chunks} chunks left to other "
            f"shards (the last one to finish builds the index), in {job.folder}"
        )
        return
    codes, content = job.codes()
    index = retriever.index_from_codes(
        database,
        codes,
        content,
        distance,
        parts.source(part),
        refine=job.refine_embeddings(),
        refine_depth=refine_depth or DEFAULT_REFINE_DEPTH,
        refine_source=refine_source,
        refine_expand=refine_expand,
    )
    retriever.save(out, overwrite=overwrite)
    job.remove()
    refined = (
        f", {index.refine.nbytes / 1e6:.2f} MB of float16 {index.refine_source} vectors "
        f"re-scoring the first {index.refine_depth} results"
        + (f", expanded by the first {index.refine_expand}" if index.refine_expand else "")
        if index.refine is not None
        else ""
    )
    console.print(
        f"index of {len(index)} items, {index.bits} bits ({index.num_books} x "
        f"{index.num_codewords} codewords, {index.codes.nbytes / 1e6:.2f} MB of codes{refined})"
        f" -> {out}"
    )
