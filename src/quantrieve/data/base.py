"""The one interface every dataset reader returns: :class:`ImageSet`.

Images are uint8 arrays of shape (N, H, W, C) (in memory or memory-mapped, or rows of a
memory-mapped array: :class:`IndexedImages`), labels a boolean multi-hot matrix
(N, num_classes) so that single-label data is the special case of "at least one shared label"
relevance. Readers return named parts, e.g. ``{"train": ..., "test": ...}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from quantrieve.errors import QuantrieveError


class DataError(QuantrieveError, ValueError):
    """A data file is missing or malformed; the message names the file (and line)."""


class IndexedImages:
    """Rows ``index`` of a (memory-mapped) uint8 image array, read only when indexed.

    A subset of a large decoded cache (e.g. the NUS-WIDE database at 224x224) stays on disk:
    ``images[i]``, ``images[a:b]`` and ``images[int_array]`` read just those rows, which is all
    training, encoding and evaluation do. ``np.asarray`` reads every row (pixel baselines).
    """

    def __init__(self, base: np.ndarray, index: Sequence[int] | np.ndarray) -> None:
        idx = np.asarray(index, dtype=np.int64)
        if idx.ndim != 1:
            raise DataError(f"an image index must be one-dimensional, got shape {idx.shape}")
        if idx.size and (idx.min() < 0 or idx.max() >= len(base)):
            raise DataError(f"image index out of range [0, {len(base)}): {idx.min()}..{idx.max()}")
        self.base = base
        self.index = idx

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.index), *self.base.shape[1:])

    @property
    def ndim(self) -> int:
        return self.base.ndim

    @property
    def dtype(self) -> np.dtype:
        return self.base.dtype

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key: int | slice | np.ndarray | Sequence[int]) -> np.ndarray:
        rows = self.index[key]
        if np.ndim(rows) == 0:
            return np.asarray(self.base[int(rows)])
        return np.asarray(self.base[rows])

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype, copy=False)


@dataclass
class ImageSet:
    """Images with optional multi-hot labels and stable item ids.

    Attributes:
        images: uint8 array (N, H, W, C).
        labels: bool array (N, num_classes) or None when unlabelled.
        ids: one string id per image (a file name, or ``part:index``).
        class_names: names of the label columns.
        skipped: files of the source left out because they could not be read (a reader's
            ``skip_bad``), id -> reason; kept by :meth:`subset`, so a run can record them.
    """

    images: np.ndarray | IndexedImages
    labels: np.ndarray | None
    ids: list[str]
    class_names: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise DataError(
                f"images must be uint8 (N, H, W, C), got {self.images.dtype} {self.images.shape}"
            )
        n = len(self.images)
        if self.labels is not None and (self.labels.ndim != 2 or len(self.labels) != n):
            raise DataError(f"labels must be (N={n}, C), got {self.labels.shape}")
        if len(self.ids) != n:
            raise DataError(f"{len(self.ids)} ids for {n} images")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of every image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageSet:
        """The images at ``indices``, in that order.

        In-memory images are copied; memory-mapped ones (a decode cache) are not: the subset
        holds an :class:`IndexedImages` view that reads rows from disk when they are used.
        """
        idx = np.asarray(indices, dtype=np.int64)
        if isinstance(self.images, IndexedImages):
            images: np.ndarray | IndexedImages = IndexedImages(
                self.images.base, self.images.index[idx]
            )
        elif isinstance(self.images, np.memmap):
            images = IndexedImages(self.images, idx)
        else:
            images = np.ascontiguousarray(self.images[idx])
        return ImageSet(
            images=images,
            labels=None if self.labels is None else self.labels[idx],
            ids=[self.ids[i] for i in idx],
            class_names=list(self.class_names),
            skipped=dict(self.skipped),
        )


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Integer class labels (N,) to a boolean multi-hot matrix (N, num_classes)."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"class labels must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}"
        )
    out = np.zeros((len(labels), num_classes), dtype=bool)
    out[np.arange(len(labels)), labels] = True
    return out
