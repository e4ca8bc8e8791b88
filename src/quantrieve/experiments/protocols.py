"""Evaluation protocols as data: which images train, which form the database, which query.

A :class:`Protocol` states, for one dataset, how the field evaluates unsupervised retrieval
(docs/method.md, "Retrieval and evaluation protocol"): the query set, the database, whether the
unlabelled training set is the database, K of mAP@K and the usual code lengths.
:func:`materialize` turns a protocol and a dataset folder into the three image sets.

Any random query/database split is seeded, written once to a split folder (``splits.npz`` with
a SHA-256 in ``splits.json``, see :mod:`quantrieve.data.splits`) and reused afterwards; a saved
split whose checksum, sizes, protocol or image ids do not match is refused, never silently
remade. Model selection never touches the protocol's queries: the trainer carves
``val_queries`` validation queries out of the training side (``data.val_queries``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quantrieve.data import DataError, ImageSet, read_dataset
from quantrieve.data.run_parts import training_part
from quantrieve.data.splits import load_split, random_split, save_split
from quantrieve.errors import QuantrieveError
from quantrieve.runtime.progress import Progress


class ProtocolError(QuantrieveError, ValueError):
    """An unknown protocol, or a protocol that cannot be applied to the dataset given."""


@dataclass(frozen=True)
class Protocol:
    """One evaluation protocol.

    Attributes:
        name: Registry name (``quantrieve benchmark --protocol NAME``).
        dataset: Reader name in ``quantrieve.data.DATASETS``.
        description: What the protocol is and where it comes from.
        topk: K of mAP@K.
        num_queries: Random queries drawn from a single ``all`` part; ``None`` means the
            reader's ``test`` part is the query set.
        database: How the database is formed, in words.
        train_is_database: Whether the (unlabelled) training set is the database itself.
        default_root: Dataset folder used when none is given.
        val_queries: Validation queries carved from the training side for model selection
            (``data.val_queries``); the protocol's queries are evaluated once, at the end.
        precision_at: Cut-offs N of precision@N.
        bits: Usual code lengths of the literature.
        default_preset: Training preset the benchmark uses when none is given.
        split_seed: Seed of the random query/database split (when there is one).
    """

    name: str
    dataset: str
    description: str
    topk: int
    num_queries: int | None
    database: str
    train_is_database: bool
    default_root: str
    val_queries: int = 1000
    precision_at: tuple[int, ...] = (10, 100, 1000)
    bits: tuple[int, ...] = (16, 32, 64)
    default_preset: str = "fashion-mnist-cpu"
    split_seed: int = 0

    @property
    def queries(self) -> str:
        """How the query set is formed, in words."""
        if self.num_queries is None:
            return "the reader's test part"
        return (
            f"the database/test parts when the reader gives them, else {self.num_queries:,} "
            f"random images (seed {self.split_seed}) of the single 'all' part"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form, saved with benchmark results."""
        out = dataclasses.asdict(self)
        out["precision_at"] = list(self.precision_at)
        out["bits"] = list(self.bits)
        out["queries"] = self.queries
        return out


PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol(
            name="fashion-mnist",
            dataset="fashion-mnist",
            description=(
                "Fashion-MNIST (28x28 grayscale, 10 classes), CIFAR-10's protocol transferred: "
                "training set = database = the 60,000 training images, queries = the 10,000 "
                "test images, mAP@1000."
            ),
            topk=1000,
            num_queries=None,
            database="the reader's train part",
            train_is_database=True,
            default_root="/usr/share/datasets/fashion-mnist",
            default_preset="fashion-mnist-cpu",
        ),
        Protocol(
            name="cifar10",
            dataset="cifar10",
            description=(
                "CIFAR-10 (32x32 colour, 10 classes), the protocol of SPQ and HQC: training set "
                "= database = the 50,000 training images, queries = the 10,000 test images, "
                "mAP@1000."
            ),
            topk=1000,
            num_queries=None,
            database="the reader's train part",
            train_is_database=True,
            default_root="data/cifar-10-batches-py",
            default_preset="cifar10-gpu",
        ),
        Protocol(
            name="flickr25k",
            dataset="flickr25k",
            description=(
                "MIRFLICKR-25K (25,000 images, 24 labels, multi-label: relevant = shares a label), "
                "the protocol of SPQ and HQC: 2,000 random queries, the other 23,000 images are "
                "the database and also the unlabelled training set (training set = database), "
                "mAP@5000. A release with database.txt / test.txt is used as given (its "
                "train.txt, a labelled subset for supervised hashing, is ignored)."
            ),
            topk=5000,
            num_queries=2000,
            database="the reader's database part, else the images not drawn as queries",
            train_is_database=True,
            default_root="data/flickr25k",
            default_preset="flickr25k-gpu",
        ),
        Protocol(
            name="nuswide21",
            dataset="nuswide21",
            description=(
                "NUS-WIDE restricted to its 21 most frequent concepts (about 195,000 images, "
                "multi-label), the protocol of SPQ and HQC: 2,100 random queries, the rest "
                "(about 193,000) is the database and also the unlabelled training set "
                "(training set = database), mAP@5000. A release with database.txt / test.txt "
                "is used as given (its train.txt is ignored)."
            ),
            topk=5000,
            num_queries=2100,
            database="the reader's database part, else the images not drawn as queries",
            train_is_database=True,
            default_root="data/nuswide21",
            default_preset="nuswide21-gpu",
        ),
    )
}


def get_protocol(name: str) -> Protocol:
    """The registered protocol ``name``; the error lists the known ones."""
    if name not in PROTOCOLS:
        raise ProtocolError(f"unknown protocol '{name}'; available: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def describe() -> str:
    """Plain-text description of every registered protocol (``quantrieve protocols``)."""
    blocks = []
    for p in PROTOCOLS.values():
        training = "training set = database" if p.train_is_database else "separate training set"
        cuts = "/".join(str(n) for n in p.precision_at)
        blocks.append(
            "\n".join(
                [
                    f"{p.name}  (reader '{p.dataset}', default root {p.default_root})",
                    f"  queries:   {p.queries}",
                    f"  database:  {p.database}; {training}",
                    f"  metric:    mAP@{p.topk}, precision@{cuts}",
                    f"  selection: {p.val_queries:,} validation queries carved from the "
                    "training set; the test queries are evaluated once",
                    f"  bits:      {', '.join(str(b) for b in p.bits)}; preset {p.default_preset}",
                    f"  {p.description}",
                ]
            )
        )
    return "\n\n".join(blocks)


@dataclass
class ProtocolData:
    """The image sets of a protocol applied to one dataset folder.

    Attributes:
        protocol: The protocol.
        train: Unlabelled training images (the same object as ``database`` when
            ``protocol.train_is_database``).
        database: Images encoded into the index.
        queries: Images evaluated once against the database.
        source: Which reader parts were used (``train/test``, ``database/test`` or ``all``).
        split_dir: Folder of the saved random split, or None when the parts are fixed.
        split_sha256: Checksum of that split, or None.
    """

    protocol: Protocol
    train: ImageSet
    database: ImageSet
    queries: ImageSet
    source: str
    split_dir: Path | None = None
    split_sha256: str | None = None

    def summary(self) -> dict[str, Any]:
        """Sizes and provenance, saved with benchmark results."""
        return {
            "train": len(self.train),
            "database": len(self.database),
            "queries": len(self.queries),
            "train_is_database": self.train is self.database,
            "source": self.source,
            "split_dir": None if self.split_dir is None else str(self.split_dir),
            "split_sha256": self.split_sha256,
            "image_shape": list(self.database.image_shape),
        }


def ids_checksum(ids: list[str]) -> str:
    """SHA-256 of the item ids, one per line; ties a saved split to the images it indexes."""
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def query_database_split(num_items: int, num_queries: int, seed: int) -> dict[str, np.ndarray]:
    """Draw ``num_queries`` random queries; the rest is the database. Both sorted.

    Raises:
        ProtocolError: when the queries would leave no database.
    """
    if not 0 < num_queries < num_items:
        raise ProtocolError(
            f"{num_queries} queries out of {num_items} images leaves no database "
            "(or no queries); the protocol needs 0 < num_queries < number of images"
        )
    return random_split(num_items, num_queries, seed, ("query", "database"))


def load_or_make_query_split(
    folder: str | Path, protocol: Protocol, ids: list[str]
) -> tuple[dict[str, np.ndarray], str]:
    """Reuse the query/database split saved in ``folder``, or draw, save and return it.

    Returns:
        The split (``query`` and ``database`` index arrays) and its SHA-256.

    Raises:
        DataError: a saved split whose checksum does not match its indices, or which was made
            for another protocol, another number of images or queries, or other image ids.
    """
    folder = Path(folder)
    npz, meta_path = folder / "splits.npz", folder / "splits.json"
    n, expected_ids = len(ids), ids_checksum(ids)
    assert protocol.num_queries is not None
    if meta_path.exists():  # written last: without it the split was never completed
        split = load_split(folder)  # verifies the checksum
        meta = json.loads(meta_path.read_text())
        problems = []
        if set(split) != {"query", "database"}:
            problems.append(f"holds {sorted(split)} instead of query and database")
        else:
            if meta.get("protocol") != protocol.name:
                problems.append(f"was made for protocol {meta.get('protocol')!r}")
            if len(split["query"]) != protocol.num_queries:
                problems.append(
                    f"has {len(split['query'])} queries, the protocol asks for "
                    f"{protocol.num_queries}"
                )
            everything = np.sort(np.concatenate([split["query"], split["database"]]))
            if not np.array_equal(everything, np.arange(n)):
                problems.append(f"does not partition the {n} images of the dataset")
            elif meta.get("ids_sha256") != expected_ids:
                problems.append("was made for other image ids (the dataset's lists changed)")
        if problems:
            raise DataError(
                f"{npz}: saved split {'; '.join(problems)}; delete {folder} to draw a new one "
                "or point the benchmark at another output folder"
            )
        return split, meta["sha256"]
    split = query_database_split(n, protocol.num_queries, protocol.split_seed)
    save_split(
        split,
        folder,
        {
            "protocol": protocol.name,
            "dataset": protocol.dataset,
            "seed": protocol.split_seed,
            "num_items": n,
            "ids_sha256": expected_ids,
        },
    )
    return split, json.loads(meta_path.read_text())["sha256"]


def materialize(
    protocol: Protocol | str,
    root: str | Path,
    split_dir: str | Path,
    image_size: int | None = None,
    progress: Progress | None = None,
) -> ProtocolData:
    """Read the protocol's dataset from ``root`` and form training set, database and queries.

    Parts are taken in this order: ``database`` + ``test`` (list-file releases), ``train`` +
    ``test`` (IDX, CIFAR), else a single ``all`` part split at random into ``num_queries``
    queries and the database (only for protocols that define ``num_queries``); that split is
    saved in ``split_dir`` and reused by later calls.

    Args:
        protocol: A :class:`Protocol` or a registered name.
        root: Dataset folder.
        split_dir: Folder for the saved random split.
        image_size: Side images are decoded to, for readers of image files.
        progress: ``progress(done, total)`` while image files are decoded.

    Returns:
        The image sets and where they came from.

    Raises:
        ProtocolError: unknown protocol, or the reader's parts do not fit the protocol.
        DataError: unreadable data, unlabelled queries, or a saved split that does not match.
    """
    if isinstance(protocol, str):
        protocol = get_protocol(protocol)
    parts = read_dataset(protocol.dataset, root, image_size, progress)
    split_path: Path | None = None
    checksum: str | None = None
    if "test" in parts and ("database" in parts or "train" in parts):
        part = training_part(parts)  # the one rule: what trains is what the index holds
        source = f"{part}/test"
        database = parts[part]
        queries = parts["test"]
    elif "all" in parts and protocol.num_queries is not None:
        everything = parts["all"]
        split, checksum = load_or_make_query_split(split_dir, protocol, everything.ids)
        split_path = Path(split_dir)
        source = "all"
        queries = everything.subset(split["query"])
        database = everything.subset(split["database"])
    else:
        raise ProtocolError(
            f"protocol '{protocol.name}': dataset '{protocol.dataset}' at {root} has parts "
            f"{', '.join(parts)}; expected train + test, database + test"
            + (", or a single 'all' part" if protocol.num_queries is not None else "")
        )
    for what, images in (("queries", queries), ("database", database)):
        if images.labels is None:
            raise DataError(f"{root}: the {what} of protocol '{protocol.name}' have no labels")
    if protocol.train_is_database:
        train = database
    elif "train" in parts:
        train = parts["train"]
    else:
        raise ProtocolError(f"protocol '{protocol.name}' needs a 'train' part at {root}")
    return ProtocolData(protocol, train, database, queries, source, split_path, checksum)
