"""Which images a run or an index holds for a part: the one entry every reader of a run's
images goes through (the ``train``, ``encode``, ``search``, ``embed``, ``evaluate`` and
``baseline`` commands, the demo, the search service's image source).

A run's parts are its dataset's parts, read from the run's (or index's) own dataset, folder
and image size, as its model takes them; held-out queries of the run are its ``test`` part,
the rest its ``train`` part (the split saved with the run, reused and verified). The part
that trains is the part an index holds (:func:`~quantrieve.data.run_parts.training_part`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantrieve.api.retriever import Retriever
from quantrieve.config import RunConfig
from quantrieve.data import DataError, ImageSet
from quantrieve.data.run_parts import read_run_parts, training_part
from quantrieve.runtime.progress import Progress

#: What :func:`run_parts` reads the images of: a loaded retriever, an index directory, a run
#: directory or ``model.pt``, or None (the built-in default config).
RunSource = Retriever | str | Path | None


@dataclass(frozen=True)
class RunParts:
    """The parts of a run's images and where they come from.

    Attributes:
        parts: the images by part name (``train``, ``test``, ``database``, ``all``, ...).
        dataset: the dataset reader they were read with.
        root: the dataset folder.
        run_dir: the run whose held-out split was applied (None: no run).
    """

    parts: dict[str, ImageSet]
    dataset: str
    root: str
    run_dir: str | None = None

    @property
    def training_part(self) -> str:
        """The name of the part the run trains on, which is the database an index holds."""
        return training_part(self.parts)

    def name(self, part: str | None = None) -> str:
        """``part``, or the training part for None."""
        return part or self.training_part

    def get(self, part: str | None = None) -> ImageSet:
        """The images of ``part`` (None: the training part); the error lists the parts."""
        name = self.name(part)
        if name not in self.parts:
            raise DataError(
                f"dataset '{self.dataset}' at {self.root} has no part '{name}' (has: "
                f"{', '.join(self.parts)}); choose one with --part, or hold out queries when "
                "training (--holdout N)"
            )
        return self.parts[name]

    def source(self, part: str | None = None) -> dict[str, Any]:
        """Where ``part`` came from, as an index records it (``index.json`` ``source``)."""
        where: dict[str, Any] = {"dataset": self.dataset, "root": self.root}
        if self.run_dir is not None:
            where["run_dir"] = self.run_dir
        return {**where, "part": self.name(part)}


def run_parts(
    of: RunSource = None,
    *,
    dataset: str | None = None,
    data_dir: str | Path | None = None,
    held_out: bool = True,
    progress: Progress | None = None,
) -> RunParts:
    """The parts of the images a run or an index holds.

    Args:
        of: a retriever, an index or run directory (or ``model.pt``), or None for the default
            config. An index's recorded source (dataset, folder, run) wins over its config.
        dataset: another dataset reader; with it or ``data_dir``, that dataset's own parts
            (no held-out split).
        data_dir: another dataset folder.
        held_out: False: the parts as the reader returns them, before the run's held-out
            queries are carved out (what a trainer is given, which carves them itself).
        progress: ``progress(done, total)`` while image files are decoded.
    """
    retriever = Retriever.load(of) if isinstance(of, str | Path) else of
    data = dataclasses.replace(retriever.config.data if retriever is not None else RunConfig().data)
    source: dict[str, Any] = {}
    if retriever is not None and retriever.index is not None:
        source = dict(retriever.index.meta.get("source") or {})
    run_dir = source.get("run_dir") or (retriever.run_dir if retriever is not None else None)
    if dataset is not None or data_dir is not None or not held_out:
        data.holdout_queries = 0  # another dataset: its own parts
    data.dataset = dataset or source.get("dataset") or data.dataset
    data.root = str(data_dir or source.get("root") or data.root)
    if retriever is not None and retriever.model is not None:  # images as the model takes them
        data.image_size = retriever.model.image_size
        data.channels = retriever.model.channels if data.dataset == "image-folder" else 0
    parts = read_run_parts(data, run_dir, progress)
    return RunParts(
        parts,
        data.dataset,
        data.root,
        None if run_dir is None else str(Path(run_dir).resolve()),
    )


def run_images(
    of: RunSource,
    part: str | None = None,
    *,
    dataset: str | None = None,
    data_dir: str | Path | None = None,
    progress: Progress | None = None,
) -> ImageSet:
    """The images a run or an index holds for ``part`` (None: the training part, which is the
    database; ``test``: the queries, held-out ones included). See :func:`run_parts`."""
    return run_parts(of, dataset=dataset, data_dir=data_dir, progress=progress).get(part)
