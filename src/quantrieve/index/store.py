"""The index directory: the unit that ``quantrieve search`` and a search service load.

Format ``quantrieve-pq-index``, version 2. A directory holding::

    index.json      metadata: format, version, num_items, num_books (M), num_codewords (K),
                    codeword_dim (d), bits, distance, has_labels, class_names, source,
                    the training config, package versions, git commit, creation time;
                    codebooks_sha256, model_sha256 and checksums (see below)
    codebooks.npy   float32 (M, K, d)
    codes.npy       uint8 (N, M), row i is item i
    ids.txt         N lines, the id of item i on line i+1
    labels.npy      bool (N, C), only when labels are known
    content.npy     uint64 (N,), a fingerprint of each item's pixels, when known (it tells a
                    query that is itself in the index; see :func:`image_fingerprints`)
    refine.npy      float16 (N, M*d), each item's embedding, when the index refines (the
                    first ``refine_depth`` ADC results of a search are re-scored with it:
                    :mod:`quantrieve.pq.refine`); index.json then says ``has_refine``,
                    ``refine_dtype`` and ``refine_depth``
    model.pt        the encoder (optional), to embed query images

Integrity (version 2). ``codebooks_sha256`` is the SHA-256 of the codebooks' float32 bytes (C
order), ``model_sha256`` that of the ``model.pt`` file, and ``checksums`` maps ``codes.npy``,
``ids.txt`` and ``labels.npy`` to the SHA-256 of each file. :meth:`PQIndex.load` refuses an index
whose M, K, d, bits or item count in index.json disagree with its arrays, whose codebooks do not
hash to ``codebooks_sha256``, or (``verify=True``, the default) whose files do not match their
checksums; :func:`verify_index_model` refuses a ``model.pt`` that does not hash to
``model_sha256`` or whose quantizer codebooks differ from ``codebooks.npy`` (a model.pt copied in
from another run), and :func:`model_path` calls it for every index. A version-1 index (no hashes)
still loads: what can be checked is (M, K, d, bits, the model's codebooks), and a
:class:`~quantrieve.errors.QuantrieveWarning` says the rest cannot be.

An index is written into a temporary sibling directory and renamed into place, so a crash never
leaves a half-written index under the final name. An existing index is replaced (whole) only when
asked; a folder that is not an index is never written into (:mod:`quantrieve.runtime.outputs`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from quantrieve.errors import OutputError, QuantrieveError, QuantrieveWarning
from quantrieve.pq import (
    DEFAULT_REFINE_DEPTH,
    DISTANCES,
    CodeSearcher,
    code_bits,
    is_codeword_count,
    refine_ranking,
)
from quantrieve.runtime.outputs import OutputKind, folder_state, refuse_foreign, replace_folder

INDEX_FORMAT = "quantrieve-pq-index"
INDEX_VERSION = 2
# Every file an index directory may hold: replacing an index removes these names only.
INDEX_FILES = (
    "index.json",
    "codebooks.npy",
    "codes.npy",
    "ids.txt",
    "labels.npy",
    "content.npy",
    "refine.npy",
    "model.pt",
)
# Files whose SHA-256 index.json records under "checksums" (labels.npy and content.npy only
# when present).
CHECKSUMMED_FILES = ("codes.npy", "ids.txt", "labels.npy", "content.npy", "refine.npy")
OPTIONAL_FILES = {
    "labels.npy": "has_labels",
    "content.npy": "has_content",
    "refine.npy": "has_refine",
}
HASH_CHUNK = 1 << 20


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
        "has_content",
        "has_refine",
        "refine_dtype",
        "refine_depth",
        "has_model",
        "class_names",
        "created",
        "codebooks_sha256",
        "model_sha256",
        "checksums",
    }
)


class SavableModel(Protocol):
    """What an index needs of a model to store it (the models layer's RetrievalModel)."""

    training_info: dict[str, Any]

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path: ...


class IndexFormatError(QuantrieveError, ValueError):
    """An index directory is missing, malformed, altered since it was written, or from a newer
    version."""


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in chunks (memory stays bounded for large files)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def image_fingerprints(images: np.ndarray, batch: int = 4096) -> np.ndarray:
    """uint64 (N,) fingerprints of uint8 images (N, H, W, C): the first 8 bytes of the
    BLAKE2b digest of each image's pixels. Equal pixels give equal fingerprints; a collision of
    different images has probability about N^2 / 2^64."""
    out = np.empty(len(images), dtype=np.uint64)
    for start in range(0, len(images), batch):
        rows = np.ascontiguousarray(images[start : start + batch])
        for i, row in enumerate(rows):
            digest = hashlib.blake2b(row.tobytes(), digest_size=8).digest()
            out[start + i] = int.from_bytes(digest, "little")
    return out


def codebooks_sha256(codebooks: np.ndarray) -> str:
    """SHA-256 of codebooks as float32 bytes in C order (what ``codebooks.npy`` holds)."""
    return hashlib.sha256(np.ascontiguousarray(codebooks, dtype=np.float32).tobytes()).hexdigest()


@dataclass
class PQIndex:
    """PQ codes of a database with their codebooks, ids and optional labels.

    Attributes:
        codebooks: float32 (M, K, d).
        codes: uint8 (N, M).
        ids: N item ids.
        labels: bool (N, C) or None.
        distance: default ranking distance, ``l2`` or ``sqeuclidean``.
        content: uint64 (N,) pixel fingerprints (:func:`image_fingerprints`) or None.
        meta: free-form metadata saved in index.json (config, versions, source...).
        refine: float16 (N, M*d) embeddings of the items, or None: a search re-scores its
            first ``refine_depth`` ADC results with them (:mod:`quantrieve.pq.refine`).
        refine_depth: R, the re-scored results per query (used only with ``refine``).
        items: int64 (N,) the stable item number of each row (:mod:`quantrieve.index.hits`),
            or None when row i is item i (a freshly encoded index). An index loaded with its
            service changes gets them from the manifest.
    """

    codebooks: np.ndarray
    codes: np.ndarray
    ids: list[str]
    labels: np.ndarray | None = None
    distance: str = "l2"
    class_names: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    content: np.ndarray | None = None
    refine: np.ndarray | None = None
    refine_depth: int = DEFAULT_REFINE_DEPTH
    items: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.content is not None:
            self.content = np.asarray(self.content, dtype=np.uint64)
            if self.content.shape != (len(self.codes),):
                raise IndexFormatError(
                    f"content fingerprints must be ({len(self.codes)},), got {self.content.shape}"
                )
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
        if self.refine is not None:
            if not isinstance(self.refine, np.memmap):
                self.refine = np.asarray(self.refine, dtype=np.float16)
            dim = self.codebooks.shape[0] * self.codebooks.shape[2]
            if self.refine.dtype != np.float16 or self.refine.shape != (len(self.codes), dim):
                raise IndexFormatError(
                    f"refine embeddings must be float16 ({len(self.codes)}, {dim}), got "
                    f"{self.refine.dtype} {self.refine.shape}"
                )
        if self.items is not None:
            self.items = np.asarray(self.items, dtype=np.int64)
            if self.items.shape != (len(self.codes),):
                raise IndexFormatError(
                    f"item numbers must be ({len(self.codes)},), got {self.items.shape}"
                )
        if self.refine_depth < 1:
            raise IndexFormatError(f"refine_depth must be >= 1, got {self.refine_depth}")
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
        return code_bits(self.num_books, self.num_codewords)

    def __len__(self) -> int:
        return len(self.codes)

    def label_names(self, row: int) -> list[str]:
        """The class names of row ``row`` (empty when unlabelled or unnamed)."""
        if self.labels is None or not self.class_names:
            return []
        return [self.class_names[c] for c in np.flatnonzero(self.labels[row])]

    def item_numbers(self) -> np.ndarray:
        """int64 (N,): the stable item number of every row (row i is item i by default)."""
        if self.items is not None:
            return self.items
        return np.arange(len(self.codes), dtype=np.int64)

    def add(
        self,
        codes: np.ndarray,
        ids: Sequence[str],
        labels: np.ndarray | None = None,
        content: np.ndarray | None = None,
        refine: np.ndarray | None = None,
    ) -> None:
        """Append items in memory: codes uint8 (n, M), their ids and, for a labelled index,
        their labels in the index's class order; their pixel fingerprints and float16
        embeddings when the index keeps them. Checked like a new index."""
        codes = np.asarray(codes, dtype=np.uint8)
        if (labels is None) != (self.labels is None):
            raise IndexFormatError("labels must be given for a labelled index, and only for one")
        if (content is None) != (self.content is None):
            raise IndexFormatError(
                "content fingerprints must be given when the index keeps them, and only then"
            )
        if (refine is None) != (self.refine is None):
            raise IndexFormatError(
                "refine embeddings must be given when the index refines, and only then"
            )
        grown = PQIndex(
            self.codebooks,
            np.concatenate([np.asarray(self.codes), codes]),
            [*self.ids, *ids],
            None if self.labels is None else np.concatenate([self.labels, labels]),
            self.distance,
            self.class_names,
            self.meta,
            None if self.content is None else np.concatenate([self.content, content]),
            None if self.refine is None else np.concatenate([self.refine, refine]),
            self.refine_depth,
        )
        if self.items is not None:
            start = int(self.items.max()) + 1 if len(self.items) else 0
            new = np.arange(start, start + len(codes), dtype=np.int64)
            self.items = np.concatenate([self.items, new])
        self.codes, self.ids, self.labels = grown.codes, grown.ids, grown.labels
        self.content, self.refine = grown.content, grown.refine

    def search(
        self,
        queries: torch.Tensor | np.ndarray,
        k: int = 10,
        distance: str | None = None,
        refine_depth: int | None = None,
        fingerprints: np.ndarray | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k items per query embedding (Q, M*d) by ADC: (distances, indices), each (Q, k).

        The search state (per-book code columns, the one-hot matrix) is built on the first search
        and kept with these codes (:meth:`searcher`), so repeated searches cost a look-up table, a
        gather or product and a top-k.

        An index that refines (:attr:`refine`) re-scores the first ``refine_depth`` results
        (default: the index's) with the items' float16 embeddings and orders them by that
        distance, ties by item number; later results keep their ADC order and distances
        (:func:`~quantrieve.pq.refine_ranking`). ``refine_depth=0`` searches by ADC alone.

        ``fingerprints``: the queries' pixel fingerprints (:func:`image_fingerprints`), for an
        index that keeps them: the items with a query's very pixels come first, at distance 0,
        in item order; the rest follow in their order.
        """
        queries = torch.as_tensor(queries)
        distance = distance or self.distance
        depth = self.refine_depth if refine_depth is None else refine_depth
        if depth < 0:
            raise QuantrieveError(f"refine depth must be >= 0 (0 = off), got {depth}")
        if self.refine is None or depth == 0:
            dists, items = self.searcher().search(queries, k, distance)
        else:
            dists, items = self.searcher().search(queries, max(k, depth), distance)
            with warnings.catch_warnings():  # a read-only memory map is only ever read here
                warnings.simplefilter("ignore", UserWarning)
                fine = torch.from_numpy(self.refine)
            dists, items = refine_ranking(queries, dists, items, fine, depth, distance)
            dists, items = dists[:, :k], items[:, :k]
        if fingerprints is not None and self.content is not None:
            dists, items = self._copies_first(dists, items, np.asarray(fingerprints, np.uint64))
        return dists, items

    def copies(self, fingerprint: int) -> np.ndarray:
        """The rows whose pixel fingerprint is ``fingerprint``, ascending (none without
        fingerprints)."""
        if self.content is None:
            return np.zeros(0, dtype=np.int64)
        cached = self.__dict__.get("_content_order")
        if cached is None or cached[0] is not self.content:
            order = np.argsort(self.content, kind="stable")
            cached = (self.content, order, self.content[order])
            self.__dict__["_content_order"] = cached
        order, ordered = cached[1], cached[2]
        key = np.uint64(fingerprint)
        lo = np.searchsorted(ordered, key, side="left")
        hi = np.searchsorted(ordered, key, side="right")
        return np.sort(order[lo:hi]).astype(np.int64)

    def _copies_first(
        self, dists: torch.Tensor, items: torch.Tensor, fingerprints: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each query's exact copies in front at distance 0, the rest after; length kept."""
        if len(fingerprints) != len(items):
            raise QuantrieveError(f"{len(fingerprints)} fingerprints for {len(items)} queries")
        dists, items = dists.clone(), items.clone()
        k = items.shape[1]
        for q, fingerprint in enumerate(fingerprints.tolist()):
            copies = self.copies(fingerprint)[:k]
            if not len(copies):
                continue
            rest = [(d, i) for d, i in zip(dists[q].tolist(), items[q].tolist(), strict=True)]
            taken = set(copies.tolist())
            row = [(0.0, int(i)) for i in copies] + [(d, i) for d, i in rest if i not in taken]
            dists[q] = torch.tensor([d for d, _ in row[:k]], dtype=dists.dtype)
            items[q] = torch.tensor([i for _, i in row[:k]], dtype=items.dtype)
        return dists, items

    def searcher(self) -> CodeSearcher:
        """The :class:`~quantrieve.pq.CodeSearcher` of the current codes (built once, kept until
        :meth:`add` changes the codes)."""
        cached = self.__dict__.get("_searcher")
        if cached is not None and cached[0] is self.codes and cached[1] is self.codebooks:
            return cached[2]
        with warnings.catch_warnings():  # a read-only memory map is only ever read here
            warnings.simplefilter("ignore", UserWarning)
            searcher = CodeSearcher(torch.from_numpy(self.codebooks), torch.from_numpy(self.codes))
        self.__dict__["_searcher"] = (self.codes, self.codebooks, searcher)
        return searcher

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
            self.write_files(tmp, model_file, model)

        return replace_folder(path, INDEX_KIND, write, overwrite, INDEX_FILES)

    def write_files(
        self,
        folder: Path,
        model_file: str | Path | None = None,
        model: SavableModel | None = None,
    ) -> None:
        """Write the base files of the format into an existing, empty ``folder`` (no swap: see
        :meth:`save`, which calls this on a temporary folder)."""
        np.save(folder / "codebooks.npy", self.codebooks)
        np.save(folder / "codes.npy", self.codes)
        (folder / "ids.txt").write_text("".join(f"{i}\n" for i in self.ids), encoding="utf-8")
        if self.labels is not None:
            np.save(folder / "labels.npy", self.labels.astype(bool))
        if self.content is not None:
            np.save(folder / "content.npy", self.content)
        if self.refine is not None:
            np.save(folder / "refine.npy", np.asarray(self.refine, dtype=np.float16))
        if model_file is not None:
            shutil.copyfile(model_file, folder / "model.pt")
        elif model is not None:
            model.save(folder / "model.pt", model.training_info)
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
            "has_content": self.content is not None,
            **(
                {"has_refine": True, "refine_dtype": "float16", "refine_depth": self.refine_depth}
                if self.refine is not None
                else {}
            ),
            "has_model": model_file is not None or model is not None,
            "class_names": self.class_names,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "codebooks_sha256": codebooks_sha256(self.codebooks),
            "model_sha256": (
                file_sha256(folder / "model.pt") if (folder / "model.pt").is_file() else None
            ),
            "checksums": {
                name: file_sha256(folder / name)
                for name in CHECKSUMMED_FILES
                if (folder / name).is_file()
            },
            **self.meta,
        }
        (folder / "index.json").write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(
        cls, path: str | Path, mmap: bool = False, verify: bool = True, segments: bool = True
    ) -> PQIndex:
        """Read an index directory; errors name the directory and the file or key at fault.

        An index changed by a search service (``segments/manifest.json``, see
        :mod:`quantrieve.index.segments`) loads as it stands now: the base items, then the items
        of every appended segment, less the deleted ones; ``quantrieve search`` and
        ``evaluate`` see what the service serves.

        Args:
            path: the index directory.
            mmap: memory-map codes and labels instead of reading them (an index with segments
                is merged into memory).
            verify: check codes.npy, ids.txt and labels.npy against their checksums in
                index.json, and each segment against the manifest (reads each file once; turn
                off for very large memory-mapped indexes). The cheap checks (M, K, d, bits, item
                count, codebook hash) always run.
            segments: apply the segments and deletions; False reads the base files alone.

        Raises:
            IndexFormatError: a missing or malformed file, a newer version, or an index altered
                since it was written (the message names the file or index.json key).
        """
        base = cls._load_base(Path(path), mmap, verify)
        if not segments:
            return base
        from quantrieve.index.segments import has_segments, open_live  # imports this module

        if not has_segments(path):
            return base
        return open_live(path, verify=verify, base=base).index

    @classmethod
    def _load_base(cls, path: Path, mmap: bool, verify: bool) -> PQIndex:
        """The base files of an index directory (see :meth:`load`)."""
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
            _verify_checksums(path, meta)
        mode = "r" if mmap else None
        try:
            codebooks = np.load(path / "codebooks.npy")
            codes = np.load(path / "codes.npy", mmap_mode=mode)
            text = (path / "ids.txt").read_text(encoding="utf-8")
            ids = text[:-1].split("\n") if text else []
            labels = (
                np.load(path / "labels.npy", mmap_mode=mode) if meta.get("has_labels") else None
            )
            content = np.load(path / "content.npy") if meta.get("has_content") else None
            refine = (
                np.load(path / "refine.npy", mmap_mode=mode) if meta.get("has_refine") else None
            )
        except (OSError, ValueError) as exc:
            raise IndexFormatError(f"{path}: cannot read index files ({exc})") from None
        _verify_shape_keys(meta_path, meta, codebooks)
        try:
            index = cls(
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
            )
        except IndexFormatError as exc:
            raise IndexFormatError(f"{path}: {exc}") from None
        if len(index) != meta.get("num_items", len(index)):
            raise IndexFormatError(
                f"{meta_path}: says {meta['num_items']} items, codes.npy has {len(index)}"
            )
        return index


def _altered(path: Path, what: str) -> IndexFormatError:
    return IndexFormatError(
        f"{path}: {what}; the index was altered after it was written (a file replaced or "
        "edited); encode it again (quantrieve encode MODEL --out INDEX --overwrite)"
    )


def _warn_unverified(path: Path, what: str) -> None:
    warnings.warn(
        f"{path}: index version 1 records no {what}, so they cannot be verified; encode it "
        "again with this quantrieve to add them",
        QuantrieveWarning,
        stacklevel=3,
    )


def _verify_checksums(path: Path, meta: dict[str, Any]) -> None:
    """Files against ``checksums`` in index.json; a version-1 index has none (a warning)."""
    checksums = meta.get("checksums")
    if checksums is None and meta["version"] < 2:
        _warn_unverified(path, "checksums of codes.npy, ids.txt, labels.npy")
        return
    if not isinstance(checksums, dict):
        raise IndexFormatError(f"{path / 'index.json'}: 'checksums' missing or not a table")
    for name in CHECKSUMMED_FILES:
        file = path / name
        expected = checksums.get(name)
        if name in OPTIONAL_FILES and not meta.get(OPTIONAL_FILES[name]):
            continue
        if expected is None:
            raise IndexFormatError(f"{path / 'index.json'}: 'checksums' has no entry for {name}")
        if not file.is_file():
            raise IndexFormatError(f"{path}: cannot read index files ({name} is missing)")
        if file_sha256(file) != expected:
            raise _altered(file, "checksum differs from the one in index.json")


def _verify_shape_keys(meta_path: Path, meta: dict[str, Any], codebooks: np.ndarray) -> None:
    """M, K, d and bits in index.json against codebooks.npy, and its hash (version 2)."""
    if codebooks.ndim != 3:
        return  # PQIndex names the bad shape
    m, k, d = codebooks.shape
    expected = {
        "num_books": m,
        "num_codewords": k,
        "codeword_dim": d,
        "bits": code_bits(m, k) if is_codeword_count(k) else 0,
    }
    for key, value in expected.items():
        if key in meta and meta[key] != value:
            raise IndexFormatError(
                f"{meta_path}: '{key}' is {meta[key]!r} but codebooks.npy holds {m} books of "
                f"{k} codewords of dimension {d} ({expected['bits']} bits); index.json was "
                "edited or its files come from different indexes (the format fixes these "
                "values: encode again to change them)"
            )
    recorded = meta.get("codebooks_sha256")
    if recorded is None:
        if meta["version"] >= 2:
            raise IndexFormatError(f"{meta_path}: 'codebooks_sha256' is missing")
        return
    if codebooks_sha256(codebooks) != recorded:
        raise _altered(meta_path.parent / "codebooks.npy", "codebooks differ from codebooks_sha256")


def check_index_output(path: str | Path, overwrite: bool = False) -> None:
    """Fail before any work if ``path`` cannot take a new index (see :meth:`PQIndex.save`).

    An index holding items added by a search service (its ``segments/`` folder) is never
    replaced: those items exist nowhere else."""
    path = Path(path)
    state = folder_state(path, INDEX_KIND)
    if state == "other":
        refuse_foreign(path, INDEX_KIND, hint=f"{path / 'index'}")
    if state == "own" and (path / "segments").exists():
        raise OutputError(
            f"{path} holds items added or deleted through the search service (segments/), "
            "which exist nowhere else and would be lost; write the new index to another folder"
        )
    if state == "own" and not overwrite:
        raise OutputError(
            f"{path} already holds a quantrieve index; pass --overwrite to replace it (the new "
            "one is written completely before the old one is removed)"
        )


def _model_codebooks(model_file: Path) -> np.ndarray:
    """The quantizer codebooks in a model file's state dict (read without building the model:
    this layer does not import :mod:`quantrieve.models`)."""
    try:
        payload = torch.load(model_file, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise IndexFormatError(f"{model_file}: not a readable quantrieve model ({first})") from None
    state = payload.get("state_dict") if isinstance(payload, dict) else None
    found = [
        v
        for k, v in (state or {}).items()
        if k.endswith("quantizer.codebooks") and torch.is_tensor(v)
    ]
    if len(found) != 1:
        raise IndexFormatError(f"{model_file}: not a quantrieve model (no quantizer codebooks)")
    return found[0].detach().float().numpy()


# Index directories whose model.pt passed :func:`verify_index_model`, by the files' identities.
_VERIFIED_MODELS: set[tuple] = set()


def _identity(*files: Path) -> tuple:
    out = []
    for file in files:
        stat = file.stat()
        out.append((str(file.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns))
    return tuple(out)


def verify_index_model(index_dir: str | Path) -> Path:
    """Check that the index's ``model.pt`` is the model its codes were made with.

    The file must hash to ``model_sha256`` in index.json (version 2), and the quantizer codebooks
    in its state dict must equal ``codebooks.npy`` (any version): a model.pt copied in from
    another run would embed queries for other codebooks and rank silently at chance level. A
    passed check is remembered until one of the files changes.

    Args:
        index_dir: the index directory.

    Returns:
        The path of the verified ``model.pt``.

    Raises:
        IndexFormatError: no model.pt, or one that does not belong to the index (the message says
            which check failed and how to fix it).
    """
    index_dir = Path(index_dir)
    model_file, meta_path, books_path = (
        index_dir / "model.pt",
        index_dir / "index.json",
        index_dir / "codebooks.npy",
    )
    if not model_file.is_file():
        raise IndexFormatError(
            f"{index_dir}: no model.pt here (train first), so images cannot be embedded"
        )
    try:
        identity = _identity(model_file, meta_path, books_path)
        meta = json.loads(meta_path.read_text())
        codebooks = np.load(books_path)
    except (OSError, ValueError) as exc:
        raise IndexFormatError(f"{index_dir}: cannot read index files ({exc})") from None
    if identity in _VERIFIED_MODELS:
        return model_file
    fix = (
        "it is not the model this index was encoded with (e.g. another run's model.pt was "
        "copied in); copy back the right model.pt, or encode again with this one (quantrieve "
        "encode MODEL --out INDEX --overwrite)"
    )
    recorded = meta.get("model_sha256") if isinstance(meta, dict) else None
    if recorded is not None and file_sha256(model_file) != recorded:
        raise IndexFormatError(
            f"{model_file}: file hash differs from model_sha256 in index.json; {fix}"
        )
    model_books = _model_codebooks(model_file)
    if model_books.shape != codebooks.shape or not np.array_equal(model_books, codebooks):
        raise IndexFormatError(
            f"{model_file}: quantizer codebooks {tuple(model_books.shape)} differ from "
            f"codebooks.npy {tuple(codebooks.shape)}; {fix}"
        )
    _VERIFIED_MODELS.add(identity)
    return model_file


def model_path(index_dir: str | Path) -> Path:
    """The ``model.pt`` in an index or run directory, or an error saying it is missing.

    In an index directory (one with index.json) the model is also checked to be the index's
    own (:func:`verify_index_model`)."""
    path = Path(index_dir) / "model.pt"
    if not path.is_file():
        raise IndexFormatError(
            f"{index_dir}: no model.pt here (train first), so images cannot be embedded"
        )
    if _is_index(Path(index_dir)):
        return verify_index_model(index_dir)
    return path
