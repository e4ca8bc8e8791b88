"""Readers of CIFAR-10 and CIFAR-100 in the official "python version" format.

Format (https://www.cs.toronto.edu/~kriz/cifar.html): each batch is a pickled dict with bytes keys;
``b"data"`` is a uint8 array (N, 3072) whose rows hold the 1024 red, then 1024 green, then 1024
blue values of a 32x32 image in row-major order; ``b"labels"`` (CIFAR-10) or ``b"fine_labels"``
(CIFAR-100) is a list of N ints. The meta file holds ``b"label_names"`` (CIFAR-10) or
``b"fine_label_names"`` (CIFAR-100).

``root`` may be the tarball (``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``), the
extracted folder (``cifar-10-batches-py/`` / ``cifar-100-python/``), or a folder holding either
(the extracted folder is preferred). Tarball members are read in one sequential pass, without
extracting to disk. Pickles are loaded with an unpickler that accepts only numpy arrays and plain
Python values, so a tampered file cannot run code.
"""

from __future__ import annotations

import codecs
import io
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quantrieve.data.base import DataError, ImageSet, one_hot

IMAGE_BYTES = 3 * 32 * 32


@dataclass(frozen=True)
class CifarLayout:
    """File names of one CIFAR variant.

    Attributes:
        folder: name of the extracted folder (also the member prefix inside the tarball).
        tarball: file name of the official tarball.
        parts: part name -> batch file names, concatenated in this order.
        meta: name of the meta file.
        label_key: key of the labels in a batch.
        names_key: key of the class names in the meta file.
    """

    folder: str
    tarball: str
    parts: dict[str, tuple[str, ...]]
    meta: str
    label_key: bytes
    names_key: bytes


CIFAR10 = CifarLayout(
    folder="cifar-10-batches-py",
    tarball="cifar-10-python.tar.gz",
    parts={"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
    meta="batches.meta",
    label_key=b"labels",
    names_key=b"label_names",
)
CIFAR100 = CifarLayout(
    folder="cifar-100-python",
    tarball="cifar-100-python.tar.gz",
    parts={"train": ("train",), "test": ("test",)},
    meta="meta",
    label_key=b"fine_labels",
    names_key=b"fine_label_names",
)


def _numpy_globals() -> dict[tuple[str, str], Any]:
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]
    scalar = np.int64(0).__reduce__()[0]
    from_buffer = np.zeros(1).__reduce_ex__(5)[0]  # protocol-5 pickles of arrays
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Python 3 writes bytes in protocol-2 pickles as _codecs.encode(text, "latin1").
        ("_codecs", "encode"): codecs.encode,
    }
    # numpy 1 pickles name numpy.core, numpy 2 pickles numpy._core; both resolve to ours.
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = reconstruct
        allowed[(module, "scalar")] = scalar
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(module, "_frombuffer")] = from_buffer
    return allowed


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the numpy globals an array pickle needs."""

    allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


def _unpickle(raw: bytes, where: str) -> dict[bytes, Any]:
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    # A damaged pickle can fail in many ways inside the unpickler.
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        MemoryError,
    ) as exc:
        raise DataError(f"{where}: corrupt pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def _read_folder(folder: Path, names: list[str]) -> dict[str, tuple[bytes, str]]:
    """name -> (raw bytes, description for messages)."""
    files: dict[str, tuple[bytes, str]] = {}
    for name in names:
        path = folder / name
        if not path.is_file():
            raise DataError(f"{path}: batch file not found")
        try:
            files[name] = (path.read_bytes(), str(path))
        except OSError as exc:
            raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    return files


def _read_tarball(tar_path: Path, prefix: str, names: list[str]) -> dict[str, tuple[bytes, str]]:
    """Read the members ``prefix/name`` in one sequential pass; name -> (raw bytes, description)."""
    wanted = {f"{prefix}/{name}": name for name in names}
    files: dict[str, tuple[bytes, str]] = {}
    try:
        with tarfile.open(tar_path, "r:*") as tar:
            for member in tar:
                member_name = member.name.removeprefix("./")
                if member_name in wanted and member.isfile():
                    handle = tar.extractfile(member)
                    assert handle is not None  # a regular file always has a handle
                    files[wanted[member_name]] = (handle.read(), f"{tar_path}[{member_name}]")
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataError(f"{tar_path}: corrupt or unreadable tarball ({exc})") from None
    for member_name, name in wanted.items():
        if name not in files:
            raise DataError(f"{tar_path}: member {member_name} not found")
    return files


def _locate(root: Path, layout: CifarLayout) -> tuple[Path, bool]:
    """(source, is_tarball) for ``root``: the tarball, the extracted folder, or their parent."""
    if root.is_file():
        return root, True
    if not root.is_dir():
        raise DataError(f"{root}: CIFAR folder or tarball not found")
    if (root / layout.meta).is_file():
        return root, False
    if (root / layout.folder).is_dir():
        return root / layout.folder, False
    if (root / layout.tarball).is_file():
        return root / layout.tarball, True
    raise DataError(
        f"{root}: holds neither {layout.folder}/, {layout.tarball} nor the file {layout.meta}"
    )


def _parse_batch(raw: bytes, where: str, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(raw, where)
    for key in (b"data", label_key):
        if key not in batch:
            raise DataError(f"{where}: batch lacks the key {key!r}")
    data, labels = batch[b"data"], np.asarray(batch[label_key])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        kind = data.dtype if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{where}: b'data' must be a uint8 array, got {kind}")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{where}: {label_key!r} must be a list of ints")
    if data.size != len(labels) * IMAGE_BYTES:
        raise DataError(
            f"{where}: wrong data length: {data.size} bytes for {len(labels)} labels "
            f"(expected {len(labels)} x {IMAGE_BYTES})"
        )
    # Rows are R, G, B planes of 32x32 in row-major order -> (N, H, W, C).
    images = data.reshape(len(labels), 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def read_cifar(root: str | Path, layout: CifarLayout) -> dict[str, ImageSet]:
    """Read the train and test parts of one CIFAR variant.

    Args:
        root: the tarball, the extracted folder, or a folder holding either.
        layout: :data:`CIFAR10` or :data:`CIFAR100`.

    Returns:
        ``{"train": ..., "test": ...}``, 32x32x3 uint8 images, one-hot labels, class names from
        the meta file, ids ``part:index``.

    Raises:
        DataError: a file or member is missing, corrupt, or has the wrong data length; the message
            names the file (and the tarball member).
    """
    source, is_tarball = _locate(Path(root), layout)
    names = [layout.meta] + [name for batches in layout.parts.values() for name in batches]
    if is_tarball:
        files = _read_tarball(source, layout.folder, names)
    else:
        files = _read_folder(source, names)

    meta_raw, meta_where = files[layout.meta]
    meta = _unpickle(meta_raw, meta_where)
    if layout.names_key not in meta:
        raise DataError(f"{meta_where}: meta file lacks the key {layout.names_key!r}")
    class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[layout.names_key]]

    parts: dict[str, ImageSet] = {}
    for part, batches in layout.parts.items():
        images, labels = [], []
        for name in batches:
            raw, where = files[name]
            batch_images, batch_labels = _parse_batch(raw, where, layout.label_key)
            low, high = (batch_labels.min(), batch_labels.max()) if len(batch_labels) else (0, 0)
            if low < 0 or high >= len(class_names):
                raise DataError(
                    f"{where}: labels {low}..{high} outside "
                    f"[0, {len(class_names)}) of the meta file's class names"
                )
            images.append(batch_images)
            labels.append(batch_labels)
        all_images = np.concatenate(images) if len(images) > 1 else images[0]
        all_labels = np.concatenate(labels)
        parts[part] = ImageSet(
            images=all_images,
            labels=one_hot(all_labels, len(class_names)),
            ids=[f"{part}:{i}" for i in range(len(all_images))],
            class_names=class_names,
        )
    return parts


def read_cifar10(root: str | Path) -> dict[str, ImageSet]:
    """CIFAR-10 (50,000 train / 10,000 test, 32x32 RGB, 10 classes); see :func:`read_cifar`."""
    return read_cifar(root, CIFAR10)


def read_cifar100(root: str | Path) -> dict[str, ImageSet]:
    """CIFAR-100 with its 100 fine labels (50,000 train / 10,000 test); see :func:`read_cifar`."""
    return read_cifar(root, CIFAR100)
