"""``quantrieve export-faiss``: an index's codebooks and codes as a faiss index file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from quantrieve.cli.options import IndexDirArg, overwrite_option
from quantrieve.cli.terminal import console
from quantrieve.config import ConfigError
from quantrieve.pq import bits_per_book

OutArg = Annotated[Path, typer.Argument(help="faiss index file to write.")]
FastScanOpt = Annotated[
    bool,
    typer.Option(
        "--fast-scan",
        help="IndexPQFastScan (K=16): approximate, 8-bit look-up tables, no tie order.",
    ),
]
IvfOpt = Annotated[
    int | None,
    typer.Option(help="IndexIVFPQ with this many inverted lists (search with nprobe)."),
]
OverwriteOpt = overwrite_option("faiss index file")


def export_faiss(
    index_dir: IndexDirArg,
    out: OutArg,
    fast_scan: FastScanOpt = False,
    ivf: IvfOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Export codebooks and codes to a faiss index (squared-L2 ADC, like --distance sqeuclidean).

    IndexPQ ranks exactly as quantrieve's sqeuclidean search; --ivf N builds an inverted-file
    index over the same codes (exact at nprobe = N, faster and approximate below); --fast-scan
    quantizes the look-up tables to 8 bits (approximate)."""
    from quantrieve.index import PQIndex
    from quantrieve.index.faiss_export import check_faiss_output
    from quantrieve.index.faiss_export import export_faiss as write_faiss

    if fast_scan and ivf is not None:
        raise ConfigError("choose one of --fast-scan and --ivf")
    check_faiss_output(out, overwrite)
    index = PQIndex.load(index_dir)
    if ivf is not None:
        from quantrieve.index.ivf import build_ivf, estimate_memory, write_ivf

        m, k, d = index.codebooks.shape
        need = estimate_memory(len(index), m, bits_per_book(k), m * d, ivf)
        console.print(f"IVF of {len(index)} items, {ivf} lists: about {need.total / 1e6:.1f} MB")
        write_ivf(build_ivf(index, ivf), out, overwrite)
        console.print(f"faiss IndexIVFPQ (by_residual=False) -> {out}")
        return
    write_faiss(index, out, fast_scan, overwrite)
    console.print(
        f"faiss {'IndexPQFastScan' if fast_scan else 'IndexPQ'} of {len(index)} items -> {out}"
    )
