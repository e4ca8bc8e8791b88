"""Unsupervised training of the quantization encoder (docs/method.md, Training recipe).

Per step: two views of each image are drawn on the device, both go through the network in one
forward pass, and the objective's terms are summed. Every ``eval_every`` epochs the validation
mAP (validation queries against the rest of the training side, never the test queries) decides
which weights are kept as the best model.

With a run directory (:class:`~quantrieve.train.run_dir.RunDir`: config.json, run.json,
splits, log.jsonl, last.pt, model.pt), everything is written there, a checkpoint after every
epoch, atomically, so ``resume`` continues exactly; without one (``run_dir=None``), the run
lives in memory and nothing is written.

The constructor sets a run up in named steps: join the process group, check the run's folder,
carve the training data (:mod:`quantrieve.train.training_data`), build the model and its
optimiser, then restore a checkpoint or record the new run.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from quantrieve.augment import TwoViewAugment, small_view_augment, small_view_side
from quantrieve.config import RunConfig, config_differences
from quantrieve.data import ImageSet
from quantrieve.errors import QuantrieveWarning
from quantrieve.evaluate import evaluate_codes
from quantrieve.evaluate.code_usage import CodeUsage, code_usage
from quantrieve.evaluate.self_retrieval import SelfRetrieval, self_retrieval
from quantrieve.losses import Objective
from quantrieve.models.pretrained import load_pretrained_backbone
from quantrieve.models.retrieval import (
    RetrievalModel,
    channel_stats,
    embed_images,
    to_float_images,
)
from quantrieve.models.sync_batchnorm import convert_sync_batchnorm
from quantrieve.runtime.device import needs_grad_scaler, resolve_device
from quantrieve.runtime.distributed import Distributed, barrier, gather
from quantrieve.runtime.distributed import setup as setup_distributed
from quantrieve.runtime.progress import Progress, report
from quantrieve.runtime.run_info import run_record
from quantrieve.train.codeword_restarts import CodewordRestarts
from quantrieve.train.run_dir import RUN_KIND, RunDir, TrainingError
from quantrieve.train.schedule import learning_rate
from quantrieve.train.training_data import carve_training_data

__all__ = [
    "RUN_KIND",
    "EpochCallback",
    "EpochSummary",
    "Trainer",
    "TrainingError",
    "TrainingForward",
]

LOG_EVERY = 10
# Multi-crop's small views below this side (pixels) leave too little to see.
MIN_SMALL_VIEW_SIDE = 8


@dataclass
class EpochSummary:
    """One finished epoch: mean loss, time, and validation mAP and P@10 when they were
    measured (mAP picks the best epoch: docs/method.md, "Which metric picks the best epoch")."""

    epoch: int
    loss: float
    seconds: float
    images_per_second: float
    val_map: float | None
    best_epoch: int = 0
    best_val_map: float | None = None
    val_p10: float | None = None
    val_self: float | None = None  # label-free: augmented copies finding their original


EpochCallback = Callable[["EpochSummary"], None]
#: The first results a user looks at: validation always reports P@10 beside mAP@K.
TOP_RESULTS = 10
# The label-free signal: database images sampled per validation, and its seed's offset.
SELF_QUERIES = 500
SELF_DATABASE = 5000  # unlabelled runs: the training images the copies search among
SELF_SEED_OFFSET = 7919


def _square_side(images: ImageSet) -> tuple[int, int]:
    """(side, channels) of square training images; other shapes are refused."""
    h, w, c = images.image_shape
    if h != w:
        raise TrainingError(f"training images must be square, got {h}x{w}")
    return h, c


def ema_decay_at(decay: float, updates: int) -> float:
    """The decay of the weights' moving average at its ``updates``-th update (``train.ema_decay``):
    ``min(decay, (1 + updates) / (10 + updates))``, the warm-up of TensorFlow's
    ``ExponentialMovingAverage(num_updates=...)``, so the first steps' weights, drawn at random,
    fade from the average within tens of steps instead of lingering ``1 / (1 - decay)`` of them."""
    return min(decay, (1 + updates) / (10 + updates))


def _moving_average(decay: float) -> Callable[..., None]:
    """``AveragedModel``'s ``multi_avg_fn``: ``average <- d * average + (1 - d) * weights``
    with ``d = ema_decay_at(decay, updates)``, for every parameter and buffer."""

    @torch.no_grad()
    def update(
        averaged: list[torch.Tensor], current: list[torch.Tensor], updates: torch.Tensor
    ) -> None:
        d = ema_decay_at(decay, int(updates))
        for a, c in zip(averaged, current, strict=True):
            if a.is_floating_point():
                a.lerp_(c, 1 - d)
            else:  # counters (batch norm's num_batches_tracked)
                a.copy_(c)

    return update


def _epoch_seed(seed: int, epoch: int) -> int:
    # The random state of an epoch depends on (seed, epoch) alone, so a resumed run replays
    # exactly what an uninterrupted one would have drawn.
    return (seed * 1_000_003 + epoch * 7919) % (2**63 - 1)


class TrainingForward(nn.Module):
    """The forward pass of a training step, as one module (what DistributedDataParallel
    wraps): views (2b, C, H, W) in [0, 1], and multi-crop's small views (n*b, C, h, w) if any,
    -> embeddings f and soft quantizations z of every view, in that order (2b + n*b rows)."""

    def __init__(self, model: RetrievalModel, amp: bool, separate_views: bool = False) -> None:
        super().__init__()
        self.model = model
        self.amp = amp
        self.separate_views = separate_views

    def forward(
        self, views: torch.Tensor, small_views: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.separate_views:  # batch norm sees each view's batch on its own
            f = torch.cat([self.model.embed(v, self.amp) for v in views.chunk(2)])
        else:
            f = self.model.embed(views, self.amp)
        if small_views is not None:  # another size: passes of their own
            if len(small_views) % (len(views) // 2):
                raise ValueError(
                    f"{len(small_views)} small views is not a multiple of the "
                    f"{len(views) // 2} images of the two views"
                )
            crops = len(small_views) // (len(views) // 2)
            passes = small_views.chunk(crops) if self.separate_views else [small_views]
            f = torch.cat([f, *(self.model.embed(v, self.amp) for v in passes)])
        return f, self.model.quantizer(f)


class Trainer:
    """Trains a :class:`RetrievalModel` on an unlabelled image set.

    Args:
        config: The resolved run config.
        train_set: Training images (labels, if any, are used only for validation mAP).
        run_dir: Directory of this run; created if needed. ``None``: train in memory, write
            nothing (the best weights are kept in :attr:`best_state`).
        resume: Continue from ``run_dir/last.pt``. Without it, a run directory that already
            holds a checkpoint is refused rather than overwritten.
        progress: ``progress(steps_done, total_steps)`` after every step of :meth:`fit`.
        on_epoch: Called with each :class:`EpochSummary` (validation mAP, best epoch so far).

    Under ``torchrun`` (several processes, :mod:`quantrieve.runtime.distributed`) every rank
    trains on its share of each global batch of ``train.batch_size`` images, the embeddings of
    all ranks are gathered (with gradients) before the losses, so negatives come from the whole
    batch, and gradients are averaged by DistributedDataParallel. ``train.sync_batchnorm``
    normalises with the statistics of the whole batch. Rank 0 alone validates and writes.
    """

    def __init__(
        self,
        config: RunConfig,
        train_set: ImageSet,
        run_dir: str | Path | None = None,
        resume: bool = False,
        progress: Progress | None = None,
        on_epoch: EpochCallback | None = None,
    ) -> None:
        self.config = config.validate()
        self.progress = progress
        self.on_epoch = on_epoch
        # 1. Where this process stands: device, rank, process group.
        self.device, self.place = self._join_process_group()
        side, channels = _square_side(train_set)
        # 2. The run's folder: checked (never overwritten) and created by rank 0.
        self.run = RunDir(run_dir, main=self.place.is_main)
        self.run.prepare(resume)
        barrier(self.place)
        # 3. The data: held-out queries out, validation split, steps per epoch.
        data = carve_training_data(self.config, train_set, self.run)
        self.train_set, self.split = data.train_set, data.split
        # Kept as the reader gave it (possibly a memory map); batches are gathered per step.
        self.images = self.train_set.images
        self.steps_per_epoch = data.steps_per_epoch
        self.local_batch = self._local_batch()
        # 4. The model and what trains it.
        self.model = self._build_model(side, channels, pretrained=not resume)
        self.augment, self.small_augment = self._augmentations(side, channels)
        self.objective = Objective(config.loss, config.model.num_books)
        self.optimizer, self.scaler = self._optimizer()
        restart = config.train.codeword_restart
        self.restarts = (
            CodewordRestarts(self.model.quantizer, restart, config.train.seed) if restart else None
        )
        # 5. Where training starts: epoch 0 (recorded in the folder) or the checkpoint; the
        # averaged weights, if any, start from the weights training starts with.
        self._start_fresh()
        state = self.run.load_checkpoint() if resume else None
        if state is not None:
            self._restore(state)
        else:
            self._record_start(side, channels)
            if config.model.codebook_init == "kmeans":
                self._init_codebooks()
        self.ema = self._averaged_weights(state)
        self.forward = self._forward_module()
        # 6. Optionally, the log mirrored for TensorBoard (rebuilt from log.jsonl on resume).
        if config.train.tensorboard:
            self.run.open_tensorboard()

    # ---------------------------------------------------------------- setup and state
    @property
    def run_dir(self) -> Path | None:
        """The run's folder (None: the run lives in memory)."""
        return self.run.path

    @property
    def log_records(self) -> list[dict[str, Any]]:
        """The log of a run without a folder (what ``log.jsonl`` would hold)."""
        return self.run.log_records

    @property
    def best_state(self) -> dict[str, Any] | None:
        """The kept weights of a run without a folder (rank 0 writes them to ``model.pt``)."""
        return self.run.best_state

    def _join_process_group(self) -> tuple[torch.device, Distributed]:
        """The device and this process's place; under ``torchrun`` the process group is
        joined and each rank takes the CUDA device of its local rank."""
        device = resolve_device(self.config.train.device)
        place = setup_distributed(device)
        if place.enabled and device.type == "cuda":
            device = torch.device("cuda", place.local_rank)
            torch.cuda.set_device(device)
        return device, place

    def _build_model(self, side: int, channels: int, pretrained: bool) -> RetrievalModel:
        """The network, seeded with ``train.seed``, normalising with the training images'
        channel statistics; the backbone from ``model.pretrained`` when ``pretrained`` (not on
        resume: the checkpoint has the weights); batch norm synchronised over the ranks when
        ``train.sync_batchnorm``."""
        m = self.config.model
        mean, std = channel_stats(self.train_set.images)
        torch.manual_seed(self.config.train.seed)
        model = RetrievalModel(m, side, channels, mean, std).to(self.device)
        if m.pretrained and pretrained:
            load_pretrained_backbone(model.encoder.backbone, m.backbone, m.pretrained)
        if self.place.enabled and self.config.train.sync_batchnorm:
            model = convert_sync_batchnorm(model, self.device)
        return model

    def _augmentations(
        self, side: int, channels: int
    ) -> tuple[TwoViewAugment, TwoViewAugment | None]:
        """The two-view augmentation and multi-crop's small-view one (or None)."""
        augment = TwoViewAugment(self.config.augment, side, channels).to(self.device)
        return augment, self._small_augment(side, channels)

    def _optimizer(self) -> tuple[torch.optim.Optimizer, torch.amp.GradScaler]:
        """Adam over every weight, and the gradient scaler (enabled only where mixed
        precision needs one)."""
        t = self.config.train
        optimizer = torch.optim.Adam(self.model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        scaler = torch.amp.GradScaler(enabled=needs_grad_scaler(self.device, t.amp))
        return optimizer, scaler

    def _averaged_weights(self, state: dict[str, Any] | None) -> AveragedModel | None:
        """``train.ema_decay`` > 0: the moving average of the weights and batch norm statistics
        (torch's :class:`~torch.optim.swa_utils.AveragedModel`; its first update copies the
        weights, later ones follow :func:`ema_decay_at`), restored from a checkpoint's
        ``state``; else None."""
        decay = self.config.train.ema_decay
        if not decay:
            return None
        average = AveragedModel(self.model, multi_avg_fn=_moving_average(decay), use_buffers=True)
        if state is not None:
            if "ema" not in state:
                raise TrainingError(
                    f"{self.run.checkpoint} holds no averaged weights (train.ema_decay was 0 "
                    "when it was saved); resume with the saved config.json"
                )
            average.load_state_dict(state["ema"])
        return average

    @property
    def scored_model(self) -> RetrievalModel:
        """The weights validation scores and the run keeps: the moving average with
        ``train.ema_decay`` > 0, else the trained model itself."""
        if self.ema is None:
            return self.model
        module = self.ema.module
        assert isinstance(module, RetrievalModel)
        return module

    def _start_fresh(self) -> None:
        """The training state before the first epoch (what a checkpoint replaces)."""
        self._epoch_codes: list[torch.Tensor] = []
        # (epoch, usage) of the latest codes, by what was encoded (see _warn_if_collapsed).
        self._last_usage: dict[str, tuple[int, CodeUsage]] = {}
        self._last_val_p10: float | None = None
        self._last_val_self: float | None = None
        self.epoch = 0
        self.best_val_map = -math.inf
        self.best_val_score = -math.inf  # what chooses the epoch (train.labelled_select)
        self.best_val_self = -math.inf  # unlabelled runs choosing by the label-free signal
        self.best_epoch = 0

    @torch.no_grad()
    def _init_codebooks(self, sample: int = 4096) -> None:
        """``model.codebook_init = kmeans``: the codewords start at k-means centroids of the
        untrained network's embeddings of up to ``sample`` training images (unaugmented, in
        training-size batches with batch statistics, as the first steps see them; the batch
        norm's running statistics are left as they were). The same on every rank."""
        g = torch.Generator().manual_seed(self.config.train.seed)
        rows = torch.randperm(len(self.images), generator=g)[:sample].sort().values.numpy()
        buffers = {name: b.clone() for name, b in self.model.named_buffers()}
        embeddings = []
        self.model.train()
        for start in range(0, len(rows), self.local_batch):
            picked = rows[start : start + self.local_batch]
            batch = torch.from_numpy(np.ascontiguousarray(self.images[picked]))
            x = to_float_images(batch.to(self.device)).contiguous()
            embeddings.append(self.model.embed(x, self.config.train.amp))
        for name, value in self.model.named_buffers():
            value.copy_(buffers[name])
        self.model.quantizer.init_from_embeddings(torch.cat(embeddings), g)

    def _record_start(self, side: int, channels: int) -> None:
        """Write ``config.json`` and ``run.json`` (seed, versions, device, data) of a new run."""
        if self.run.out is None:
            return
        train_set = self.train_set
        self.run.save_config(self.config)
        record = run_record(
            self.config.train.seed,
            str(self.device),
            {"train_images": len(train_set), "image_shape": [side, side, channels]}
            | ({"skipped_images": train_set.skipped} if train_set.skipped else {}),
        )
        record["world_size"] = self.place.world_size
        self.run.save_record(record)

    def _local_batch(self) -> int:
        """Images per rank and step: the global ``train.batch_size`` split evenly."""
        batch, world = self.config.train.batch_size, self.place.world_size
        if batch % world:
            raise TrainingError(
                f"train.batch_size = {batch} does not split evenly over {world} processes; "
                f"use a multiple of {world}"
            )
        return batch // world

    def _small_augment(self, side: int, channels: int) -> TwoViewAugment | None:
        """Multi-crop's small-view augmentation (``augment.small_crops`` > 0), else None;
        refused when its views are too small to see anything or for the network to take."""
        a = self.config.augment
        if not a.small_crops:
            return None
        small = small_view_side(a, side)
        problem = ""
        if small < MIN_SMALL_VIEW_SIDE:
            problem = f"at least {MIN_SMALL_VIEW_SIDE} are needed"
        else:  # a dry pass: each backbone has its own smallest input
            self.model.eval()
            try:
                with torch.no_grad():
                    self.model.embed(torch.zeros(1, channels, small, small, device=self.device))
            except RuntimeError as error:
                problem = f"model.backbone cannot take them ({str(error).splitlines()[0]})"
            finally:
                self.model.train()
        if problem:
            raise TrainingError(
                f"augment.small_crop_ratio = {a.small_crop_ratio} makes small views of {small} "
                f"pixels from {side}-pixel images: {problem}; raise augment.small_crop_ratio"
            )
        return small_view_augment(a, side, channels).to(self.device)

    def _forward_module(self) -> nn.Module:
        """The training forward pass (views -> f, z), wrapped in DistributedDataParallel when
        there are several processes (it averages the gradients over ranks)."""
        train = self.config.train
        module = TrainingForward(self.model, train.amp, train.separate_views)
        if not self.place.enabled:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids)

    def _warn_if_collapsed(self) -> None:
        """Warn (QuantrieveWarning) when the codes of the last epoch have collapsed: those of
        the validation database (or an unlabelled run's validation sample) if it was encoded,
        else those of the training batches. Every epoch's usage is in log.jsonl; the warning
        judges the weights training ends with."""
        for what in ("validation database", "validation sample", "training batches"):
            usage = self._last_usage.get(what)
            if usage is not None and usage[1].degenerate:
                epoch, usage = usage
                warnings.warn(
                    usage.message(f"epoch {epoch}, {what}"), QuantrieveWarning, stacklevel=3
                )
                return

    def _state(self) -> dict[str, Any]:
        state = {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best_val_map": self.best_val_map,
            "best_val_score": self.best_val_score,
            "best_val_self": self.best_val_self,
            "best_epoch": self.best_epoch,
            "config": self.config.to_dict(),
        }
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        if self.restarts is not None:
            state["codeword_restarts"] = self.restarts.state_dict()
        return state

    def _restore(self, state: dict[str, Any]) -> None:
        saved = state.get("config")
        changed = config_differences(saved, self.config) if saved is not None else []
        # More epochs may be asked for: the run is extended (see _extend).
        extended = "train.epochs" in changed
        changed = [key for key in changed if key != "train.epochs"]
        if changed:
            raise TrainingError(
                f"{self.run.checkpoint} was trained with a different config "
                f"(keys differ: {', '.join(changed)}); resume with the saved config.json"
            )
        if extended:
            assert saved is not None
            self._extend(int(saved["train"]["epochs"]), state["epoch"])
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch = state["epoch"]
        self.best_val_map = state["best_val_map"]
        # checkpoints from before train.labelled_select chose by mAP alone
        self.best_val_score = state.get("best_val_score", state["best_val_map"])
        self.best_val_self = state.get("best_val_self", -math.inf)  # older checkpoints
        self.best_epoch = state["best_epoch"]
        if self.restarts is not None:
            self.restarts.load_state_dict(state["codeword_restarts"])
        self.run.drop_unfinished_epoch_records(self.epoch)

    def _extend(self, planned: int, done: int) -> None:
        """Resume with another ``train.epochs``: allowed while it is not below the epochs done.

        The warm-up + cosine schedule is recomputed over the new total, as if the run had been
        planned that long from the start: from the resume point on, the learning rate follows
        the longer curve (after a finished run it rises again from its final value).
        """
        epochs = self.config.train.epochs
        if epochs < done:
            raise TrainingError(
                f"train.epochs = {epochs} is below the {done} epochs this run has done"
            )
        self.run.save_config(self.config)
        self.run.log(
            {"kind": "extended", "epoch": done, "from_epochs": planned, "to_epochs": epochs}
        )

    # ---------------------------------------------------------------- training
    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.config.train.epochs

    def _lr(self, step: int) -> float:
        t = self.config.train
        return learning_rate(
            step,
            self.total_steps,
            t.warmup_epochs * self.steps_per_epoch,
            t.lr,
            t.warmup_start_lr,
            t.final_lr_ratio,
        )

    def _views(self, batch_uint8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Two augmented views of a uint8 batch, stacked: float (2B, C, H, W) in [0, 1]; and
        multi-crop's small views (n*B, C, h, w), first small views then second ..., or None."""
        x = to_float_images(batch_uint8.to(self.device, non_blocking=True))
        views = torch.cat([self.augment(x), self.augment(x)])
        if self.small_augment is None:
            return views, None
        small = [self.small_augment(x) for _ in range(self.config.augment.small_crops)]
        return views, torch.cat(small)

    def train_step(self, batch_uint8: torch.Tensor, step: int) -> dict[str, float]:
        """One optimisation step on this rank's uint8 batch (b, H, W, C); returns the logged
        terms (the same on every rank)."""
        views, small_views = self._views(batch_uint8)
        return self.step_on_views(views, step, small_views)

    def step_on_views(
        self, views: torch.Tensor, step: int, small_views: torch.Tensor | None = None
    ) -> dict[str, float]:
        """One optimisation step on this rank's two views, stacked (2b, C, H, W) in [0, 1]:
        first views, then second views of the same b images; and multi-crop's small views of
        those images (n*b, C, h, w), ordered likewise, if any. The losses average over view
        pairs (:meth:`Objective.over_views`)."""
        lr = self._lr(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        f, z = self.forward(views, small_views)
        half = len(views) // 2
        self._epoch_codes.append(self.model.quantizer.encode(f[:half].detach()))
        count = len(f) // half  # views per image: 2, plus the small ones
        # (b, 2 * count, D): every view's f, then every view's z -> every rank's, in rank
        # order: the losses see the whole global batch.
        parts = gather(torch.stack([*f.split(half), *z.split(half)], 1), self.place)
        per_view = parts.unbind(1)
        terms = self.objective.over_views(
            per_view[:count], per_view[count:], self.model.quantizer.codebooks
        )
        loss = terms["loss"]
        if not torch.isfinite(loss):
            raise TrainingError(f"loss became {loss.item()} at step {step}; lower train.lr")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.restarts is not None:  # on the gathered batch: the same on every rank
            self.restarts.after_step(per_view[0].detach(), step, self.optimizer)
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return {"lr": lr, **{k: float(v.detach()) for k, v in terms.items()}}

    def fit(self, stop_after_epochs: int | None = None) -> list[EpochSummary]:
        """Train until ``train.epochs`` (or for ``stop_after_epochs`` more epochs, if given)."""
        t = self.config.train
        last = (
            t.epochs if stop_after_epochs is None else min(t.epochs, self.epoch + stop_after_epochs)
        )
        summaries: list[EpochSummary] = []
        first = self.epoch
        while self.epoch < last:
            summaries.append(self._train_epoch((first, last)))
            if self.on_epoch is not None:
                self.on_epoch(summaries[-1])
        self.run.close_tensorboard()
        self._warn_if_collapsed()
        return summaries

    def _train_epoch(self, span: tuple[int, int]) -> EpochSummary:
        t = self.config.train
        epoch = self.epoch + 1
        torch.manual_seed(_epoch_seed(t.seed, epoch))
        order = torch.randperm(len(self.images))
        if self.place.enabled:
            # The same order on every rank; each rank's augmentations its own.
            torch.manual_seed(_epoch_seed(t.seed, epoch) + 1 + self.place.rank)
        self.model.train()
        start, running = time.perf_counter(), 0.0
        self._epoch_codes = []
        for i in range(self.steps_per_epoch):
            step = (epoch - 1) * self.steps_per_epoch + i
            first = i * t.batch_size + self.place.rank * self.local_batch
            idx = order[first : first + self.local_batch]
            batch = torch.from_numpy(np.ascontiguousarray(self.images[idx.numpy()]))
            logged = self.train_step(batch, step)
            running += logged["loss"]
            if i % LOG_EVERY == 0 or i == self.steps_per_epoch - 1:
                self.run.log({"kind": "step", "epoch": epoch, "step": step, **logged})
            done = (epoch - 1 - span[0]) * self.steps_per_epoch + i + 1
            report(self.progress, done, (span[1] - span[0]) * self.steps_per_epoch)
        seconds = time.perf_counter() - start
        self.epoch = epoch
        # Hard codes of the epoch's first views: the one sign of collapse without labels.
        usage = code_usage(torch.cat(self._epoch_codes), self.config.model.num_codewords)
        self._epoch_codes = []
        self._last_usage = {"training batches": (epoch, usage)}
        val_map = val_p10 = val_self = None
        if (
            t.eval_every
            and self.split is not None
            and (epoch % t.eval_every == 0 or epoch == t.epochs)
        ):
            val_map = self.validate()
            val_p10 = self._last_val_p10
            val_self = self._last_val_self
            score = val_map
            if t.labelled_select == "map+p10":
                score += val_p10 or 0.0
            if score > self.best_val_score:
                self.best_val_score, self.best_val_map, self.best_epoch = score, val_map, epoch
                self.run.keep(self.scored_model, {"epoch": epoch, "val_map": val_map})
        elif (
            self.place.is_main
            and self.split is None
            and t.eval_every
            and t.unlabelled_select == "self"
            and (epoch % t.eval_every == 0 or epoch == t.epochs)
        ):
            # Unlabelled: the label-free signal chooses (train.unlabelled_select = self).
            val_self = self.validate_without_labels()
            if val_self > self.best_val_self:
                self.best_val_self, self.best_epoch = val_self, epoch
                self.run.keep(self.scored_model, {"epoch": epoch, "val_self": val_self})
        elif self.place.is_main and (self.split is None or not t.eval_every):
            # No validation (unlabelled data or eval_every = 0): keep the latest weights.
            self.best_epoch = epoch
            self.run.keep(self.scored_model, {"epoch": epoch})
        summary = EpochSummary(
            epoch=epoch,
            loss=running / self.steps_per_epoch,
            seconds=seconds,
            images_per_second=self.steps_per_epoch * t.batch_size / seconds,
            val_map=val_map,
            best_epoch=self.best_epoch,
            best_val_map=self.best_val_map if self.best_val_map > -math.inf else None,
            val_p10=val_p10,
            val_self=val_self,
        )
        record = {k: v for k, v in summary.__dict__.items() if k != "best_val_map"}
        if self.restarts is not None:
            record["codewords_restarted"] = self.restarts.take_count()
        self.run.log({"kind": "epoch", **record, "code_usage": usage.to_dict()})
        if self.run.out is not None:
            self.run.save_checkpoint(self._state())
        return summary

    def best_model(self) -> RetrievalModel:
        """The kept model (best validation epoch, or the last one without validation), on the
        CPU in eval mode; the live model is left as it is."""
        return self.run.kept_model(self.scored_model)

    @torch.no_grad()
    def validate(self) -> float:
        """mAP@K of the validation queries against the rest of the training side (hard codes)."""
        assert self.split is not None and self.train_set.labels is not None
        e = self.config.eval
        images, labels = self.train_set.images, torch.from_numpy(self.train_set.labels)
        q_idx, db_idx = self.split["val_query"], self.split["val_database"]
        amp, model = self.config.train.amp, self.scored_model
        queries = embed_images(model, images, self.device, amp=amp, indices=q_idx)
        db = embed_images(model, images, self.device, amp=amp, indices=db_idx)
        codebooks = model.quantizer.codebooks.detach().float().cpu()
        codes = model.quantizer.encode(db.to(self.device)).cpu()
        result = evaluate_codes(
            queries,
            codebooks,
            codes,
            labels[q_idx],
            labels[db_idx],
            e.topk,
            sorted({*e.precision_at, TOP_RESULTS}),  # P@10 always: what a user sees
            e.distance,
        )
        usage = code_usage(codes, self.config.model.num_codewords)
        self._last_usage["validation database"] = (self.epoch, usage)
        self._last_val_p10 = result.precision_at.get(min(TOP_RESULTS, len(db_idx)))
        found = self.self_retrieval(db_idx, codes, codebooks)
        self._last_val_self = found.recall_at_10
        self.run.log(
            {
                "kind": "validation",
                "epoch": self.epoch,
                **result.to_dict(),
                **found.to_dict(),
                "code_usage": usage.to_dict(),
            }
        )
        return result.map_at_k

    @torch.no_grad()
    def validate_without_labels(self) -> float:
        """The label-free signal of an unlabelled run: a fixed sample of up to
        :data:`SELF_DATABASE` training images is encoded, and augmented copies of up to
        :data:`SELF_QUERIES` of them search for their originals; returns self recall@10."""
        n = len(self.train_set)
        seed = self.config.train.seed + SELF_SEED_OFFSET
        db_idx = np.sort(
            np.random.default_rng(seed).choice(n, min(SELF_DATABASE, n), replace=False)
        )
        amp, model = self.config.train.amp, self.scored_model
        db = embed_images(model, self.train_set.images, self.device, amp=amp, indices=db_idx)
        codebooks = model.quantizer.codebooks.detach().float().cpu()
        codes = model.quantizer.encode(db.to(self.device)).cpu()
        found = self.self_retrieval(db_idx, codes, codebooks)
        usage = code_usage(codes, self.config.model.num_codewords)
        self._last_usage["validation sample"] = (self.epoch, usage)
        self.run.log(
            {"kind": "validation", "epoch": self.epoch, **found.to_dict(),
             "code_usage": usage.to_dict()}
        )  # fmt: skip
        return found.recall_at_10

    @torch.no_grad()
    def self_retrieval(
        self, db_idx: np.ndarray, codes: torch.Tensor, codebooks: torch.Tensor
    ) -> SelfRetrieval:
        """The label-free signal (:mod:`quantrieve.evaluate.self_retrieval`): a fixed sample of
        up to :data:`SELF_QUERIES` database images, augmented as in training (a fixed seed, the
        training's random state untouched), each searched for among ``codes``."""
        seed = self.config.train.seed + SELF_SEED_OFFSET
        pick = np.sort(
            np.random.default_rng(seed).choice(
                len(db_idx), min(SELF_QUERIES, len(db_idx)), replace=False
            )
        )
        images, copies, model = self.train_set.images, [], self.scored_model
        was_training = model.training
        model.eval()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for start in range(0, len(pick), 256):
                rows = db_idx[pick[start : start + 256]]
                batch = torch.from_numpy(np.ascontiguousarray(images[rows]))
                x = self.augment(to_float_images(batch.to(self.device)))
                copies.append(model.embed(x, amp=self.config.train.amp).float().cpu())
        model.train(was_training)
        return self_retrieval(torch.cat(copies), codebooks, codes, pick)
