"""Typed, validated run configuration.

A run is described by one :class:`RunConfig` made of sections (data, augment, model, loss,
train, eval). Configs come from a named preset (a TOML file shipped in
``quantrieve/presets``) or a user TOML/JSON file, then overrides: typed settings by key
(``{"train.epochs": 3}``, :func:`apply_overrides`), the way code sets values, and the user's
``section.key=value`` strings (``--set``), the one input parsed from text
(:func:`settings_from_text`). Every section validates itself and errors name the offending key.
The resolved config is saved as JSON next to every run.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from quantrieve.errors import QuantrieveError
from quantrieve.pq import DISTANCES, bits_per_book, code_bits, is_codeword_count
from quantrieve.runtime.atomic import atomic_write_json


class ConfigError(QuantrieveError, ValueError):
    """A configuration value or key is invalid; the message names the key."""


def _check(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config key '{key}': {message}")


# Layouts of an image-folder dataset (see quantrieve.data.folder).
LAYOUTS = ("auto", "classes", "flat")


@dataclass
class DataConfig:
    """Where the images come from and how the training side is split.

    Attributes:
        dataset: Reader name, see ``quantrieve.data.DATASETS``.
        root: Folder holding the dataset files.
        val_queries: Images carved out of the training side as validation queries (model
            selection). The rest of the training side is the validation database.
        split_seed: Seed of the validation split (splits are saved with the run).
        train_limit: Use only the first N training images (0 = all); for quick runs and tests.
        image_size: Square side images are decoded to, for readers of image files (list files,
            folders); 0 = the reader's default (64, SPQ's choice). IDX and CIFAR keep theirs.
        holdout_queries: For a collection with no test part (an image folder): images held out
            as test queries, saved with the run (``holdout.npz``) and never trained on; the
            rest is the training set and the database. 0 = none.
        layout: Layout of an ``image-folder`` dataset: ``auto`` (class sub-folders, or flat when
            images sit directly in the root; a mix of both is refused), ``classes`` (loose images
            in the root are ignored with a warning) or ``flat`` (every image, unlabelled).
        channels: Channels an ``image-folder`` is decoded to: 1 (grayscale), 3 (RGB) or 0, the
            collection's own (1 when every file is grayscale: no three-fold copy of the work).
        skip_bad: Leave unreadable image files out (they are listed in the run's run.json)
            instead of stopping with an error that names them all.
        decode_workers: Threads that decode image files into the cache (folders and list
            files); 0 = every core this process may use. Results do not depend on it.
    """

    dataset: str = "fashion-mnist"
    root: str = "/usr/share/datasets/fashion-mnist"
    val_queries: int = 1000
    split_seed: int = 0
    train_limit: int = 0
    image_size: int = 0
    holdout_queries: int = 0
    layout: str = "auto"
    skip_bad: bool = False
    channels: int = 0
    decode_workers: int = 0

    def validate(self) -> None:
        _check(self.holdout_queries >= 0, "data.holdout_queries", "must be >= 0 (0 = none)")
        _check(self.channels in (0, 1, 3), "data.channels", "0 (the data's own), 1 or 3")
        _check(self.image_size >= 0, "data.image_size", "must be >= 0 (0 = reader default)")
        _check(self.layout in LAYOUTS, "data.layout", f"one of {LAYOUTS}, got {self.layout!r}")
        _check(self.val_queries >= 0, "data.val_queries", "must be >= 0")
        _check(self.train_limit >= 0, "data.train_limit", "must be >= 0")
        _check(self.decode_workers >= 0, "data.decode_workers", "must be >= 0 (0 = every core)")

    def reader_options(self) -> dict[str, Any]:
        """The reader keywords of :func:`quantrieve.data.read_dataset` this section sets."""
        return {
            "layout": self.layout,
            "skip_bad": self.skip_bad,
            "channels": self.channels,
            "workers": self.decode_workers or None,
        }


@dataclass
class AugmentConfig:
    """Two-view augmentation, applied in batch on the tensor's device (docs/method.md, views)."""

    crop_scale_min: float = 0.08
    crop_scale_max: float = 1.0
    hflip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma_min: float = 0.1
    blur_sigma_max: float = 2.0
    # Off by default (docs/method.md's views have neither); shape-level augmentations for small
    # grayscale images (e.g. Fashion-MNIST), where colour jitter has little to change.
    rotate_p: float = 0.0
    rotate_degrees: float = 15.0
    erase_p: float = 0.0
    erase_scale_max: float = 0.25
    # Affine: shift by up to ``affine_translate`` of the side and shear by up to
    # ``affine_shear`` degrees (scale and rotation have their own keys: crops, rotate_*).
    affine_p: float = 0.0
    affine_translate: float = 0.1
    affine_shear: float = 10.0
    # Elastic distortion (Simard et al. 2003): uniform noise displacements smoothed by a
    # Gaussian of ``elastic_sigma`` pixels, scaled by ``elastic_alpha`` (in kornia's [-1, 1]
    # image coordinates, before smoothing).
    elastic_p: float = 0.0
    elastic_sigma: float = 4.0
    elastic_alpha: float = 2.0
    # Sharpness: blend with a smoothed image by a factor drawn from [0, sharpness].
    sharpness_p: float = 0.0
    sharpness: float = 0.5
    # Solarize: invert the pixels above a threshold drawn around 0.5 (BYOL's views).
    solarize_p: float = 0.0
    # Histogram equalization (each image's intensities spread to a flat histogram), the
    # negative (1 - x), and posterization (``posterize_bits`` bits per channel): further
    # operations on intensity alone, for images where it is a shortcut between two views.
    equalize_p: float = 0.0
    invert_p: float = 0.0
    posterize_p: float = 0.0
    posterize_bits: int = 3
    # Multi-crop (SwAV, Caron et al. 2020): ``small_crops`` extra views per image, each a crop
    # of [small_crop_scale_min, small_crop_scale_max] of the image's area resized to
    # ``small_crop_ratio`` of its side, with the other operations above (those in pixels, blur
    # and elastic, are then relatively stronger). The losses pair each of the two views with
    # every other view (losses/objective.py). 0: the two views only.
    small_crops: int = 0
    small_crop_ratio: float = 0.5
    small_crop_scale_min: float = 0.1
    small_crop_scale_max: float = 0.35

    def validate(self) -> None:
        _check(
            0 < self.crop_scale_min <= self.crop_scale_max <= 1,
            "augment.crop_scale_min",
            "need 0 < crop_scale_min <= crop_scale_max <= 1",
        )
        probabilities = ("hflip_p", "jitter_p", "grayscale_p", "blur_p", "rotate_p", "erase_p")
        probabilities += ("affine_p", "elastic_p", "sharpness_p", "solarize_p")
        probabilities += ("equalize_p", "invert_p", "posterize_p")
        for name in probabilities:
            value = getattr(self, name)
            _check(0 <= value <= 1, f"augment.{name}", f"a probability in [0, 1], got {value}")
        for name in ("brightness", "contrast", "saturation"):
            _check(getattr(self, name) >= 0, f"augment.{name}", "must be >= 0")
        _check(0 <= self.hue <= 0.5, "augment.hue", "must be in [0, 0.5]")
        _check(
            0 < self.blur_sigma_min <= self.blur_sigma_max,
            "augment.blur_sigma_min",
            "need 0 < blur_sigma_min <= blur_sigma_max",
        )
        _check(
            0 <= self.rotate_degrees <= 180,
            "augment.rotate_degrees",
            f"must be in [0, 180], got {self.rotate_degrees}",
        )
        _check(
            0.02 <= self.erase_scale_max <= 1,
            "augment.erase_scale_max",
            f"must be in [0.02, 1], got {self.erase_scale_max}",
        )
        _check(
            0 <= self.affine_translate <= 1,
            "augment.affine_translate",
            f"a fraction of the side in [0, 1], got {self.affine_translate}",
        )
        _check(
            0 <= self.affine_shear < 90,
            "augment.affine_shear",
            f"degrees in [0, 90), got {self.affine_shear}",
        )
        _check(self.elastic_sigma > 0, "augment.elastic_sigma", "must be > 0 (pixels)")
        _check(self.elastic_alpha >= 0, "augment.elastic_alpha", "must be >= 0")
        _check(self.sharpness >= 0, "augment.sharpness", "must be >= 0")
        _check(
            1 <= self.posterize_bits <= 7,
            "augment.posterize_bits",
            f"bits kept per channel in [1, 7], got {self.posterize_bits}",
        )
        _check(
            self.small_crops >= 0,
            "augment.small_crops",
            f"a count >= 0 of extra small views, got {self.small_crops}",
        )
        _check(
            0 < self.small_crop_ratio <= 1,
            "augment.small_crop_ratio",
            f"a fraction of the image side in (0, 1], got {self.small_crop_ratio}",
        )
        _check(
            0 < self.small_crop_scale_min <= 1,
            "augment.small_crop_scale_min",
            f"a share of the image area in (0, 1], got {self.small_crop_scale_min}",
        )
        _check(
            self.small_crop_scale_min <= self.small_crop_scale_max <= 1,
            "augment.small_crop_scale_max",
            f"in [small_crop_scale_min, 1], got {self.small_crop_scale_max}",
        )


BACKBONES = ("small_cnn", "resnet18_cifar", "resnet18", "resnet50")
INITS = ("pytorch", "reference")
CODEBOOK_INITS = ("random", "kmeans")


@dataclass
class ModelConfig:
    """Encoder and product quantizer (docs/method.md, Model).

    Code length in bits is ``num_books * log2(num_codewords)``; the key ``model.bits`` (and
    ``--bits``) sets ``num_books`` from it, the one place bits become books. ``pretrained``: a local
    torchvision-style ResNet state dict the backbone starts from (resnet18 / resnet50; see
    :mod:`quantrieve.models.pretrained`); empty = trained from scratch. ``init``: ``pytorch``
    (PyTorch's defaults; Xavier over the (M, K, d) codebooks) or ``reference`` (as the HQC
    authors' code: Xavier over codebooks shaped (K, M*d), codewords about 1.6x larger at
    M = 8, K = 16, d = 16, and the head's first layer drawn from N(0, 0.01^2)).
    ``codebook_init``: ``random`` (as ``init`` draws them) or ``kmeans`` (a probe against codes
    that start collapsed: before the first step, each book's codewords are set to k-means
    centroids of the untrained network's embeddings of up to 4,096 training images).
    """

    backbone: str = "small_cnn"
    width: int = 32
    stages: int = 3
    proj_hidden: int = 512
    num_books: int = 8
    num_codewords: int = 16
    codeword_dim: int = 16
    tau_sq: float = 0.2
    channels_last: bool = True
    pretrained: str = ""
    init: str = "pytorch"
    codebook_init: str = "random"

    @property
    def bits(self) -> int:
        return code_bits(self.num_books, self.num_codewords)

    @property
    def embed_dim(self) -> int:
        return self.num_books * self.codeword_dim

    def validate(self) -> None:
        _check(self.backbone in BACKBONES, "model.backbone", f"one of {BACKBONES}")
        _check(self.width >= 4, "model.width", "must be >= 4")
        _check(1 <= self.stages <= 5, "model.stages", "small_cnn stages must be in [1, 5]")
        _check(self.proj_hidden >= 1, "model.proj_hidden", "must be >= 1")
        _check(self.num_books >= 1, "model.num_books", "must be >= 1")
        _check(
            is_codeword_count(self.num_codewords),
            "model.num_codewords",
            "a power of two in [2, 256] (codes are stored as uint8)",
        )
        _check(self.codeword_dim >= 1, "model.codeword_dim", "must be >= 1")
        _check(self.tau_sq > 0, "model.tau_sq", "must be > 0")
        _check(self.init in INITS, "model.init", f"one of {INITS}")
        _check(
            self.codebook_init in CODEBOOK_INITS,
            "model.codebook_init",
            f"one of {CODEBOOK_INITS}",
        )
        _check(
            not self.pretrained or self.backbone in ("resnet18", "resnet50"),
            "model.pretrained",
            "a pretrained start needs backbone resnet18 or resnet50",
        )


FUSIONS = ("sum", "concat", "embedding", "quantized")

#: The terms of the objective (docs/method.md, Objective), in the order they are logged: the one
#: list of their names. Each has a weight ``w_<term>`` in :class:`LossConfig`; the objective
#: (:data:`quantrieve.losses.TERMS`), the presets and the training log take their names from it.
LOSS_TERMS = ("icf", "icz", "cc", "pn", "cd", "xqc")


@dataclass
class LossConfig:
    """Weights and temperatures of the objective (docs/method.md, Objective).

    ``preset`` names the weight set the section started from (``hqc`` or ``spq``); explicit
    keys in the same section override it.
    """

    preset: str = "hqc"
    w_icf: float = 1.0
    w_icz: float = 1.0
    w_cc: float = 0.4
    w_pn: float = 0.1
    w_cd: float = 0.2
    w_xqc: float = 0.0
    tau_ic: float = 0.5
    tau_cc: float = 0.2
    tau_pn: float = 0.5
    tau_xqc: float = 0.5
    top_n: int = 20
    fusion: str = "sum"

    def weights(self) -> dict[str, float]:
        """The weight of every objective term, by term name (:data:`LOSS_TERMS`): what makes a
        run HQC, SPQ or an ablation."""
        return {term: getattr(self, f"w_{term}") for term in LOSS_TERMS}

    def validate(self) -> None:
        for term, weight in self.weights().items():
            _check(weight >= 0, f"loss.w_{term}", "weights must be >= 0")
        for name in ("tau_ic", "tau_cc", "tau_pn", "tau_xqc"):
            _check(getattr(self, name) > 0, f"loss.{name}", "temperatures must be > 0")
        _check(self.top_n >= 1, "loss.top_n", "must be >= 1")
        _check(self.fusion in FUSIONS, "loss.fusion", f"one of {FUSIONS}")
        _check(
            any(weight > 0 for weight in self.weights().values()),
            "loss",
            "at least one weight must be > 0",
        )


def _loss_weights(**weights: float) -> dict[str, float]:
    """A preset's weight of every term of :data:`LOSS_TERMS` (each must be given), as the
    ``w_<term>`` keys of the ``loss`` section."""
    return {f"w_{term}": weights[term] for term in LOSS_TERMS}


LOSS_PRESETS: dict[str, dict[str, float]] = {
    # HQC, BMVC 2023: all five terms, instance-contrastive weights 1 (docs/method.md).
    "hqc": _loss_weights(icf=1.0, icz=1.0, cc=0.4, pn=0.1, cd=0.2, xqc=0.0),
    # The reference implementation's defaults: instance-contrastive terms off.
    "hqc-ref": _loss_weights(icf=0.0, icz=0.0, cc=0.4, pn=0.1, cd=0.2, xqc=0.0),
    # SPQ, ICCV 2021: cross-quantized contrastive learning only.
    "spq": _loss_weights(icf=0.0, icz=0.0, cc=0.0, pn=0.0, cd=0.0, xqc=1.0),
}


#: Typed config values by ``section.key`` (``{"train.epochs": 3, "loss.w_cc": 0.0}``): values
#: travel as values; only the user's ``--set`` strings are text (:func:`settings_from_text`).
Settings = Mapping[str, Any]


METHOD_KINDS = ("deep", "shallow")


@dataclass(frozen=True)
class Method:
    """A method quantrieve evaluates: trained (``deep``, a name for a set of loss settings) or a
    shallow baseline on raw pixels (``shallow``, fitted by :mod:`quantrieve.baselines`).

    :data:`METHODS` is the one registry of methods: ``--method`` of ``train`` and
    :meth:`Retriever.from_preset` take its deep ones (:data:`TRAINED_METHODS`), ``quantrieve
    baseline`` its shallow ones (:data:`quantrieve.baselines.BASELINES`), and the benchmark
    grid, its cells and its report all of them, in this order.

    Attributes:
        name: What users type.
        description: One line for reports and help.
        settings: The typed settings that make a run this method, applied after the preset's
            (deep methods).
        kind: ``deep`` (a trained encoder) or ``shallow`` (a baseline on raw pixels).
        distance: How a shallow method's codes rank, as a report names it (None: the ADC
            distance asked for).
        coded: False for the uncompressed reference (no books, no codewords, no code length).
    """

    name: str
    description: str
    settings: Settings = field(default_factory=dict, hash=False)
    kind: str = "deep"
    distance: str | None = None
    coded: bool = True

    def __post_init__(self) -> None:
        if self.kind not in METHOD_KINDS:
            raise ConfigError(
                f"method {self.name!r}: kind one of {METHOD_KINDS}, got {self.kind!r}"
            )


def _baseline(
    name: str, description: str, distance: str | None = None, coded: bool = True
) -> Method:
    return Method(name, description, kind="shallow", distance=distance, coded=coded)


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("hqc", "HQC, all five terms (w_icf = w_icz = 1)", {"loss.preset": "hqc"}),
        Method("spq", "SPQ, cross-quantized contrastive loss", {"loss.preset": "spq"}),
        Method(
            "hqc-ref",
            "HQC with the reference implementation's defaults (w_icf = w_icz = 0)",
            {"loss.preset": "hqc-ref"},
        ),
        Method("hqc-no-cc", "HQC without L_cc", {"loss.preset": "hqc", "loss.w_cc": 0.0}),
        Method("hqc-no-pn", "HQC without L_pn", {"loss.preset": "hqc", "loss.w_pn": 0.0}),
        Method("hqc-no-cd", "HQC without L_cd", {"loss.preset": "hqc", "loss.w_cd": 0.0}),
        # Pixel baselines (quantrieve.baselines.pixels fits them).
        _baseline("pq", "faiss PQ on raw pixels (same M, K; squared-L2 ADC)"),
        _baseline("opq", "faiss OPQ + PQ on raw pixels (same M, K; squared-L2 ADC)"),
        _baseline("itq", "PCA + ITQ binary codes on raw pixels (Hamming)", "hamming"),
        _baseline(
            "exact", "exhaustive L2 on raw pixels (uncompressed reference)", "l2 (exact)", False
        ),
    )
}

#: The methods ``train`` can train (``--method``), in registry order.
TRAINED_METHODS = tuple(name for name, m in METHODS.items() if m.kind == "deep")


def method_settings(name: str) -> dict[str, Any]:
    """The typed settings of a registered trained method; the error lists the trained ones."""
    if name not in TRAINED_METHODS:
        raise ConfigError(f"unknown method {name!r}; available: {', '.join(TRAINED_METHODS)}")
    return dict(METHODS[name].settings)


@dataclass
class TrainConfig:
    """Optimisation (docs/method.md, Training recipe): Adam, linear warm-up, cosine decay.

    ``batch_size`` is the global batch: under ``torchrun`` each of N processes takes
    ``batch_size / N`` images per step. ``sync_batchnorm`` makes batch norm use the statistics
    of the whole global batch (one process's numbers); off, each process normalises its own
    share, as most self-supervised code does. ``separate_views`` passes the two views of a
    batch through the network one after the other, so batch norm normalises each view's batch
    on its own (as the HQC authors' code); off, both views go through one pass of 2B images.
    ``unlabelled_select``: which epoch an unlabelled run keeps: ``last``, or ``self``, the best
    label-free validation (augmented copies of training images finding their originals;
    docs/method.md, "Choosing an epoch without labels"). ``labelled_select``: which epoch a
    labelled run keeps: ``map``, the best validation mAP@K, or ``map+p10``, the best sum of
    validation mAP@K and P@10 (docs/method.md, "Which metric picks the best epoch").
    ``tensorboard``: also write the log as TensorBoard scalars in the run's ``tensorboard/``
    folder (needs ``pip install 'quantrieve[tensorboard]'``; ``log.jsonl`` is written anyway).
    ``ema_decay``: above 0, an exponential moving average of the weights (parameters and batch
    norm statistics), updated after every step with this decay, is what validation scores and
    the run keeps (docs/method.md, "Averaged weights"); 0 keeps the trained weights themselves.
    ``codeword_restart``: above 0, a codeword whose moving share of the batch's codes falls
    below this fraction of the even share 1/K is moved onto a random sub-vector of the batch
    (random restarts, Jukebox 2020; docs/method.md, "Restarting unused codewords"); 0 = off.
    """

    epochs: int = 20
    batch_size: int = 256
    lr: float = 5e-4
    weight_decay: float = 1e-5
    warmup_epochs: int = 2
    warmup_start_lr: float = 1e-5
    final_lr_ratio: float = 0.1
    amp: bool = True
    device: str = "auto"
    seed: int = 0
    eval_every: int = 1
    max_steps_per_epoch: int = 0
    sync_batchnorm: bool = False
    separate_views: bool = False
    unlabelled_select: str = "last"
    labelled_select: str = "map"
    tensorboard: bool = False
    ema_decay: float = 0.0
    codeword_restart: float = 0.0

    def validate(self) -> None:
        _check(self.epochs >= 1, "train.epochs", "must be >= 1")
        _check(0 <= self.ema_decay < 1, "train.ema_decay", "must be in [0, 1) (0 = off)")
        _check(
            0 <= self.codeword_restart < 1,
            "train.codeword_restart",
            "must be in [0, 1) (0 = off; a fraction of the even share 1/K)",
        )
        _check(
            self.unlabelled_select in UNLABELLED_SELECT,
            "train.unlabelled_select",
            f"one of {UNLABELLED_SELECT}, got {self.unlabelled_select!r}",
        )
        _check(
            self.labelled_select in LABELLED_SELECT,
            "train.labelled_select",
            f"one of {LABELLED_SELECT}, got {self.labelled_select!r}",
        )
        _check(self.batch_size >= 2, "train.batch_size", "must be >= 2 (in-batch negatives)")
        _check(self.lr > 0, "train.lr", "must be > 0")
        _check(self.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        _check(
            0 <= self.warmup_epochs < self.epochs or self.warmup_epochs == 0,
            "train.warmup_epochs",
            "must be in [0, epochs)",
        )
        _check(self.warmup_start_lr > 0, "train.warmup_start_lr", "must be > 0")
        _check(0 < self.final_lr_ratio <= 1, "train.final_lr_ratio", "must be in (0, 1]")
        _check(self.eval_every >= 0, "train.eval_every", "must be >= 0 (0 = never)")
        _check(self.max_steps_per_epoch >= 0, "train.max_steps_per_epoch", "must be >= 0")
        _check(
            self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"),
            "train.device",
            "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'",
        )


#: How an unlabelled run chooses its epoch (``train.unlabelled_select``).
UNLABELLED_SELECT = ("last", "self")
#: How a labelled run chooses its epoch (``train.labelled_select``).
LABELLED_SELECT = ("map", "map+p10")


@dataclass
class EvalConfig:
    """Retrieval evaluation (docs/method.md, protocol). ``l2`` is the papers' sum of non-squared
    sub-space distances, ``sqeuclidean`` the standard ADC of faiss. ``pr_queries``: evenly
    spaced queries the PR curve is estimated on (0 = all; each ranks the whole database)."""

    topk: int = 1000
    distance: str = "l2"
    precision_at: list[int] = field(default_factory=lambda: [10, 100, 1000])
    pr_queries: int = 2000

    def validate(self) -> None:
        _check(self.topk >= 1, "eval.topk", "must be >= 1")
        _check(self.pr_queries >= 0, "eval.pr_queries", "must be >= 0 (0 = every query)")
        _check(self.distance in DISTANCES, "eval.distance", f"one of {DISTANCES}")
        _check(all(n >= 1 for n in self.precision_at), "eval.precision_at", "values >= 1")


@dataclass
class RunConfig:
    """Everything a training run needs; saved as ``config.json`` in the run directory."""

    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> RunConfig:
        for section in fields(self):
            getattr(self, section.name).validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        atomic_write_json(self.to_dict(), path)


SECTIONS = {f.name: f.type for f in fields(RunConfig)}


def _section_classes() -> dict[str, type]:
    hints = typing.get_type_hints(RunConfig)
    return {name: hints[name] for name in SECTIONS}


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Turn a TOML/JSON/command-line value into the field's type, or raise ConfigError."""
    origin = typing.get_origin(annotation)
    if origin in (list, typing.List):  # noqa: UP006
        (item_type,) = typing.get_args(annotation)
        if isinstance(value, str):
            value = [v for v in value.strip("[]").split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        return [_coerce(v, item_type, key) for v in value]
    if isinstance(annotation, types.UnionType):
        raise ConfigError(f"config key '{key}': unsupported type")
    try:
        if annotation is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if annotation is int:
            if isinstance(value, bool):
                raise ValueError(value)
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if annotation is float:
            return float(value)
        if annotation is str:
            return str(value).strip() if isinstance(value, str) else str(value)
    except (TypeError, ValueError):
        name = getattr(annotation, "__name__", str(annotation))
        raise ConfigError(f"config key '{key}': expected {name}, got {value!r}") from None
    return value


def _apply_section(section: Any, values: dict[str, Any], prefix: str) -> None:
    hints = typing.get_type_hints(type(section))
    names = {f.name for f in fields(section)}
    if prefix == "loss" and "preset" in values:
        apply_loss_preset(section, str(values["preset"]))
    bits = values.pop("bits", None) if prefix == "model" else None
    for key, value in values.items():
        full = f"{prefix}.{key}"
        if key not in names:
            raise ConfigError(
                f"unknown config key '{full}'; known keys: {', '.join(sorted(names))}"
            )
        setattr(section, key, _coerce(value, hints[key], full))
    if bits is not None:
        # The code length is set as bits and kept as books: bits = M * log2(K), applied after
        # the section's other keys so that K is the one this config ends with.
        section.num_books = num_books_for_bits(
            _coerce(bits, int, "model.bits"), section.num_codewords, "bits (model.bits)"
        )


def apply_loss_preset(loss: LossConfig, name: str) -> None:
    """Set the loss weights of a named preset (``hqc``, ``hqc-ref``, ``spq``)."""
    if name not in LOSS_PRESETS:
        raise ConfigError(f"config key 'loss.preset': one of {sorted(LOSS_PRESETS)}, got {name!r}")
    loss.preset = name
    for key, value in LOSS_PRESETS[name].items():
        setattr(loss, key, value)


def config_from_dict(values: dict[str, Any], base: RunConfig | None = None) -> RunConfig:
    """Build a config from nested ``{section: {key: value}}``, on top of ``base``."""
    config = dataclasses.replace(base) if base is not None else RunConfig()
    config = RunConfig(**{name: dataclasses.replace(getattr(config, name)) for name in SECTIONS})
    for section_name, section_values in values.items():
        if section_name not in SECTIONS:
            raise ConfigError(
                f"unknown config section '{section_name}'; known: {', '.join(SECTIONS)}"
            )
        if not isinstance(section_values, dict):
            raise ConfigError(f"config section '{section_name}' must be a table of keys")
        _apply_section(getattr(config, section_name), section_values, section_name)
    return config


def config_differences(saved: dict[str, Any], current: RunConfig) -> list[str]:
    """The ``section.key`` names whose values differ between a saved config and ``current``.

    ``saved`` is a nested dict as written by :meth:`RunConfig.save`; keys added to the config
    since it was written take their defaults before comparing.
    """
    before, now = config_from_dict(saved).to_dict(), current.to_dict()
    return sorted(
        f"{section}.{key}"
        for section in now
        for key in now[section]
        if before.get(section, {}).get(key) != now[section][key]
    )


def _split_key(key: str, text: str | None = None) -> tuple[str, str]:
    """``section.key`` as ``(section, key)``; ``text``: the key as the user wrote it."""
    parts = key.split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(
            f"override key '{key if text is None else text}' is not of the form section.key"
        )
    return parts[0], parts[1]


def settings_from_text(overrides: Sequence[str]) -> dict[str, str]:
    """The user's ``section.key=value`` strings (``--set``) as settings; the values stay text
    and are parsed by field type when applied (:func:`apply_overrides`). A later string for
    the same key wins."""
    settings: dict[str, str] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form section.key=value")
        key, value = item.split("=", 1)
        _split_key(key.strip(), key)
        settings[key.strip()] = value.strip()
    return settings


def parse_overrides(overrides: list[str]) -> dict[str, dict[str, Any]]:
    """Parse ``section.key=value`` strings into a nested dict (values stay strings)."""
    return _nested(settings_from_text(overrides))


def _nested(settings: Settings) -> dict[str, dict[str, Any]]:
    nested: dict[str, dict[str, Any]] = {}
    for key, value in settings.items():
        section, name = _split_key(key)
        nested.setdefault(section, {})[name] = value
    return nested


_TYPED = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}


def _check_typed(value: Any, annotation: Any, key: str) -> None:
    """A value given as a value (not text) must have its field's type already."""
    if isinstance(value, str):
        return  # text, as the user typed it: parsed by the field's type
    if typing.get_origin(annotation) in (list, typing.List):  # noqa: UP006
        ok = isinstance(value, list | tuple)
    else:
        kinds = _TYPED.get(annotation, (object,))
        ok = isinstance(value, kinds) and not (annotation is not bool and isinstance(value, bool))
    if not ok:
        name = getattr(annotation, "__name__", str(annotation))
        raise ConfigError(f"config key '{key}': expected {name}, got {value!r}")


def apply_overrides(config: RunConfig, settings: Settings) -> RunConfig:
    """A validated copy of ``config`` with typed settings by ``section.key`` applied.

    ``{"train.epochs": 3, "loss.preset": "spq", "model.bits": 32}``: a value of another type
    than its field's is refused (a string is text and parsed, as ``--set`` values are). Within
    a section, ``loss.preset`` applies first (its weights, then explicit ones) and
    ``model.bits`` last (books from the final K), whatever the order given.
    """
    classes = _section_classes()
    for key, value in settings.items():
        section, name = _split_key(key)
        hints = typing.get_type_hints(classes[section]) if section in classes else {}
        if name in hints:
            _check_typed(value, hints[name], key)
        elif key == "model.bits":
            _check_typed(value, int, key)
    return config_from_dict(_nested(settings), config).validate()


def preset_names() -> list[str]:
    """Names of the presets shipped with the package."""
    folder = resources.files("quantrieve") / "presets"
    return sorted(
        p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml")
    )


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML or JSON config file, naming the file (and line for TOML) on error."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix == ".json":
            return json.loads(text)
        return tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None


def load_config(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: Sequence[str] | Settings | None = None,
) -> RunConfig:
    """Resolve a config: defaults <- preset <- config file <- overrides.

    ``overrides``: typed settings by key (:data:`Settings`), or the user's ``section.key=value``
    strings (``--set``, parsed from text)."""
    config = RunConfig()
    if preset is not None:
        names = preset_names()
        if preset not in names:
            raise ConfigError(f"unknown preset '{preset}'; available: {', '.join(names)}")
        text = (resources.files("quantrieve") / "presets" / f"{preset}.toml").read_text()
        config = config_from_dict(tomllib.loads(text), config)
    if config_file is not None:
        config = config_from_dict(read_config_file(config_file), config)
    if overrides:
        settings = overrides if isinstance(overrides, Mapping) else settings_from_text(overrides)
        return apply_overrides(config, settings)
    return config.validate()


def num_books_for_bits(bits: int, num_codewords: int, name: str = "--bits") -> int:
    """Number of books M giving ``bits = M * log2(K)``; raises if it does not divide.

    Args:
        name: how the user gave the bits (``--bits``, ``config key 'model.bits'``), for errors.
    """
    if not is_codeword_count(num_codewords):
        raise ConfigError(
            f"config key 'model.num_codewords': a power of two in [2, 256], got {num_codewords}"
        )
    per_book = bits_per_book(num_codewords)
    if bits < per_book:
        raise ConfigError(
            f"{name} must be a positive multiple of log2(K) = {per_book:g} (K = {num_codewords}),"
            f" got {bits}"
        )
    books = bits / per_book
    if books < 1 or not books.is_integer():
        raise ConfigError(
            f"{name} {bits} is not a multiple of log2(K) = {per_book:g} (K = {num_codewords})"
        )
    return int(books)
