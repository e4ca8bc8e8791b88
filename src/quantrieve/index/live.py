"""Live versions of an index directory: the base with its segments and deletions, in memory.

A search service serves one :class:`LiveIndex` at a time and swaps in a new one per change
(:mod:`quantrieve.index.writer`); the files behind it are described in
:mod:`quantrieve.index.segment_files`.
"""

from __future__ import annotations

from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from quantrieve.index.format import SEGMENTS_DIR, IndexFormatError
from quantrieve.index.pq_index import PQIndex
from quantrieve.index.segment_files import (
    StoredVersion,
    manifest_dict,
    read_added,
    read_version,
)


@dataclass
class LiveIndex:
    """One complete version of an index directory, in memory (immutable once built: a change
    returns a new one, so searches can keep using the version they started with).

    Built by :func:`open_live` (:meth:`from_version`); a change makes the next version with
    :func:`dataclasses.replace`, naming the fields it changes.

    Attributes:
        path: the index directory.
        index: the live items: base rows, then segment rows, less the deleted ones.
        keys: int64 (N,), the item number of each live row.
        part: int32 (N,), where each live row is stored: -1 the base, s >= 0 slot s
            (:attr:`slots`).
        local: int64 (N,), the row within the base or the slot.
        slots: int64 (S, 2), per slot the segment it is in (a position in ``segments``) and
            the row of the segment file where it starts. A slot is the rows of one append; a
            merge of segments rewrites their slots, not the rows' ``part`` and ``local``, so it
            costs what it merges. Opened from disk, slot s is segment s from its first row.
        generation: the manifest's generation (0: no changes yet).
        segments: the manifest's segment entries.
        deleted: the tombstoned item numbers.
        next_key: the number of the next added item.
        base_items: rows of the base files.
        base_sha256: SHA-256 of the base ``index.json``.
        base_keys: the manifest's ``base.keys`` entry (None: base row i is item i).
        source_root: the image folder's new place, when it moved after encoding (else None).
    """

    path: Path
    index: PQIndex
    keys: np.ndarray
    part: np.ndarray
    local: np.ndarray
    generation: int
    segments: tuple[dict[str, Any], ...]
    deleted: frozenset[int]
    next_key: int
    base_items: int
    base_sha256: str
    base_keys: dict[str, Any] | None = None
    source_root: str | None = None
    slots: np.ndarray | None = None
    _order: np.ndarray | None = field(init=False, default=None, repr=False)
    #: How many leading keys are known to ascend (a version that appends to an ascending one
    #: checks only its new keys: an add costs no scan of every item).
    keys_checked: InitVar[int] = 0

    def __post_init__(self, keys_checked: int) -> None:
        self.keys = np.asarray(self.keys, dtype=np.int64)
        # Item numbers only grow (added items get the next ones; deletes and compaction keep
        # the order), so a row is found by binary search: no per-item structure to rebuild on
        # every change. A version whose numbers are not ascending gets a sorting order.
        if self.slots is None:
            count = len(self.segments)
            self.slots = np.stack([np.arange(count), np.zeros(count, dtype=np.int64)], axis=1)
        self.slots = np.asarray(self.slots, dtype=np.int64).reshape(-1, 2)
        tail = self.keys[max(keys_checked - 1, 0) :]
        ascending = len(tail) < 2 or bool((tail[1:] > tail[:-1]).all())
        self._order = None if ascending else np.argsort(self.keys, kind="stable")
        self.index.items = self.keys  # rows say their item numbers

    @classmethod
    def from_version(cls, path: Path, index: PQIndex, version: StoredVersion) -> LiveIndex:
        """The live index of a stored ``version`` whose live rows ``index`` holds."""
        return cls(
            path=path,
            index=index,
            keys=version.keys,
            part=version.part,
            local=version.local,
            generation=version.generation,
            segments=version.segments,
            deleted=version.deleted,
            next_key=version.next_key,
            base_items=version.base_items,
            base_sha256=version.base_sha256,
            base_keys=version.base_keys,
            source_root=version.source_root,
        )

    def __len__(self) -> int:
        """The live items (the rows less the hidden ones: deleted, not dropped yet)."""
        return len(self.index) - self.index.num_hidden

    @property
    def num_rows(self) -> int:
        """The rows of this version, hidden ones included (the length of :attr:`keys`)."""
        return len(self.index)

    @property
    def ascending(self) -> bool:
        """Whether the item numbers ascend row by row (always, short of a hand-made version)."""
        return self._order is None

    @property
    def added_items(self) -> int:
        """Live items that came from segments."""
        added = self.part >= 0
        hidden = self.index.hidden_mask()
        return int((added if hidden is None else added & ~hidden).sum())

    def row(self, key: int) -> int | None:
        """The live row of item ``key``, or None (never added, or deleted)."""
        sorted_keys = self.keys if self._order is None else self.keys[self._order]
        at = int(np.searchsorted(sorted_keys, int(key)))
        if at == len(sorted_keys) or sorted_keys[at] != int(key):
            return None
        row = at if self._order is None else int(self._order[at])
        stamps = self.index.deleted_at
        if stamps is not None and 0 < int(stamps[row]) <= self.index.generation:
            return None  # hidden: deleted, its row not dropped yet
        return row

    def segment_file(self, part: int) -> Path:
        """The file of segment ``part`` (a position in :attr:`segments`)."""
        return self.path / SEGMENTS_DIR / self.segments[part]["file"]

    def stored_at(self, row: int) -> tuple[int, int]:
        """Where live row ``row`` is stored: (segment, row of its file), or (-1, base row)."""
        slot, local = int(self.part[row]), int(self.local[row])
        if slot < 0:
            return -1, local
        segment, start = self.slots[slot].tolist()
        return int(segment), int(start) + local

    def segments_of_rows(self) -> np.ndarray:
        """int64 (N,): the segment of every live row (-1: the base)."""
        segment = np.full(len(self.part), -1, dtype=np.int64)
        added = self.part >= 0
        segment[added] = self.slots[self.part[added], 0]
        return segment

    def read_added(self, row: int) -> tuple[np.ndarray, bytes, str]:
        """The pixels, uploaded bytes and file name of an added item (live row ``row``).

        Raises:
            IndexFormatError: the row is a base row, or its segment file is gone or unreadable
                (e.g. the directory was compacted by another process since this version).
        """
        part, local = self.stored_at(row)
        if part < 0:
            raise IndexFormatError(f"row {row} is a base item, not an added one")
        file = self.segment_file(part)
        try:
            return read_added(file, local)
        except (OSError, KeyError, ValueError) as exc:
            raise IndexFormatError(
                f"{file}: cannot read added item {int(self.keys[row])} ({exc}); the index may "
                "have been compacted since it was loaded: load it again"
            ) from None

    def manifest(self) -> dict[str, Any]:
        """The manifest of this version (what ``segments/manifest.json`` holds)."""
        return manifest_dict(
            generation=self.generation,
            base_sha256=self.base_sha256,
            base_items=self.base_items,
            base_keys=self.base_keys,
            segments=self.segments,
            deleted=self.deleted,
            next_key=self.next_key,
            num_items=len(self),
            source_root=self.source_root,
        )


def open_live(path: str | Path, verify: bool = True, base: PQIndex | None = None) -> LiveIndex:
    """The current version of an index directory: its base and, when present, its segments.

    Args:
        path: the index directory.
        verify: check every file against its checksum (index.json's, the manifest's).
        base: the base files, if already loaded (``PQIndex.load(path, segments=False)``).

    Raises:
        IndexFormatError: a file missing, malformed or altered, or a manifest that belongs to
            another base (the base was replaced after the service changed it).
    """
    path = Path(path)
    if base is None:
        base = PQIndex.load(path, verify=verify, segments=False)
    version = read_version(path, base, verify)
    return LiveIndex.from_version(path, base.with_version(version), version)
