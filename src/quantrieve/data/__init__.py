"""Dataset readers behind one interface (:class:`ImageSet`) and the one registry of datasets by
name (:data:`DATASETS`): each dataset's reader and what it can do."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from quantrieve.data.base import DataError, ImageSet, IndexedImages, one_hot
from quantrieve.data.cifar import read_cifar10, read_cifar100
from quantrieve.data.folder import read_image_folder
from quantrieve.data.idx import read_fashion_mnist, read_mnist
from quantrieve.data.listfile import read_coco, read_flickr25k, read_nuswide21

Reader = Callable[..., dict[str, ImageSet]]


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset quantrieve reads, and what its reader can do.

    :data:`DATASETS` is the one registry of them: :func:`read_dataset`, the config's
    ``data.dataset``, the benchmark protocols and the service's item images
    (:data:`ARRAY_DATASETS`) take names and capabilities from it.

    Attributes:
        name: What users type (``data.dataset``, ``--dataset``).
        reader: ``reader(root, **options) -> {part: ImageSet}``.
        decodes_files: The reader decodes image files: it takes an output size, leaves
            unreadable files out on request, decodes with workers and reports progress, and an
            item's id is its file's path under the root. Otherwise the images are fixed-size
            arrays (IDX, CIFAR) and an id names a row (``part:row``).
        folder: An image folder: its reader takes a layout (``data.layout``) and channels
            (``data.channels``); other readers have a fixed layout and keep their channels.
    """

    name: str
    reader: Reader
    decodes_files: bool = False
    folder: bool = False


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo("fashion-mnist", read_fashion_mnist),
        DatasetInfo("mnist", read_mnist),
        DatasetInfo("cifar10", read_cifar10),
        DatasetInfo("cifar100", read_cifar100),
        DatasetInfo("flickr25k", read_flickr25k, decodes_files=True),
        DatasetInfo("nuswide21", read_nuswide21, decodes_files=True),
        DatasetInfo("coco", read_coco, decodes_files=True),
        DatasetInfo("image-folder", read_image_folder, decodes_files=True, folder=True),
    )
}

#: Datasets of fixed-size arrays (no image files): their items are rows, ``part:row``.
ARRAY_DATASETS = frozenset(name for name, info in DATASETS.items() if not info.decodes_files)


def read_dataset(
    name: str,
    root: str | Path,
    image_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    *,
    layout: str = "auto",
    skip_bad: bool = False,
    channels: int = 0,
    workers: int | None = None,
) -> dict[str, ImageSet]:
    """Read a dataset by registry name; returns its named parts (e.g. train, test).

    Args:
        name: registry name (see ``DATASETS``).
        root: the dataset folder.
        image_size: square side for readers that decode image files (their default if None);
            fixed-size formats (IDX, CIFAR) ignore it.
        progress: ``progress(done, total)`` while image files are decoded into the cache.
        layout: ``auto``, ``classes`` or ``flat``, of the ``image-folder`` reader (see
            :mod:`quantrieve.data.folder`); other readers have a fixed layout and refuse any
            other value than ``auto``.
        skip_bad: readers that decode image files leave unreadable ones out (listed in
            ``ImageSet.skipped``) instead of raising one error naming them all; fixed-size
            formats have no image files to skip.
        channels: of the ``image-folder`` reader: 1 (grayscale) or 3 (RGB); 0 = the
            collection's own (1 when every file is grayscale). Other readers keep theirs.
        workers: threads of readers that decode image files (default: every core this
            process may use); fixed-size formats ignore it.

    The config's ``data`` section gives ``layout``, ``skip_bad`` and ``channels``:
    ``read_dataset(..., **config.data.reader_options())``.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset '{name}'; available: {', '.join(sorted(DATASETS))}")
    info = DATASETS[name]
    if layout != "auto" and not info.folder:
        raise DataError(
            f"data.layout={layout} applies to the image-folder dataset only; '{name}' has a "
            "fixed layout (use data.layout=auto)"
        )
    if channels and not info.folder:
        raise DataError(
            f"data.channels={channels} applies to the image-folder dataset only; '{name}' keeps "
            "its own (use data.channels=0)"
        )
    if not info.decodes_files:
        return info.reader(root)
    options: dict = {"skip_bad": skip_bad, "workers": workers}
    if info.folder:
        options["layout"] = layout
        options["channels"] = channels
    if image_size:
        options["image_size"] = image_size
    if progress is not None:
        options["progress"] = progress
    return info.reader(root, **options)


__all__ = [
    "ARRAY_DATASETS",
    "DATASETS",
    "DataError",
    "DatasetInfo",
    "ImageSet",
    "IndexedImages",
    "one_hot",
    "read_dataset",
]
