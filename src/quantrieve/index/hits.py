"""Search results as users see them: one hit type for the API, the command line and the service.

Two numbers locate a result. Its **item** is the stable number of an indexed image: row i of a
freshly encoded index is item i, an item added later gets the next free number, and a deleted
item's number is never reused, so an item keeps its number across adds, deletes and compaction.
Its **row** is its position in the index version that answered, which shifts after a delete.
Users, URLs (``/items/{item}``) and printed results speak of items; rows are for code that holds
that same version's arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from quantrieve.index.pq_index import PQIndex


@dataclass
class Hit:
    """One result.

    Attributes:
        rank: from 1.
        item: the stable item number (see the module docstring).
        row: the position in the index version searched.
        id: the item's id (a file name, ``part:index``, ``added:<item>``).
        distance: ascending; the refined distance for a refining index's first R results.
        labels: its class names (empty when unlabelled).
        added: whether it was added after the index was encoded (by the service).
    """

    rank: int
    item: int
    row: int
    id: str
    distance: float
    labels: list[str] = field(default_factory=list)
    added: bool = False

    @property
    def index(self) -> int:
        """The row (the name this field had before items and rows were told apart)."""
        return self.row


def make_hits(
    index: PQIndex,
    distances: Sequence[Sequence[float]],
    rows: Sequence[Sequence[int]],
    added: np.ndarray | None = None,
) -> list[list[Hit]]:
    """Hits of a search's (Q, k) distances and rows in ``index``; ``added``: a bool per row."""
    items = index.item_numbers()
    return [
        [
            Hit(
                rank,
                int(items[row]),
                int(row),
                index.ids[row],
                float(dist),
                index.label_names(row),
                bool(added[row]) if added is not None else False,
            )
            for rank, (dist, row) in enumerate(zip(row_d, row_i, strict=True), start=1)
        ]
        for row_d, row_i in zip(distances, rows, strict=True)
    ]
