"""A pretrained start: backbone weights from a local torchvision-style ResNet state dict.

Users with network access fetch ImageNet weights themselves (e.g. torchvision's
``resnet18-f37072fd.pth``); quantrieve reads the file they have and downloads nothing. The
file is a state dict in torchvision's names (``conv1``, ``bn1``, ``layer1.0.conv1``, ...,
``layerN.i.downsample.0``, ``fc``), or a dict holding one under ``state_dict`` or ``model``; the
classifier (``fc``) is dropped. Names are mapped onto quantrieve's ResNet (``stem``, ``stages``,
``shortcut``); every backbone weight must be found with the right shape, or nothing is loaded.
A three-channel first convolution given to a one-channel model is summed over its input
channels (what it computes on a gray image replicated to RGB).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor, nn

from quantrieve.errors import ModelFormatError
from quantrieve.runtime.checkpoint import load_checkpoint

# Blocks per stage of the ImageNet ResNets (torchvision's layer1..layer4).
STAGE_BLOCKS = {"resnet18": [2, 2, 2, 2], "resnet50": [3, 4, 6, 3]}


def torchvision_to_quantrieve(name: str, backbone: str) -> str | None:
    """quantrieve's name of a torchvision ResNet parameter or buffer (None for ``fc``)."""
    if name.startswith("fc."):
        return None
    if name.startswith("conv1."):
        return "stem.0." + name[len("conv1.") :]
    if name.startswith("bn1."):
        return "stem.1." + name[len("bn1.") :]
    match = re.match(r"layer(\d)\.(\d+)\.(.*)", name)
    if match is None:
        raise ModelFormatError(f"not a torchvision ResNet parameter: {name}")
    stage, block, rest = int(match[1]), int(match[2]), match[3]
    offset = sum(STAGE_BLOCKS[backbone][: stage - 1])
    return f"stages.{offset + block}.{rest.replace('downsample.', 'shortcut.')}"


def _state_dict(payload: dict) -> dict[str, Tensor]:
    for key in ("state_dict", "model"):
        if isinstance(payload.get(key), dict):
            payload = payload[key]
    return {k.removeprefix("module."): v for k, v in payload.items() if torch.is_tensor(v)}


def load_pretrained_backbone(model: nn.Module, backbone: str, path: str | Path) -> int:
    """Copy a torchvision-style ResNet state dict into ``model`` (a quantrieve ResNet).

    Returns:
        The number of tensors loaded.

    Raises:
        ModelFormatError: unreadable file, a backbone without ImageNet layout, or weights
            missing or of the wrong shape (the first few are named).
    """
    if backbone not in STAGE_BLOCKS:
        raise ModelFormatError(
            f"model.pretrained needs backbone resnet18 or resnet50 (torchvision's layouts), "
            f"not {backbone}"
        )
    source = _state_dict(load_checkpoint(path))
    target = model.state_dict()
    mapped: dict[str, Tensor] = {}
    for name, value in source.items():
        ours = torchvision_to_quantrieve(name, backbone)
        if ours is None:
            continue
        if ours == "stem.0.weight" and value.shape[1] == 3 and target[ours].shape[1] == 1:
            value = value.sum(1, keepdim=True)
        mapped[ours] = value
    missing = sorted(set(target) - set(mapped))
    wrong = sorted(n for n in set(target) & set(mapped) if mapped[n].shape != target[n].shape)
    if missing or wrong:
        problems = [f"missing {n}" for n in missing[:3]] + [
            f"{n}: {tuple(mapped[n].shape)} for {tuple(target[n].shape)}" for n in wrong[:3]
        ]
        raise ModelFormatError(
            f"{path}: not a {backbone} state dict ({len(missing)} missing, {len(wrong)} of "
            f"another shape: {'; '.join(problems)})"
        )
    model.load_state_dict({n: mapped[n] for n in target})
    return len(target)
