"""The query images of ``search`` and ``embed``: image files given on the command line, or a
part of the run's (or index's) dataset, possibly only some of its items."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from quantrieve.cli.terminal import progress_bar
from quantrieve.config import ConfigError
from quantrieve.data import ImageSet
from quantrieve.errors import QuantrieveError

if TYPE_CHECKING:
    from quantrieve.api import Retriever


def read_queries(
    retriever: Retriever,
    images: list[Path],
    dataset: str | None,
    data_dir: str | None,
    part: str,
    rows: str | None,
) -> ImageSet:
    """The query images: the files ``images`` (decoded as the model takes them), else
    ``part`` of the dataset, or its ``rows`` (comma-separated positions in the part) only."""
    from quantrieve.api import run_parts
    from quantrieve.data.images import load_image_file

    if images:
        model = retriever.model
        if model is None:
            raise QuantrieveError("the index holds no model.pt, so images cannot be embedded")
        arrays = [load_image_file(p, model.image_size, model.channels) for p in images]
        return ImageSet(np.stack(arrays), None, [str(p) for p in images])
    if dataset is None and data_dir is None and rows is None:
        raise ConfigError(
            "give query images (quantrieve search INDEX a.png b.png), or --rows with the "
            "dataset part to take them from"
        )
    parts = run_parts(
        retriever, dataset=dataset, data_dir=data_dir, progress=progress_bar("decoding images")
    )
    source = parts.get(part)
    if rows is None:
        return source
    try:
        idx = np.array([int(i) for i in rows.split(",") if i.strip()])
    except ValueError:
        raise ConfigError(f"--rows must be comma-separated integers, got '{rows}'") from None
    if len(idx) == 0 or idx.min() < 0 or idx.max() >= len(source):
        raise ConfigError(f"--rows must lie in [0, {len(source)}) for {parts.dataset}/{part}")
    return source.subset(idx)
