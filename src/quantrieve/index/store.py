"""The index directory: the unit that ``quantrieve search`` and a search service load.

Format ``quantrieve-pq-index``, version 1. A directory holding::

    index.json      metadata: format, version, num_items, num_books (M), num_codewords (K),
                    codeword_dim (d), bits, distance, has_labels, class_names, source,
                    the training config, package versions, git commit, creation time
    codebooks.npy   float32 (M, K, d)
    codes.npy       uint8 (N, M), row i is item i
    ids.txt         N lines, the id of item i on line i+1
    labels.npy      bool (N, C), only when labels are known
    model.pt        the encoder (optional), to embed query images

An index is written into a temporary sibling directory and renamed into place, so a crash never
leaves a half-written index under the final name. An existing index is replaced (whole) only when
asked; a folder that is not an index is never written into (:mod:`quantrieve.runtime.outputs`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from quantrieve.errors import OutputError, QuantrieveError
from quantrieve.pq import DISTANCES, search_codes
from quantrieve.runtime.outputs import OutputKind, folder_state, refuse_foreign, replace_folder

INDEX_FORMAT = "quantrieve-pq-index"
INDEX_VERSION = 1
# Every file an index directory may hold: replacing an index removes these names only.
INDEX_FILES = ("index.json", "codebooks.npy", "codes.npy", "ids.txt", "labels.npy", "model.pt")


def _is_index(folder: Path) -> bool:
    try:
        return json.loads((folder / "index.json").read_text()).get("format") == INDEX_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


INDEX_KIND = OutputKind("quantrieve index", "index.json", _is_index)


RESERVED_META = frozenset(
    {
        "format",
        "version",
        "num_items",
        "num_books",
        "num_codewords",
        "codeword_dim",
        "bits",
        "distance",
        "has_labels",
        "has_model",
        "class_names",
        "created",
    }
)


class SavableModel(Protocol):
    """What an index needs of a model to store it (the models layer's RetrievalModel)."""

    training_info: dict[str, Any]

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path: ...


class IndexFormatError(QuantrieveError, ValueError):
    """An index directory is missing, malformed or from a newer version."""


@dataclass
class PQIndex:
    """PQ codes of a database with their codebooks, ids and optional labels.

    Attributes:
        codebooks: float32 (M, K, d).
        codes: uint8 (N, M).
        ids: N item ids.
        labels: bool (N, C) or None.
        distance: default ranking distance, ``l2`` or ``sqeuclidean``.
        meta: free-form metadata saved in index.json (config, versions, source...).
    """

    codebooks: np.ndarray
    codes: np.ndarray
    ids: list[str]
    labels: np.ndarray | None = None
    distance: str = "l2"
    class_names: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.codebooks = np.ascontiguousarray(self.codebooks, dtype=np.float32)
        self.codes = np.ascontiguousarray(self.codes, dtype=np.uint8)
        if self.codebooks.ndim != 3:
            raise IndexFormatError(f"codebooks must be (M, K, d), got {self.codebooks.shape}")
        m, k, _ = self.codebooks.shape
        if self.codes.ndim != 2 or self.codes.shape[1] != m:
            raise IndexFormatError(f"codes must be (N, {m}), got {self.codes.shape}")
        if len(self.codes) and int(self.codes.max()) >= k:
            raise IndexFormatError(f"codes hold codeword {int(self.codes.max())} >= K = {k}")
        if len(self.ids) != len(self.codes):
            raise IndexFormatError(f"{len(self.ids)} ids for {len(self.codes)} codes")
        if self.labels is not None and len(self.labels) != len(self.codes):
            raise IndexFormatError(f"{len(self.labels)} label rows for {len(self.codes)} codes")
        if self.class_names and (
            self.labels is None or len(self.class_names) != self.labels.shape[1]
        ):
            columns = "no labels" if self.labels is None else f"{self.labels.shape[1]} columns"
            raise IndexFormatError(f"{len(self.class_names)} class names for {columns} of labels")
        if self.distance not in DISTANCES:
            raise IndexFormatError(f"distance must be one of {DISTANCES}, got '{self.distance}'")
        if any("\n" in i or "\r" in i for i in self.ids):
            raise IndexFormatError("item ids may not contain line breaks")
        clash = RESERVED_META & set(self.meta)
        if clash:
            raise IndexFormatError(f"metadata keys {sorted(clash)} are reserved by the format")

    @property
    def num_books(self) -> int:
        return self.codebooks.shape[0]

    @property
    def num_codewords(self) -> int:
        return self.codebooks.shape[1]

    @property
    def bits(self) -> int:
        return int(self.num_books * np.log2(self.num_codewords))

    def __len__(self) -> int:
        return len(self.codes)

    def label_names(self, item: int) -> list[str]:
        """The class names of item ``item`` (empty when unlabelled or unnamed)."""
        if self.labels is None or not self.class_names:
            return []
        return [self.class_names[c] for c in np.flatnonzero(self.labels[item])]

    def add(self, codes: np.ndarray, ids: Sequence[str], labels: np.ndarray | None = None) -> None:
        """Append items in memory (codes uint8 (n, M), their ids and, for a labelled index,
        their labels in the index's class order); checked like a new index."""
        codes = np.asarray(codes, dtype=np.uint8)
        if (labels is None) != (self.labels is None):
            raise IndexFormatError("labels must be given for a labelled index, and only for one")
        grown = PQIndex(
            self.codebooks,
            np.concatenate([np.asarray(self.codes), codes]),
            [*self.ids, *ids],
            None if self.labels is None else np.concatenate([self.labels, labels]),
            self.distance,
            self.class_names,
            self.meta,
        )
        self.codes, self.ids, self.labels = grown.codes, grown.ids, grown.labels

    def search(
        self, queries: torch.Tensor | np.ndarray, k: int = 10, distance: str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k items per query embedding (Q, M*d) by ADC: (distances, indices), each (Q, k)."""
        return search_codes(
            torch.as_tensor(queries),
            torch.from_numpy(self.codebooks),
            torch.from_numpy(self.codes),
            k,
            distance or self.distance,
        )

    def save(
        self,
        path: str | Path,
        model_file: str | Path | None = None,
        overwrite: bool = False,
        model: SavableModel | None = None,
    ) -> Path:
        """Write the index directory (see module docstring).

        The encoder goes in as ``model.pt``: copied from ``model_file``, or written by
        ``model.save`` (an in-memory model).

        A new or empty folder is written; an existing index is replaced only with
        ``overwrite``, whole (the new one is complete before the old one is removed); any
        other folder or file is refused (:class:`~quantrieve.errors.OutputError`).
        """

        def write(tmp: Path) -> None:
            np.save(tmp / "codebooks.npy", self.codebooks)
            np.save(tmp / "codes.npy", self.codes)
            (tmp / "ids.txt").write_text("".join(f"{i}\n" for i in self.ids), encoding="utf-8")
            if self.labels is not None:
                np.save(tmp / "labels.npy", self.labels.astype(bool))
            if model_file is not None:
                shutil.copyfile(model_file, tmp / "model.pt")
            elif model is not None:
                model.save(tmp / "model.pt", model.training_info)
            meta = {
                "format": INDEX_FORMAT,
                "version": INDEX_VERSION,
                "num_items": len(self),
                "num_books": self.num_books,
                "num_codewords": self.num_codewords,
                "codeword_dim": int(self.codebooks.shape[2]),
                "bits": self.bits,
                "distance": self.distance,
                "has_labels": self.labels is not None,
                "has_model": model_file is not None or model is not None,
                "class_names": self.class_names,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                **self.meta,
            }
            (tmp / "index.json").write_text(json.dumps(meta, indent=2) + "\n")

        return replace_folder(path, INDEX_KIND, write, overwrite, INDEX_FILES)

    @classmethod
    def load(cls, path: str | Path, mmap: bool = False) -> PQIndex:
        """Read an index directory; errors name the directory and the file at fault."""
        path = Path(path)
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
        mode = "r" if mmap else None
        try:
            codebooks = np.load(path / "codebooks.npy")
            codes = np.load(path / "codes.npy", mmap_mode=mode)
            text = (path / "ids.txt").read_text(encoding="utf-8")
            ids = text[:-1].split("\n") if text else []
            labels = (
                np.load(path / "labels.npy", mmap_mode=mode) if meta.get("has_labels") else None
            )
        except (OSError, ValueError) as exc:
            raise IndexFormatError(f"{path}: cannot read index files ({exc})") from None
        try:
            index = cls(
                codebooks=codebooks,
                codes=codes,
                ids=ids,
                labels=labels,
                distance=meta.get("distance", "l2"),
                class_names=meta.get("class_names", []),
                meta={k: v for k, v in meta.items() if k not in RESERVED_META},
            )
        except IndexFormatError as exc:
            raise IndexFormatError(f"{path}: {exc}") from None
        if len(index) != meta.get("num_items", len(index)):
            raise IndexFormatError(
                f"{meta_path}: says {meta['num_items']} items, codes.npy has {len(index)}"
            )
        return index


def check_index_output(path: str | Path, overwrite: bool = False) -> None:
    """Fail before any work if ``path`` cannot take a new index (see :meth:`PQIndex.save`)."""
    path = Path(path)
    state = folder_state(path, INDEX_KIND)
    if state == "other":
        refuse_foreign(path, INDEX_KIND, hint=f"{path / 'index'}")
    if state == "own" and not overwrite:
        raise OutputError(
            f"{path} already holds a quantrieve index; pass --overwrite to replace it (the new "
            "one is written completely before the old one is removed)"
        )


def model_path(index_dir: str | Path) -> Path:
    """The ``model.pt`` in an index or run directory, or an error saying it is missing."""
    path = Path(index_dir) / "model.pt"
    if not path.is_file():
        raise IndexFormatError(
            f"{index_dir}: no model.pt here (train first), so images cannot be embedded"
        )
    return path
