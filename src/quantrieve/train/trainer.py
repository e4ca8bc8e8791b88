"""Unsupervised training of the quantization encoder (docs/method.md, Training recipe).

Per step: two views of each image are drawn on the device, both go through the network in one
forward pass, and the objective's terms are summed. Every ``eval_every`` epochs the validation
mAP (validation queries against the rest of the training side, never the test queries) decides
which weights are kept as the best model.

With a run directory, everything is written there (a checkpoint after every epoch, atomically,
so ``resume`` continues exactly); without one (``run_dir=None``), the run lives in memory and
nothing is written. Run directory layout::

    config.json     resolved config        run.json      seed, versions, git commit, device
    splits.npz/json validation split       log.jsonl     every logged step and epoch
    last.pt         resumable checkpoint   model.pt      best model by validation mAP
"""

from __future__ import annotations

import copy
import json
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

from quantrieve.augment import TwoViewAugment, small_view_augment, small_view_side
from quantrieve.config import RunConfig, config_differences
from quantrieve.data import ImageSet
from quantrieve.data.splits import hold_out, load_or_make_split, validation_split
from quantrieve.errors import QuantrieveError, QuantrieveWarning
from quantrieve.evaluate import evaluate_codes
from quantrieve.evaluate.code_usage import CodeUsage, code_usage
from quantrieve.losses import Objective
from quantrieve.models.pretrained import load_pretrained_backbone
from quantrieve.models.retrieval import (
    RetrievalModel,
    channel_stats,
    embed_images,
    to_float_images,
)
from quantrieve.models.sync_batchnorm import convert_sync_batchnorm
from quantrieve.runtime.atomic import atomic_write_json, atomic_write_text
from quantrieve.runtime.checkpoint import atomic_save, load_checkpoint
from quantrieve.runtime.device import needs_grad_scaler, resolve_device
from quantrieve.runtime.distributed import barrier, gather
from quantrieve.runtime.distributed import setup as setup_distributed
from quantrieve.runtime.outputs import OutputKind, refuse_foreign
from quantrieve.runtime.progress import Progress, report
from quantrieve.runtime.run_info import run_record
from quantrieve.train.schedule import learning_rate

LOG_EVERY = 10
# Below this many steps per epoch (batches the data allows), codes are warned to collapse easily.
MIN_STEPS_PER_EPOCH = 10
# Multi-crop's small views below this side (pixels) leave too little to see.
MIN_SMALL_VIEW_SIDE = 8
# Above this share of the training images as validation queries, the validation database is
# warned to be too small for model selection.
MAX_VAL_QUERY_SHARE = 0.25


def _is_run(folder: Path) -> bool:
    try:
        record = json.loads((folder / "run.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and "seed" in record and "versions" in record


RUN_KIND = OutputKind("training run", "run.json", _is_run)


class TrainingError(QuantrieveError, RuntimeError):
    """Training cannot start or continue (bad run directory, diverged loss, ...)."""


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


EpochCallback = Callable[["EpochSummary"], None]
#: The first results a user looks at: validation always reports P@10 beside mAP@K.
TOP_RESULTS = 10


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
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.progress = progress
        self.on_epoch = on_epoch
        self.log_records: list[dict[str, Any]] = []
        self.best_state: dict[str, Any] | None = None
        self.device = resolve_device(config.train.device)
        self.place = setup_distributed(self.device)
        if self.place.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.place.local_rank)
            torch.cuda.set_device(self.device)
        # Rank 0 writes the run directory; the other ranks only read it (to resume).
        self.out = self.run_dir if self.place.is_main else None
        h, w, c = train_set.image_shape
        if h != w:
            raise TrainingError(f"training images must be square, got {h}x{w}")
        if self.out is not None:
            self._check_run_dir(resume)
        elif resume and self.run_dir is None:
            raise TrainingError("resume needs a run directory")
        barrier(self.place)
        if config.data.holdout_queries:
            # Held-out test queries never train; saved with the run for encode and evaluate.
            _, train_set = hold_out(
                train_set, config.data.holdout_queries, config.data.split_seed, self.out
            )
        if config.data.train_limit:
            train_set = train_set.subset(np.arange(min(config.data.train_limit, len(train_set))))
        self.train_set = train_set

        self._warn_about_data_size()
        self.split = self._validation_split() if self.place.is_main else None
        mean, std = channel_stats(train_set.images)
        torch.manual_seed(config.train.seed)
        self.model = RetrievalModel(config.model, h, c, mean, std).to(self.device)
        if config.model.pretrained and not resume:
            load_pretrained_backbone(
                self.model.encoder.backbone, config.model.backbone, config.model.pretrained
            )
        self.local_batch = self._local_batch()
        if self.place.enabled and config.train.sync_batchnorm:
            self.model = convert_sync_batchnorm(self.model, self.device)
        self.augment = TwoViewAugment(config.augment, h, c).to(self.device)
        self.small_augment = self._small_augment(h, c)
        self.objective = Objective(config.loss, config.model.num_books)
        self.optimizer = torch.optim.Adam(
            self.model.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay
        )
        self.scaler = torch.amp.GradScaler(enabled=needs_grad_scaler(self.device, config.train.amp))
        # Kept as the reader gave it (possibly a memory map); batches are gathered per step.
        self.images = train_set.images
        self.steps_per_epoch = len(self.images) // config.train.batch_size
        if config.train.max_steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, config.train.max_steps_per_epoch)
        if self.steps_per_epoch < 1:
            raise TrainingError(
                f"{len(self.images)} training images is less than one batch of "
                f"train.batch_size = {config.train.batch_size}"
            )
        self._epoch_codes: list[torch.Tensor] = []
        # (epoch, usage) of the latest codes, by what was encoded (see _warn_if_collapsed).
        self._last_usage: dict[str, tuple[int, CodeUsage]] = {}
        self._last_val_p10: float | None = None
        self.epoch = 0
        self.best_val_map = -math.inf
        self.best_epoch = 0
        if resume:
            assert self.run_dir is not None
            self._restore(load_checkpoint(self.run_dir / "last.pt"))
        elif self.out is not None:
            config.save(self.out / "config.json")
            record = run_record(
                config.train.seed,
                str(self.device),
                {"train_images": len(train_set), "image_shape": [h, w, c]}
                | ({"skipped_images": train_set.skipped} if train_set.skipped else {}),
            )
            record["world_size"] = self.place.world_size
            atomic_write_json(record, self.out / "run.json")
        self.forward = self._forward_module()

    # ---------------------------------------------------------------- setup and state
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

    def _check_run_dir(self, resume: bool) -> None:
        assert self.run_dir is not None
        checkpoint_path = self.run_dir / "last.pt"
        if checkpoint_path.exists() and not resume:
            raise TrainingError(
                f"{self.run_dir} already holds a run (last.pt); pass --resume to continue it "
                "or choose another --out"
            )
        if resume and not checkpoint_path.exists():
            raise TrainingError(f"--resume given but {checkpoint_path} does not exist")
        # A folder of anything but a run (the user's files, an index, a parent of runs) is
        # never written into: config.json, model.pt, ... could replace files of the same name.
        refuse_foreign(self.run_dir, RUN_KIND, hint=f"{self.run_dir / 'run'}")
        self.run_dir.mkdir(parents=True, exist_ok=True)

    def _warn_about_data_size(self) -> None:
        """Warn (QuantrieveWarning) when the data allows few steps per epoch, or when the
        validation queries take a large share of the training images; say what to change."""
        data, t = self.config.data, self.config.train
        n = len(self.train_set)
        steps = n // t.batch_size
        if 1 <= steps < MIN_STEPS_PER_EPOCH:
            warnings.warn(
                f"{n} training images make only {steps} step{'s' if steps > 1 else ''} per "
                f"epoch at train.batch_size={t.batch_size} ({steps * t.epochs} in all): with so "
                "few steps the codes may collapse (every item one code); lower train.batch_size "
                f"(e.g. {max(2, n // MIN_STEPS_PER_EPOCH)}) or raise train.epochs",
                QuantrieveWarning,
                stacklevel=3,
            )
        if self.train_set.labels is not None and data.val_queries > MAX_VAL_QUERY_SHARE * n:
            warnings.warn(
                f"data.val_queries={data.val_queries} takes {data.val_queries / n:.0%} of the {n} "
                f"training images, leaving a validation database of {max(n - data.val_queries, 0)}"
                ": model selection on it is noisy and mAP@K is capped by its size; lower "
                f"data.val_queries (e.g. {max(1, n // 10)})",
                QuantrieveWarning,
                stacklevel=3,
            )

    def _warn_if_collapsed(self) -> None:
        """Warn (QuantrieveWarning) when the codes of the last epoch have collapsed: those of
        the validation database if it was encoded, else those of the training batches. Every
        epoch's usage is in log.jsonl; the warning judges the weights training ends with."""
        for what in ("validation database", "training batches"):
            usage = self._last_usage.get(what)
            if usage is not None and usage[1].degenerate:
                epoch, usage = usage
                warnings.warn(
                    usage.message(f"epoch {epoch}, {what}"), QuantrieveWarning, stacklevel=3
                )
                return

    def _validation_split(self) -> dict[str, np.ndarray] | None:
        data = self.config.data
        if data.val_queries == 0 or self.train_set.labels is None:
            return None
        if self.out is None:
            return validation_split(len(self.train_set), data.val_queries, data.split_seed)
        return load_or_make_split(
            self.run_dir, len(self.train_set), data.val_queries, data.split_seed
        )

    def _state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best_val_map": self.best_val_map,
            "best_epoch": self.best_epoch,
            "config": self.config.to_dict(),
        }

    def _restore(self, state: dict[str, Any]) -> None:
        saved = state.get("config")
        changed = config_differences(saved, self.config) if saved is not None else []
        # More epochs may be asked for: the run is extended (see _extend).
        extended = "train.epochs" in changed
        changed = [key for key in changed if key != "train.epochs"]
        if changed:
            raise TrainingError(
                f"{self.run_dir / 'last.pt'} was trained with a different config "
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
        self.best_epoch = state["best_epoch"]
        self._drop_unfinished_epoch_records()

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
        if self.out is not None:
            self.config.save(self.out / "config.json")
        self._log({"kind": "extended", "epoch": done, "from_epochs": planned, "to_epochs": epochs})

    def _drop_unfinished_epoch_records(self) -> None:
        """Remove log records of the epoch that was interrupted (it is trained again), and a
        last line cut short by the interruption."""
        path = self.out / "log.jsonl" if self.out is not None else None
        if path is None or not path.is_file():
            return
        lines = path.read_text().splitlines()
        kept = []
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("epoch", 0) <= self.epoch:
                kept.append(line)
        if len(kept) != len(lines):
            atomic_write_text("".join(line + "\n" for line in kept), path)

    def _log(self, record: dict[str, Any]) -> None:
        if not self.place.is_main:
            return
        if self.out is None:
            self.log_records.append(record)
            return
        with open(self.out / "log.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def _keep(self, extra: dict[str, Any]) -> None:
        """Keep the current weights as the model of this run (``model.pt`` or in memory)."""
        if self.out is not None:
            self.model.save(self.out / "model.pt", extra)
        else:
            self.best_state = copy.deepcopy(self.model.state_dict())
        self.model.training_info = dict(extra)

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
                self._log({"kind": "step", "epoch": epoch, "step": step, **logged})
            done = (epoch - 1 - span[0]) * self.steps_per_epoch + i + 1
            report(self.progress, done, (span[1] - span[0]) * self.steps_per_epoch)
        seconds = time.perf_counter() - start
        self.epoch = epoch
        # Hard codes of the epoch's first views: the one sign of collapse without labels.
        usage = code_usage(torch.cat(self._epoch_codes), self.config.model.num_codewords)
        self._epoch_codes = []
        self._last_usage = {"training batches": (epoch, usage)}
        val_map = val_p10 = None
        if (
            t.eval_every
            and self.split is not None
            and (epoch % t.eval_every == 0 or epoch == t.epochs)
        ):
            val_map = self.validate()
            val_p10 = self._last_val_p10
            if val_map > self.best_val_map:
                self.best_val_map, self.best_epoch = val_map, epoch
                self._keep({"epoch": epoch, "val_map": val_map})
        elif self.place.is_main and (self.split is None or not t.eval_every):
            # No validation (unlabelled data or eval_every = 0): keep the latest weights.
            self.best_epoch = epoch
            self._keep({"epoch": epoch})
        summary = EpochSummary(
            epoch=epoch,
            loss=running / self.steps_per_epoch,
            seconds=seconds,
            images_per_second=self.steps_per_epoch * t.batch_size / seconds,
            val_map=val_map,
            best_epoch=self.best_epoch,
            best_val_map=self.best_val_map if self.best_val_map > -math.inf else None,
            val_p10=val_p10,
        )
        record = {k: v for k, v in summary.__dict__.items() if k != "best_val_map"}
        self._log({"kind": "epoch", **record, "code_usage": usage.to_dict()})
        if self.out is not None:
            atomic_save(self._state(), self.out / "last.pt")
        return summary

    def best_model(self) -> RetrievalModel:
        """The kept model (best validation epoch, or the last one without validation), on the
        CPU in eval mode; the live model is left as it is."""
        model = copy.deepcopy(self.model).cpu()
        if self.best_state is not None:
            model.load_state_dict(self.best_state)
        elif self.run_dir is not None and (self.run_dir / "model.pt").is_file():
            return RetrievalModel.load(self.run_dir / "model.pt")
        return model.eval()

    @torch.no_grad()
    def validate(self) -> float:
        """mAP@K of the validation queries against the rest of the training side (hard codes)."""
        assert self.split is not None and self.train_set.labels is not None
        e = self.config.eval
        images, labels = self.train_set.images, torch.from_numpy(self.train_set.labels)
        q_idx, db_idx = self.split["val_query"], self.split["val_database"]
        amp = self.config.train.amp
        queries = embed_images(self.model, images, self.device, amp=amp, indices=q_idx)
        db = embed_images(self.model, images, self.device, amp=amp, indices=db_idx)
        codebooks = self.model.quantizer.codebooks.detach().float().cpu()
        codes = self.model.quantizer.encode(db.to(self.device)).cpu()
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
        self._log(
            {
                "kind": "validation",
                "epoch": self.epoch,
                **result.to_dict(),
                "code_usage": usage.to_dict(),
            }
        )
        return result.map_at_k
