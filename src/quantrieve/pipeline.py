"""The steps the CLI chains: train -> encode -> index -> evaluate, as plain functions.

Each step takes and returns ordinary objects (configs, image sets, index directories), so the
command line, the demo, the benchmarks and the tests all run the same code.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quantrieve.config import RunConfig
from quantrieve.data import ImageSet, read_dataset
from quantrieve.encode import RetrievalModel, embed_images
from quantrieve.evaluate import RetrievalResult, evaluate_retrieval
from quantrieve.evaluate.code_usage import check_code_usage
from quantrieve.index.search import ADCScorer, lookup_tables
from quantrieve.index.store import IndexFormatError, PQIndex, check_index_output, model_path
from quantrieve.progress import CountingProgress, bar
from quantrieve.train.device import resolve_device
from quantrieve.train.run_info import git_commit, package_versions
from quantrieve.train.trainer import ProgressFactory, Trainer


def train_run(
    config: RunConfig,
    run_dir: str | Path,
    resume: bool = False,
    progress: ProgressFactory | None = bar,
    train_set: ImageSet | None = None,
) -> Path:
    """Train on the ``train`` part of the configured dataset; returns the run directory."""
    if train_set is None:
        parts = read_dataset(
            config.data.dataset,
            config.data.root,
            config.data.image_size or None,
            CountingProgress("decoding images"),
            **config.data.reader_options(),
        )
        train_set = parts["train"] if "train" in parts else parts[next(iter(parts))]
    trainer = Trainer(config, train_set, run_dir, resume=resume, progress=progress)
    trainer.fit()
    return Path(run_dir)


def resolve_model_file(path: str | Path) -> Path:
    """A model file, or a run directory / index directory holding ``model.pt``."""
    path = Path(path)
    if path.is_dir():
        return model_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model not found: {path}")
    return path


def _embed(
    model: RetrievalModel, images: np.ndarray, device: torch.device, what: str, show_progress: bool
) -> torch.Tensor:
    progress_bar = bar(len(images), f"embedding {what}") if show_progress else None
    try:
        return embed_images(
            model, images, device, progress=progress_bar.set if progress_bar else None
        )
    finally:
        if progress_bar is not None:
            progress_bar.close()


def encode_index(
    model_file: str | Path,
    database: ImageSet,
    out_dir: str | Path,
    distance: str = "l2",
    device: str = "auto",
    source: dict[str, Any] | None = None,
    show_progress: bool = True,
    overwrite: bool = False,
) -> PQIndex:
    """Encode a database into an index directory (codes, codebooks, ids, labels, model).

    ``out_dir`` must be new, empty, or (with ``overwrite``) an index; it is checked before
    anything is embedded."""
    check_index_output(out_dir, overwrite)
    model_file = resolve_model_file(model_file)
    model = RetrievalModel.load(model_file)
    dev = resolve_device(device)
    model.to(dev)
    f = _embed(model, database.images, dev, "database", show_progress)
    codes = model.quantizer.encode(f.to(dev)).cpu().numpy()
    run_config = model_file.parent / "config.json"
    index = PQIndex(
        codebooks=model.quantizer.codebooks.detach().cpu().numpy(),
        codes=codes,
        ids=list(database.ids),
        labels=database.labels,
        distance=distance,
        class_names=list(database.class_names),
        meta={
            "source": source or {},
            "code_usage": check_code_usage(
                codes, model.quantizer.num_codewords, "encoded database"
            ).to_dict(),
            "model": model.metadata() | model.training_info,
            "training_config": json.loads(run_config.read_text()) if run_config.is_file() else None,
            "versions": package_versions(),
            "git_commit": git_commit(),
        },
    )
    index.save(out_dir, model_file=model_file, overwrite=overwrite)
    return index


def embed_queries(
    index_dir: str | Path, images: np.ndarray, device: str = "auto", show_progress: bool = True
) -> torch.Tensor:
    """Embeddings of query images with the model stored in the index."""
    model = RetrievalModel.load(model_path(index_dir))
    dev = resolve_device(device)
    model.to(dev)
    return _embed(model, images, dev, "queries", show_progress)


def evaluate_distances(
    distances: Callable[[slice], torch.Tensor],
    query_labels: np.ndarray,
    db_labels: np.ndarray,
    k: int = 1000,
    precision_at: list[int] | tuple[int, ...] = (10, 100, 1000),
    show_progress: bool = True,
) -> RetrievalResult:
    """:func:`evaluate_retrieval` with numpy labels, cut-offs capped at the database size and
    a progress bar."""
    num_db = len(db_labels)
    progress_bar = bar(len(query_labels), "evaluating") if show_progress else None
    try:
        return evaluate_retrieval(
            distances,
            torch.from_numpy(np.asarray(query_labels)),
            torch.from_numpy(np.asarray(db_labels)),
            k=min(k, num_db),
            precision_at=[min(n, num_db) for n in precision_at],
            progress=progress_bar.set if progress_bar else None,
        )
    finally:
        if progress_bar is not None:
            progress_bar.close()


def evaluate_index(
    index: PQIndex,
    query_embeddings: torch.Tensor,
    query_labels: np.ndarray,
    k: int = 1000,
    precision_at: list[int] | tuple[int, ...] = (10, 100, 1000),
    distance: str | None = None,
    show_progress: bool = True,
) -> RetrievalResult:
    """mAP@K, precision@N and PR curve of queries against a labelled index (ADC ranking)."""
    if index.labels is None:
        raise IndexFormatError("the index has no labels, so retrieval cannot be scored")
    if np.asarray(query_labels).shape[1] != index.labels.shape[1]:
        raise IndexFormatError(
            f"queries have {np.asarray(query_labels).shape[1]} label columns, the index "
            f"{index.labels.shape[1]}: they come from different label sets"
        )
    codebooks = torch.from_numpy(index.codebooks)
    scorer = ADCScorer(torch.from_numpy(np.asarray(index.codes)), index.num_codewords)
    dist = distance or index.distance
    result = evaluate_distances(
        lambda s: scorer(lookup_tables(query_embeddings[s], codebooks, dist)),
        query_labels,
        index.labels,
        k,
        precision_at,
        show_progress,
    )
    result.extra["bits"] = index.bits
    result.extra["distance"] = dist  # type: ignore[assignment]
    return result


@dataclass
class SearchHit:
    rank: int
    index: int
    id: str
    distance: float
    labels: list[str]


def search_index(
    index: PQIndex, query_embeddings: torch.Tensor, k: int = 10, distance: str | None = None
) -> list[list[SearchHit]]:
    """Top-k hits per query with ids and label names."""
    dists, idx = index.search(query_embeddings, k, distance)
    out = []
    for row_d, row_i in zip(dists.tolist(), idx.tolist(), strict=True):
        hits = []
        for rank, (d, i) in enumerate(zip(row_d, row_i, strict=True), start=1):
            names: list[str] = []
            if index.labels is not None and index.class_names:
                names = [index.class_names[c] for c in np.flatnonzero(index.labels[i])]
            hits.append(SearchHit(rank, int(i), index.ids[i], float(d), names))
        out.append(hits)
    return out
