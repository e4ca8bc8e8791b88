"""Reading and writing the base files of an index directory (:mod:`quantrieve.index.format`).

The functions here take and give arrays and settings, not a particular class: the reader
builds its result with the constructor it is given (:meth:`PQIndex.load
<quantrieve.index.pq_index.PQIndex.load>` passes the class), the writer reads any
:class:`~quantrieve.index.format.IndexArrays`. So the in-memory index sits above this module and
calls down into it.

An index is written into a temporary sibling directory and renamed into place, so a crash never
leaves a half-written index under the final name. An existing index is replaced (whole) only when
asked; a folder that is not an index is never written into (:mod:`quantrieve.runtime.outputs`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sized
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from quantrieve.errors import OutputError
from quantrieve.index.format import (
    CHECKSUMMED_FILES,
    INDEX_FILES,
    INDEX_FORMAT,
    INDEX_KIND,
    INDEX_VERSION,
    RESERVED_META,
    SEGMENTS_DIR,
    IndexArrays,
    IndexFormatError,
    codebooks_sha256,
    file_sha256,
    format_version,
    verify_checksums,
    verify_shape_keys,
)
from quantrieve.pq import DEFAULT_REFINE_DEPTH
from quantrieve.runtime.outputs import folder_state, refuse_foreign, replace_folder

IndexT = TypeVar("IndexT", bound=Sized)


class SavableModel(Protocol):
    """What an index needs of a model to store it (the models layer's RetrievalModel)."""

    training_info: dict[str, Any]

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path: ...


def read_base(path: Path, mmap: bool, verify: bool, build: Callable[..., IndexT]) -> IndexT:
    """The base files of an index directory, checked, given to ``build`` as keyword arguments
    (codebooks, codes, ids, labels, distance, class_names, meta, content, refine,
    refine_depth); see :meth:`PQIndex.load <quantrieve.index.pq_index.PQIndex.load>`.

    Raises:
        IndexFormatError: a missing or malformed file, a newer version, or an index altered
            since it was written (the message names the file or index.json key); an
            IndexFormatError from ``build`` is prefixed with the directory.
    """
    meta_path = path / "index.json"
    if not meta_path.is_file():
        raise IndexFormatError(f"{path}: not an index directory (no index.json)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise IndexFormatError(f"{meta_path}: invalid JSON ({exc})") from None
    found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
    if not isinstance(meta, dict) or found != INDEX_FORMAT:
        raise IndexFormatError(f"{meta_path}: format is {found!r}, not {INDEX_FORMAT}")
    version = meta.get("version")
    if not isinstance(version, int):
        raise IndexFormatError(f"{meta_path}: 'version' must be an integer, got {version!r}")
    if version > INDEX_VERSION:
        raise IndexFormatError(
            f"{meta_path}: index version {meta['version']} is newer than this quantrieve "
            f"(reads up to {INDEX_VERSION})"
        )
    if verify:
        verify_checksums(path, meta)
    mode = "r" if mmap else None
    try:
        codebooks = np.load(path / "codebooks.npy")
        codes = np.load(path / "codes.npy", mmap_mode=mode)
        text = (path / "ids.txt").read_text(encoding="utf-8")
        ids = text[:-1].split("\n") if text else []
        labels = np.load(path / "labels.npy", mmap_mode=mode) if meta.get("has_labels") else None
        content = np.load(path / "content.npy") if meta.get("has_content") else None
        refine = np.load(path / "refine.npy", mmap_mode=mode) if meta.get("has_refine") else None
    except (OSError, ValueError) as exc:
        raise IndexFormatError(f"{path}: cannot read index files ({exc})") from None
    verify_shape_keys(meta_path, meta, codebooks)
    try:
        index = build(
            codebooks=codebooks,
            codes=codes,
            ids=ids,
            labels=labels,
            distance=meta.get("distance", "l2"),
            class_names=meta.get("class_names", []),
            meta={k: v for k, v in meta.items() if k not in RESERVED_META},
            content=content,
            refine=refine,
            refine_depth=int(meta.get("refine_depth", DEFAULT_REFINE_DEPTH)),
            refine_source=str(meta.get("refine_source", "embedding")),
            refine_expand=int(meta.get("refine_expand", 0)),
        )
    except IndexFormatError as exc:
        raise IndexFormatError(f"{path}: {exc}") from None
    if len(index) != meta.get("num_items", len(index)):
        raise IndexFormatError(
            f"{meta_path}: says {meta['num_items']} items, codes.npy has {len(index)}"
        )
    return index


def write_base(
    index: IndexArrays,
    folder: Path,
    model_file: str | Path | None = None,
    model: SavableModel | None = None,
) -> None:
    """Write the base files of ``index`` into an existing, empty ``folder`` (no swap: see
    :func:`save_index`, which calls this on a temporary folder)."""
    np.save(folder / "codebooks.npy", index.codebooks)
    np.save(folder / "codes.npy", index.codes)
    (folder / "ids.txt").write_text("".join(f"{i}\n" for i in index.ids), encoding="utf-8")
    if index.labels is not None:
        np.save(folder / "labels.npy", index.labels.astype(bool))
    if index.content is not None:
        np.save(folder / "content.npy", index.content)
    if index.refine is not None:
        np.save(folder / "refine.npy", np.asarray(index.refine, dtype=np.float16))
    if model_file is not None:
        shutil.copyfile(model_file, folder / "model.pt")
    elif model is not None:
        model.save(folder / "model.pt", model.training_info)
    meta = {
        "format": INDEX_FORMAT,
        "version": format_version(index.refine, index.refine_source),
        "num_items": len(index),
        "num_books": index.num_books,
        "num_codewords": index.num_codewords,
        "codeword_dim": int(index.codebooks.shape[2]),
        "bits": index.bits,
        "distance": index.distance,
        "has_labels": index.labels is not None,
        "has_content": index.content is not None,
        **(
            {
                "has_refine": True,
                "refine_dtype": "float16",
                "refine_depth": index.refine_depth,
                "refine_source": index.refine_source,
                "refine_expand": index.refine_expand,
            }
            if index.refine is not None
            else {}
        ),
        "has_model": model_file is not None or model is not None,
        "class_names": index.class_names,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "codebooks_sha256": codebooks_sha256(index.codebooks),
        "model_sha256": (
            file_sha256(folder / "model.pt") if (folder / "model.pt").is_file() else None
        ),
        "checksums": {
            name: file_sha256(folder / name)
            for name in CHECKSUMMED_FILES
            if (folder / name).is_file()
        },
        **index.meta,
    }
    (folder / "index.json").write_text(json.dumps(meta, indent=2) + "\n")


def save_index(
    index: IndexArrays,
    path: str | Path,
    model_file: str | Path | None = None,
    overwrite: bool = False,
    model: SavableModel | None = None,
) -> Path:
    """Write ``index`` as an index directory through a temporary sibling (see
    :meth:`PQIndex.save <quantrieve.index.pq_index.PQIndex.save>`); returns the directory."""

    def write(tmp: Path) -> None:
        write_base(index, tmp, model_file, model)

    return replace_folder(path, INDEX_KIND, write, overwrite, INDEX_FILES)


def check_index_output(path: str | Path, overwrite: bool = False) -> None:
    """Fail before any work if ``path`` cannot take a new index (see :meth:`PQIndex.save
    <quantrieve.index.pq_index.PQIndex.save>`).

    An index holding items added by a search service (its ``segments/`` folder) is never
    replaced: those items exist nowhere else."""
    path = Path(path)
    state = folder_state(path, INDEX_KIND)
    if state == "other":
        refuse_foreign(path, INDEX_KIND, hint=f"{path / 'index'}")
    if state == "own" and (path / SEGMENTS_DIR).exists():
        raise OutputError(
            f"{path} holds items added or deleted through the search service (segments/), "
            "which exist nowhere else and would be lost; write the new index to another folder"
        )
    if state == "own" and not overwrite:
        raise OutputError(
            f"{path} already holds a quantrieve index; pass --overwrite to replace it (the new "
            "one is written completely before the old one is removed)"
        )
