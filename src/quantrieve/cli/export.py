"""``quantrieve export-faiss`` and ``export-onnx``: an index's codes for faiss, its encoder for
ONNX runtimes."""

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
RefineOpt = Annotated[
    bool,
    typer.Option(
        "--refine/--no-refine",
        help="A refining index is exported as IndexRefine (by backbone vectors: queries are "
        "the embedding and the backbone vector side by side); --no-refine: the codes alone.",
    ),
]


def export_faiss(
    index_dir: IndexDirArg,
    out: OutArg,
    fast_scan: FastScanOpt = False,
    ivf: IvfOpt = None,
    overwrite: OverwriteOpt = False,
    refine: RefineOpt = True,
) -> None:
    """Export codebooks and codes to a faiss index (squared-L2 ADC, like --distance sqeuclidean).

    IndexPQ ranks exactly as quantrieve's sqeuclidean search; --ivf N builds an inverted-file
    index over the same codes (exact at nprobe = N, faster and approximate below); --fast-scan
    quantizes the look-up tables to 8 bits (approximate)."""
    from quantrieve.index import PQIndex
    from quantrieve.index.faiss_export import (
        REFINE_EXPORT_K,
        check_faiss_output,
        faiss_query_width,
    )
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
    write_faiss(index, out, fast_scan, overwrite, refine)
    first = "IndexPQFastScan" if fast_scan else "IndexPQ"
    if not refine or index.refine is None:
        console.print(f"faiss {first} of {len(index)} items -> {out}")
        return
    width = faiss_query_width(index, refine)
    dim = index.codebooks.shape[0] * index.codebooks.shape[2]
    if index.refine_source == "backbone":
        queries = f"embedding ({dim}) then unit backbone vector ({width - dim}), {width} floats"
    else:
        queries = f"the embedding, {width} floats"
    console.print(
        f"faiss IndexRefine ({first}, re-scoring k_factor x k = {index.refine_depth} for k = "
        f"{REFINE_EXPORT_K}) of {len(index)} items -> {out}; queries: {queries}"
    )
    if index.refine_expand:
        console.print(
            f"note: faiss has no query expansion; the index's refine_expand = "
            f"{index.refine_expand} is not exported (faiss ranks as --refine-expand 0)"
        )


OnnxOutArg = Annotated[Path, typer.Argument(help="ONNX file to write (.onnx).")]
OnnxOverwriteOpt = overwrite_option("ONNX file")


def export_onnx(
    index_dir: IndexDirArg,
    out: OnnxOutArg,
    overwrite: OnnxOverwriteOpt = False,
) -> None:
    """Export the index's encoder as ONNX: uint8 images (N, H, W, C) in, the embeddings the
    index is searched with out; checked against torch with onnxruntime when installed."""
    from quantrieve.api import Retriever
    from quantrieve.index.format import codebooks_sha256
    from quantrieve.models.onnx_export import ONNX_TOLERANCE
    from quantrieve.models.onnx_export import export_onnx as write_onnx
    from quantrieve.runtime.outputs import check_new_file

    if out.suffix != ".onnx":
        raise ConfigError(f"{out}: the ONNX file must end in .onnx")
    check_new_file(out, overwrite, "ONNX file")
    retriever = Retriever.load(index_dir, device="cpu", need_index=True)
    assert retriever.model is not None and retriever.index is not None
    index = retriever.index
    backbone = index.refine is not None and index.refine_source == "backbone"
    done = write_onnx(retriever.model, out, codebooks_sha256(index.codebooks), backbone=backbone)
    if done.max_difference is None:
        checked = "not checked (pip install onnxruntime to compare it with torch)"
    else:
        checked = (
            f"onnxruntime matches torch within {done.max_difference:.2g} "
            f"(tolerance {ONNX_TOLERANCE:g} x {done.scale:.3g})"
        )
    console.print(f"encoder -> {out}; {checked}")
