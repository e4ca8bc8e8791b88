"""From images to embeddings and PQ codes with a trained model.

:class:`RetrievalModel` bundles input normalisation and the encoder; it is what a run saves as
``model.pt`` and what an index directory carries so that query images can be embedded later.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from quantrieve.augment import Normalize, to_float_images
from quantrieve.config import ModelConfig, config_from_dict
from quantrieve.models import QuantizationEncoder
from quantrieve.train.checkpoint import atomic_save, load_checkpoint
from quantrieve.train.device import autocast

MODEL_FORMAT = "quantrieve-model"
MODEL_VERSION = 1


class RetrievalModel(nn.Module):
    """Normalisation + encoder, with the input geometry it was trained on.

    Args:
        config: Model section of the run config.
        image_size: Side of the square input images.
        channels: Input channel count.
        mean, std: Per-channel statistics of the training images (in [0, 1] units).
    """

    def __init__(
        self,
        config: ModelConfig,
        image_size: int,
        channels: int,
        mean: list[float],
        std: list[float],
    ) -> None:
        super().__init__()
        self.config = config
        self.image_size = image_size
        self.channels = channels
        self.normalize = Normalize(mean, std)
        self.encoder = QuantizationEncoder(config, channels)
        # Filled when loaded from a file: the epoch and validation mAP the weights come from.
        self.training_info: dict[str, Any] = {}

    @property
    def quantizer(self):
        return self.encoder.quantizer

    def check_images(self, images: np.ndarray | Tensor) -> None:
        """Raise a clear error if a uint8 batch does not match the trained geometry."""
        expected = (self.image_size, self.image_size, self.channels)
        if tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"images of shape (H, W, C) = {tuple(images.shape[1:])} do not match the model's "
                f"{expected}; resize or convert them first"
            )

    def metadata(self) -> dict[str, Any]:
        return {
            "format": MODEL_FORMAT,
            "version": MODEL_VERSION,
            "model": self.config.__dict__.copy(),
            "image_size": self.image_size,
            "channels": self.channels,
            "mean": self.normalize.mean.flatten().tolist(),
            "std": self.normalize.std.flatten().tolist(),
        }

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Atomic save of weights and everything needed to rebuild the model."""
        return atomic_save(
            {**self.metadata(), "state_dict": self.state_dict(), **(extra or {})}, path
        )

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> RetrievalModel:
        if payload.get("format") != MODEL_FORMAT:
            raise ValueError("not a quantrieve model file (missing format marker)")
        if payload.get("version", 0) > MODEL_VERSION:
            raise ValueError(
                f"model file version {payload['version']} is newer than this quantrieve"
            )
        config = config_from_dict({"model": payload["model"]}).model
        model = cls(
            config, payload["image_size"], payload["channels"], payload["mean"], payload["std"]
        )
        model.load_state_dict(payload["state_dict"])
        model.training_info = {k: payload[k] for k in ("epoch", "val_map") if k in payload}
        return model.eval()

    @classmethod
    def load(cls, path: str | Path) -> RetrievalModel:
        try:
            return cls.from_payload(load_checkpoint(path))
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{path}: {exc}") from None


@torch.no_grad()
def embed_images(
    model: RetrievalModel,
    images: np.ndarray,
    device: torch.device,
    batch_size: int = 1024,
    amp: bool = True,
    progress: Any = None,
    indices: np.ndarray | None = None,
) -> Tensor:
    """Continuous embeddings f (N, M*d) of uint8 images (N, H, W, C), on the CPU, float32.

    Args:
        progress: optional callable ``progress(n_done)`` called after every batch.
        indices: embed only ``images[indices]``, gathered batch by batch (a memory-mapped
            array is never copied whole).
    """
    model.check_images(images)
    order = np.arange(len(images)) if indices is None else np.asarray(indices)
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = torch.from_numpy(np.ascontiguousarray(images[rows]))
        x = model.normalize(to_float_images(batch.to(device)))
        with autocast(device, amp):
            f = model.encoder.embed(x)
        out.append(f.float().cpu())
        if progress is not None:
            progress(start + len(rows))
    model.train(was_training)
    if not out:
        return torch.zeros(0, model.config.embed_dim)
    return torch.cat(out)


def channel_stats(images: np.ndarray, sample: int = 10_000) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] units, from up to ``sample`` evenly spaced images,
    accumulated in chunks (memory stays bounded for large images)."""
    rows = np.arange(0, len(images), max(1, len(images) // sample))
    total = np.zeros(images.shape[-1])
    total_sq = np.zeros(images.shape[-1])
    count = 0
    for start in range(0, len(rows), 512):
        x = np.asarray(images[rows[start : start + 512]], dtype=np.float64) / 255.0
        total += x.sum(axis=(0, 1, 2))
        total_sq += (x**2).sum(axis=(0, 1, 2))
        count += x.shape[0] * x.shape[1] * x.shape[2]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0)).clip(min=1e-3)
    return mean.tolist(), std.tolist()
