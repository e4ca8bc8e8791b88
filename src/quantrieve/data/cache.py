"""Decode a large image set once into a resized uint8 ``.npy`` file, then memory-map it.

A cache entry is two files in ``cache_dir``:

- ``<name>-<size>px-<lineage>-<ident>.npy``: the images, shape (N, size, size, C), uint8, opened
  read-only as a memory map; ``ident`` hashes the ordered source paths and the size, so one image
  list always maps to the same entry; ``lineage`` hashes the folder that holds the sources, so the
  entries of one growing collection share a prefix;
- the same name with ``.json``: a record whose ``key`` is a SHA-256 over the ordered source paths,
  their byte sizes and modification times (ns) and the image size, whose ``files`` holds one such
  identity per source (in order), and whose ``bad`` lists the sources that could not be decoded
  (``[index, reason]`` pairs; the array holds the rows of the others, in order).

Every image is tried: unreadable ones are collected, not fatal, so one pass finds them all and
the caller decides (:class:`DecodedImages`: raise naming all of them, or leave them out).

The entry is reused only if the recorded key equals the key of the sources now. Otherwise (files
added, removed, touched or replaced) a new entry is built *incrementally*: the rows of every
source whose identity (path, size, mtime) is unchanged are copied from the collection's previous
entries, and only the new or changed files are decoded, by ``workers`` processes (decoding holds
Python's GIL most of the time, so threads would not scale; small jobs use threads). The
superseded entries of the same lineage are then removed, so a growing folder keeps one entry. A
build writes to a temporary file and moves it into place with :func:`os.replace`; the JSON record
is removed before and written (also atomically) after, so an interrupted build never leaves a
file that looks valid.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
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
# 3: the record lists each source's identity, so a changed collection is rebuilt incrementally.
CACHE_FORMAT = 3
# Below this many images to decode, workers are threads (no process start-up).
PROCESS_MIN_IMAGES = 512
# Most images handed to a decoding worker at a time (few enough for an even load and a live
# progress bar; fewer for small sets).
DECODE_CHUNK = 64
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


def decode_workers(workers: int | None = None) -> int:
    """The number of decoding threads: ``workers`` if given (>= 1), else every core this process
    may run on."""
    if workers is not None:
        if workers < 1:
            raise DataError(f"decoding needs at least one worker, got {workers}")
        return workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def decode_all(
    paths: Sequence[Path],
    image_size: int,
    progress: Progress | None = None,
    channels: int = 3,
    workers: int | None = None,
) -> DecodedImages:
    """Decode images into memory (no cache), trying every one.

    Args:
        paths: image files, in output order.
        image_size: side of the square output images.
        progress: called as ``progress(n_done, total)`` as images are decoded.
        workers: decoding threads (default: every core, :func:`decode_workers`).

    Returns:
        The readable images (in order) and the unreadable ones.
    """
    out = np.empty((len(paths), image_size, image_size, channels), dtype=np.uint8)
    bad = _decode_rows(out, paths, range(len(paths)), image_size, progress, workers)
    if bad:
        out = out[np.setdiff1d(np.arange(len(paths)), [b.index for b in bad])]
    return DecodedImages(out, bad)


def decode_images(
    paths: Sequence[Path],
    image_size: int,
    progress: Progress | None = None,
    workers: int | None = None,
) -> np.ndarray:
    """Decode images into an in-memory array (no cache).

    Args:
        paths: image files, in output order.
        image_size: side of the square output images.
        progress: called as ``progress(n_done, total)`` as images are decoded.
        workers: decoding threads (default: every core).

    Returns:
        uint8 array (N, image_size, image_size, 3).

    Raises:
        UnreadableImagesError: images cannot be decoded; all of them are named (``bad``).
    """
    return decode_all(paths, image_size, progress, workers=workers).require_all()


def _decode_chunk(
    paths: list[Path], rows: list[int], image_size: int, channels: int
) -> tuple[list[int], np.ndarray, list[BadImage]]:
    """Decode ``paths`` (the images of ``rows``): the rows decoded, their pixels, the bad ones.
    A top-level function, so that worker processes can run it."""
    pixels = np.empty((len(rows), image_size, image_size, channels), dtype=np.uint8)
    done: list[int] = []
    bad: list[BadImage] = []
    for path, row in zip(paths, rows, strict=True):
        try:
            pixels[len(done)] = decode_image(path, image_size, channels)
            done.append(row)
        except UnreadableImageError as exc:
            bad.append(BadImage(row, Path(path), exc.reason))
    return done, pixels[: len(done)], bad


def _pool(workers: int, total: int) -> Executor:
    """Processes for a large job (decoding holds Python's GIL most of the time, so threads do
    not scale), threads for a small one (no process start-up)."""
    if total < PROCESS_MIN_IMAGES:
        return ThreadPoolExecutor(workers, thread_name_prefix="quantrieve-decode")
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method))


def _decode_rows(
    out: np.ndarray,
    paths: Sequence[Path],
    rows: Sequence[int],
    image_size: int,
    progress: Progress | None,
    workers: int | None,
) -> list[BadImage]:
    """Decode ``paths[i]`` into ``out[i]`` for every ``i`` in ``rows``, on ``workers`` worker
    processes (threads for a small job; in this process for one worker).

    Returns:
        The unreadable images, in path order. An exception other than an unreadable image (an
        interrupt, a full disk) stops the decoding and is raised.
    """
    channels = out.shape[-1]
    rows = list(rows)
    total, finished, bad = len(rows), 0, []
    workers = min(decode_workers(workers), max(1, total))
    # One image at a time in this process; chunks for workers (small sets image by image).
    size = 1 if workers == 1 else max(1, min(DECODE_CHUNK, total // (workers * 8)))
    chunks = [rows[start : start + size] for start in range(0, total, size)]

    def collect(result: tuple[list[int], np.ndarray, list[BadImage]]) -> int:
        done, pixels, chunk_bad = result
        if done:
            out[done] = pixels
        bad.extend(chunk_bad)
        return len(done) + len(chunk_bad)

    if workers == 1:
        for chunk in chunks:
            finished += collect(
                _decode_chunk([paths[i] for i in chunk], chunk, image_size, channels)
            )
            if progress is not None:
                progress(finished, total)
        return bad
    with _pool(workers, total) as pool:
        futures = [
            pool.submit(_decode_chunk, [paths[i] for i in chunk], chunk, image_size, channels)
            for chunk in chunks
        ]
        try:
            for future in as_completed(futures):
                finished += collect(future.result())
                if progress is not None:
                    progress(finished, total)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return sorted(bad, key=lambda b: b.index)


def _absolute(path: str | Path) -> str:
    text = os.fspath(path)
    return text if os.path.isabs(text) else os.path.abspath(text)


def file_identities(paths: Sequence[str | Path]) -> list[str]:
    """One identity per source: a digest of its absolute path, byte size and modification time
    (ns). A file that is touched, replaced or resized gets a new identity.

    Raises:
        DataError: a source file cannot be stat-ed.
    """
    identities = []
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError as exc:
            raise DataError(f"{path}: cannot read image file ({exc.strerror})") from None
        text = f"{_absolute(path)}\0{stat.st_size}\0{stat.st_mtime_ns}"
        identities.append(hashlib.blake2b(text.encode(), digest_size=16).hexdigest())
    return identities


def _geometry(image_size: int, channels: int) -> str:
    return f"{image_size}" + ("" if channels == 3 else f":{channels}ch")


def cache_key(
    paths: Sequence[Path],
    image_size: int,
    channels: int = 3,
    identities: Sequence[str] | None = None,
) -> str:
    """SHA-256 over the ordered source identities (path, size, mtime) and the image size.

    Args:
        paths: image files, in output order.
        image_size: side of the square output images.
        identities: :func:`file_identities` of ``paths``, if already computed.

    Returns:
        The hex digest.

    Raises:
        DataError: a source file cannot be stat-ed.
    """
    if identities is None:
        identities = file_identities(paths)
    geometry = _geometry(image_size, channels)
    digest = hashlib.sha256(f"quantrieve-image-cache:{CACHE_FORMAT}:{geometry}\n".encode())
    for identity in identities:
        digest.update(f"{identity}\n".encode())
    return digest.hexdigest()


def _lineage(paths: Sequence[Path], image_size: int, name: str, channels: int) -> str:
    """The prefix shared by the entries of one collection: its name, geometry and folder."""
    try:
        folder = os.path.commonpath([os.path.dirname(_absolute(p)) for p in paths])
    except ValueError:  # paths on different drives
        folder = ""
    gray = "" if channels == 3 else "-gray"
    digest = hashlib.sha256(f"{folder}\n".encode()).hexdigest()[:8]
    return f"{name}-{image_size}px{gray}-{digest}"


def _entry_stem(paths: Sequence[Path], image_size: int, name: str, channels: int = 3) -> str:
    ident = hashlib.sha256(f"{image_size}\n".encode())
    for path in paths:
        ident.update(f"{_absolute(path)}\n".encode())
    return f"{_lineage(paths, image_size, name, channels)}-{ident.hexdigest()[:16]}"


def _fsync(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _read_record(json_path: Path) -> dict | None:
    try:
        record = json.loads(json_path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _open_valid(
    npy_path: Path,
    json_path: Path,
    key: str,
    paths: Sequence[Path],
    image_size: int,
    channels: int = 3,
) -> DecodedImages | None:
    """The cached entry if its record matches ``key`` and its header the expected shape."""
    record = _read_record(json_path)
    if record is None or record.get("key") != key:
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


@dataclass
class _Known:
    """What earlier entries of a collection already hold, by source identity."""

    rows: dict[str, tuple[Path, int]] = field(default_factory=dict)  # identity -> (npy, row)
    bad: dict[str, str] = field(default_factory=dict)  # identity -> reason


def _known_sources(cache_dir: Path, lineage: str, geometry: tuple[int, ...]) -> _Known:
    """The decoded rows and unreadable files recorded by the entries of ``lineage``: a stale
    entry's rows are reused for every source whose identity is unchanged."""
    known = _Known()
    for json_path in sorted(cache_dir.glob(f"{lineage}-*.json")):
        record = _read_record(json_path)
        npy_path = json_path.with_suffix(".npy")
        if record is None or record.get("format") != CACHE_FORMAT:
            continue
        files, bad_entries = record.get("files"), record.get("bad", [])
        try:
            bad_rows = {int(i): str(reason) for i, reason in bad_entries}
            header = np.load(npy_path, mmap_mode="r")
        except (OSError, ValueError, TypeError):
            continue
        if not isinstance(files, list) or header.shape != (len(files) - len(bad_rows), *geometry):
            continue
        row = 0
        for position, identity in enumerate(files):
            if position in bad_rows:
                known.bad[str(identity)] = bad_rows[position]
            else:
                known.rows[str(identity)] = (npy_path, row)
                row += 1
    return known


def _copy_known(out: np.ndarray, sources: dict[Path, list[tuple[int, int]]]) -> None:
    """Copy rows of earlier entries into ``out``: ``sources`` maps an entry to its
    (row in the entry, row in ``out``) pairs."""
    for npy_path, pairs in sources.items():
        old = np.load(npy_path, mmap_mode="r")
        try:
            pairs.sort()
            for start in range(0, len(pairs), 1024):
                chunk = np.array(pairs[start : start + 1024], dtype=np.int64)
                out[chunk[:, 1]] = old[chunk[:, 0]]
        finally:
            del old


def _copy_rows(source: Path, keep: np.ndarray, target: Path) -> None:
    """Write the rows ``keep`` of the array in ``source`` to a new ``.npy`` ``target``."""
    full = np.load(source, mmap_mode="r")
    out = np.lib.format.open_memmap(
        target, mode="w+", dtype=np.uint8, shape=(len(keep), *full.shape[1:])
    )
    try:
        for start in range(0, len(keep), 1024):
            out[start : start + 1024] = full[keep[start : start + 1024]]
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
    workers: int | None = None,
) -> DecodedImages:
    """Decoded, resized images of ``paths``, from the cache or built into it.

    Unreadable images do not stop the build: they are left out of the array and listed in the
    entry's record, so a later read reports them again without decoding anything. A build
    decodes only the sources that no earlier entry of the collection holds unchanged.

    Args:
        paths: image files, in output order (the order is part of the key).
        image_size: side of the square output images (see :mod:`quantrieve.data.images`).
        cache_dir: folder of the cache entries; created if missing.
        progress: called as ``progress(n_done, n_to_decode)`` as images are decoded (only when
            the cache is built, and only for the images that need decoding).
        name: readable prefix of the entry's file names (e.g. ``flickr25k-database``).
        channels: 3 (RGB) or 1 (grayscale, for a collection of grayscale files).
        workers: decoding threads (default: every core, :func:`decode_workers`).

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
    identities = file_identities(paths)
    key = cache_key(paths, image_size, channels, identities)
    lineage = _lineage(paths, image_size, name, channels)
    stem = _entry_stem(paths, image_size, name, channels)
    npy_path = cache_dir / f"{stem}.npy"
    json_path = cache_dir / f"{stem}.json"
    cached = _open_valid(npy_path, json_path, key, paths, image_size, channels)
    if cached is not None:
        return cached

    cache_dir.mkdir(parents=True, exist_ok=True)
    known = _known_sources(cache_dir, lineage, shape[1:])
    # The record goes first, so a crash below can never pair an old record with a new array.
    json_path.unlink(missing_ok=True)
    tmp_npy = cache_dir / f".{stem}.{os.getpid()}.tmp.npy"
    tmp_rows = cache_dir / f".{stem}.{os.getpid()}.rows.tmp.npy"
    tmp_json = cache_dir / f".{stem}.{os.getpid()}.tmp.json"
    try:
        out = np.lib.format.open_memmap(tmp_npy, mode="w+", dtype=np.uint8, shape=shape)
        try:
            copies: dict[Path, list[tuple[int, int]]] = {}
            bad, to_decode = [], []
            for i, identity in enumerate(identities):
                if identity in known.rows:
                    source, row = known.rows[identity]
                    copies.setdefault(source, []).append((row, i))
                elif identity in known.bad:
                    bad.append(BadImage(i, Path(paths[i]), known.bad[identity]))
                else:
                    to_decode.append(i)
            _copy_known(out, copies)
            bad += _decode_rows(out, paths, to_decode, image_size, progress, workers)
            bad.sort(key=lambda b: b.index)
            out.flush()
        finally:
            del out
        rows = len(paths) - len(bad)
        if not rows:
            return DecodedImages(np.empty((0, *shape[1:]), dtype=np.uint8), bad)
        if bad:
            # Keep the readable rows alone, in order.
            keep = np.setdiff1d(np.arange(len(paths)), [b.index for b in bad])
            _copy_rows(tmp_npy, keep, tmp_rows)
            os.replace(tmp_rows, tmp_npy)
        _fsync(tmp_npy)
        os.replace(tmp_npy, npy_path)
        record = {
            "format": CACHE_FORMAT,
            "key": key,
            "count": len(paths),
            "image_size": image_size,
            "bad": [[b.index, b.reason] for b in bad],
            "files": identities,
        }
        tmp_json.write_text(json.dumps(record, separators=(",", ":")) + "\n")
        _fsync(tmp_json)
        os.replace(tmp_json, json_path)
    finally:
        tmp_npy.unlink(missing_ok=True)
        tmp_rows.unlink(missing_ok=True)
        tmp_json.unlink(missing_ok=True)
    _remove_superseded(cache_dir, lineage, stem)
    return DecodedImages(np.load(npy_path, mmap_mode="r"), bad)


def _remove_superseded(cache_dir: Path, lineage: str, stem: str) -> None:
    """Remove the collection's other entries: the new one holds what is still in use. The
    record goes first, so a half-removed entry never looks valid."""
    for json_path in cache_dir.glob(f"{lineage}-*.json"):
        record = _read_record(json_path)
        # Only entries this cache wrote (its record format and key), never another file.
        if json_path.stem == stem or record is None or not isinstance(record.get("key"), str):
            continue
        if not isinstance(record.get("format"), int):
            continue
        json_path.unlink(missing_ok=True)
        json_path.with_suffix(".npy").unlink(missing_ok=True)


def cached_images(
    paths: Sequence[Path],
    image_size: int,
    cache_dir: Path,
    progress: Progress | None = None,
    name: str = "images",
    workers: int | None = None,
) -> np.memmap:
    """:func:`cached_decode` that requires every image to be readable.

    Returns:
        Read-only memory map of shape (N, image_size, image_size, 3), uint8.

    Raises:
        DataError: ``paths`` is empty or a source file cannot be stat-ed.
        UnreadableImagesError: images cannot be decoded; every one is named (``bad``).
        OSError: the cache folder or file cannot be written.
    """
    decoded = cached_decode(paths, image_size, cache_dir, progress, name, workers=workers)
    return decoded.require_all()


def read_images(
    paths: Sequence[Path],
    image_size: int,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    name: str = "images",
    channels: int = 3,
    workers: int | None = None,
) -> DecodedImages:
    """Decoded, resized images and the unreadable ones, through the cache when one is given.

    Args:
        paths: image files, in output order.
        image_size: side of the square output images.
        cache_dir: cache folder, or None to decode into memory. If it cannot be created or written,
            a warning is issued and the images are decoded into memory instead.
        progress: called as ``progress(n_done, total)`` as images are decoded.
        name: readable prefix of the cache entry's file names.
        channels: 3 (RGB) or 1 (grayscale).
        workers: decoding threads (default: every core, :func:`decode_workers`).

    Returns:
        The readable images (memory-mapped when cached) and the unreadable ones.

    Raises:
        DataError: a source file cannot be stat-ed.
    """
    if cache_dir is not None and paths:
        try:
            return cached_decode(
                paths, image_size, Path(cache_dir), progress, name, channels, workers
            )
        except OSError as exc:
            warnings.warn(
                f"{cache_dir}: image cache not writable ({exc}); decoding into memory instead",
                stacklevel=3,
            )
    return decode_all(paths, image_size, progress, channels, workers)


def load_images(
    paths: Sequence[Path],
    image_size: int,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    name: str = "images",
    workers: int | None = None,
) -> np.ndarray:
    """:func:`read_images` that requires every image to be readable.

    Returns:
        uint8 array (N, image_size, image_size, 3), memory-mapped when cached.

    Raises:
        UnreadableImagesError: images cannot be decoded; every one is named (``bad``).
        DataError: a source file cannot be stat-ed.
    """
    return read_images(paths, image_size, cache_dir, progress, name, workers=workers).require_all()
