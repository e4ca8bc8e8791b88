"""The index directory format: names, versions, hashes and the checks that need no index object.

Format ``quantrieve-pq-index``, version 2 (3 when it refines with backbone vectors, see
``refine.npy``). A directory holding::

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
    refine.npy      float16 (N, D), each item's finer vector, when the index refines (the
                    first ``refine_depth`` ADC results of a search are re-scored with it:
                    :mod:`quantrieve.pq.refine`); index.json then says ``has_refine``,
                    ``refine_dtype``, ``refine_depth`` and ``refine_source``: ``embedding``
                    (D = M*d, the embeddings the codes quantize; absent in older indexes) or
                    ``backbone`` (D = the backbone's width, its unit-length representations).
                    An index that refines by ``backbone`` is written as version 3, which a
                    reader of version 2 refuses instead of scoring the wrong vectors.
                    ``refine_expand`` (absent: 0): n > 0 re-scores the head against the
                    mean of the query and its first n refined results (query expansion)
    model.pt        the encoder (optional), to embed query images
    segments/       changes made by a search service (:mod:`quantrieve.index.segment_files`)

Integrity (version 2). ``codebooks_sha256`` is the SHA-256 of the codebooks' float32 bytes (C
order), ``model_sha256`` that of the ``model.pt`` file, and ``checksums`` maps ``codes.npy``,
``ids.txt`` and ``labels.npy`` to the SHA-256 of each file. :meth:`PQIndex.load
<quantrieve.index.pq_index.PQIndex.load>` refuses an index whose M, K, d, bits or item count in
index.json disagree with its arrays, whose codebooks do not hash to ``codebooks_sha256``, or
(``verify=True``, the default) whose files do not match their checksums;
:func:`~quantrieve.index.model_check.verify_index_model` refuses a ``model.pt`` that does not
hash to ``model_sha256`` or whose quantizer codebooks differ from ``codebooks.npy`` (a model.pt
copied in from another run). A version-1 index (no hashes) still loads: what can be checked is
(M, K, d, bits, the model's codebooks), and a :class:`~quantrieve.errors.QuantrieveWarning`
says the rest cannot be.

This module is the bottom of the index package: the in-memory index, the directory reader and
writer, the live versions and the model check all build on it, never the other way round.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from quantrieve.errors import QuantrieveError, QuantrieveWarning
from quantrieve.pq import code_bits, is_codeword_count
from quantrieve.runtime.outputs import OutputKind

INDEX_FORMAT = "quantrieve-pq-index"
INDEX_VERSION = 3
#: The version written for an index that needs nothing version 3 added.
PLAIN_INDEX_VERSION = 2


def format_version(refine: object, refine_source: str) -> int:
    """The version an index is written as: 3 when it refines (``refine`` is not None) by
    vectors other than its embeddings (a version-2 reader would re-score them against the
    wrong query vectors), else 2, which every reader since refinement reads."""
    if refine is None or refine_source == "embedding":
        return PLAIN_INDEX_VERSION
    return INDEX_VERSION


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
# The folder of a search service's changes, and the manifest in it that names the live version.
SEGMENTS_DIR = "segments"
MANIFEST = "manifest.json"

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
        "refine_source",
        "refine_expand",
        "has_model",
        "class_names",
        "created",
        "codebooks_sha256",
        "model_sha256",
        "checksums",
    }
)


class IndexFormatError(QuantrieveError, ValueError):
    """An index directory is missing, malformed, altered since it was written, or from a newer
    version."""


class IndexArrays(Protocol):
    """What the reader, the writer and the segment files need of an index: its arrays and
    settings (:class:`~quantrieve.index.pq_index.PQIndex` has them)."""

    codebooks: np.ndarray
    codes: np.ndarray
    ids: list[str]
    labels: np.ndarray | None
    distance: str
    class_names: list[str]
    meta: dict[str, Any]
    content: np.ndarray | None
    refine: np.ndarray | None
    refine_depth: int
    refine_source: str
    refine_expand: int

    @property
    def num_books(self) -> int: ...

    @property
    def num_codewords(self) -> int: ...

    @property
    def bits(self) -> int: ...

    def __len__(self) -> int: ...


def is_index_dir(folder: Path) -> bool:
    """Whether ``folder`` holds an index.json of this format (read leniently: no errors)."""
    try:
        return json.loads((folder / "index.json").read_text()).get("format") == INDEX_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


INDEX_KIND = OutputKind("quantrieve index", "index.json", is_index_dir)


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


def altered_error(path: Path, what: str) -> IndexFormatError:
    """The error for a file that no longer matches the hash recorded when it was written."""
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


def verify_checksums(path: Path, meta: dict[str, Any]) -> None:
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
            raise altered_error(file, "checksum differs from the one in index.json")


def verify_shape_keys(meta_path: Path, meta: dict[str, Any], codebooks: np.ndarray) -> None:
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
        raise altered_error(
            meta_path.parent / "codebooks.npy", "codebooks differ from codebooks_sha256"
        )
