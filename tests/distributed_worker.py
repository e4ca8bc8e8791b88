"""A few training steps on fixed views, in one process or in each process of a torchrun group.

Usage: python distributed_worker.py DATA_ROOT OUT_FILE STEPS SYNC_BN [key=value ...]

Every step draws the same global batch of views (2B, C, H, W) from a seeded generator; a rank
takes its share (its b = B / N images: their first and their second views, and their small
views under ``augment.small_crops``). Rank 0 writes the losses of every step and the final
weights to OUT_FILE (torch.save).
"""

from __future__ import annotations

import sys

import torch

from quantrieve.config import load_config
from quantrieve.data import read_dataset
from quantrieve.runtime.distributed import from_environment, shutdown
from quantrieve.train.trainer import Trainer


def main() -> None:
    root, out, steps, sync = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    torch.set_num_threads(1)
    config = load_config(
        overrides=[
            f"data.root={root}",
            "model.width=4",
            "model.proj_hidden=16",
            "model.codeword_dim=4",
            "model.num_books=4",
            "train.batch_size=16",
            "train.epochs=2",
            "train.warmup_epochs=0",
            "train.amp=false",
            "train.device=cpu",  # gloo on the CPU, also where a GPU is present
            "data.val_queries=0",
            f"train.sync_batchnorm={sync}",
            *sys.argv[5:],
        ]
    )
    place = from_environment()
    train = read_dataset("fashion-mnist", root)["train"]
    trainer = Trainer(config, train)
    batch, local = config.train.batch_size, trainer.local_batch
    rows = torch.arange(place.rank * local, (place.rank + 1) * local)
    crops = config.augment.small_crops
    losses = []
    for step in range(steps):
        generator = torch.Generator().manual_seed(100 + step)
        views = torch.rand(2 * batch, 1, 12, 12, generator=generator)
        mine = torch.cat([views[rows], views[batch + rows]])
        small = torch.rand(crops * batch, 1, 9, 9, generator=generator)
        my_small = torch.cat([small[c * batch + rows] for c in range(crops)]) if crops else None
        losses.append(trainer.step_on_views(mine, step, my_small)["loss"])
    if place.is_main:
        torch.save({"losses": losses, "weights": trainer.model.state_dict()}, out)
    shutdown(place)


def gather_gradients(rank: int, world: int, init_file: str, out: str) -> None:
    """One rank of the gathered-gradient check (run by torch.multiprocessing.spawn): gathers
    its rows with :func:`all_gather_with_grad`, backpropagates its own loss of the whole
    gathered tensor, and saves the gathered tensor and its rows' gradient to ``out.RANK``."""
    import torch.distributed as dist

    from quantrieve.runtime.distributed import all_gather_with_grad

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        rows = gathered_rows(rank).requires_grad_()
        gathered = all_gather_with_grad(rows)
        rank_loss(gathered, rank).backward()
        torch.save({"gathered": gathered.detach(), "grad": rows.grad}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def gathered_rows(rank: int) -> torch.Tensor:
    """The rows rank ``rank`` contributes to the gathered-gradient check."""
    return torch.randn(3, 4, generator=torch.Generator().manual_seed(rank))


def rank_loss(gathered: torch.Tensor, rank: int) -> torch.Tensor:
    """A loss of every rank's rows that differs from rank to rank (rank-dependent weights)."""
    weights = torch.linspace(-1, 2, gathered.numel()).view_as(gathered) * (rank + 1)
    return (weights * gathered).tanh().square().sum() + gathered[rank].sum()


if __name__ == "__main__":
    main()
