"""Reader of the IDX format of MNIST and Fashion-MNIST (gzipped or not).

Format (http://yann.lecun.com/exdb/mnist/): two zero bytes, a type byte (0x08 = uint8), a byte
giving the number of dimensions, then one big-endian int32 per dimension, then the data.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from quantrieve.data.base import DataError, ImageSet, one_hot

FASHION_MNIST_CLASSES = [
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
]
MNIST_CLASSES = [str(d) for d in range(10)]
PARTS = {"train": "train", "test": "t10k"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (``.gz`` or raw) into a uint8 array of the shape its header gives."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(f"{path}: corrupt gzip stream ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    if raw[2] != 0x08:
        raise DataError(f"{path}: IDX type 0x{raw[2]:02x} is not supported (only uint8, 0x08)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int(x) for x in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    expected = int(np.prod(shape)) if shape else 0
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: header says {shape} = {expected} bytes of data, file has {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def _find(root: Path, stem: str) -> Path:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    raise DataError(f"{root}: neither {stem}.gz nor {stem} found")


def read_idx_dataset(root: str | Path, class_names: list[str]) -> dict[str, ImageSet]:
    """Read the train and test parts of an MNIST-style IDX dataset folder."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    parts: dict[str, ImageSet] = {}
    for part, prefix in PARTS.items():
        image_path = _find(root, f"{prefix}-images-idx3-ubyte")
        label_path = _find(root, f"{prefix}-labels-idx1-ubyte")
        images = read_idx(image_path)
        labels = read_idx(label_path)
        if images.ndim != 3:
            raise DataError(f"{image_path}: expected 3 dimensions (N, H, W), got {images.shape}")
        if labels.ndim != 1 or len(labels) != len(images):
            raise DataError(
                f"{label_path}: {labels.shape} labels for {len(images)} images in {image_path}"
            )
        parts[part] = ImageSet(
            images=images[..., None],
            labels=one_hot(labels, len(class_names)),
            ids=[f"{part}:{i}" for i in range(len(images))],
            class_names=list(class_names),
        )
    return parts


def read_fashion_mnist(root: str | Path) -> dict[str, ImageSet]:
    """Fashion-MNIST (60,000 train / 10,000 test, 28x28 grayscale, 10 classes)."""
    return read_idx_dataset(root, FASHION_MNIST_CLASSES)


def read_mnist(root: str | Path) -> dict[str, ImageSet]:
    """MNIST (60,000 train / 10,000 test, 28x28 grayscale, 10 digits)."""
    return read_idx_dataset(root, MNIST_CLASSES)
