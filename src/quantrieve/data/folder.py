"""Reader of a plain image folder, labelled by class sub-folders or unlabelled.

Two layouts:

- class folders: each non-hidden sub-folder is a class, its images are found recursively; labels
  are one-hot, class names the sorted sub-folder names;
- flat: every image under ``root``, recursively, unlabelled (``labels=None``).

The ``layout`` argument (config key ``data.layout``) chooses: ``"classes"``, ``"flat"``, or
``"auto"`` (the default), which reads class folders when no image sits directly in ``root``, and
flat when images sit directly in ``root`` and no sub-folder holds any. A folder with both (class
folders *and* loose images in ``root``, e.g. one stray photo) is refused under ``"auto"``, naming
the loose files, rather than silently read as unlabelled: ``"classes"`` then ignores the loose
images (a :class:`~quantrieve.errors.QuantrieveWarning` names them), ``"flat"`` reads every image
unlabelled.

Image files are those ending in .jpg .jpeg .png .bmp .webp .gif (any case); hidden files and
folders (names starting with ``.``, e.g. the cache folder) are skipped. Ids are the paths relative
to ``root`` (POSIX style), in sorted order. Images are resized like the list-file readers (see
:mod:`quantrieve.data.images`) and cached by default outside ``root``
(:func:`~quantrieve.data.cache.default_cache_dir`). Every image is
tried: unreadable ones are all named in one error, or with ``skip_bad`` left out and listed in
:attr:`ImageSet.skipped`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from quantrieve.config import LAYOUTS
from quantrieve.data.base import DataError, ImageSet, one_hot
from quantrieve.data.cache import Progress, default_cache_dir, read_images
from quantrieve.data.images import (
    IMAGE_EXTENSIONS,
    UnreadableImagesError,
    collection_channels,
    is_image_file,
    unreadable_message,
)
from quantrieve.errors import QuantrieveWarning

DEFAULT_IMAGE_SIZE = 64
# How many loose files a message names before it says "... and N more".
SHOW_FILES = 5


def _names(paths: list[Path], root: Path, limit: int = SHOW_FILES) -> str:
    shown = ", ".join(p.relative_to(root).as_posix() for p in paths[:limit])
    return shown + (f", ... and {len(paths) - limit} more" if len(paths) > limit else "")


def _scan(folder: Path, root: Path) -> list[tuple[str, str]]:
    """(id, path) of the image files under ``folder``, recursively (symbolic links to folders
    followed), hidden entries skipped, sorted by id (the path under ``root``). ``os.walk`` on
    strings: a folder of 100,000 files is listed in about a second."""
    found: list[tuple[str, str]] = []
    for directory, folders, files in os.walk(folder, followlinks=True):
        folders[:] = [name for name in folders if not name.startswith(".")]
        prefix = os.path.relpath(directory, root).replace(os.sep, "/")
        prefix = "" if prefix == "." else prefix + "/"
        for name in files:
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                continue
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                found.append((prefix + name, path))
    found.sort()
    return found


def _images_under(folder: Path, root: Path) -> list[Path]:
    """Image files under ``folder`` (see :func:`_scan`), sorted by id."""
    return [Path(path) for _, path in _scan(folder, root)]


def list_image_files(root: str | Path) -> list[Path]:
    """Every image file under ``root`` (sub-folders included, hidden entries skipped), in the
    order of their ids (their paths under ``root``): the files an image-folder index holds."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found")
    return _images_under(root, root)


def read_image_folder(
    root: str | Path,
    *,
    image_size: int = DEFAULT_IMAGE_SIZE,
    cache: bool = True,
    cache_dir: str | Path | None = None,
    progress: Progress | None = None,
    layout: str = "auto",
    skip_bad: bool = False,
    channels: int = 0,
    workers: int | None = None,
) -> dict[str, ImageSet]:
    """Read an image folder (class sub-folders or flat; see the module docstring).

    Args:
        root: the folder.
        image_size: side of the square output images.
        cache: whether to cache decoded images on disk.
        cache_dir: cache folder; default :func:`~quantrieve.data.cache.default_cache_dir`,
            outside ``root`` (memory if not writable).
        progress: called as ``progress(n_done, total)`` while images are decoded.
        layout: ``"auto"``, ``"classes"`` or ``"flat"`` (see the module docstring).
        channels: 1 (grayscale) or 3 (RGB); 0 = 1 when every file is grayscale, else 3.
        skip_bad: leave unreadable images out (listed in ``ImageSet.skipped``) instead of
            raising.
        workers: threads decoding image files (default: every core).

    Returns:
        ``{"all": ImageSet}``.

    Raises:
        DataError: the folder is missing or holds no images, a class folder is empty, ``"auto"``
            finds class folders and loose images together (the message names the loose files),
            or images are unreadable without ``skip_bad`` (the message names them all).
    """
    if layout not in LAYOUTS:
        raise DataError(f"unknown image folder layout {layout!r}; one of {', '.join(LAYOUTS)}")
    root = Path(os.path.abspath(root))
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found")
    children = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    loose = [p for p in children if is_image_file(p) and p.is_file()]
    # One walk of the whole folder; class folders are the first part of the ids.
    entries = _scan(root, root)
    by_folder: dict[str, list[tuple[str, str]]] = {}
    for entry in entries:
        if "/" in entry[0]:
            by_folder.setdefault(entry[0].split("/", 1)[0], []).append(entry)
    class_files = {p: by_folder.get(p.name, []) for p in children if p.is_dir()}
    filled = [p for p, found in class_files.items() if found]
    if layout == "auto" and loose and filled:
        raise DataError(
            f"{root}: holds class sub-folders ({len(filled)}: {_names(filled, root)}) and "
            f"{len(loose)} image file{'s' if len(loose) > 1 else ''} directly in the folder "
            f"({_names(loose, root)}), so it is neither a class-folder nor a flat dataset; move "
            "the loose images into a class folder (or out of the folder), or choose: "
            "data.layout=classes ignores them, data.layout=flat reads every image unlabelled"
        )
    flat = layout == "flat" or (layout == "auto" and bool(loose))

    labels: np.ndarray | None
    class_names: list[str] = []
    if flat:
        chosen = entries
        labels = None
    else:
        if layout == "classes" and not filled:
            raise DataError(f"{root}: data.layout=classes, but no sub-folder holds images")
        if loose:
            warnings.warn(
                f"{root}: data.layout=classes ignores {len(loose)} image "
                f"file{'s' if len(loose) > 1 else ''} directly in the folder "
                f"({_names(loose, root)})",
                QuantrieveWarning,
                stacklevel=2,
            )
        class_dirs = list(class_files)
        chosen, class_index = [], []
        for index, class_dir in enumerate(class_dirs):
            if not class_files[class_dir]:
                raise DataError(f"{class_dir}: class folder holds no images")
            chosen += class_files[class_dir]
            class_index += [index] * len(class_files[class_dir])
        class_names = [p.name for p in class_dirs]
        labels = (
            one_hot(np.array(class_index, dtype=np.int64), len(class_names)) if chosen else None
        )
    ids = [item_id for item_id, _ in chosen]
    files = [path for _, path in chosen]  # strings: no Path object per file
    if not files:
        raise DataError(f"{root}: no image files found (extensions: jpg jpeg png bmp webp gif)")

    if not cache:
        cache_dir = None
    elif cache_dir is None:
        cache_dir = default_cache_dir()
    decoded = read_images(
        files,
        image_size,
        None if cache_dir is None else Path(cache_dir),
        progress,
        f"folder-{root.name}",
        channels or collection_channels(files),
        workers,
    )
    skipped: dict[str, str] = {}
    if decoded.bad:
        if not skip_bad:
            items = [f"{b.path}: unreadable image ({b.reason})" for b in decoded.bad]
            raise UnreadableImagesError(unreadable_message(items), decoded.bad)
        if not len(decoded.images):
            raise DataError(f"{root}: none of the {len(files)} image files is readable")
        skipped = {ids[b.index]: b.reason for b in decoded.bad}
        kept = decoded.kept
        ids = [ids[i] for i in kept]
        labels = None if labels is None else labels[kept]
    return {
        "all": ImageSet(
            images=decoded.images,
            labels=labels,
            ids=ids,
            class_names=class_names,
            skipped=skipped,
        )
    }
