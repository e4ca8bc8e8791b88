"""Where this process stands in a data-parallel run, as ``torchrun`` describes it in the
environment (torch-free: the command line reads it before anything imports torch)."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Distributed:
    """Where this process stands in a data-parallel run.

    Attributes:
        rank: 0 .. world_size - 1; rank 0 alone writes checkpoints, logs and the model.
        world_size: number of processes.
        local_rank: rank on this machine (the CUDA device index).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_environment() -> Distributed:
    """The process's place as ``torchrun`` describes it (a single process without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    return Distributed(
        int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))
    )
