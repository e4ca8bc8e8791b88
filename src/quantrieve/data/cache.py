"""Decode a large image set once into a resized uint8 ``.npy`` file, then memory-map it.

A cache entry is two files in ``cache_dir``:

- ``<name>-<size>px-<ident>.npy``: the images, shape (N, size, size, 3), uint8, opened read-only
  as a memory map; ``ident`` hashes the ordered source paths and the size, so one image list
  always maps to the same entry;
- the same name with ``.json``: a small record whose ``key`` is a SHA-256 over the ordered source
  paths, their byte sizes and modification times (ns) and the image size, and whose ``bad`` lists
  the sources that could not be decoded (``[index, reason]`` pairs; the array holds the rows of
  the others, in order).

Every image is tried: unreadable ones are collected, not fatal, so one pass finds them all and
the caller decides (:class:`DecodedImages`: raise naming all of them, or leave them out).

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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from quantrieve.data.base import DataError
from quantrieve.data.images import (
    BadImage,
    UnreadableImageError,
    UnreadableImagesError,
    decode_image,
    unreadable_message,
)

Progress = Callable[[int, int], None]
# 2: images are turned upright by their EXIF orientation (entries of format 1 are not).
CACHE_FORMAT = 2
CACHE_ENV = "QUANTRIEVE_CACHE_DIR"


def default_cache_dir() -> Path:
    """Where decoded images are cached unless a folder is given: ``$QUANTRIEVE_CACHE_DIR``,
    else ``$XDG_CACHE_HOME/quantrieve/images``, else ``~/.cache/quantrieve/images``. Never
    inside the user's data folder. Entries of different image lists never share a file name
    (each is named by a hash of its ordered source paths), so one folder serves every dataset.
    """
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "quantrieve" / "images"


@dataclass
class DecodedImages:
    """The decodable images of a path list, and the paths that could not be decoded.

    Attributes:
        images: uint8 (N - len(bad), size, size, 3), the readable images in input order
            (memory-mapped when cached).
        bad: the unreadable images, in input order, with their position in the path list.
    """

    images: np.ndarray
    bad: list[BadImage] = field(default_factory=list)

    @property
    def kept(self) -> np.ndarray:
        """Positions in the path list of the rows of ``images``."""
        total = len(self.images) + len(self.bad)
        return np.setdiff1d(np.arange(total), [b.index for b in self.bad]).astype(np.int64)

    def require_all(self) -> np.ndarray:
        """``images``, or :class:`UnreadableImagesError` naming every unreadable image."""
        if self.bad:
            items = [f"{b.path}: unreadable image ({b.reason})" for b in self.bad]
            raise UnreadableImagesError(unreadable_message(items), self.bad)
        return self.images


def decode_all(
    paths: Sequence[Path], image_size: int, progress: Progress | None = None, channels: int = 3
) -> DecodedImages:
    """Decode images into memory (no cache), trying every one.

    Args:
        paths: image files, in output order.
        image_size: side of the square output images.
        progress: called as ``progress(n_done, total)`` after each image.

    Returns:
        The readable images (in order) and the unreadable ones.
    """
    out = np.empty((len(paths), image_size, image_size, channels), dtype=np.uint8)
    bad = _decode_into(out, paths, image_size, progress)
    if bad:
        out = out[: len(paths) - len(bad)].copy()
    return DecodedImages(out, bad)


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
        UnreadableImagesError: images cannot be decoded; all of them are named (``bad``).
    """
    return decode_all(paths, image_size, progress).require_all()


def _decode_into(
    out: np.ndarray, paths: Sequence[Path], image_size: int, progress: Progress | None
) -> list[BadImage]:
    """Decode every path; readable images fill ``out`` from row 0 in order, the rest are
    returned."""
    total, row, bad = len(paths), 0, []
    for i, path in enumerate(paths):
        try:
            out[row] = decode_image(path, image_size, out.shape[-1])
            row += 1
        except UnreadableImageError as exc:
            bad.append(BadImage(i, Path(path), exc.reason))
        if progress is not None:
            progress(i + 1, total)
    return bad


def cache_key(paths: Sequence[Path], image_size: int, channels: int = 3) -> str:
    """SHA-256 over the ordered source paths, their sizes and mtimes, and the image size.

    Args:
        paths: image files, in output order.
        image_size: side of the square output images.

    Returns:
        The hex digest.

    Raises:
        DataError: a source file cannot be stat-ed.
    """
    geometry = f"{image_size}" + ("" if channels == 3 else f":{channels}ch")
    digest = hashlib.sha256(f"quantrieve-image-cache:{CACHE_FORMAT}:{geometry}\n".encode())
    for path in paths:
        try:
            stat = path.stat()
        except OSError as exc:
            raise DataError(f"{path}: cannot read image file ({exc.strerror})") from None
        digest.update(f"{os.path.abspath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _entry_stem(paths: Sequence[Path], image_size: int, name: str, channels: int = 3) -> str:
    ident = hashlib.sha256(f"{image_size}\n".encode())
    for path in paths:
        ident.update(f"{os.path.abspath(path)}\n".encode())
    gray = "" if channels == 3 else "-gray"
    return f"{name}-{image_size}px{gray}-{ident.hexdigest()[:16]}"


def _fsync(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _open_valid(
    npy_path: Path,
    json_path: Path,
    key: str,
    paths: Sequence[Path],
    image_size: int,
    channels: int = 3,
) -> DecodedImages | None:
    """The cached entry if its record matches ``key`` and its header the expected shape."""
    try:
        record = json.loads(json_path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("key") != key:
        return None
    bad_entries = record.get("bad", [])
    try:
        bad = [BadImage(int(i), Path(paths[int(i)]), str(reason)) for i, reason in bad_entries]
    except (TypeError, ValueError, IndexError):
        return None
    shape = (len(paths) - len(bad), image_size, image_size, channels)
    if not shape[0]:
        return None
    try:
        images = np.load(npy_path, mmap_mode="r")
    except (OSError, ValueError):
        return None
    if images.dtype != np.uint8 or images.shape != shape:
        return None
    return DecodedImages(images, bad)


def _copy_rows(source: Path, rows: int, target: Path) -> None:
    """Write the first ``rows`` rows of the array in ``source`` to a new ``.npy`` ``target``."""
    full = np.load(source, mmap_mode="r")
    out = np.lib.format.open_memmap(
        target, mode="w+", dtype=np.uint8, shape=(rows, *full.shape[1:])
    )
    try:
        for start in range(0, rows, 1024):
            out[start : start + 1024] = full[start : min(rows, start + 1024)]
        out.flush()
    finally:
        del out, full


def cached_decode(
    paths: Sequence[Path],
    image_size: int,
    cache_dir: Path,
    progress: Progress | None = None,
    name: str = "images",
    channels: int = 3,
) -> DecodedImages:
    """Decoded, resized images of ``paths``, from the cache or built into it.

    Unreadable images do not stop the build: they are left out of the array and listed in the
    entry's record, so a later read reports them again without decoding anything.

    Args:
        paths: image files, in output order (the order is part of the key).
        image_size: side of the square output images (see :mod:`quantrieve.data.images`).
        cache_dir: folder of the cache entries; created if missing.
        progress: called as ``progress(n_done, total)`` after each decoded image (only when the
            cache is built).
        name: readable prefix of the entry's file names (e.g. ``flickr25k-database``).
        channels: 3 (RGB) or 1 (grayscale, for a collection of grayscale files).

    Returns:
        The readable images as a read-only memory map (N - len(bad), size, size, C), uint8, and
        the unreadable ones. If no image is readable nothing is cached (the array is empty).

    Raises:
        DataError: ``paths`` is empty or a source file cannot be stat-ed.
        OSError: the cache folder or file cannot be written.
    """
    if not paths:
        raise DataError(f"{cache_dir}: no images to cache for '{name}'")
    cache_dir = Path(cache_dir)
    shape = (len(paths), image_size, image_size, channels)
    key = cache_key(paths, image_size, channels)
    stem = _entry_stem(paths, image_size, name, channels)
    npy_path = cache_dir / f"{stem}.npy"
    json_path = cache_dir / f"{stem}.json"
    cached = _open_valid(npy_path, json_path, key, paths, image_size, channels)
    if cached is not None:
        return cached

    cache_dir.mkdir(parents=True, exist_ok=True)
    # The record goes first, so a crash below can never pair an old record with a new array.
    json_path.unlink(missing_ok=True)
    tmp_npy = cache_dir / f".{stem}.{os.getpid()}.tmp.npy"
    tmp_rows = cache_dir / f".{stem}.{os.getpid()}.rows.tmp.npy"
    tmp_json = cache_dir / f".{stem}.{os.getpid()}.tmp.json"
    try:
        out = np.lib.format.open_memmap(tmp_npy, mode="w+", dtype=np.uint8, shape=shape)
        try:
            bad = _decode_into(out, paths, image_size, progress)
            out.flush()
        finally:
            del out
        rows = len(paths) - len(bad)
        if not rows:
            return DecodedImages(np.empty((0, *shape[1:]), dtype=np.uint8), bad)
        if bad:
            # Readable rows fill the front of the array: keep those alone.
            _copy_rows(tmp_npy, rows, tmp_rows)
            os.replace(tmp_rows, tmp_npy)
        _fsync(tmp_npy)
        os.replace(tmp_npy, npy_path)
        record = {
            "format": CACHE_FORMAT,
            "key": key,
            "count": len(paths),
            "image_size": image_size,
            "bad": [[b.index, b.reason] for b in bad],
        }
        tmp_json.write_text(json.dumps(record, indent=1) + "\n")
        _fsync(tmp_json)
        os.replace(tmp_json, json_path)
    finally:
        tmp_npy.unlink(missing_ok=True)
        tmp_rows.unlink(missing_ok=True)
        tmp_json.unlink(missing_ok=True)
    return DecodedImages(np.load(npy_path, mmap_mode="r"), bad)


def cached_images(
    paths: Sequence[Path],
    image_size: int,
    cache_dir: Path,
    progress: Progress | None = None,
    name: str = "images",
) -> np.memmap:
    """:func:`cached_decode` that requires every image to be readable.

    Returns:
        Read-only memory map of shape (N, image_size, image_size, 3), uint8.

    Raises:
        DataError: ``paths`` is empty or a source file cannot be stat-ed.
        UnreadableImagesError: images cannot be decoded; every one is named (``bad``).
        OSError: the cache folder or file cannot be written.
    """
    return cached_decode(paths, image_size, cache_dir, progress, name).require_all()


def read_images(
    paths: Sequence[Path],
    image_size: int,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    name: str = "images",
    channels: int = 3,
) -> DecodedImages:
    """Decoded, resized images and the unreadable ones, through the cache when one is given.

    Args:
        paths: image files, in output order.
        image_size: side of the square output images.
        cache_dir: cache folder, or None to decode into memory. If it cannot be created or written,
            a warning is issued and the images are decoded into memory instead.
        progress: called as ``progress(n_done, total)`` after each decoded image.
        name: readable prefix of the cache entry's file names.
        channels: 3 (RGB) or 1 (grayscale).

    Returns:
        The readable images (memory-mapped when cached) and the unreadable ones.

    Raises:
        DataError: a source file cannot be stat-ed.
    """
    if cache_dir is not None and paths:
        try:
            return cached_decode(paths, image_size, Path(cache_dir), progress, name, channels)
        except OSError as exc:
            warnings.warn(
                f"{cache_dir}: image cache not writable ({exc}); decoding into memory instead",
                stacklevel=3,
            )
    return decode_all(paths, image_size, progress, channels)


def load_images(
    paths: Sequence[Path],
    image_size: int,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    name: str = "images",
) -> np.ndarray:
    """:func:`read_images` that requires every image to be readable.

    Returns:
        uint8 array (N, image_size, image_size, 3), memory-mapped when cached.

    Raises:
        UnreadableImagesError: images cannot be decoded; every one is named (``bad``).
        DataError: a source file cannot be stat-ed.
    """
    return read_images(paths, image_size, cache_dir, progress, name).require_all()
