"""Protocols: registry, fixed train/test parts, seeded + saved + reused random query splits."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY

from quantrieve.data import DATASETS, DataError, ImageSet
from quantrieve.experiments import protocols
from quantrieve.experiments.protocols import (
    PROTOCOLS,
    ProtocolError,
    describe,
    get_protocol,
    materialize,
)


def _image_set(n: int, prefix: str, num_classes: int = 24, seed: int = 0) -> ImageSet:
    rng = np.random.default_rng(seed)
    labels = rng.random((n, num_classes)) < 0.2
    labels[np.arange(n), rng.integers(0, num_classes, n)] = True
    return ImageSet(
        images=rng.integers(0, 255, (n, 4, 4, 3), dtype=np.uint8),
        labels=labels,
        ids=[f"{prefix}/{i}.jpg" for i in range(n)],
        class_names=[f"c{i}" for i in range(num_classes)],
    )


@pytest.fixture()
def all_part(monkeypatch: pytest.MonkeyPatch) -> ImageSet:
    """A list-file dataset given as one 'all' part of 50 images."""
    images = _image_set(50, "im")
    monkeypatch.setattr(protocols, "read_dataset", lambda name, root, *options: {"all": images})
    return images


FLICKR_SMALL = dataclasses.replace(PROTOCOLS["flickr25k"], num_queries=10)


def test_registry_states_the_papers_protocols() -> None:
    assert list(PROTOCOLS) == ["fashion-mnist", "cifar10", "flickr25k", "nuswide21"]
    assert [p.topk for p in PROTOCOLS.values()] == [1000, 1000, 5000, 5000]
    assert [p.num_queries for p in PROTOCOLS.values()] == [None, None, 2000, 2100]
    assert all(p.train_is_database and p.val_queries > 0 for p in PROTOCOLS.values())
    assert all(p.dataset in DATASETS for p in PROTOCOLS.values())
    text = describe()
    for name in PROTOCOLS:
        assert name in text
    assert "training set = database" in text and "mAP@5000" in text
    with pytest.raises(ProtocolError, match="unknown protocol 'imagenet'; available: fashion"):
        get_protocol("imagenet")


def test_fixed_protocol_uses_train_and_test_parts(tiny_fashion: Path, tmp_path: Path) -> None:
    data = materialize("fashion-mnist", tiny_fashion, tmp_path / "split")
    assert (len(data.train), len(data.database), len(data.queries)) == (
        TINY.train,
        TINY.train,
        TINY.test,
    )
    assert data.train is data.database and data.source == "train/test"
    assert data.split_dir is None and not (tmp_path / "split").exists()
    assert data.summary()["train_is_database"]


def test_all_part_is_split_seeded_and_saved(all_part: ImageSet, tmp_path: Path) -> None:
    data = materialize(FLICKR_SMALL, "unused", tmp_path / "a")
    assert (len(data.queries), len(data.database)) == (10, 40)
    assert data.train is data.database and data.source == "all"
    assert set(data.queries.ids).isdisjoint(data.database.ids)
    assert set(data.queries.ids) | set(data.database.ids) == set(all_part.ids)
    meta = json.loads((tmp_path / "a" / "splits.json").read_text())
    assert meta["sha256"] == data.split_sha256 and meta["sizes"] == {"query": 10, "database": 40}
    assert meta["protocol"] == "flickr25k" and meta["seed"] == 0
    # Seeded: a fresh folder draws the same queries.
    again = materialize(FLICKR_SMALL, "unused", tmp_path / "b")
    assert again.queries.ids == data.queries.ids
    # Another seed draws other queries.
    other = materialize(dataclasses.replace(FLICKR_SMALL, split_seed=1), "x", tmp_path / "c")
    assert other.queries.ids != data.queries.ids


def test_saved_split_is_reused(all_part: ImageSet, tmp_path: Path) -> None:
    first = materialize(FLICKR_SMALL, "unused", tmp_path)
    stamp = (tmp_path / "splits.npz").stat().st_mtime_ns
    # Even with another seed in the protocol, the saved split is what is used.
    reused = materialize(dataclasses.replace(FLICKR_SMALL, split_seed=7), "unused", tmp_path)
    assert reused.queries.ids == first.queries.ids
    assert (tmp_path / "splits.npz").stat().st_mtime_ns == stamp


def test_tampered_split_is_refused(all_part: ImageSet, tmp_path: Path) -> None:
    materialize(FLICKR_SMALL, "unused", tmp_path)
    with np.load(tmp_path / "splits.npz") as saved:
        split = {k: saved[k].copy() for k in saved.files}
    split["query"][0], split["database"][0] = split["database"][0], split["query"][0]
    np.savez(tmp_path / "splits.npz", **split)
    with pytest.raises(DataError, match="checksum does not match"):
        materialize(FLICKR_SMALL, "unused", tmp_path)


def test_split_of_other_sizes_or_images_is_refused(
    all_part: ImageSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    materialize(FLICKR_SMALL, "unused", tmp_path)
    with pytest.raises(DataError, match="has 10 queries, the protocol asks for 12"):
        materialize(dataclasses.replace(FLICKR_SMALL, num_queries=12), "unused", tmp_path)
    with pytest.raises(DataError, match="made for protocol 'flickr25k'"):
        materialize(dataclasses.replace(FLICKR_SMALL, name="other"), "unused", tmp_path)
    bigger = _image_set(60, "im")
    monkeypatch.setattr(protocols, "read_dataset", lambda name, root, *options: {"all": bigger})
    with pytest.raises(DataError, match="does not partition the 60 images"):
        materialize(FLICKR_SMALL, "unused", tmp_path)
    renamed = _image_set(50, "moved")
    monkeypatch.setattr(protocols, "read_dataset", lambda name, root, *options: {"all": renamed})
    with pytest.raises(DataError, match="other image ids"):
        materialize(FLICKR_SMALL, "unused", tmp_path)


def test_database_and_test_parts_are_used_as_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parts = {
        "database": _image_set(30, "db"),
        "train": _image_set(8, "tr"),
        "test": _image_set(6, "te"),
    }
    monkeypatch.setattr(protocols, "read_dataset", lambda name, root, *options: parts)
    data = materialize("nuswide21", "unused", tmp_path)
    assert data.database is parts["database"] and data.queries is parts["test"]
    assert data.train is parts["database"] and data.source == "database/test"
    assert data.split_dir is None and not any(tmp_path.iterdir())


def test_unusable_parts_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    only = {"all": _image_set(20, "im", num_classes=10)}
    monkeypatch.setattr(protocols, "read_dataset", lambda name, root, *options: only)
    with pytest.raises(ProtocolError, match=r"expected train \+ test, database \+ test$"):
        materialize("cifar10", "somewhere", tmp_path)
    with pytest.raises(ProtocolError, match="leaves no database"):
        materialize(dataclasses.replace(FLICKR_SMALL, num_queries=20), "x", tmp_path)
    unlabelled = {"train": _image_set(5, "a"), "test": _image_set(5, "b")}
    unlabelled["test"].labels = None
    monkeypatch.setattr(protocols, "read_dataset", lambda name, root, *options: unlabelled)
    with pytest.raises(DataError, match="queries of protocol 'cifar10' have no labels"):
        materialize("cifar10", "somewhere", tmp_path)


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_every_protocol_has_a_cpu_preset_for_its_dataset(name: str) -> None:
    """Each protocol ships a CPU preset that resolves, validates and trains on that protocol's
    dataset with a CPU-sized backbone; the GPU recipes of the paper's protocols exist too."""
    from quantrieve.config import load_config, preset_names

    names = preset_names()
    assert f"{name}-cpu" in names
    cpu = load_config(f"{name}-cpu")
    assert cpu.data.dataset == name
    assert cpu.model.backbone == "small_cnn"
    assert cpu.eval.topk == PROTOCOLS[name].topk
    if name != "fashion-mnist":
        gpu = load_config(f"{name}-gpu")
        assert gpu.data.dataset == name
        assert gpu.model.backbone.startswith("resnet")
        assert gpu.eval.topk == PROTOCOLS[name].topk


def test_one_rule_for_the_training_part() -> None:
    """What `train` trains on, `encode` indexes and the benchmark uses as database: the
    database part of a list-file release (its train part is a small labelled subset)."""
    import numpy as np

    from quantrieve.data import ImageSet
    from quantrieve.data.run_parts import training_part

    def images(n: int) -> ImageSet:
        return ImageSet(np.zeros((n, 2, 2, 1), np.uint8), None, [str(i) for i in range(n)])

    assert training_part({"database": images(3), "train": images(1), "test": images(1)}) == (
        "database"
    )
    assert training_part({"train": images(3), "test": images(1)}) == "train"
    assert training_part({"all": images(3)}) == "all"
