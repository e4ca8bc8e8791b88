"""Several processes, one training: the process group, gathering with gradients, rank 0 writes.

quantrieve trains data-parallel under ``torchrun`` (torch.distributed's launcher), which sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. Backend ``gloo``
on the CPU, ``nccl`` on CUDA. A single process (no ``WORLD_SIZE``, or 1) needs none of it.
"""

from __future__ import annotations

import threading
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from quantrieve.runtime.placement import Distributed, from_environment


def setup(device: torch.device) -> Distributed:
    """Join the process group (once) when launched by ``torchrun``; ``nccl`` for CUDA devices,
    ``gloo`` otherwise."""
    place = from_environment()
    if place.enabled and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return place


def gather(tensor: Tensor, place: Distributed) -> Tensor:
    """Concatenate every rank's ``tensor`` along dim 0, in rank order, keeping the gradient:
    each rank's backward receives the sum over ranks of the gradients of its own slice."""
    if not place.enabled:
        return tensor
    return all_gather_with_grad(tensor)


def all_gather_with_grad(tensor: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    """Every rank's ``tensor`` concatenated along dim 0 (rank order), differentiable: the
    backward pass sums each slice's gradients over ranks and returns them to the slice's rank
    (a reduce-scatter). Every rank must pass a tensor of the same shape."""
    return _GatherWithGradient.apply(tensor, group)


# torch 2.13 renamed the single-tensor collectives (all_gather_into_tensor ->
# all_gather_single, reduce_scatter_tensor -> reduce_scatter_single) and deprecated the old
# names; both are public, so take the new one where it exists.
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter_single = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


class _GatherWithGradient(torch.autograd.Function):
    """All-gather along dim 0 forward, reduce-scatter (sum) backward, over public collectives."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor, group: dist.ProcessGroup | None) -> Tensor:
        ctx.group = group
        world = dist.get_world_size(group)
        local = tensor.contiguous()
        out = local.new_empty((world * local.shape[0], *local.shape[1:]))
        _all_gather_single(out, local, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        world = dist.get_world_size(ctx.group)
        full = grad.contiguous()
        mine = full.new_empty((full.shape[0] // world, *full.shape[1:]))
        _reduce_scatter_single(mine, full, group=ctx.group)
        return mine, None


def barrier(place: Distributed) -> None:
    """Wait for every rank (a no-op in a single process)."""
    if place.enabled:
        dist.barrier()


def shutdown(place: Distributed) -> None:
    """Leave the process group once every rank got here (a no-op in a single process). A rank
    that exits with the group still up can abort in its communication threads ("terminate
    called without an active exception"), and torchrun then fails the whole job."""
    if place.enabled and dist.is_initialized():
        if dist.get_backend() == "gloo":
            _barrier_in_a_fresh_thread()
        else:  # nccl: the barrier belongs on this thread's CUDA device
            dist.barrier()
        dist.destroy_process_group()


def _barrier_in_a_fresh_thread() -> None:
    """``dist.barrier()`` called from a new thread, which holds no Python objects in torch's
    thread-local state. A collective captures its caller's thread-local state, and gloo's worker
    thread may drop the finished work after this process has begun to exit: dropping Python
    objects then needs the interpreter lock the exiting interpreter no longer gives, and the
    process aborts. Work captured in a fresh thread holds nothing that needs the lock."""
    failure: list[BaseException] = []

    def wait() -> None:
        try:
            dist.barrier()
        except BaseException as error:  # re-raised in the caller's thread
            failure.append(error)

    thread = threading.Thread(target=wait, name="quantrieve-shutdown-barrier")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


def broadcast_object(value: object, place: Distributed) -> object:
    """Rank 0's ``value`` on every rank."""
    if not place.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
