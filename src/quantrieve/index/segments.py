"""Live changes to an index directory: appended segments, deletions, a manifest, compaction.

A search service adds and deletes items while it serves. The base files of the index directory
(format version 2, :mod:`quantrieve.index.store`) are never touched; the changes go into a
``segments/`` folder beside them::

    segments/
      manifest.json          the current version of the index (replaced atomically, see below)
      seg-000001.npz         items appended by the change that made generation 1 (immutable)
      seg-000004.npz         ...
      base-keys-000007.npy   int64 item numbers of the base rows, once a compaction dropped some
      .lock                  held (``flock``) by the one process that may write: a service or
                             ``quantrieve compact``

``manifest.json`` (format ``quantrieve-pq-segments``, version 1)::

    generation   int, +1 for every add, delete and compaction (the service's index_version)
    base         {"index_json_sha256": SHA-256 of the base index.json, "num_items": rows,
                  "keys": null (rows are items 0..N-1) or {"file", "sha256"}}
    segments     [{"file": "seg-000001.npz", "sha256": ..., "num_items": n}, ...] in order
    deleted      sorted item numbers whose rows are tombstoned (never returned again)
    next_key     the number the next added item gets (numbers are never reused)
    num_items    live items: base + segments - deleted
    updated      UTC time of the change

A segment (``numpy.savez``, read without pickle) holds, for its n items: ``keys`` int64 item
numbers, ``codes`` uint8 (n, M), ``ids`` str (``added:<key>``), ``names`` str (the uploaded file
names), ``pixels`` uint8 (n, H, W, C) (the images as the model saw them), ``raw`` uint8 and
``raw_offsets`` int64 (n + 1) (the uploaded files' bytes, back to back), and ``labels`` bool
(n, C) / ``content`` uint64 (n,) when the base has them.

Every item has an integer *key*, stable for its life: base row i is key i (until a compaction
drops deleted rows, after which ``base.keys`` lists them), added items continue from
``next_key``. The live index is the base rows, then each segment's rows, in that order, less the
deleted keys; :meth:`PQIndex.load <quantrieve.index.store.PQIndex.load>` returns exactly that, so
the command line sees what a service serves.

Durability. A change writes its new files (a segment) to temporary names, fsyncs them, renames
them into place and fsyncs the folder, and only then writes the new manifest the same way. A
process killed at any point leaves either the previous manifest (the files of the unfinished
change are unreferenced, never read, and overwritten by the next change of that generation) or
the new one, whose files are complete: a reader always loads a complete version. Files are
checked against the manifest's SHA-256 on load.

Compaction (:func:`compact`) rewrites the whole directory through a temporary sibling: a new
base of the live base rows, one segment of the live added items (their uploads kept), the item
numbers unchanged; the old directory is removed only after the new one is in place.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import numpy as np

from quantrieve.errors import QuantrieveError
from quantrieve.index.store import (
    INDEX_FILES,
    INDEX_KIND,
    IndexFormatError,
    PQIndex,
    file_sha256,
)
from quantrieve.runtime.atomic import atomic_path, atomic_write_json, fsync_dir
from quantrieve.runtime.outputs import replace_folder

SEGMENTS_DIR = "segments"
MANIFEST = "manifest.json"
LOCK_FILE = ".lock"
SEGMENTS_FORMAT = "quantrieve-pq-segments"
SEGMENTS_VERSION = 1
ADDED_PREFIX = "added:"


class IndexBusyError(QuantrieveError):
    """Another process (a running service, a compaction) holds the index's write lock."""


def has_segments(path: str | Path) -> bool:
    """Whether the index directory has been changed by a service (holds a manifest)."""
    return (Path(path) / SEGMENTS_DIR / MANIFEST).is_file()


@dataclass
class NewItems:
    """Items to append, all arrays with one row per item.

    Attributes:
        codes: uint8 (n, M), from the index's model.
        pixels: uint8 (n, H, W, C), the images as embedded (kept to search by an item).
        raw: the uploaded files' bytes (kept, to show the image and to encode it again).
        names: the uploaded file names (shown, never used as paths).
        labels: bool (n, C) in the index's class order, for a labelled index (else None).
        content: uint64 (n,) pixel fingerprints, for an index that keeps them (else None).
        refine: float16 (n, M*d) embeddings, for an index that refines (else None).
    """

    codes: np.ndarray
    pixels: np.ndarray
    raw: list[bytes]
    names: list[str]
    labels: np.ndarray | None = None
    content: np.ndarray | None = None
    refine: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.codes)


@dataclass
class LiveIndex:
    """One complete version of an index directory, in memory (immutable once built: a change
    returns a new one, so searches can keep using the version they started with).

    Attributes:
        path: the index directory.
        index: the live items: base rows, then segment rows, less the deleted ones.
        keys: int64 (N,), the item number of each live row.
        part: int32 (N,), where each live row is stored: -1 the base, s >= 0 ``segments[s]``.
        local: int64 (N,), the row within the base or the segment.
        generation: the manifest's generation (0: no changes yet).
        segments: the manifest's segment entries.
        deleted: the tombstoned item numbers.
        next_key: the number of the next added item.
        base_items: rows of the base files.
        base_sha256: SHA-256 of the base ``index.json``.
        base_keys: the manifest's ``base.keys`` entry (None: base row i is item i).
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
    _rows: dict[int, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._rows = {int(k): row for row, k in enumerate(self.keys.tolist())}
        self.index.items = np.asarray(self.keys, dtype=np.int64)  # rows say their item numbers

    def __len__(self) -> int:
        return len(self.index)

    @property
    def added_items(self) -> int:
        """Live items that came from segments."""
        return int((self.part >= 0).sum())

    def row(self, key: int) -> int | None:
        """The live row of item ``key``, or None (never added, or deleted)."""
        return self._rows.get(int(key))

    def segment_file(self, part: int) -> Path:
        """The file of segment ``part``."""
        return self.path / SEGMENTS_DIR / self.segments[part]["file"]

    def read_added(self, row: int) -> tuple[np.ndarray, bytes, str]:
        """The pixels, uploaded bytes and file name of an added item (live row ``row``).

        Raises:
            IndexFormatError: the row is a base row, or its segment file is gone or unreadable
                (e.g. the directory was compacted by another process since this version).
        """
        part, local = int(self.part[row]), int(self.local[row])
        if part < 0:
            raise IndexFormatError(f"row {row} is a base item, not an added one")
        file = self.segment_file(part)
        try:
            with np.load(file, allow_pickle=False) as data:
                offsets = data["raw_offsets"]
                raw = data["raw"][offsets[local] : offsets[local + 1]].tobytes()
                return np.asarray(data["pixels"][local]), raw, str(data["names"][local])
        except (OSError, KeyError, ValueError) as exc:
            raise IndexFormatError(
                f"{file}: cannot read added item {int(self.keys[row])} ({exc}); the index may "
                "have been compacted since it was loaded: load it again"
            ) from None

    def manifest(self) -> dict[str, Any]:
        """The manifest of this version (what ``segments/manifest.json`` holds)."""
        return _manifest(
            self.generation,
            self.base_sha256,
            self.base_items,
            self.base_keys,
            self.segments,
            self.deleted,
            self.next_key,
            len(self),
        )


def _manifest(
    generation: int,
    base_sha256: str,
    base_items: int,
    base_keys: dict[str, Any] | None,
    segments: Sequence[dict[str, Any]],
    deleted: Iterable[int],
    next_key: int,
    num_items: int,
) -> dict[str, Any]:
    return {
        "format": SEGMENTS_FORMAT,
        "version": SEGMENTS_VERSION,
        "generation": generation,
        "base": {"index_json_sha256": base_sha256, "num_items": base_items, "keys": base_keys},
        "segments": list(segments),
        "deleted": sorted(deleted),
        "next_key": next_key,
        "num_items": num_items,
        "updated": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _write_segment(
    file: Path, keys: np.ndarray, ids: Sequence[str], items: NewItems
) -> dict[str, Any]:
    """Write one segment file durably (temporary name, fsync, rename, fsync the folder);
    returns its manifest entry."""
    n = len(items)
    offsets = np.zeros(n + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(r) for r in items.raw])
    arrays: dict[str, np.ndarray] = {
        "keys": np.asarray(keys, dtype=np.int64),
        "codes": np.ascontiguousarray(items.codes, dtype=np.uint8),
        "ids": np.array(list(ids), dtype=str),
        "names": np.array(items.names, dtype=str),
        "pixels": np.ascontiguousarray(items.pixels, dtype=np.uint8),
        "raw": np.frombuffer(b"".join(items.raw), dtype=np.uint8),
        "raw_offsets": offsets,
    }
    if items.labels is not None:
        arrays["labels"] = np.asarray(items.labels, dtype=bool)
    if items.content is not None:
        arrays["content"] = np.asarray(items.content, dtype=np.uint64)
    if items.refine is not None:
        arrays["refine"] = np.asarray(items.refine, dtype=np.float16)
    with atomic_path(file) as tmp:
        np.savez(tmp, **arrays)
    fsync_dir(file.parent)
    return {"file": file.name, "sha256": file_sha256(file), "num_items": n}


def _read_manifest(path: Path) -> dict[str, Any] | None:
    file = path / SEGMENTS_DIR / MANIFEST
    if not file.is_file():
        return None
    try:
        manifest = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise IndexFormatError(f"{file}: unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != SEGMENTS_FORMAT:
        raise IndexFormatError(f"{file}: not a {SEGMENTS_FORMAT} manifest")
    version = manifest.get("version")
    if not isinstance(version, int) or version > SEGMENTS_VERSION:
        raise IndexFormatError(
            f"{file}: segments version {version!r} is newer than this quantrieve (reads up to "
            f"{SEGMENTS_VERSION})"
        )
    for key, kind in (
        ("generation", int),
        ("base", dict),
        ("segments", list),
        ("deleted", list),
        ("next_key", int),
    ):
        if not isinstance(manifest.get(key), kind):
            raise IndexFormatError(f"{file}: '{key}' missing or not {kind.__name__}")
    return manifest


def _checked_file(folder: Path, entry: Any, what: str, verify: bool) -> Path:
    """A file named by a manifest entry, inside ``folder``, present, matching its SHA-256."""
    name = entry.get("file") if isinstance(entry, dict) else None
    if not isinstance(name, str) or Path(name).name != name or name.startswith("."):
        raise IndexFormatError(f"{folder / MANIFEST}: bad {what} entry {entry!r}")
    file = folder / name
    if not file.is_file():
        raise IndexFormatError(f"{file}: missing ({what} listed in {MANIFEST})")
    if verify and file_sha256(file) != entry.get("sha256"):
        raise IndexFormatError(
            f"{file}: checksum differs from the one in {MANIFEST}; the {what} was altered after "
            "it was written"
        )
    return file


def _load_segment(
    file: Path, base: PQIndex, expected: int
) -> tuple[
    np.ndarray, np.ndarray, list[str], np.ndarray | None, np.ndarray | None, np.ndarray | None
]:
    """keys, codes, ids, labels, content and refine embeddings of a segment file, checked
    against the base."""
    try:
        with np.load(file, allow_pickle=False) as data:
            keys = np.asarray(data["keys"], dtype=np.int64)
            codes = np.asarray(data["codes"])
            ids = [str(i) for i in data["ids"]]
            labels = np.asarray(data["labels"], dtype=bool) if "labels" in data else None
            content = np.asarray(data["content"], dtype=np.uint64) if "content" in data else None
            refine = np.asarray(data["refine"]) if "refine" in data else None
    except (OSError, KeyError, ValueError) as exc:
        raise IndexFormatError(f"{file}: unreadable segment ({exc})") from None
    n, m = len(keys), base.num_books
    problems = []
    if n != expected:
        problems.append(f"{n} items, the manifest says {expected}")
    if codes.dtype != np.uint8 or codes.shape != (n, m):
        problems.append(f"codes {codes.dtype} {codes.shape}, expected uint8 ({n}, {m})")
    elif n and int(codes.max()) >= base.num_codewords:
        problems.append(f"codeword {int(codes.max())} >= K = {base.num_codewords}")
    if len(ids) != n:
        problems.append(f"{len(ids)} ids for {n} items")
    if (labels is None) != (base.labels is None) or (
        labels is not None and base.labels is not None and labels.shape != (n, base.labels.shape[1])
    ):
        problems.append("labels do not match the base's")
    if (content is None) != (base.content is None) or (
        content is not None and content.shape != (n,)
    ):
        problems.append("content fingerprints do not match the base's")
    if (refine is None) != (base.refine is None) or (
        refine is not None
        and base.refine is not None
        and (refine.dtype != np.float16 or refine.shape != (n, base.refine.shape[1]))
    ):
        problems.append("refine embeddings do not match the base's")
    if problems:
        raise IndexFormatError(f"{file}: {'; '.join(problems)}")
    return keys, codes, ids, labels, content, refine


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
    base_sha = file_sha256(path / "index.json")
    manifest = _read_manifest(path)
    n0 = len(base)
    if manifest is None:
        keys = np.arange(n0, dtype=np.int64)
        return LiveIndex(
            path,
            base,
            keys,
            np.full(n0, -1, dtype=np.int32),
            keys.copy(),
            0,
            (),
            frozenset(),
            n0,
            n0,
            base_sha,
        )
    folder = path / SEGMENTS_DIR
    where = folder / MANIFEST
    recorded = manifest["base"]
    if recorded.get("index_json_sha256") != base_sha or recorded.get("num_items") != n0:
        raise IndexFormatError(
            f"{where}: made for another base index (its index.json hash or item count differs): "
            "the base files were replaced after the service changed the index; put the base "
            "back, or move segments/ out to serve the base alone"
        )
    if recorded.get("keys") is not None:
        key_file = _checked_file(folder, recorded["keys"], "base keys", verify)
        try:
            base_keys = np.load(key_file, allow_pickle=False).astype(np.int64)
        except (OSError, ValueError) as exc:
            raise IndexFormatError(f"{key_file}: unreadable ({exc})") from None
        if base_keys.shape != (n0,):
            raise IndexFormatError(f"{key_file}: {base_keys.shape} keys for {n0} base rows")
    else:
        base_keys = np.arange(n0, dtype=np.int64)
    all_keys = [base_keys]
    parts = [np.full(n0, -1, dtype=np.int32)]
    locals_ = [np.arange(n0, dtype=np.int64)]
    codes, ids = [np.asarray(base.codes)], list(base.ids)
    labels = None if base.labels is None else [np.asarray(base.labels)]
    content = None if base.content is None else [base.content]
    refine = None if base.refine is None else [np.asarray(base.refine)]
    for s, entry in enumerate(manifest["segments"]):
        file = _checked_file(folder, entry, "segment", verify)
        k, c, i, lab, con, ref = _load_segment(file, base, entry.get("num_items", -1))
        all_keys.append(k)
        parts.append(np.full(len(k), s, dtype=np.int32))
        locals_.append(np.arange(len(k), dtype=np.int64))
        codes.append(c)
        ids += i
        if labels is not None and lab is not None:
            labels.append(lab)
        if content is not None and con is not None:
            content.append(con)
        if refine is not None and ref is not None:
            refine.append(ref)
    keys = np.concatenate(all_keys)
    if len(np.unique(keys)) != len(keys) or (len(keys) and keys.max() >= manifest["next_key"]):
        raise IndexFormatError(f"{where}: item numbers repeat or reach next_key")
    deleted = frozenset(int(k) for k in manifest["deleted"])
    keep = ~np.isin(keys, np.fromiter(deleted, dtype=np.int64, count=len(deleted)))
    merged = _subset(
        base,
        np.concatenate(codes),
        ids,
        None if labels is None else np.concatenate(labels),
        None if content is None else np.concatenate(content),
        keep,
        None if refine is None else np.concatenate(refine),
    )
    return LiveIndex(
        path,
        merged,
        keys[keep],
        np.concatenate(parts)[keep],
        np.concatenate(locals_)[keep],
        manifest["generation"],
        tuple(manifest["segments"]),
        deleted,
        manifest["next_key"],
        n0,
        base_sha,
        recorded.get("keys"),
    )


def _subset(
    like: PQIndex,
    codes: np.ndarray,
    ids: Sequence[str],
    labels: np.ndarray | None,
    content: np.ndarray | None,
    keep: np.ndarray | None = None,
    refine: np.ndarray | None = None,
) -> PQIndex:
    """A PQIndex with ``like``'s codebooks and metadata and these rows (``keep``: a mask)."""
    if keep is not None and not keep.all():
        rows = np.flatnonzero(keep)
        codes = codes[rows]
        ids = [ids[r] for r in rows.tolist()]
        labels = None if labels is None else labels[rows]
        content = None if content is None else content[rows]
        refine = None if refine is None else refine[rows]
    return PQIndex(
        codebooks=like.codebooks,
        codes=codes,
        ids=list(ids),
        labels=labels,
        distance=like.distance,
        class_names=list(like.class_names),
        meta=dict(like.meta),
        content=content,
        refine=refine,
        refine_depth=like.refine_depth,
    )


class IndexWriter:
    """The one process allowed to change an index directory: holds ``segments/.lock``.

    The lock is an advisory ``flock``, released when the process ends however it ends (a
    SIGKILL included), so a crashed service never leaves the index locked.

    Args:
        path: the index directory.
        before_commit: called after a change's files are durable and before its manifest is
            written (tests use it to stop a process in that window).

    Raises:
        IndexBusyError: another process holds the lock.
        IndexFormatError: the folder is not writable.
    """

    def __init__(self, path: str | Path, before_commit: Callable[[], None] | None = None) -> None:
        self.path = Path(path)
        self.before_commit = before_commit
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

    @staticmethod
    def _remove_temporaries(folder: Path) -> None:
        """Temporary files of changes that never finished (ours: never in a manifest)."""
        for file in folder.glob(".*.tmp*"):
            if file.is_file():
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
        on_disk = _read_manifest(self.path)
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
        ids = [f"{ADDED_PREFIX}{k}" for k in keys.tolist()]
        grown = _subset(
            base,
            np.concatenate([np.asarray(base.codes), items.codes]),
            [*base.ids, *ids],
            None if base.labels is None else np.concatenate([base.labels, items.labels]),
            None if base.content is None else np.concatenate([base.content, items.content]),
            None,
            None if base.refine is None else np.concatenate([base.refine, items.refine]),
        )  # checks the new rows like a new index (shapes, codewords < K)
        folder = self.path / SEGMENTS_DIR
        # A file of this name can only be left by a change that never committed: replaced.
        entry = _write_segment(folder / f"seg-{generation:06d}.npz", keys, ids, items)
        segment = len(live.segments)
        new = LiveIndex(
            self.path,
            grown,
            np.concatenate([live.keys, keys]),
            np.concatenate([live.part, np.full(n, segment, dtype=np.int32)]),
            np.concatenate([live.local, np.arange(n, dtype=np.int64)]),
            generation,
            (*live.segments, entry),
            live.deleted,
            live.next_key + n,
            live.base_items,
            live.base_sha256,
            live.base_keys,
        )
        self._commit(new)
        return new

    def delete(self, live: LiveIndex, keys: Iterable[int]) -> LiveIndex:
        """Tombstone items (live ones; others raise KeyError); returns the new version."""
        self._check_current(live)
        wanted = sorted({int(k) for k in keys})
        missing = [k for k in wanted if live.row(k) is None]
        if missing:
            raise KeyError(missing[0])
        keep = ~np.isin(live.keys, np.array(wanted, dtype=np.int64))
        base = live.index
        shrunk = _subset(
            base, np.asarray(base.codes), base.ids, base.labels, base.content, keep, base.refine
        )
        new = LiveIndex(
            self.path,
            shrunk,
            live.keys[keep],
            live.part[keep],
            live.local[keep],
            live.generation + 1,
            live.segments,
            live.deleted | frozenset(wanted),
            live.next_key,
            live.base_items,
            live.base_sha256,
            live.base_keys,
        )
        self._commit(new)
        return new


@dataclass(frozen=True)
class Compaction:
    """What :func:`compact` did.

    Attributes:
        items: live items in the new version.
        base_items: of which in the new base.
        added_items: of which in the new (single) segment.
        dropped: deleted rows removed.
        segments_before: segments merged.
        generation: the new version's generation.
    """

    items: int
    base_items: int
    added_items: int
    dropped: int
    segments_before: int
    generation: int


def _fsync_tree(folder: Path) -> None:
    """fsync every file and folder under ``folder`` (a new version, before it is swapped in)."""
    for file in folder.rglob("*"):
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
    for sub in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        fsync_dir(sub)


def compact(path: str | Path, verify: bool = True) -> Compaction:
    """Rewrite an index directory without its deleted rows, its added items in one segment.

    The new version is written completely into a temporary sibling folder (base files of the
    live base rows, ``model.pt`` copied, ``segments/`` with one segment holding every live added
    item with its upload; item numbers, ids and ``next_key`` unchanged, the generation one
    higher), fsynced, and swapped in; only then is the old folder removed. Holds the write lock
    throughout, so it refuses to run while a service changes the index.

    Raises:
        IndexBusyError: a service (or another compaction) is writing to the index.
        IndexFormatError: the index does not load (it is left as it is).
    """
    path = Path(path)
    with IndexWriter(path) as writer:
        live = open_live(path, verify=verify)
        writer._check_current(live)
        old_base = PQIndex.load(path, verify=False, segments=False)
        is_base = live.part < 0
        base_rows = live.local[is_base]
        new_base = _subset(
            live.index,
            np.asarray(old_base.codes)[base_rows],
            [old_base.ids[r] for r in base_rows.tolist()],
            None if old_base.labels is None else np.asarray(old_base.labels)[base_rows],
            None if old_base.content is None else old_base.content[base_rows],
            None,
            None if old_base.refine is None else np.asarray(old_base.refine)[base_rows],
        )
        new_base.meta["compacted"] = {
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "from_generation": live.generation,
        }
        base_keys = live.keys[is_base]
        added = np.flatnonzero(~is_base)
        index = live.index
        merged: NewItems | None = None
        if len(added):
            reads = [live.read_added(int(r)) for r in added]
            merged = NewItems(
                codes=np.asarray(index.codes)[added],
                pixels=np.stack([r[0] for r in reads]),
                raw=[r[1] for r in reads],
                names=[r[2] for r in reads],
                labels=None if index.labels is None else np.asarray(index.labels)[added],
                content=None if index.content is None else index.content[added],
                refine=None if index.refine is None else np.asarray(index.refine)[added],
            )
        generation = live.generation + 1
        model_file = path / "model.pt"

        def write(tmp: Path) -> None:
            new_base.write_files(tmp, model_file if model_file.is_file() else None)
            folder = tmp / SEGMENTS_DIR
            folder.mkdir()
            keys_entry = None
            if not np.array_equal(base_keys, np.arange(len(base_keys))):
                key_file = folder / f"base-keys-{generation:06d}.npy"
                np.save(key_file, base_keys)
                keys_entry = {"file": key_file.name, "sha256": file_sha256(key_file)}
            segments = []
            if merged is not None:
                segments.append(
                    _write_segment(
                        folder / f"seg-{generation:06d}.npz",
                        live.keys[added],
                        [index.ids[r] for r in added.tolist()],
                        merged,
                    )
                )
            manifest = _manifest(
                generation,
                file_sha256(tmp / "index.json"),
                len(new_base),
                keys_entry,
                segments,
                (),
                live.next_key,
                len(live),
            )
            atomic_write_json(manifest, folder / MANIFEST)
            _fsync_tree(tmp)

        replace_folder(
            path, INDEX_KIND, write, overwrite=True, own_names=(*INDEX_FILES, SEGMENTS_DIR)
        )
        fsync_dir(path.parent)
    return Compaction(
        items=len(live),
        base_items=len(base_keys),
        added_items=len(added),
        dropped=len(live.deleted),
        segments_before=len(live.segments),
        generation=generation,
    )
