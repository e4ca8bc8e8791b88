"""A pretrained start from a torchvision-style ResNet state dict the test writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from quantrieve.config import load_config
from quantrieve.data import read_dataset
from quantrieve.errors import ModelFormatError
from quantrieve.models.backbones import build_backbone
from quantrieve.models.pretrained import STAGE_BLOCKS, torchvision_to_quantrieve
from quantrieve.train.trainer import Trainer


def _torchvision_names(backbone: str) -> dict[str, str]:
    """Our name -> torchvision's, by inverting the mapping over a torchvision-like name list."""
    names = [
        "conv1.weight",
        *[
            f"bn1.{s}"
            for s in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
        ],
    ]
    inner = ["conv1", "bn1", "conv2", "bn2"] + (["conv3", "bn3"] if backbone == "resnet50" else [])
    for stage, blocks in enumerate(STAGE_BLOCKS[backbone], start=1):
        for block in range(blocks):
            parts = inner + (["downsample.0", "downsample.1"] if block == 0 else [])
            for part in parts:
                kinds = (
                    ["weight"]
                    if "conv" in part or part.endswith(".0")
                    else ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
                )
                names += [f"layer{stage}.{block}.{part}.{k}" for k in kinds]
    return {torchvision_to_quantrieve(n, backbone): n for n in names}


def _write_torchvision_file(path: Path, channels: int = 3) -> dict[str, torch.Tensor]:
    torch.manual_seed(5)
    source = build_backbone("resnet18", channels)
    names = _torchvision_names("resnet18")
    state = {names[k]: v.clone() for k, v in source.state_dict().items() if k in names}
    state["fc.weight"] = torch.randn(1000, 512)
    state["fc.bias"] = torch.randn(1000)
    torch.save({"state_dict": state}, path)
    return source.state_dict()


def test_backbone_starts_from_the_file(tiny_fashion: Path, tmp_path: Path) -> None:
    expected = _write_torchvision_file(tmp_path / "resnet18.pth", channels=3)
    config = load_config(
        overrides=[
            f"data.root={tiny_fashion}",
            "model.backbone=resnet18",
            f"model.pretrained={tmp_path / 'resnet18.pth'}",
            "train.batch_size=32",
            "train.epochs=1",
            "train.device=cpu",
            "train.warmup_epochs=0",
            "data.val_queries=0",
        ]
    )
    train = read_dataset("fashion-mnist", tiny_fashion)["train"]  # one channel
    trainer = Trainer(config, train)
    loaded = trainer.model.encoder.backbone.state_dict()
    # The RGB first convolution is summed over its input channels for gray images.
    torch.testing.assert_close(loaded["stem.0.weight"], expected["stem.0.weight"].sum(1, True))
    for name in ("stages.3.conv2.weight", "stages.6.shortcut.0.weight", "stem.1.running_var"):
        torch.testing.assert_close(loaded[name], expected[name])


def test_a_file_of_another_architecture_is_refused(tiny_fashion: Path, tmp_path: Path) -> None:
    torch.save({"layer1.0.conv1.weight": torch.zeros(3, 3)}, tmp_path / "other.pth")
    config = load_config(
        overrides=[
            f"data.root={tiny_fashion}",
            "model.backbone=resnet18",
            f"model.pretrained={tmp_path / 'other.pth'}",
            "data.val_queries=0",
        ]
    )
    train = read_dataset("fashion-mnist", tiny_fashion)["train"]
    with pytest.raises(ModelFormatError, match="not a resnet18 state dict"):
        Trainer(config, train)
    with pytest.raises(Exception, match="needs backbone resnet18 or resnet50"):
        load_config(overrides=["model.pretrained=x.pth"])
