"""Reader of a plain image folder, labelled by class sub-folders or unlabelled.

Two layouts, told apart by whether any image file sits directly in ``root``:

- class folders (no image directly in ``root``): each non-hidden sub-folder is a class, its images
  are found recursively; labels are one-hot, class names the sorted sub-folder names;
- flat (images directly in ``root``): every image under ``root``, recursively, unlabelled
  (``labels=None``).

Image files are those ending in .jpg .jpeg .png .bmp .webp .gif (any case); hidden files and
folders (names starting with ``.``, e.g. the cache folder) are skipped. Ids are the paths relative
to ``root`` (POSIX style), in sorted order. Images are resized like the list-file readers (see
:mod:`quantrieve.data.images`) and cached by default in ``root/.quantrieve-cache``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from quantrieve.data.base import DataError, ImageSet, one_hot
from quantrieve.data.cache import DEFAULT_CACHE_DIR_NAME, Progress, load_images
from quantrieve.data.images import is_image_file

DEFAULT_IMAGE_SIZE = 64


def _images_under(folder: Path, root: Path) -> list[Path]:
    """Image files under ``folder``, recursively, skipping hidden entries, sorted by id."""
    found = []
    for path in folder.rglob("*"):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if is_image_file(path) and path.is_file():
            found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def read_image_folder(
    root: str | Path,
    *,
    image_size: int = DEFAULT_IMAGE_SIZE,
    cache: bool = True,
    cache_dir: str | Path | None = None,
    progress: Progress | None = None,
) -> dict[str, ImageSet]:
    """Read an image folder (class sub-folders or flat; see the module docstring).

    Args:
        root: the folder.
        image_size: side of the square output images.
        cache: whether to cache decoded images on disk.
        cache_dir: cache folder; default ``root/.quantrieve-cache`` (memory if not writable).
        progress: called as ``progress(n_done, total)`` while images are decoded.

    Returns:
        ``{"all": ImageSet}``.

    Raises:
        DataError: the folder is missing or holds no images, a class folder is empty, or an image
            is unreadable (the message names it).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found")
    children = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    flat = any(is_image_file(p) and p.is_file() for p in children)

    labels: np.ndarray | None
    class_names: list[str] = []
    if flat:
        files = _images_under(root, root)
        labels = None
    else:
        class_dirs = [p for p in children if p.is_dir()]
        files, class_index = [], []
        for index, class_dir in enumerate(class_dirs):
            class_files = _images_under(class_dir, root)
            if not class_files:
                raise DataError(f"{class_dir}: class folder holds no images")
            files += class_files
            class_index += [index] * len(class_files)
        class_names = [p.name for p in class_dirs]
        labels = one_hot(np.array(class_index, dtype=np.int64), len(class_names)) if files else None
    if not files:
        raise DataError(f"{root}: no image files found (extensions: jpg jpeg png bmp webp gif)")

    if not cache:
        cache_dir = None
    elif cache_dir is None:
        cache_dir = root / DEFAULT_CACHE_DIR_NAME
    images = load_images(
        files,
        image_size,
        None if cache_dir is None else Path(cache_dir),
        progress,
        f"folder-{root.name}",
    )
    ids = [p.relative_to(root).as_posix() for p in files]
    return {"all": ImageSet(images=images, labels=labels, ids=ids, class_names=class_names)}
