"""Decode a large image set once into a resized uint8 ``.npy`` file, then memory-map it.

A cache entry is two files in ``cache_dir``:

- ``<name>-<size>px-<ident>.npy``: the images, shape (N, size, size, 3), uint8, opened read-only
  as a memory map; ``ident`` hashes the ordered source paths and the size, so one image list
  always maps to the same entry;
- the same name with ``.json``: a small record whose ``key`` is a SHA-256 over the ordered source
  paths, their byte sizes and modification times (ns) and the image size.

The entry is reused only if the recorded key equals the key of the sources now; otherwise (a
source touched, replaced, resized) it is rebuilt in place. A build writes to a temporary file and
moves it into place with :func:`os.replace`; the JSON record is removed before and written (also
atomically) after, so an interrupted build never leaves a file that looks valid.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from quantrieve.data.base import DataError
from quantrieve.data.images import UnreadableImageError, decode_image

Progress = Callable[[int, int], None]
CACHE_FORMAT = 1
DEFAULT_CACHE_DIR_NAME = ".quantrieve-cache"


def decode_images(
    paths: Sequence[Path], image_size: int, progress: Progress | None = None
) -> np.ndarray:
    """Decode images into an in-memory array (no cache).

    Args:
        paths: image files, in output order.
        image_size: side of the square output images.
        progress: called as ``progress(n_done, total)`` after each image.

    Returns:
        uint8 array (N, image_size, image_size, 3).

    Raises:
        UnreadableImageError: an image cannot be decoded; its ``index`` is the position in
            ``paths``.
    """
    out = np.empty((len(paths), image_size, image_size, 3), dtype=np.uint8)
    _decode_into(out, paths, image_size, progress)
    return out


def _decode_into(
    out: np.ndarray, paths: Sequence[Path], image_size: int, progress: Progress | None
) -> None:
    total = len(paths)
    for i, path in enumerate(paths):
        try:
            out[i] = decode_image(path, image_size)
        except UnreadableImageError as exc:
            exc.index = i
            raise
        if progress is not None:
            progress(i + 1, total)


def cache_key(paths: Sequence[Path], image_size: int) -> str:
    """SHA-256 over the ordered source paths, their sizes and mtimes, and the image size.

    Args:
        paths: image files, in output order.
        image_size: side of the square output images.

    Returns:
        The hex digest.

    Raises:
        DataError: a source file cannot be stat-ed.
    """
    digest = hashlib.sha256(f"quantrieve-image-cache:{CACHE_FORMAT}:{image_size}\n".encode())
    for path in paths:
        try:
            stat = path.stat()
        except OSError as exc:
            raise DataError(f"{path}: cannot read image file ({exc.strerror})") from None
        digest.update(f"{os.path.abspath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _entry_stem(paths: Sequence[Path], image_size: int, name: str) -> str:
    ident = hashlib.sha256(f"{image_size}\n".encode())
    for path in paths:
        ident.update(f"{os.path.abspath(path)}\n".encode())
    return f"{name}-{image_size}px-{ident.hexdigest()[:16]}"


def _fsync(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _open_valid(
    npy_path: Path, json_path: Path, key: str, shape: tuple[int, ...]
) -> np.memmap | None:
    """The cached array if its record matches ``key`` and its header ``shape``; else None."""
    try:
        record = json.loads(json_path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("key") != key:
        return None
    try:
        images = np.load(npy_path, mmap_mode="r")
    except (OSError, ValueError):
        return None
    if images.dtype != np.uint8 or images.shape != shape:
        return None
    return images


def cached_images(
    paths: Sequence[Path],
    image_size: int,
    cache_dir: Path,
    progress: Progress | None = None,
    name: str = "images",
) -> np.memmap:
    """Decoded, resized images of ``paths``, from the cache or built into it.

    Args:
        paths: image files, in output order (the order is part of the key).
        image_size: side of the square output images (see :mod:`quantrieve.data.images`).
        cache_dir: folder of the cache entries; created if missing.
        progress: called as ``progress(n_done, total)`` after each decoded image (only when the
            cache is built).
        name: readable prefix of the entry's file names (e.g. ``flickr25k-database``).

    Returns:
        Read-only memory map of shape (N, image_size, image_size, 3), uint8.

    Raises:
        DataError: ``paths`` is empty or a source file cannot be stat-ed.
        UnreadableImageError: a source image cannot be decoded (``index`` set); nothing is cached.
        OSError: the cache folder or file cannot be written.
    """
    if not paths:
        raise DataError(f"{cache_dir}: no images to cache for '{name}'")
    cache_dir = Path(cache_dir)
    shape = (len(paths), image_size, image_size, 3)
    key = cache_key(paths, image_size)
    stem = _entry_stem(paths, image_size, name)
    npy_path = cache_dir / f"{stem}.npy"
    json_path = cache_dir / f"{stem}.json"
    cached = _open_valid(npy_path, json_path, key, shape)
    if cached is not None:
        return cached

    cache_dir.mkdir(parents=True, exist_ok=True)
    # The record goes first, so a crash below can never pair an old record with a new array.
    json_path.unlink(missing_ok=True)
    tmp_npy = cache_dir / f".{stem}.{os.getpid()}.tmp.npy"
    tmp_json = cache_dir / f".{stem}.{os.getpid()}.tmp.json"
    try:
        out = np.lib.format.open_memmap(tmp_npy, mode="w+", dtype=np.uint8, shape=shape)
        try:
            _decode_into(out, paths, image_size, progress)
            out.flush()
        finally:
            del out
        _fsync(tmp_npy)
        os.replace(tmp_npy, npy_path)
        record = {"format": CACHE_FORMAT, "key": key, "count": len(paths), "image_size": image_size}
        tmp_json.write_text(json.dumps(record, indent=1) + "\n")
        _fsync(tmp_json)
        os.replace(tmp_json, json_path)
    finally:
        tmp_npy.unlink(missing_ok=True)
        tmp_json.unlink(missing_ok=True)
    return np.load(npy_path, mmap_mode="r")


def load_images(
    paths: Sequence[Path],
    image_size: int,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    name: str = "images",
) -> np.ndarray:
    """Decoded, resized images, through the cache when one is given and writable.

    Args:
        paths: image files, in output order.
        image_size: side of the square output images.
        cache_dir: cache folder, or None to decode into memory. If it cannot be created or written,
            a warning is issued and the images are decoded into memory instead.
        progress: called as ``progress(n_done, total)`` after each decoded image.
        name: readable prefix of the cache entry's file names.

    Returns:
        uint8 array (N, image_size, image_size, 3), memory-mapped when cached.

    Raises:
        UnreadableImageError: an image cannot be decoded (``index`` set).
        DataError: a source file cannot be stat-ed.
    """
    if cache_dir is not None and paths:
        try:
            return cached_images(paths, image_size, Path(cache_dir), progress, name)
        except OSError as exc:
            warnings.warn(
                f"{cache_dir}: image cache not writable ({exc}); decoding into memory instead",
                stacklevel=2,
            )
    return decode_images(paths, image_size, progress)
