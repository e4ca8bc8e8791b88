"""Readers of the field's list-file format, and the FLICKR25K / NUS-WIDE / COCO datasets in it.

A list file has one line per image: ``relative/path l_0 ... l_{C-1}``, the path relative to an
image root folder followed by C multi-hot labels (``0`` or ``1``), separated by whitespace; paths
therefore cannot contain whitespace. Blank lines are skipped. The equivalent pair format is
``img.txt`` (one path per line) with ``targets.txt`` (the label row of the same line).

Expected layout of a dataset ``root`` (as in the common DeepHash releases)::

    root/
      database.txt   train.txt   test.txt      # any of these, each a list file -> parts of
                                                 # the same name: {"database", "train", "test"}
      list.txt                                   # or: a single list file -> {"all"}
      img.txt + targets.txt                      # or: the pair format -> {"all"}
      classes.txt                                # optional: one class name per line
      <images, at the paths the lists give, relative to root (or to ``image_root``)>

Images are decoded with PIL, converted to RGB, centre-cropped to a square and resized (bilinear)
to ``image_size`` (see :mod:`quantrieve.data.images`). With a cache folder they are decoded once
into a memory-mapped ``.npy`` file (see :mod:`quantrieve.data.cache`); the named readers cache by
default in :func:`~quantrieve.data.cache.default_cache_dir` (outside ``root``) and fall back to
memory if it is not writable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quantrieve.data.base import DataError, ImageSet
from quantrieve.data.cache import Progress, default_cache_dir, read_images
from quantrieve.data.images import UnreadableImagesError, unreadable_message

SPQ_IMAGE_SIZE = 64
LIST_PARTS = ("database", "train", "test")
# The 24 MIRFLICKR-25K concepts in alphabetical order, the column order of the usual releases.
FLICKR25K_CLASSES = [
    "animals",
    "baby",
    "bird",
    "car",
    "clouds",
    "dog",
    "female",
    "flower",
    "food",
    "indoor",
    "lake",
    "male",
    "night",
    "people",
    "plant_life",
    "portrait",
    "river",
    "sea",
    "sky",
    "structures",
    "sunset",
    "transport",
    "tree",
    "water",
]


@dataclass
class ListEntries:
    """Parsed entries of a list file (or an img.txt / targets.txt pair).

    Attributes:
        paths: image paths as written (relative to the image root).
        labels: bool multi-hot matrix (N, C).
        path_lines: 1-based line number of each path in ``path_file``.
        path_file: the file the paths come from (for messages).
    """

    paths: list[str]
    labels: np.ndarray
    path_lines: list[int]
    path_file: Path


def _parse_labels(tokens: list[str], where: str) -> list[bool]:
    for column, token in enumerate(tokens):
        if token not in ("0", "1"):
            raise DataError(f"{where}: label {token!r} in column {column} is not 0 or 1")
    return [token == "1" for token in tokens]


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: list file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read list file ({exc})") from None


def _check_count(count: int, expected: int | None, where: str, first_line: int | None) -> int:
    """The label count to expect from now on; raises if ``count`` differs from ``expected``."""
    if expected is None:
        if count == 0:
            raise DataError(f"{where}: no labels after the image path")
        return count
    if count != expected:
        origin = f"as on line {first_line}" if first_line is not None else "num_classes"
        raise DataError(f"{where}: expected {expected} labels ({origin}), found {count}")
    return expected


def parse_list_file(list_path: str | Path, num_classes: int | None = None) -> ListEntries:
    """Parse a list file of lines ``relative/path l_0 ... l_{C-1}``.

    Args:
        list_path: the list file.
        num_classes: C; if None, taken from the first line and required of every other line.

    Returns:
        The entries, with line numbers for later messages.

    Raises:
        DataError: unreadable file, no entries, wrong label count or a label other than 0/1; the
            message names the file and line (``list.txt:17: ...``).
    """
    list_path = Path(list_path)
    paths: list[str] = []
    rows: list[list[bool]] = []
    lines: list[int] = []
    first_line = None
    for number, line in enumerate(_read_lines(list_path), start=1):
        tokens = line.split()
        if not tokens:
            continue
        where = f"{list_path}:{number}"
        num_classes = _check_count(len(tokens) - 1, num_classes, where, first_line)
        first_line = number if first_line is None else first_line
        rows.append(_parse_labels(tokens[1:], where))
        paths.append(tokens[0])
        lines.append(number)
    if not paths:
        raise DataError(f"{list_path}: list file has no entries")
    return ListEntries(paths, np.array(rows, dtype=bool), lines, list_path)


def parse_image_target_files(
    img_path: str | Path, targets_path: str | Path, num_classes: int | None = None
) -> ListEntries:
    """Parse the pair format: ``img.txt`` (one path per line) and ``targets.txt`` (label rows).

    Trailing blank lines are ignored; a blank line inside either file is an error, since it would
    silently shift every later path against its labels.

    Args:
        img_path: the file of image paths.
        targets_path: the file of label rows, line i labelling the path on line i.
        num_classes: C; if None, taken from the first label row.

    Returns:
        The entries, with line numbers for later messages.

    Raises:
        DataError: unreadable files, differing line counts, blank lines, wrong label count or a
            label other than 0/1; the message names the file and line.
    """
    img_path, targets_path = Path(img_path), Path(targets_path)
    img_lines = _strip_trailing_blank(_read_lines(img_path))
    target_lines = _strip_trailing_blank(_read_lines(targets_path))
    if not img_lines:
        raise DataError(f"{img_path}: image list has no entries")
    if len(img_lines) != len(target_lines):
        line = min(len(img_lines), len(target_lines)) + 1
        if len(img_lines) > len(target_lines):
            longer, shorter = img_path, targets_path
        else:
            longer, shorter = targets_path, img_path
        raise DataError(
            f"{longer}:{line}: line count mismatch: {shorter} has no line {line} "
            f"({img_path.name} has {len(img_lines)} lines, {targets_path.name} {len(target_lines)})"
        )
    paths: list[str] = []
    rows: list[list[bool]] = []
    first_line = None
    for number, (img_line, target_line) in enumerate(zip(img_lines, target_lines, strict=True), 1):
        path = img_line.strip()
        if not path:
            raise DataError(f"{img_path}:{number}: blank line inside the image list")
        tokens = target_line.split()
        where = f"{targets_path}:{number}"
        if not tokens:
            raise DataError(f"{where}: blank line inside the label rows")
        num_classes = _check_count(len(tokens), num_classes, where, first_line)
        first_line = number if first_line is None else first_line
        rows.append(_parse_labels(tokens, where))
        paths.append(path)
    return ListEntries(paths, np.array(rows, dtype=bool), list(range(1, len(paths) + 1)), img_path)


def _strip_trailing_blank(lines: list[str]) -> list[str]:
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _load_entries(
    entries: ListEntries,
    image_root: Path,
    image_size: int,
    cache_dir: str | Path | None,
    progress: Progress | None,
    class_names: list[str] | None,
    cache_name: str,
    skip_bad: bool = False,
    workers: int | None = None,
) -> ImageSet:
    files, missing = [], []
    for relative, number in zip(entries.paths, entries.path_lines, strict=True):
        file = image_root / relative
        if not file.is_file():
            missing.append(f"{entries.path_file}:{number}: image not found: {file}")
        files.append(file)
    if missing:
        # Missing files are never skipped: usually the image root is wrong, not a few files.
        if len(missing) == 1:
            raise DataError(missing[0])
        more = f"; ... and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise DataError(f"{len(missing)} images not found: {'; '.join(missing[:3])}{more}")
    cache = None if cache_dir is None else Path(cache_dir)
    decoded = read_images(files, image_size, cache, progress, cache_name, workers=workers)
    labels, ids, skipped = entries.labels, list(entries.paths), {}
    if decoded.bad:
        if not skip_bad:
            items = [
                f"{entries.path_file}:{entries.path_lines[b.index]}: unreadable image {b.path} "
                f"({b.reason})"
                for b in decoded.bad
            ]
            raise UnreadableImagesError(unreadable_message(items), decoded.bad)
        if not len(decoded.images):
            raise DataError(f"{entries.path_file}: none of the {len(files)} images is readable")
        skipped = {ids[b.index]: b.reason for b in decoded.bad}
        kept = decoded.kept
        labels, ids = labels[kept], [ids[i] for i in kept]
    num_classes = entries.labels.shape[1]
    if class_names is None:
        class_names = [f"label_{i}" for i in range(num_classes)]
    elif len(class_names) != num_classes:
        raise DataError(
            f"{entries.path_file}: {num_classes} label columns but {len(class_names)} class names"
        )
    return ImageSet(
        images=decoded.images,
        labels=labels,
        ids=ids,
        class_names=list(class_names),
        skipped=skipped,
    )


def read_list_file(
    list_path: str | Path,
    image_root: str | Path,
    image_size: int,
    num_classes: int | None = None,
    cache_dir: str | Path | None = None,
    *,
    progress: Progress | None = None,
    class_names: list[str] | None = None,
    skip_bad: bool = False,
    workers: int | None = None,
) -> ImageSet:
    """Read a list file and its images.

    Args:
        list_path: the list file (``relative/path l_0 ... l_{C-1}`` per line).
        image_root: folder the paths are relative to.
        image_size: side of the square output images.
        num_classes: C, checked on every line; None takes it from the first line.
        cache_dir: cache folder for the decoded images, or None to decode into memory.
        progress: called as ``progress(n_done, total)`` while images are decoded.
        class_names: names of the C label columns; default ``label_0`` ...
        skip_bad: leave unreadable images out (listed in ``ImageSet.skipped``) instead of
            raising.
        workers: threads decoding image files (default: every core).

    Returns:
        The images (uint8, (N, image_size, image_size, 3)), labels and ids (the paths as written).

    Raises:
        DataError: a malformed line, a missing or unreadable image; the message names the list
            file and line, e.g. ``list.txt:17: image not found: root/xyz.jpg``.
    """
    entries = parse_list_file(list_path, num_classes)
    name = Path(list_path).stem
    return _load_entries(
        entries,
        Path(image_root),
        image_size,
        cache_dir,
        progress,
        class_names,
        name,
        skip_bad,
        workers,
    )


def read_image_target_files(
    img_path: str | Path,
    targets_path: str | Path,
    image_root: str | Path,
    image_size: int,
    num_classes: int | None = None,
    cache_dir: str | Path | None = None,
    *,
    progress: Progress | None = None,
    class_names: list[str] | None = None,
    skip_bad: bool = False,
    workers: int | None = None,
) -> ImageSet:
    """Read the ``img.txt`` + ``targets.txt`` pair and its images.

    Args:
        img_path: one image path per line, relative to ``image_root``.
        targets_path: one label row per line, same line count.
        image_root: folder the paths are relative to.
        image_size: side of the square output images.
        num_classes: C, checked on every row; None takes it from the first row.
        cache_dir: cache folder for the decoded images, or None to decode into memory.
        progress: called as ``progress(n_done, total)`` while images are decoded.
        class_names: names of the C label columns; default ``label_0`` ...
        skip_bad: leave unreadable images out (listed in ``ImageSet.skipped``) instead of
            raising.
        workers: threads decoding image files (default: every core).

    Returns:
        The images, labels and ids (the paths as written).

    Raises:
        DataError: mismatched line counts, a malformed row, a missing or unreadable image; the
            message names the file and line.
    """
    entries = parse_image_target_files(img_path, targets_path, num_classes)
    name = Path(img_path).stem
    return _load_entries(
        entries,
        Path(image_root),
        image_size,
        cache_dir,
        progress,
        class_names,
        name,
        skip_bad,
        workers,
    )


def _class_names(root: Path, num_classes: int, default: list[str] | None) -> list[str] | None:
    path = root / "classes.txt"
    if not path.is_file():
        return default
    names = [line.strip() for line in _read_lines(path) if line.strip()]
    if len(names) != num_classes:
        raise DataError(f"{path}: {len(names)} class names, the dataset has {num_classes} labels")
    return names


def read_list_dataset(
    root: str | Path,
    num_classes: int,
    *,
    image_size: int = SPQ_IMAGE_SIZE,
    image_root: str | Path | None = None,
    cache: bool = True,
    cache_dir: str | Path | None = None,
    progress: Progress | None = None,
    class_names: list[str] | None = None,
    name: str = "list",
    skip_bad: bool = False,
    workers: int | None = None,
) -> dict[str, ImageSet]:
    """Read a dataset folder in the layout of the module docstring.

    Args:
        root: the dataset folder.
        num_classes: C, checked on every line.
        image_size: side of the square output images (64, SPQ's choice, by default).
        image_root: folder the list paths are relative to; default ``root``.
        cache: whether to cache decoded images on disk.
        cache_dir: cache folder; default :func:`~quantrieve.data.cache.default_cache_dir`,
            outside ``root``.
        progress: called as ``progress(n_done, total)`` while a part's images are decoded.
        class_names: default column names; ``root/classes.txt`` overrides them.
        name: dataset name, the prefix of cache file names.
        skip_bad: leave unreadable images out (listed in ``ImageSet.skipped``) instead of
            raising; missing ones are always an error.
        workers: threads decoding image files (default: every core).

    Returns:
        The parts present among ``database``, ``train``, ``test``; else ``{"all": ...}`` from
        ``list.txt`` or from ``img.txt`` + ``targets.txt``.

    Raises:
        DataError: no list file found, or any error of :func:`read_list_file`.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    image_root = root if image_root is None else Path(image_root)
    if not cache:
        cache_dir = None
    elif cache_dir is None:
        cache_dir = default_cache_dir()
    names = _class_names(root, num_classes, class_names)

    sources: dict[str, ListEntries] = {}
    for part in LIST_PARTS:
        if (root / f"{part}.txt").is_file():
            sources[part] = parse_list_file(root / f"{part}.txt", num_classes)
    if not sources and (root / "list.txt").is_file():
        sources["all"] = parse_list_file(root / "list.txt", num_classes)
    if not sources and (root / "img.txt").is_file() and (root / "targets.txt").is_file():
        sources["all"] = parse_image_target_files(
            root / "img.txt", root / "targets.txt", num_classes
        )
    if sources:
        return {
            part: _load_entries(
                entries,
                image_root,
                image_size,
                cache_dir,
                progress,
                names,
                f"{name}-{part}",
                skip_bad,
                workers,
            )
            for part, entries in sources.items()
        }
    raise DataError(
        f"{root}: no list file found (expected database.txt / train.txt / test.txt, list.txt, "
        "or img.txt + targets.txt)"
    )


def _named_list_reader(
    name: str, num_classes: int, description: str, class_names: list[str] | None = None
) -> Callable[..., dict[str, ImageSet]]:
    """A reader for one named list-file dataset: :func:`read_list_dataset` with its label count."""

    def read(
        root: str | Path,
        *,
        image_size: int = SPQ_IMAGE_SIZE,
        image_root: str | Path | None = None,
        cache: bool = True,
        cache_dir: str | Path | None = None,
        progress: Progress | None = None,
        skip_bad: bool = False,
        workers: int | None = None,
    ) -> dict[str, ImageSet]:
        return read_list_dataset(
            root,
            num_classes,
            image_size=image_size,
            image_root=image_root,
            cache=cache,
            cache_dir=cache_dir,
            progress=progress,
            class_names=class_names,
            name=name,
            skip_bad=skip_bad,
            workers=workers,
        )

    read.__name__ = f"read_{name}"
    read.__doc__ = f"{description}; arguments as in :func:`read_list_dataset`."
    return read


read_flickr25k = _named_list_reader(
    "flickr25k", 24, "MIRFLICKR-25K with its 24 labels", FLICKR25K_CLASSES
)
read_nuswide21 = _named_list_reader(
    "nuswide21",
    21,
    "NUS-WIDE, the 21 most frequent concepts (columns label_0... unless root/classes.txt)",
)
read_coco = _named_list_reader(
    "coco", 80, "MS-COCO with 80 labels (columns label_0... unless root/classes.txt)"
)
