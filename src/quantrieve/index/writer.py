"""The one process allowed to change an index directory, and its lock.

:class:`IndexWriter` holds ``segments/.lock`` and turns a :class:`~quantrieve.index.live.LiveIndex`
into the next version: an append writes a new segment, a delete tombstones items, and each change
ends by writing the new manifest atomically (:mod:`quantrieve.index.segment_files` describes the
files and their durability).
"""

from __future__ import annotations

import dataclasses
import fcntl
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO

import numpy as np

from quantrieve.errors import QuantrieveError
from quantrieve.index.columns import append_rows
from quantrieve.index.format import MANIFEST, SEGMENTS_DIR, IndexFormatError
from quantrieve.index.live import LiveIndex
from quantrieve.index.segment_files import (
    ADDED_PREFIX,
    NewItems,
    merge_items,
    read_manifest,
    read_segment_items,
    write_segment,
)
from quantrieve.runtime.atomic import atomic_write_json, fsync_dir

LOCK_FILE = ".lock"
#: Tests' fault injection: seconds to pause between a change's files and its manifest.
COMMIT_DELAY_ENV = "QUANTRIEVE_TEST_COMMIT_DELAY"
#: Segments of one size tier merged into one when this many sit side by side (as Lucene's
#: log merge policy): 10,000 single adds leave at most about MERGE_FACTOR files per tier, and
#: log_{MERGE_FACTOR}(added items) tiers.
MERGE_FACTOR = 10
#: A delete drops the hidden rows of deleted items from memory (copies the index) once more
#: than 1/DROP_DIVISOR of the rows are hidden: each delete costs its own rows, amortized.
DROP_DIVISOR = 8


def commit_pause() -> Callable[[], None] | None:
    """A ``before_commit`` that sleeps ``$QUANTRIEVE_TEST_COMMIT_DELAY`` seconds, or None: lets
    a test kill a process between a change's durable files and its manifest."""
    delay = float(os.environ.get(COMMIT_DELAY_ENV) or 0)
    if delay <= 0:
        return None

    def pause() -> None:
        time.sleep(delay)

    return pause


def merge_plan(sizes: Sequence[int], factor: int = MERGE_FACTOR) -> tuple[int, int] | None:
    """The first run of ``factor`` adjacent segments of one size tier (tier t holds
    ``factor**t <= items < factor**(t+1)``), as (start, stop) positions, or None.

    Only adjacent segments are merged, so the order of the rows (base, then segments in
    manifest order) never changes.
    """
    if factor < 2:
        raise ValueError(f"merge factor must be >= 2, got {factor}")
    tiers = [int(math.log(max(size, 1), factor) + 1e-9) for size in sizes]
    start = 0
    for i in range(1, len(tiers) + 1):
        if i == len(tiers) or tiers[i] != tiers[start]:
            if i - start >= factor:
                return start, start + factor
            start = i
    return None


class IndexBusyError(QuantrieveError):
    """Another process (a running service, a compaction) holds the index's write lock."""


class IndexWriter:
    """The one process allowed to change an index directory: holds ``segments/.lock``.

    The lock is an advisory ``flock``, released when the process ends however it ends (a
    SIGKILL included), so a crashed service never leaves the index locked.

    Args:
        path: the index directory.
        before_commit: called after a change's files are durable and before its manifest is
            written (tests use it to stop a process in that window).
        merge_factor: adjacent segments of one size tier merged after an append
            (:func:`merge_plan`); 0 never merges.

    Raises:
        IndexBusyError: another process holds the lock.
        IndexFormatError: the folder is not writable.
    """

    def __init__(
        self,
        path: str | Path,
        before_commit: Callable[[], None] | None = None,
        merge_factor: int = MERGE_FACTOR,
    ) -> None:
        self.path = Path(path)
        self.before_commit = before_commit
        self.merge_factor = merge_factor
        folder = self.path / SEGMENTS_DIR
        try:
            folder.mkdir(exist_ok=True)
            self._lock: IO[bytes] | None = open(folder / LOCK_FILE, "ab")  # noqa: SIM115
        except OSError as exc:
            raise IndexFormatError(
                f"{folder}: cannot write here ({exc.strerror}); serve it read-only "
                "(quantrieve serve --read-only) or from a writable copy"
            ) from None
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            self._lock = None
            raise IndexBusyError(
                f"{self.path}: another process is changing this index (a running `quantrieve "
                "serve` or `quantrieve compact` holds segments/.lock); stop it first, or serve "
                "this index read-only (--read-only)"
            ) from None
        self._remove_temporaries(folder)

    def _remove_temporaries(self, folder: Path) -> None:
        """Files of changes that never finished or were superseded: temporary files, and
        segment files no manifest names (a change killed before its commit, segments merged
        by a merge killed after its commit). We hold the lock: no change is under way."""
        for file in folder.glob(".*.tmp*"):
            if file.is_file():
                file.unlink(missing_ok=True)
        manifest = read_manifest(self.path)
        named = set() if manifest is None else {s.get("file") for s in manifest["segments"]}
        for file in folder.glob("seg-*.npz"):
            if file.name not in named:
                file.unlink(missing_ok=True)

    def close(self) -> None:
        """Release the lock."""
        if self._lock is not None:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def __enter__(self) -> IndexWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_current(self, live: LiveIndex) -> None:
        if self._lock is None:
            raise IndexBusyError(f"{self.path}: the writer was closed")
        on_disk = read_manifest(self.path)
        generation = 0 if on_disk is None else on_disk["generation"]
        if generation != live.generation:
            raise IndexBusyError(
                f"{self.path}: the index on disk is at generation {generation}, this version at "
                f"{live.generation}; load it again"
            )

    def _commit(self, live: LiveIndex) -> None:
        """Write the manifest of ``live`` atomically (temporary file, fsync, rename, fsync)."""
        if self.before_commit is not None:
            self.before_commit()
        folder = self.path / SEGMENTS_DIR
        atomic_write_json(live.manifest(), folder / MANIFEST)
        fsync_dir(folder)

    def append(self, live: LiveIndex, items: NewItems) -> LiveIndex:
        """Append ``items`` as a new segment; returns the new version (durable on return).

        Their item numbers are ``live.next_key`` onwards, in order.
        """
        self._check_current(live)
        n, base = len(items), live.index
        if n == 0:
            raise QuantrieveError("nothing to add")
        if len(items.pixels) != n or len(items.raw) != n or len(items.names) != n:
            raise ValueError("codes, pixels, raw and names must have one row per item")
        if (items.labels is None) != (base.labels is None):
            raise IndexFormatError("labels must be given for a labelled index, and only for one")
        if (items.content is None) != (base.content is None):
            raise IndexFormatError("content fingerprints must be given when the index keeps them")
        if (items.refine is None) != (base.refine is None):
            raise IndexFormatError("refine embeddings must be given when the index refines")
        generation = live.generation + 1
        keys = np.arange(live.next_key, live.next_key + n, dtype=np.int64)
        if items.ids is None:
            ids = [f"{ADDED_PREFIX}{k}" for k in keys.tolist()]
        elif len(items.ids) != n or any(i.startswith(ADDED_PREFIX) for i in items.ids):
            raise ValueError(f"one id per item, none starting with {ADDED_PREFIX!r}")
        else:
            ids = list(items.ids)
        grown = base.with_rows(
            *base.appended_columns(items.codes, ids, items.labels, items.content, items.refine),
            rows_checked=len(base.codes),
        )  # checks the new rows like a new index (shapes, codewords < K, the new ids)
        grown.carry_hidden(base)
        grown.generation = generation
        grown.carry_search_state(base)  # the new rows extend the search state, not rebuild it
        folder = self.path / SEGMENTS_DIR
        # A file of this name can only be left by a change that never committed: replaced.
        entry = write_segment(folder / f"seg-{generation:06d}.npz", keys, ids, items)
        slot = len(live.slots)
        new = dataclasses.replace(
            live,
            path=self.path,
            index=grown,
            keys=append_rows(live.keys, keys),
            part=append_rows(live.part, np.full(n, slot, dtype=np.int32)),
            local=append_rows(live.local, np.arange(n, dtype=np.int64)),
            generation=generation,
            segments=(*live.segments, entry),
            next_key=live.next_key + n,
            slots=np.concatenate([live.slots, [[len(live.segments), 0]]]),
            keys_checked=len(live.keys) if live.ascending else 0,
        )
        self._commit(new)
        return self.merge(new) if self.merge_factor else new

    def merge(self, live: LiveIndex) -> LiveIndex:
        """Merge runs of small adjacent segments (:func:`merge_plan`) until none is left;
        returns the new version (the same items and rows, fewer files).

        Each merge writes the merged segment durably, commits a manifest naming it instead of
        the merged ones, then removes their files: a crash leaves either the old version or
        the new one, plus at worst an unreferenced file (removed by the next merge).
        """
        while (
            plan := merge_plan([s["num_items"] for s in live.segments], self.merge_factor)
        ) is not None:
            live = self._merge(live, *plan)
        return live

    def _merge(self, live: LiveIndex, start: int, stop: int) -> LiveIndex:
        self._check_current(live)
        folder = self.path / SEGMENTS_DIR
        keys, ids, parts = [], [], []
        for part in range(start, stop):
            k, i, items = read_segment_items(live.segment_file(part))
            keys.append(k)
            ids += i
            parts.append(items)
        generation = live.generation + 1
        merged = write_segment(
            folder / f"seg-{generation:06d}.npz", np.concatenate(keys), ids, merge_items(parts)
        )
        old_files = [live.segment_file(part) for part in range(start, stop)]
        # Rows keep their order, part and local; the slots of merged segments now lie in
        # segment ``start``, from the row where their segment starts in it.
        slots = live.slots.copy()
        segment = slots[:, 0].copy()
        offsets = np.cumsum([0] + [s["num_items"] for s in live.segments[start:stop]])
        inside = (segment >= start) & (segment < stop)
        slots[inside, 1] += offsets[segment[inside] - start]
        slots[inside, 0] = start
        slots[segment >= stop, 0] -= stop - start - 1
        new = dataclasses.replace(
            live,
            path=self.path,
            generation=generation,
            segments=(*live.segments[:start], merged, *live.segments[stop:]),
            slots=slots,
            keys_checked=len(live.keys) if live.ascending else 0,
        )
        self._commit(new)
        for file in old_files:
            file.unlink(missing_ok=True)
        fsync_dir(folder)
        return new

    def relocate(self, live: LiveIndex, root: str | Path) -> LiveIndex:
        """Point the index at its image folder's new place (item ids are paths under the
        folder, so they stay valid); returns the new version. Only the manifest changes."""
        self._check_current(live)
        root = str(Path(root).resolve())
        source = {**(live.index.meta.get("source") or {}), "root": root}
        meta = {**live.index.meta, "source": source}
        index = live.index.same_rows(meta=meta)
        new = dataclasses.replace(
            live, path=self.path, index=index, generation=live.generation + 1, source_root=root
        )
        self._commit(new)
        return new

    def delete(self, live: LiveIndex, keys: Iterable[int], drop: bool | None = None) -> LiveIndex:
        """Tombstone items (live ones; others raise KeyError); returns the new version.

        In memory, the deleted rows are hidden (:meth:`PQIndex.hidden`: searches skip them), at
        the cost of the rows deleted; once more than 1/:data:`DROP_DIVISOR` of the rows are
        hidden, every hidden row is dropped (a copy of the index, so amortized over that many
        deletes). ``drop``: True drops now, False never; None (default) follows that rule.
        The files are the same either way: the manifest lists the deleted items.
        """
        self._check_current(live)
        wanted = sorted({int(k) for k in keys})
        rows = [live.row(k) for k in wanted]
        missing = [k for k, row in zip(wanted, rows, strict=True) if row is None]
        if missing:
            raise KeyError(missing[0])
        index, generation = live.index, live.generation + 1
        hidden = index.num_hidden + len(rows)
        if drop is None:
            drop = hidden * DROP_DIVISOR > len(index)
        if not drop:
            stamps = index.deleted_at
            if stamps is None:
                stamps = np.zeros(len(index), dtype=np.int32)
            new = dataclasses.replace(
                live,
                path=self.path,
                index=index.same_rows(deleted_at=stamps, generation=generation, num_hidden=hidden),
                generation=generation,
                deleted=live.deleted | frozenset(wanted),
                keys_checked=len(live.keys) if live.ascending else 0,
            )
            self._commit(new)
            # After the commit: a version before this generation (a search using it) still
            # sees these rows, and a change that failed never stamped any.
            stamps[np.array(rows, dtype=np.int64)] = generation
            return new
        keep = ~np.isin(live.keys, np.array(wanted, dtype=np.int64))
        shown = index.hidden_mask()
        if shown is not None:
            keep &= ~shown
        shrunk = index.with_rows(
            np.asarray(index.codes),
            index.ids,
            index.labels,
            index.content,
            index.refine,
            keep,
            rows_checked=len(index.ids),
        )
        shrunk.generation = generation
        new = dataclasses.replace(
            live,
            path=self.path,
            index=shrunk,
            keys=live.keys[keep],
            part=live.part[keep],
            local=live.local[keep],
            generation=generation,
            deleted=live.deleted | frozenset(wanted),
        )
        self._commit(new)
        return new
