"""Batch norm over the whole data-parallel batch, on the CPU as on CUDA.

With several processes, a plain batch norm normalises each rank's share of the batch with its
own statistics, so the network computes something else than one process would on the whole
batch. Synchronised batch norm sums the statistics of every rank first. PyTorch's
``nn.SyncBatchNorm`` runs on GPUs only; :class:`DistributedBatchNorm` does the same with a
differentiable all-gather of the per-rank sums and runs with ``gloo`` on the CPU. Outside a
process group, or in eval mode, it is an ordinary batch norm.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from quantrieve.runtime.distributed import all_gather_with_grad


class DistributedBatchNorm(_BatchNorm):
    """Batch norm whose training statistics are those of the batch of every rank together.

    Same parameters, buffers and state-dict keys as ``nn.BatchNorm1d/2d/3d``; the running
    variance is updated with the unbiased variance of the global batch, as PyTorch does.
    """

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input (N, C, ...), got {x.dim()}-D")

    def forward(self, x: Tensor) -> Tensor:
        grouped = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if not (self.training and grouped):
            return super().forward(x)
        self._check_input_dim(x)
        channels = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, channels] + [1] * (x.dim() - 2)
        xf = x.float()
        count = torch.full((1,), xf.numel() / channels, dtype=xf.dtype, device=x.device)
        local = torch.cat([xf.sum(dims), (xf * xf).sum(dims), count])
        # Sum over ranks through a differentiable gather (the gradient reaches every rank).
        stats = all_gather_with_grad(local[None]).sum(0)
        n = stats[-1]
        mean = stats[:channels] / n
        var = (stats[channels : 2 * channels] / n - mean * mean).clamp_min(0)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                assert self.num_batches_tracked is not None and self.running_var is not None
                self.num_batches_tracked += 1
                momentum = (
                    self.momentum
                    if self.momentum is not None
                    else 1.0 / float(self.num_batches_tracked)
                )
                self.running_mean.mul_(1 - momentum).add_(momentum * mean.detach())
                unbiased = var.detach() * n / (n - 1).clamp_min(1)
                self.running_var.mul_(1 - momentum).add_(momentum * unbiased)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device | None = None) -> nn.Module:
    """``module`` with every batch norm synchronised over the process group: PyTorch's fused
    ``nn.SyncBatchNorm`` on CUDA, :class:`DistributedBatchNorm` elsewhere (in place for
    children; the returned module is ``module`` unless it is a batch norm itself). Weights and
    running statistics are kept."""
    if device is not None and device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, _BatchNorm) and not isinstance(module, DistributedBatchNorm):
        replaced = DistributedBatchNorm(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
        ).to(next(iter(module.buffers()), torch.zeros(0)).device)
        replaced.load_state_dict(module.state_dict())
        replaced.train(module.training)
        return replaced
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child))
    return module
