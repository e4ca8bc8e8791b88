"""Training throughput of a preset on this machine, on random images of the preset's shape.

    .venv/bin/python benchmarks/epoch_time.py --preset cifar10-cpu --shape 32,32,3 --images 50000

Times ``--steps`` optimisation steps (after two warm-up steps) of the full objective with the
preset's model, batch, augmentation and AMP, and extrapolates to one epoch over ``--images``
images (or ``train.max_steps_per_epoch`` steps, when the preset caps an epoch) and to the
preset's schedule. Throughput does not depend on pixel values, so random
images stand in for data that is not on this machine. With ``--validate``, one validation pass
(embedding, coding and mAP@K of the preset's validation queries against the other ``--images``
random images with random labels) is timed too and added once per ``train.eval_every`` epochs.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from quantrieve.config import load_config
from quantrieve.data import ImageSet
from quantrieve.runtime.distributed import from_environment
from quantrieve.train.trainer import Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", required=True)
    parser.add_argument("--shape", default="32,32,3", help="H,W,C of the images")
    parser.add_argument("--images", type=int, default=50_000, help="images per epoch")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--set", action="append", default=[], help="config override key=value")
    parser.add_argument(
        "--validate",
        action="store_true",
        help="also time one validation pass over --images labelled images (the preset's "
        "data.val_queries against the rest, its eval.topk)",
    )
    parser.add_argument("--classes", type=int, default=10, help="label count (with --validate)")
    parser.add_argument(
        "--labels-per-image", type=int, default=1, help="labels each image has (with --validate)"
    )
    args = parser.parse_args()
    h, w, c = (int(v) for v in args.shape.split(","))
    overrides = ["train.eval_every=0", *args.set]
    if not args.validate:
        overrides.insert(0, "data.val_queries=0")
    config = load_config(args.preset, overrides=overrides)
    batch = config.train.batch_size
    place = from_environment()
    rng = np.random.default_rng(0)
    count = (
        max(args.images, (args.steps + 2) * batch) if args.validate else (args.steps + 2) * batch
    )
    images = rng.integers(0, 256, size=(count, h, w, c), dtype=np.uint8)
    labels = None
    if args.validate:
        scores = rng.random((count, args.classes))
        top = np.argsort(scores, axis=1)[:, : args.labels_per_image]
        labels = np.zeros((count, args.classes), dtype=bool)
        np.put_along_axis(labels, top, True, axis=1)
    data = ImageSet(images, labels, [str(i) for i in range(len(images))])
    validation_seconds = None
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(config, data, run_dir)
        order = torch.arange((args.steps + 2) * batch).view(-1, batch)
        share = slice(place.rank * trainer.local_batch, (place.rank + 1) * trainer.local_batch)
        for step in range(2):
            trainer.train_step(torch.from_numpy(images[order[step][share].numpy()]), step)
        start = time.perf_counter()
        for step in range(2, args.steps + 2):
            trainer.train_step(torch.from_numpy(images[order[step][share].numpy()]), step)
        per_step = (time.perf_counter() - start) / args.steps
        if args.validate and place.is_main:
            start = time.perf_counter()
            trainer.validate()
            validation_seconds = time.perf_counter() - start
    steps_per_epoch = args.images // batch
    if config.train.max_steps_per_epoch > 0:
        steps_per_epoch = min(steps_per_epoch, config.train.max_steps_per_epoch)
    result = {
        "preset": args.preset,
        "overrides": args.set,
        "image_shape": [h, w, c],
        "batch_size": batch,
        "threads": torch.get_num_threads(),
        "processes": place.world_size,
        "seconds_per_step": per_step,
        "images_per_second": batch / per_step,
        "steps_per_epoch": steps_per_epoch,
        "epoch_minutes": per_step * steps_per_epoch / 60,
        "schedule_epochs": config.train.epochs,
        "schedule_minutes_without_validation": per_step
        * steps_per_epoch
        * config.train.epochs
        / 60,
    }
    if validation_seconds is not None:
        # The preset's own validation interval (the timing runs override it to 0).
        eval_every = load_config(args.preset, overrides=args.set).train.eval_every
        validations = config.train.epochs // eval_every if eval_every else 0
        result["validation"] = {
            "queries": config.data.val_queries,
            "database": count - config.data.val_queries,
            "topk": config.eval.topk,
            "classes": args.classes,
            "labels_per_image": args.labels_per_image,
            "seconds": validation_seconds,
            "passes_in_schedule": validations,
        }
        result["schedule_minutes_with_validation"] = (
            result["schedule_minutes_without_validation"] + validations * validation_seconds / 60
        )
    if not place.is_main:
        return
    print(json.dumps(result, indent=2))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
