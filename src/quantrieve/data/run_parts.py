"""The images of a run as every command sees them: one rule for which part trains, which part
is the database and which are the queries."""

from __future__ import annotations

from pathlib import Path

from quantrieve.config import DataConfig
from quantrieve.data import DataError, ImageSet, read_dataset
from quantrieve.data.splits import hold_out
from quantrieve.runtime.progress import Progress


def training_part(parts: dict[str, ImageSet]) -> str:
    """The one rule for the unlabelled training set, which is also the database an index
    holds: ``database`` (list-file releases, whose ``train`` part is a small labelled subset
    for supervised methods), else ``train`` (IDX, CIFAR, a collection with held-out queries),
    else the only part. The benchmark protocols train on the database too."""
    for name in ("database", "train"):
        if name in parts:
            return name
    if len(parts) == 1:
        return next(iter(parts))
    raise DataError(f"no part to train on among {', '.join(parts)} (expected 'train')")


def read_run_parts(
    data: DataConfig, run_dir: str | Path | None = None, progress: Progress | None = None
) -> dict[str, ImageSet]:
    """Read a run's dataset and return its parts.

    With ``data.holdout_queries``, a collection without a test part (an image folder's single
    ``all`` part) becomes ``train`` (what the model trains on and the index holds) and ``test``
    (the held-out queries), exactly as the run's trainer carved them: the split saved in
    ``run_dir`` is reused and verified.
    """
    parts = read_dataset(
        data.dataset, data.root, data.image_size or None, progress, **data.reader_options()
    )
    if not data.holdout_queries:
        return parts
    if "test" in parts:
        raise DataError(
            f"{data.root} already has a test part; data.holdout_queries is for collections "
            "without one (set it to 0)"
        )
    source = training_part(parts)
    queries, rest = hold_out(parts[source], data.holdout_queries, data.split_seed, run_dir)
    return {"train": rest, "test": queries}
