"""The one interface every dataset reader returns: :class:`ImageSet`.

Images are uint8 arrays of shape (N, H, W, C) (in memory or memory-mapped), labels a boolean
multi-hot matrix (N, num_classes) so that single-label data is the special case of "at least one
shared label" relevance. Readers return named parts, e.g. ``{"train": ..., "test": ...}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


class DataError(ValueError):
    """A data file is missing or malformed; the message names the file (and line)."""


@dataclass
class ImageSet:
    """Images with optional multi-hot labels and stable item ids.

    Attributes:
        images: uint8 array (N, H, W, C).
        labels: bool array (N, num_classes) or None when unlabelled.
        ids: one string id per image (a file name, or ``part:index``).
        class_names: names of the label columns.
    """

    images: np.ndarray
    labels: np.ndarray | None
    ids: list[str]
    class_names: list[str] = field(default_factory=list)

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
        """The images at ``indices``, in that order (copies into memory)."""
        idx = np.asarray(indices, dtype=np.int64)
        return ImageSet(
            images=np.ascontiguousarray(self.images[idx]),
            labels=None if self.labels is None else self.labels[idx],
            ids=[self.ids[i] for i in idx],
            class_names=list(self.class_names),
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
