"""Training throughput of a preset on this machine, on random images of the preset's shape.

    .venv/bin/python benchmarks/epoch_time.py --preset cifar10-cpu --shape 32,32,3 --images 50000

Times ``--steps`` optimisation steps (after two warm-up steps) of the full objective with the
preset's model, batch, augmentation and AMP, and extrapolates to one epoch over ``--images``
images and to the preset's schedule. Throughput does not depend on pixel values, so random
images stand in for data that is not on this machine. Validation passes are not included.
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
from quantrieve.train.trainer import Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", required=True)
    parser.add_argument("--shape", default="32,32,3", help="H,W,C of the images")
    parser.add_argument("--images", type=int, default=50_000, help="images per epoch")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--set", action="append", default=[], help="config override key=value")
    args = parser.parse_args()
    h, w, c = (int(v) for v in args.shape.split(","))
    config = load_config(
        args.preset, overrides=["data.val_queries=0", "train.eval_every=0", *args.set]
    )
    batch = config.train.batch_size
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=((args.steps + 2) * batch, h, w, c), dtype=np.uint8)
    data = ImageSet(images, None, [str(i) for i in range(len(images))])
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(config, data, run_dir)
        order = torch.arange(len(images)).view(-1, batch)
        for step in range(2):
            trainer.train_step(torch.from_numpy(images[order[step].numpy()]), step)
        start = time.perf_counter()
        for step in range(2, args.steps + 2):
            trainer.train_step(torch.from_numpy(images[order[step].numpy()]), step)
        per_step = (time.perf_counter() - start) / args.steps
    steps_per_epoch = args.images // batch
    result = {
        "preset": args.preset,
        "overrides": args.set,
        "image_shape": [h, w, c],
        "batch_size": batch,
        "threads": torch.get_num_threads(),
        "seconds_per_step": per_step,
        "images_per_second": batch / per_step,
        "epoch_minutes": per_step * steps_per_epoch / 60,
        "schedule_epochs": config.train.epochs,
        "schedule_minutes_without_validation": per_step
        * steps_per_epoch
        * config.train.epochs
        / 60,
    }
    print(json.dumps(result, indent=2))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
