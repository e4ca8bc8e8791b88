"""Checking that an index directory's ``model.pt`` is the model its codes were made with.

A model.pt copied in from another run would embed queries for other codebooks and rank silently
at chance level, so every index's model is checked before it embeds a query
(:func:`verify_index_model`, called by :func:`model_path`). A passed check is remembered for the
life of the process, keyed by the identities of the files (path, inode, size, modification
time), until one of them changes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from quantrieve.index.format import IndexFormatError, file_sha256, is_index_dir


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
    if is_index_dir(Path(index_dir)):
        return verify_index_model(index_dir)
    return path
