"""Columns of a live index that grow at their end at the cost of what is added.

A live index makes a new version per change and keeps the old one for the searches still
using it (:mod:`quantrieve.index.live`). Concatenating every column on every add would cost
O(items) per add; instead a column is the filled front of a larger buffer, and the next version
writes its rows into the spare end of the same buffer and takes a longer view of it. The rows
an older version sees are never written again, so it stays valid. A buffer is outgrown by a
factor of :data:`GROWTH` (one copy of every row per ``1 / (GROWTH - 1)`` of the column added:
amortized O(added)), as a vector or an append-only log does.

Only the last version made from a buffer may extend it in place: a second version made from
an older one (a writer that failed half way, a branch) gets a fresh buffer.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Iterator, Sequence
from typing import overload

import numpy as np

#: A new buffer holds this many times the rows it is made for.
GROWTH = 1.25
#: ... and at least this many spare rows.
MIN_SPARE = 1024

# id(buffer) -> how many of its leading rows some version uses (the end where rows may be
# added); an entry goes with its buffer (arrays cannot be weak dictionary keys: unhashable)
_filled: dict[int, int] = {}


def _spare_of(column: np.ndarray) -> np.ndarray | None:
    """The buffer whose filled front ``column`` is, or None."""
    buffer = column.base
    if not isinstance(buffer, np.ndarray) or type(buffer) is not np.ndarray:
        return None
    if _filled.get(id(buffer)) != len(column) or buffer.dtype != column.dtype:
        return None
    if buffer.shape[1:] != column.shape[1:] or not column.flags.c_contiguous:
        return None
    if column.__array_interface__["data"][0] != buffer.__array_interface__["data"][0]:
        return None
    return buffer


def append_rows(column: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``column`` followed by ``rows`` (along the first axis, in ``column``'s dtype), as the
    filled front of a buffer with spare rows. ``column`` itself is left as it is.

    When ``column`` is the front of such a buffer, made by the last call on it, and the rows
    fit, they are written into the spare end and nothing is copied; otherwise a new buffer of
    :data:`GROWTH` times the rows is made.
    """
    rows = np.asarray(rows, dtype=column.dtype)
    if rows.shape[1:] != column.shape[1:]:
        raise ValueError(f"rows {rows.shape} do not extend a column {column.shape}")
    n, k = len(column), len(rows)
    buffer = _spare_of(column)
    if buffer is None or n + k > len(buffer):
        capacity = max(n + k + MIN_SPARE, int((n + k) * GROWTH))
        buffer = np.empty((capacity, *column.shape[1:]), dtype=column.dtype)
        buffer[:n] = column
        weakref.finalize(buffer, _filled.pop, id(buffer), None)
    buffer[n : n + k] = rows
    _filled[id(buffer)] = n + k
    return buffer[: n + k]


class GrowingIds(Sequence[str]):
    """A read-only list of item ids that a newer version extends in place (see the module
    docstring): the first ``len(self)`` strings of a shared list. Compares equal to any
    sequence of the same strings."""

    __slots__ = ("_shared", "_size")

    def __init__(self, shared: list[str], size: int) -> None:
        self._shared = shared
        self._size = size

    def __len__(self) -> int:
        return self._size

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            start, stop, step = index.indices(self._size)
            if step == 1:  # the bounds are within this version, never negative
                return self._shared[start:stop]
            return [self._shared[i] for i in range(start, stop, step)]
        at = index.__index__()
        if at < 0:
            at += self._size
        if not 0 <= at < self._size:
            raise IndexError("id index out of range")
        return self._shared[at]

    def __iter__(self) -> Iterator[str]:
        return itertools.islice(self._shared, self._size)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str | bytes):
            return NotImplemented
        return len(other) == self._size and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"GrowingIds({list(self)!r})"


def append_ids(ids: Sequence[str], new: Sequence[str]) -> GrowingIds:
    """``ids`` followed by ``new``: the shared list of a :class:`GrowingIds` is extended in place
    when ``ids`` is its last version; any other sequence is copied once into a new one."""
    if isinstance(ids, GrowingIds) and len(ids._shared) == len(ids):
        ids._shared.extend(new)
        return GrowingIds(ids._shared, len(ids._shared))
    shared = [*ids, *new]
    return GrowingIds(shared, len(shared))
