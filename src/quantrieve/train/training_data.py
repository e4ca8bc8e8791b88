"""What a run trains and validates on: the images left after the held-out queries and
``data.train_limit``, the validation split, and the steps an epoch makes of them."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from quantrieve.config import RunConfig
from quantrieve.data import ImageSet
from quantrieve.data.splits import hold_out, load_or_make_split, validation_split
from quantrieve.errors import QuantrieveWarning
from quantrieve.train.run_dir import RunDir, TrainingError

# Below this many steps per epoch (batches the data allows), codes are warned to collapse easily.
MIN_STEPS_PER_EPOCH = 10
# Above this share of the training images as validation queries, the validation database is
# warned to be too small for model selection.
MAX_VAL_QUERY_SHARE = 0.25


@dataclass(frozen=True)
class TrainingData:
    """The training side of a run, carved once before the model is built.

    Attributes:
        train_set: The images that train (and hold the validation queries and database).
        split: ``{"val_query": ..., "val_database": ...}`` indices into ``train_set``, or None
            (unlabelled images, ``data.val_queries = 0``, or a rank other than 0).
        steps_per_epoch: Global batches of ``train.batch_size`` per epoch.
    """

    train_set: ImageSet
    split: dict[str, np.ndarray] | None
    steps_per_epoch: int


def carve_training_data(config: RunConfig, images: ImageSet, run: RunDir) -> TrainingData:
    """Hold out the test queries (``data.holdout_queries``, saved in the run's folder), cut to
    ``data.train_limit``, warn about sizes that train or validate badly, and draw (or reload)
    the validation split on rank 0.

    Raises:
        TrainingError: The images do not make one batch of ``train.batch_size``.
    """
    data = config.data
    if data.holdout_queries:
        # Held-out test queries never train; saved with the run for encode and evaluate.
        _, images = hold_out(images, data.holdout_queries, data.split_seed, run.out)
    if data.train_limit:
        images = images.subset(np.arange(min(data.train_limit, len(images))))
    _warn_about_data_size(config, images)
    split = _validation_split(config, images, run) if run.main else None
    return TrainingData(images, split, _steps_per_epoch(config, len(images)))


def _steps_per_epoch(config: RunConfig, num_images: int) -> int:
    t = config.train
    steps = num_images // t.batch_size
    if t.max_steps_per_epoch:
        steps = min(steps, t.max_steps_per_epoch)
    if steps < 1:
        raise TrainingError(
            f"{num_images} training images is less than one batch of "
            f"train.batch_size = {t.batch_size}"
        )
    return steps


def _validation_split(
    config: RunConfig, images: ImageSet, run: RunDir
) -> dict[str, np.ndarray] | None:
    data = config.data
    if data.val_queries == 0 or images.labels is None:
        return None
    if run.out is None:
        return validation_split(len(images), data.val_queries, data.split_seed)
    return load_or_make_split(run.out, len(images), data.val_queries, data.split_seed)


def _warn_about_data_size(config: RunConfig, images: ImageSet) -> None:
    """Warn (QuantrieveWarning) when the data allows few steps per epoch, or when the
    validation queries take a large share of the training images; say what to change."""
    data, t = config.data, config.train
    n = len(images)
    steps = n // t.batch_size
    # stacklevel: here <- carve_training_data <- Trainer.__init__ <- the caller
    if 1 <= steps < MIN_STEPS_PER_EPOCH:
        warnings.warn(
            f"{n} training images make only {steps} step{'s' if steps > 1 else ''} per "
            f"epoch at train.batch_size={t.batch_size} ({steps * t.epochs} in all): with so "
            "few steps the codes may collapse (every item one code); lower train.batch_size "
            f"(e.g. {max(2, n // MIN_STEPS_PER_EPOCH)}) or raise train.epochs",
            QuantrieveWarning,
            stacklevel=4,
        )
    if images.labels is not None and data.val_queries > MAX_VAL_QUERY_SHARE * n:
        warnings.warn(
            f"data.val_queries={data.val_queries} takes {data.val_queries / n:.0%} of the {n} "
            f"training images, leaving a validation database of {max(n - data.val_queries, 0)}"
            ": model selection on it is noisy and mAP@K is capped by its size; lower "
            f"data.val_queries (e.g. {max(1, n // 10)})",
            QuantrieveWarning,
            stacklevel=4,
        )
