"""Dataset readers behind one interface (:class:`ImageSet`) and a registry by name."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from quantrieve.data.base import DataError, ImageSet, one_hot
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


def read_dataset(name: str, root: str | Path) -> dict[str, ImageSet]:
    """Read a dataset by registry name; returns its named parts (e.g. train, test)."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset '{name}'; available: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](root)


__all__ = ["DATASETS", "DataError", "ImageSet", "one_hot", "read_dataset"]
