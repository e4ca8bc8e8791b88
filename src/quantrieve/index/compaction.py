"""Compaction: rewriting an index directory without its deleted rows, its added items merged.

:func:`compact` rewrites the whole directory through a temporary sibling: a new base of the live
base rows, one segment of the live added items (their uploads kept), the item numbers unchanged;
the old directory is removed only after the new one is in place. It holds the write lock
(:class:`~quantrieve.index.writer.IndexWriter`) throughout.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from quantrieve.index.format import INDEX_FILES, INDEX_KIND, MANIFEST, SEGMENTS_DIR, file_sha256
from quantrieve.index.live import open_live
from quantrieve.index.pq_index import PQIndex
from quantrieve.index.segment_files import NewItems, manifest_dict, write_segment
from quantrieve.index.writer import IndexWriter
from quantrieve.runtime.atomic import atomic_write_json, fsync_dir
from quantrieve.runtime.outputs import replace_folder


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
        new_base = live.index.with_rows(
            np.asarray(old_base.codes)[base_rows],
            [old_base.ids[r] for r in base_rows.tolist()],
            None if old_base.labels is None else np.asarray(old_base.labels)[base_rows],
            None if old_base.content is None else old_base.content[base_rows],
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
                    write_segment(
                        folder / f"seg-{generation:06d}.npz",
                        live.keys[added],
                        [index.ids[r] for r in added.tolist()],
                        merged,
                    )
                )
            manifest = manifest_dict(
                generation=generation,
                base_sha256=file_sha256(tmp / "index.json"),
                base_items=len(new_base),
                base_keys=keys_entry,
                segments=segments,
                deleted=(),
                next_key=live.next_key,
                num_items=len(live),
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
