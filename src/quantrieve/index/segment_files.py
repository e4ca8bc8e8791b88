"""The ``segments/`` folder of an index directory: the manifest, the segment files, and reading
the stored version they describe as arrays.

A search service adds and deletes items while it serves. The base files of the index directory
(format version 2, :mod:`quantrieve.index.format`) are never touched; the changes go into a
``segments/`` folder beside them::

    segments/
      manifest.json          the current version of the index (replaced atomically, see below)
      seg-000001.npz         items appended by the change that made generation 1 (immutable)
      seg-000004.npz         ...
      base-keys-000007.npy   int64 item numbers of the base rows, once a compaction dropped some
      .lock                  held (``flock``) by the one process that may write: a service or
                             ``quantrieve compact`` (:mod:`quantrieve.index.writer`)

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
``next_key``. The stored version is the base rows, then each segment's rows, in that order, less
the deleted keys (:func:`read_version`); :meth:`PQIndex.load
<quantrieve.index.pq_index.PQIndex.load>` returns exactly that, so the command line sees what a
service serves (:mod:`quantrieve.index.live`).

Durability. A change writes its new files (a segment) to temporary names, fsyncs them, renames
them into place and fsyncs the folder, and only then writes the new manifest the same way. A
process killed at any point leaves either the previous manifest (the files of the unfinished
change are unreferenced, never read, and overwritten by the next change of that generation) or
the new one, whose files are complete: a reader always loads a complete version. Files are
checked against the manifest's SHA-256 on load.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from quantrieve.index.format import (
    MANIFEST,
    SEGMENTS_DIR,
    IndexArrays,
    IndexFormatError,
    file_sha256,
)
from quantrieve.runtime.atomic import atomic_path, fsync_dir

SEGMENTS_FORMAT = "quantrieve-pq-segments"
SEGMENTS_VERSION = 1
ADDED_PREFIX = "added:"


def has_segments(path: str | Path) -> bool:
    """Whether the index directory has been changed by a service (holds a manifest)."""
    return (Path(path) / SEGMENTS_DIR / MANIFEST).is_file()


@dataclass
class NewItems:
    """Items to append, all arrays with one row per item.

    Attributes:
        codes: uint8 (n, M), from the index's model.
        pixels: uint8 (n, H, W, C), the images as embedded (kept to search by an item).
        raw: the uploaded files' bytes (kept, to show the image and to encode it again); empty
            for an item added from a file of the index's image folder, which is referred to by
            its id (the path under the folder) instead of copied.
        names: the uploaded file names (shown, never used as paths).
        labels: bool (n, C) in the index's class order, for a labelled index (else None).
        content: uint64 (n,) pixel fingerprints, for an index that keeps them (else None).
        refine: float16 (n, D) finer vectors, for an index that refines (else None).
        ids: the items' ids: paths under the index's image folder for items added from its
            files; None gives uploads their ids ``added:<item>``.
    """

    codes: np.ndarray
    pixels: np.ndarray
    raw: list[bytes]
    names: list[str]
    labels: np.ndarray | None = None
    content: np.ndarray | None = None
    refine: np.ndarray | None = None
    ids: list[str] | None = None

    def __len__(self) -> int:
        return len(self.codes)


@dataclass(frozen=True)
class StoredRows:
    """Every stored row of a version, base then segments, before its deletions.

    Attributes:
        codes: uint8 (n, M).
        ids: n item ids.
        labels: bool (n, C), or None for an unlabelled index.
        content: uint64 (n,) pixel fingerprints, or None.
        refine: float16 (n, D) finer vectors, or None.
        keep: bool (n,), False for the rows of deleted items.
    """

    codes: np.ndarray
    ids: list[str]
    labels: np.ndarray | None
    content: np.ndarray | None
    refine: np.ndarray | None
    keep: np.ndarray


@dataclass(frozen=True)
class StoredVersion:
    """One version of an index directory as its manifest describes it (the live rows only).

    Attributes:
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
        rows: the stored rows to merge, or None when there is no manifest (the base as it is).
        source_root: where the index's image folder is now, when it moved after encoding
            (the manifest's ``source_root``; None: index.json's ``source.root``).
    """

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
    rows: StoredRows | None = None
    source_root: str | None = None


def manifest_dict(
    *,
    generation: int,
    base_sha256: str,
    base_items: int,
    base_keys: dict[str, Any] | None,
    segments: Sequence[dict[str, Any]],
    deleted: Iterable[int],
    next_key: int,
    num_items: int,
    source_root: str | None = None,
) -> dict[str, Any]:
    """The content of ``segments/manifest.json`` for one version (stamped with the time now)."""
    moved = {} if source_root is None else {"source_root": source_root}
    return moved | {
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


def write_segment(
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


def read_segment_items(file: Path) -> tuple[np.ndarray, list[str], NewItems]:
    """Every row of a segment file (deleted ones included): keys, ids and the items, as a
    merge rewrites them.

    Raises:
        OSError, KeyError, ValueError: the file is gone or unreadable (the caller names it).
    """
    with np.load(file, allow_pickle=False) as data:
        offsets, raw = data["raw_offsets"], data["raw"]
        items = NewItems(
            codes=np.asarray(data["codes"]),
            pixels=np.asarray(data["pixels"]),
            raw=[raw[offsets[i] : offsets[i + 1]].tobytes() for i in range(len(offsets) - 1)],
            names=[str(n) for n in data["names"]],
            labels=np.asarray(data["labels"], dtype=bool) if "labels" in data else None,
            content=np.asarray(data["content"], dtype=np.uint64) if "content" in data else None,
            refine=np.asarray(data["refine"]) if "refine" in data else None,
        )
        return np.asarray(data["keys"], dtype=np.int64), [str(i) for i in data["ids"]], items


def merge_items(parts: Sequence[NewItems]) -> NewItems:
    """The rows of several segments' items, in order, as one."""

    def joined(name: str) -> np.ndarray | None:
        arrays = [getattr(p, name) for p in parts]
        return None if arrays[0] is None else np.concatenate(arrays)

    return NewItems(
        codes=np.concatenate([p.codes for p in parts]),
        pixels=np.concatenate([p.pixels for p in parts]),
        raw=[r for p in parts for r in p.raw],
        names=[n for p in parts for n in p.names],
        labels=joined("labels"),
        content=joined("content"),
        refine=joined("refine"),
    )


def read_added(file: Path, local: int) -> tuple[np.ndarray, bytes, str]:
    """The pixels, uploaded bytes and file name of row ``local`` of a segment file.

    Raises:
        OSError, KeyError, ValueError: the file is gone or unreadable (the caller names it).
    """
    with np.load(file, allow_pickle=False) as data:
        offsets = data["raw_offsets"]
        raw = data["raw"][offsets[local] : offsets[local + 1]].tobytes()
        return np.asarray(data["pixels"][local]), raw, str(data["names"][local])


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest of the index directory ``path``, checked, or None when it has none."""
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


def _read_segment(
    file: Path, base: IndexArrays, expected: int
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


def _source_root(manifest: dict[str, Any], where: Path) -> str | None:
    root = manifest.get("source_root")
    if root is not None and not (isinstance(root, str) and root):
        raise IndexFormatError(f"{where}: 'source_root' must be a folder path, got {root!r}")
    return root


def read_version(path: Path, base: IndexArrays, verify: bool = True) -> StoredVersion:
    """The version of the index directory ``path`` that its manifest names, on top of its
    already loaded ``base``: every segment read and checked, the deleted rows marked.

    Without a manifest the version is the base alone (generation 0, ``rows`` None).

    Raises:
        IndexFormatError: a file missing, malformed or altered, or a manifest that belongs to
            another base (the base was replaced after the service changed it).
    """
    base_sha = file_sha256(path / "index.json")
    manifest = read_manifest(path)
    n0 = len(base)
    if manifest is None:
        keys = np.arange(n0, dtype=np.int64)
        return StoredVersion(
            keys=keys,
            part=np.full(n0, -1, dtype=np.int32),
            local=keys.copy(),
            generation=0,
            segments=(),
            deleted=frozenset(),
            next_key=n0,
            base_items=n0,
            base_sha256=base_sha,
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
        k, c, i, lab, con, ref = _read_segment(file, base, entry.get("num_items", -1))
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
    ordered = keys if len(keys) < 2 or (keys[1:] > keys[:-1]).all() else np.sort(keys)
    repeats = len(ordered) > 1 and bool((ordered[1:] == ordered[:-1]).any())  # no hash table
    if repeats or (len(keys) and keys.max() >= manifest["next_key"]):
        raise IndexFormatError(f"{where}: item numbers repeat or reach next_key")
    deleted = frozenset(int(k) for k in manifest["deleted"])
    keep = ~np.isin(keys, np.fromiter(deleted, dtype=np.int64, count=len(deleted)))
    rows = StoredRows(
        codes=np.concatenate(codes),
        ids=ids,
        labels=None if labels is None else np.concatenate(labels),
        content=None if content is None else np.concatenate(content),
        refine=None if refine is None else np.concatenate(refine),
        keep=keep,
    )
    return StoredVersion(
        keys=keys[keep],
        part=np.concatenate(parts)[keep],
        local=np.concatenate(locals_)[keep],
        generation=manifest["generation"],
        segments=tuple(manifest["segments"]),
        deleted=deleted,
        next_key=manifest["next_key"],
        base_items=n0,
        base_sha256=base_sha,
        base_keys=recorded.get("keys"),
        rows=rows,
        source_root=_source_root(manifest, where),
    )
