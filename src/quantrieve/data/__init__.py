"""Dataset readers behind one interface (:class:`ImageSet`) and a registry by name."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from quantrieve.data.base import DataError, ImageSet, IndexedImages, one_hot
from quantrieve.data.cifar import read_cifar10, read_cifar100
from quantrieve.data.folder import read_image_folder
from quantrieve.data.idx import read_fashion_mnist, read_mnist
from quantrieve.data.listfile import read_coco, read_flickr25k, read_nuswide21

Reader = Callable[[str | Path], dict[str, ImageSet]]

DATASETS: dict[str, Reader] = {
    "fashion-mnist": read_fashion_mnist,
    "mnist": read_mnist,
    "cifar10": read_cifar10,
    "cifar100": read_cifar100,
    "flickr25k": read_flickr25k,
    "nuswide21": read_nuswide21,
    "coco": read_coco,
    "image-folder": read_image_folder,
}


# Readers that decode image files: they take an output size and report decoding progress.
DECODING_READERS = frozenset({"flickr25k", "nuswide21", "coco", "image-folder"})


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
    if layout != "auto" and name != "image-folder":
        raise DataError(
            f"data.layout={layout} applies to the image-folder dataset only; '{name}' has a "
            "fixed layout (use data.layout=auto)"
        )
    if channels and name != "image-folder":
        raise DataError(
            f"data.channels={channels} applies to the image-folder dataset only; '{name}' keeps "
            "its own (use data.channels=0)"
        )
    if name not in DECODING_READERS:
        return DATASETS[name](root)
    options: dict = {"skip_bad": skip_bad, "workers": workers}
    if name == "image-folder":
        options["layout"] = layout
        options["channels"] = channels
    if image_size:
        options["image_size"] = image_size
    if progress is not None:
        options["progress"] = progress
    return DATASETS[name](root, **options)


__all__ = ["DATASETS", "DataError", "ImageSet", "IndexedImages", "one_hot", "read_dataset"]
