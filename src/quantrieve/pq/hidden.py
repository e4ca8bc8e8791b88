"""Rows a search skips: items deleted from a live index whose rows are not dropped yet.

Dropping a deleted item's row from every column of a large index costs a copy of the index;
a live index instead stamps the row with the generation that deleted it and searches skip it
(:mod:`quantrieve.index.writer` drops stamped rows in bulk, now and then). A stamp is written
once, after its generation is committed, into a column the versions share: a version made
before that generation (a search still using it) keeps seeing the row.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class HiddenRows:
    """The hidden rows of one version of a set of codes: those whose stamp ``s`` has
    ``0 < s <= upto``.

    Attributes:
        stamps: int32 (N,), the generation that deleted each row (0: never deleted).
        upto: the version's generation.
        count: how many rows are hidden in this version.
    """

    stamps: Tensor
    upto: int
    count: int

    def of(self, rows: Tensor) -> Tensor:
        """bool, the shape of ``rows``: whether each of these rows is hidden."""
        stamp = self.stamps[rows]
        return (stamp > 0) & (stamp <= self.upto)

    def mask(self) -> Tensor:
        """bool (N,): whether each row is hidden."""
        return (self.stamps > 0) & (self.stamps <= self.upto)
