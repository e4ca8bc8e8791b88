"""Shared fixtures: a tiny dataset in the real Fashion-MNIST IDX format."""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _image_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Decoded-image caches of the tests go to a temporary folder, not the user's cache."""
    os.environ["QUANTRIEVE_CACHE_DIR"] = str(tmp_path_factory.mktemp("image-cache"))


@dataclass(frozen=True)
class TinyFixture:
    """The sizes of the tiny fixtures, in one place: tests derive their expectations from these.

    The dataset (``tiny_fashion``): ``train`` / ``test`` images of ``size`` x ``size`` pixels
    in ``classes`` classes. The deep run (``TINY_RUN``, ``tiny_run``, ``tiny_index``): a
    ``width``-channel CNN, ``epochs`` epochs of ``steps`` batches of ``batch`` images,
    ``val_queries`` training images held out as validation queries; the index has ``books``
    books of ``codewords`` codewords (``bits`` bits a code).
    """

    train: int = 320
    test: int = 60
    size: int = 12
    classes: int = 10
    val_queries: int = 40
    batch: int = 32
    epochs: int = 2
    steps: int = 4
    width: int = 4
    books: int = 4
    codewords: int = 16  # the config's default
    codeword_dim: int = 4

    @property
    def dim(self) -> int:
        """Values in an embedding of the deep run."""
        return self.books * self.codeword_dim

    @property
    def bits(self) -> int:
        return self.books * (self.codewords.bit_length() - 1)

    @property
    def run(self) -> list[str]:
        """Config overrides of the tiny deep run (without ``model.num_books``)."""
        return [
            f"model.width={self.width}",
            "model.proj_hidden=16",
            f"model.codeword_dim={self.codeword_dim}",
            f"train.batch_size={self.batch}",
            f"train.epochs={self.epochs}",
            "train.warmup_epochs=1",
            f"train.max_steps_per_epoch={self.steps}",
            f"data.val_queries={self.val_queries}",
            "augment.crop_scale_min=0.5",
        ]


TINY = TinyFixture()
# A deep run small enough for a test: a 4-channel CNN, a few steps of 32 images per epoch.
TINY_RUN = TINY.run


def as_sets(overrides: list[str]) -> list[str]:
    """Config overrides as command-line options: ``--set key=value`` each."""
    return [x for item in overrides for x in ("--set", item)]


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    """Write a uint8 array in the IDX format (big-endian header), gzipped or raw."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}i", *array.shape
    )
    raw = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)
    return path


def make_idx_dataset(
    root: Path,
    n_train: int,
    n_test: int,
    size: int = TINY.size,
    seed: int = 0,
    bar_length: int | None = None,
) -> Path:
    """Class-structured 10-class images (a bright bar whose row is the class) plus noise.

    ``bar_length``: the bar spans that many columns from a random one (a nuisance raw pixels
    see and a pooled network can ignore), instead of the full width. The labels and noise of
    a seed are the same either way.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, TINY.classes, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, size, size)).astype(np.uint8)
        length = size if bar_length is None else bar_length
        starts = np.zeros(n, int) if bar_length is None else rng.integers(0, size - length + 1, n)
        for i, c in enumerate(labels):
            row = int(c) * (size - 2) // (TINY.classes - 1)
            images[i, row : row + 2, starts[i] : starts[i] + length] = 230
        write_idx(root / f"{prefix}-images-idx3-ubyte", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture(scope="session")
def tiny_fashion(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Fashion-MNIST-format folder: ``TINY.train`` / ``TINY.test`` images of ``TINY.size``
    pixels a side."""
    return make_idx_dataset(tmp_path_factory.mktemp("fashion"), TINY.train, TINY.test)


def encode_index(model_file, database, out, device="cpu"):
    """Encode ``database`` with a model file into the index directory ``out`` (the API's
    load -> build_index -> save)."""
    from quantrieve.api import Retriever

    retriever = Retriever.load(model_file, device=device)
    index = retriever.build_index(database)
    retriever.save(out)
    return index


def embed_queries(index_dir, images, device="cpu"):
    """Embeddings of query images with an index's own model."""
    from quantrieve.api import Retriever

    return Retriever.load(index_dir, device=device).embed(images)


def build_tiny_index(data_dir: Path, out: Path, *extra: str) -> Path:
    """Train a tiny run on ``data_dir`` and encode its index into ``out / "index"``."""
    from typer.testing import CliRunner

    from quantrieve.cli import app

    sets = as_sets([*TINY_RUN, f"model.num_books={TINY.books}"])
    for args in (
        ["train", "--out", str(out / "run"), "--data-dir", str(data_dir), *extra, *sets],
        ["encode", str(out / "run"), "--out", str(out / "index")],
    ):
        result = CliRunner().invoke(app, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
    return out / "index"


@pytest.fixture(scope="session")
def tiny_index(tiny_fashion: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An index of the ``TINY.train`` tiny Fashion-MNIST-format training images (``TINY.bits``
    bits, model.pt in it), encoded from ``tiny_run``. Copy it before changing it."""
    return build_tiny_index(tiny_fashion, tmp_path_factory.mktemp("served"))


@pytest.fixture(scope="session")
def tiny_run(tiny_index: Path) -> Path:
    """The training run behind ``tiny_index`` (``TINY_RUN``, ``TINY.books`` books), shared by
    every test that only reads a trained run. Copy it before changing it."""
    return tiny_index.parent / "run"
