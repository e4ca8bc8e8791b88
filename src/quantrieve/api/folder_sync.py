"""Keep an index in step with its image folder: add files, or sync the whole folder.

An index encoded from an ``image-folder`` dataset names its items by their paths under the
folder (``index.json`` ``source.root``). Items added from that folder are stored the same way:
their codes, embeddings and the pixels the model saw go into a segment, the image itself stays a
reference to the file (no copy of its bytes). Uploads keep their bytes and are never touched by a
sync.

A sync compares the folder with the live items, through the same durable writer as the service
(:class:`~quantrieve.index.writer.IndexWriter`, one lock per index):

- a file with no item is *added*;
- an item whose file is gone is *removed* (tombstoned);
- an item whose file changed after the item was encoded (its modification time is later than the
  file that holds its codes: the base's ``codes.npy`` or its segment) is *replaced*: the new
  version is added, the old item removed (a new item number: numbers are never reused).

Additions are committed before removals, so a crash in between leaves both versions of a changed
file; the next sync removes the older one (for one path, the highest item number is kept).
Unreadable files are reported and skipped.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from quantrieve.api.retriever import Retriever
from quantrieve.data.cache import decode_all
from quantrieve.data.folder import list_image_files
from quantrieve.errors import QuantrieveError
from quantrieve.index.format import image_fingerprints
from quantrieve.index.live import LiveIndex, open_live
from quantrieve.index.segment_files import ADDED_PREFIX, NewItems
from quantrieve.index.writer import IndexWriter, commit_pause

Progress = Callable[[int, int], None]
#: Items appended per segment (and encoded per batch) by a sync.
SYNC_BATCH = 8192


@dataclass
class SyncReport:
    """What an add or a sync changed.

    Attributes:
        added: item numbers of the new items (new files and new versions of changed ones).
        removed: item numbers tombstoned because their file is gone.
        replaced: item numbers tombstoned because their file changed (the new version is in
            ``added``).
        unchanged: items left as they were.
        unreadable: files that could not be decoded, with the reason (nothing changed for them).
        generation: the index version after the change.
    """

    added: list[int] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    replaced: list[int] = field(default_factory=list)
    unchanged: int = 0
    unreadable: dict[str, str] = field(default_factory=dict)
    generation: int = 0


def folder_root(live: LiveIndex, must_exist: bool = True) -> Path:
    """The image folder an index was encoded from (``source.root`` of an image-folder index,
    or where ``quantrieve sync INDEX FOLDER`` last pointed it)."""
    source = live.index.meta.get("source") or {}
    if source.get("dataset") != "image-folder" or not source.get("root"):
        raise QuantrieveError(
            f"{live.path}: this index was not encoded from an image folder (its source is "
            f"{source.get('dataset') or 'not recorded'}); add images through the service instead"
        )
    root = Path(source["root"])
    if must_exist and not root.is_dir():
        raise QuantrieveError(
            f"{live.path}: its image folder {root} is missing; if it moved, give its new place: "
            "quantrieve sync INDEX FOLDER"
        )
    return root


def _item_ids(root: Path, paths: Sequence[Path]) -> list[str]:
    ids = []
    for path in paths:
        try:
            ids.append(Path(os.path.abspath(path)).relative_to(os.path.abspath(root)).as_posix())
        except ValueError:
            raise QuantrieveError(
                f"{path} is not in the index's image folder {root}: copy it there first (items "
                "added from files refer to them by their path in the folder)"
            ) from None
    return ids


def _labels(live: LiveIndex, ids: Sequence[str]) -> np.ndarray | None:
    """One-hot labels from each file's class folder, for a labelled index."""
    index = live.index
    if index.labels is None:
        return None
    column = {name: i for i, name in enumerate(index.class_names)}
    labels = np.zeros((len(ids), len(index.class_names)), dtype=bool)
    for row, item_id in enumerate(ids):
        folder = item_id.split("/", 1)[0] if "/" in item_id else ""
        if folder not in column:
            raise QuantrieveError(
                f"{item_id}: the index is labelled by class folders ({', '.join(column)}); "
                "put the file in one of them"
            )
        labels[row, column[folder]] = True
    return labels


def _append(
    writer: IndexWriter,
    live: LiveIndex,
    retriever: Retriever,
    root: Path,
    ids: list[str],
    workers: int | None,
    progress: Progress | None,
    report: SyncReport,
) -> LiveIndex:
    """Decode, encode and append the files ``root / id``, in batches (one segment each)."""
    model = retriever.model
    assert model is not None
    labels = _labels(live, ids)  # checked for all before anything is written
    for start in range(0, len(ids), SYNC_BATCH):
        batch = ids[start : start + SYNC_BATCH]
        decoded = decode_all(
            [root / i for i in batch], model.image_size, None, model.channels, workers
        )
        for bad in decoded.bad:
            report.unreadable[batch[bad.index]] = bad.reason
        kept = decoded.kept
        if not len(kept):
            continue
        pixels = np.asarray(decoded.images)
        fine = None
        if live.index.refine is not None:
            codes, fine = retriever.encode_with_embeddings(
                pixels, refine_source=live.index.refine_source
            )
        else:
            codes = retriever.encode(pixels)
        items = NewItems(
            codes=codes,
            pixels=pixels,
            raw=[b""] * len(kept),
            names=[Path(batch[k]).name for k in kept],
            labels=None if labels is None else labels[start + kept],
            content=None if live.index.content is None else image_fingerprints(pixels),
            refine=fine,
            ids=[batch[k] for k in kept],
        )
        live = writer.append(live, items)
        report.added += live.keys[live.num_rows - len(kept) :].tolist()
        if progress is not None:
            progress(min(start + SYNC_BATCH, len(ids)), len(ids))
    return live


def add_files(
    index_dir: str | Path,
    paths: Sequence[str | Path],
    workers: int | None = None,
    progress: Progress | None = None,
    device: str = "auto",
) -> SyncReport:
    """Add image files of the index's folder as new items (referred to, not copied).

    Raises:
        QuantrieveError: the index was not encoded from a folder, a file is outside it, is
            missing, or is already an item (sync replaces changed files).
    """
    retriever = Retriever.load(index_dir, device=device, need_index=True)
    with IndexWriter(index_dir, before_commit=commit_pause()) as writer:
        live = open_live(index_dir)
        root = folder_root(live)
        missing = [str(p) for p in paths if not Path(p).is_file()]
        if missing:
            raise QuantrieveError(f"not a file: {', '.join(missing[:5])}")
        ids = _item_ids(root, [Path(p) for p in paths])
        present = sorted(set(ids) & set(live.index.ids))
        if present:
            raise QuantrieveError(
                f"already in the index: {', '.join(present[:5])}; `quantrieve sync` replaces "
                "files that changed"
            )
        if len(set(ids)) != len(ids):
            raise QuantrieveError("a file is named twice")
        report = SyncReport(unchanged=len(live))
        live = _append(writer, live, retriever, root, ids, workers, progress, report)
        report.generation = live.generation
    return report


def _encoded_ns(live: LiveIndex) -> np.ndarray:
    """Per live row: when its codes were written (the modification time of the base's
    ``codes.npy`` or of its segment file)."""
    base = os.stat(live.path / "codes.npy").st_mtime_ns
    times = {-1: base}
    for part in range(len(live.segments)):
        times[part] = os.stat(live.segment_file(part)).st_mtime_ns
    return np.array([times[p] for p in live.segments_of_rows().tolist()], dtype=np.int64)


def sync_folder(
    index_dir: str | Path,
    workers: int | None = None,
    progress: Progress | None = None,
    device: str = "auto",
    folder: str | Path | None = None,
) -> SyncReport:
    """Bring an index in step with its image folder (see the module docstring).

    Args:
        folder: the image folder's new place, when it moved (or was copied) since the index
            was encoded: the index is pointed at it first (ids are paths under the folder, so
            unchanged files keep their items). None: the folder the index records.
    """
    retriever = Retriever.load(index_dir, device=device, need_index=True)
    with IndexWriter(index_dir, before_commit=commit_pause()) as writer:
        live = open_live(index_dir)
        if folder is not None:
            folder_root(live, must_exist=False)  # an image-folder index, wherever it was
            if not Path(folder).is_dir():
                raise QuantrieveError(f"{folder}: no such folder")
            if Path(folder).resolve() != Path(live.index.meta["source"]["root"]).resolve():
                live = writer.relocate(live, folder)
        root = folder_root(live)
        files = {i: root / i for i in _item_ids(root, list_image_files(root))}
        encoded = _encoded_ns(live)
        newest: dict[str, int] = {}  # id -> live row of its highest item number
        stale: list[int] = []  # older rows of an id seen twice (a sync interrupted)
        for row, item_id in enumerate(live.index.ids):
            if item_id.startswith(ADDED_PREFIX):
                continue  # uploads are not files of the folder
            if item_id in newest:
                older, newer = sorted((newest[item_id], row), key=lambda r: live.keys[r])
                stale.append(int(live.keys[older]))
                newest[item_id] = newer
            else:
                newest[item_id] = row
        report = SyncReport()
        to_add, removed, replaced = [], [], []
        for item_id, row in newest.items():
            path = files.get(item_id)
            if path is None:
                removed.append(int(live.keys[row]))
            elif path.stat().st_mtime_ns > encoded[row]:
                replaced.append(int(live.keys[row]))
                to_add.append(item_id)
        to_add += sorted(set(files) - set(newest))
        if to_add:
            live = _append(writer, live, retriever, root, to_add, workers, progress, report)
        # A changed file that no longer decodes keeps its old item (reported as unreadable).
        replaced = [k for k in replaced if live.index.ids[live.row(k)] not in report.unreadable]
        gone = stale + removed + replaced
        if gone:
            live = writer.delete(live, gone)
        report.removed, report.replaced = removed + stale, replaced
        report.unchanged = len(live) - len(report.added)
        report.generation = live.generation
    return report
