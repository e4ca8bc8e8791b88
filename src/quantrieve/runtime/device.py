"""Device and mixed-precision choice, the same code on CPU and CUDA."""

from __future__ import annotations

import contextlib

import torch

from quantrieve.errors import QuantrieveError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; an explicit name is checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise QuantrieveError(f"train.device = '{name}' but CUDA is not available on this machine")
    return device


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CPU and on CUDA GPUs that support it, fp16 on older GPUs."""
    if not enabled or device.type not in ("cpu", "cuda"):
        return contextlib.nullcontext()
    dtype = torch.bfloat16
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        dtype = torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def needs_grad_scaler(device: torch.device, enabled: bool) -> bool:
    """fp16 (not bf16) needs loss scaling."""
    return enabled and device.type == "cuda" and not torch.cuda.is_bf16_supported()
