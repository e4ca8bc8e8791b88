"""Seeded, saved, checksummed splits.

A split is a dict of named index arrays. It is written once next to the run
(``splits.npz`` plus ``splits.json`` with a SHA-256 of the indices) and reused: a resumed run or
a later evaluation reads the same indices and refuses a file whose checksum does not match.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from quantrieve.data.base import DataError, ImageSet
from quantrieve.runtime.atomic import atomic_path, atomic_write_json


def split_checksum(split: dict[str, np.ndarray]) -> str:
    """SHA-256 over the split's names and int64 indices, in name order."""
    digest = hashlib.sha256()
    for name in sorted(split):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(split[name], dtype=np.int64).tobytes())
    return digest.hexdigest()


def random_split(
    num_items: int, num_first: int, seed: int, names: tuple[str, str]
) -> dict[str, np.ndarray]:
    """The one way quantrieve draws a split: ``num_first`` random items under ``names[0]``,
    the rest under ``names[1]``, both sorted (seeded permutation of ``range(num_items)``)."""
    perm = np.random.default_rng(seed).permutation(num_items)
    return {names[0]: np.sort(perm[:num_first]), names[1]: np.sort(perm[num_first:])}


def validation_split(num_train: int, num_val_queries: int, seed: int) -> dict[str, np.ndarray]:
    """Carve ``num_val_queries`` validation queries out of the training side.

    Returns ``val_query`` and ``val_database`` (the remaining training images), both sorted.
    """
    if num_val_queries >= num_train:
        raise DataError(
            f"data.val_queries = {num_val_queries} leaves no validation database "
            f"out of {num_train} training images; lower data.val_queries"
        )
    return random_split(num_train, num_val_queries, seed, ("val_query", "val_database"))


def save_split(
    split: dict[str, np.ndarray], folder: str | Path, info: dict | None = None, name: str = "splits"
) -> Path:
    """Write ``NAME.npz`` and ``NAME.json`` (checksum, sizes, how it was made)."""
    folder = Path(folder)
    with atomic_path(folder / f"{name}.npz") as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **{k: np.asarray(v, dtype=np.int64) for k, v in split.items()})
    meta = {
        "sha256": split_checksum(split),
        "sizes": {k: len(v) for k, v in split.items()},
        **(info or {}),
    }
    # Written last: a split counts as saved only once its checksum file exists.
    atomic_write_json(meta, folder / f"{name}.json")
    return folder / f"{name}.npz"


def load_split(folder: str | Path, name: str = "splits") -> dict[str, np.ndarray]:
    """Read a saved split and verify its checksum."""
    folder = Path(folder)
    npz, meta_path = folder / f"{name}.npz", folder / f"{name}.json"
    if not npz.is_file() or not meta_path.is_file():
        raise DataError(f"{folder}: no saved split ({name}.npz + {name}.json)")
    try:
        with np.load(npz) as data:
            split = {k: data[k] for k in data.files}
        expected = json.loads(meta_path.read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{folder}: unreadable saved split ({type(exc).__name__}: {exc})") from None
    if split_checksum(split) != expected:
        raise DataError(f"{npz}: checksum does not match {meta_path}; the split was altered")
    return split


def load_or_make_split(
    folder: str | Path, num_train: int, num_val_queries: int, seed: int
) -> dict[str, np.ndarray]:
    """Reuse the split saved in ``folder`` if there is one, else make and save it."""
    folder = Path(folder)
    if (folder / "splits.json").is_file():
        split = load_split(folder)
        total = sum(len(v) for v in split.values())
        if total != num_train or len(split["val_query"]) != num_val_queries:
            raise DataError(
                f"{folder / 'splits.npz'}: saved split covers {total} images with "
                f"{len(split['val_query'])} queries; the config asks for {num_train} / "
                f"{num_val_queries}"
            )
        return split
    split = validation_split(num_train, num_val_queries, seed)
    save_split(split, folder, {"seed": seed, "num_train": num_train})
    return split


HOLDOUT = "holdout"


def hold_out(
    images: ImageSet, num_queries: int, seed: int = 0, folder: str | Path | None = None
) -> tuple[ImageSet, ImageSet]:
    """Carve held-out queries out of one image set: returns ``(queries, rest)``.

    The rest is what a model trains on and the index holds; the queries are scored against it
    once, and never train. With ``folder``, the split is saved there (``holdout.npz`` and
    ``holdout.json``, with a checksum and the ids' hash) and reused by later calls, so that
    training, encoding and evaluation of a run see the same held-out images.

    Raises:
        DataError: no images would be left on one side, or a saved split that was made for
            other images.
    """
    n = len(images)
    if not 0 < num_queries < n:
        raise DataError(
            f"{num_queries} held-out queries out of {n} images leaves no database (or no "
            "queries); hold out between 1 and one image less than the collection"
        )
    ids_hash = hashlib.sha256("\n".join(images.ids).encode()).hexdigest()
    split: dict[str, np.ndarray] | None = None
    if folder is not None and (Path(folder) / f"{HOLDOUT}.json").is_file():
        split = load_split(folder, HOLDOUT)
        meta = json.loads((Path(folder) / f"{HOLDOUT}.json").read_text())
        if meta.get("ids_sha256") != ids_hash or len(split["query"]) != num_queries:
            raise DataError(
                f"{Path(folder) / (HOLDOUT + '.npz')}: the saved held-out queries were drawn "
                f"from other images or another count ({len(split['query'])}); the images or "
                "data.holdout_queries changed since this run started"
            )
    if split is None:
        split = random_split(n, num_queries, seed, ("query", "database"))
        if folder is not None:
            save_split(
                split, folder, {"seed": seed, "num_items": n, "ids_sha256": ids_hash}, HOLDOUT
            )
    return images.subset(split["query"]), images.subset(split["database"])
