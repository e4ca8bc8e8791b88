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

from quantrieve.config import ModelConfig, config_from_dict
from quantrieve.errors import ModelFormatError, QuantrieveError
from quantrieve.models import QuantizationEncoder
from quantrieve.runtime.checkpoint import atomic_save, load_checkpoint
from quantrieve.runtime.device import autocast
from quantrieve.runtime.progress import Progress, report

MODEL_FORMAT = "quantrieve-model"
MODEL_VERSION = 1


def to_float_images(batch_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, C) to float (B, C, H, W) in [0, 1], on the batch's device."""
    return batch_uint8.permute(0, 3, 1, 2).float().div_(255.0)


class Normalize(nn.Module):
    """Per-channel standardisation with statistics of the training images."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"mean/std must have equal lengths and std > 0, got {mean}, {std}")
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


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
    def quantizer(self) -> nn.Module:
        return self.encoder.quantizer

    def embed(self, images: Tensor, amp: bool = False) -> Tensor:
        """Continuous embeddings f (B, M*d), float32, of float images (B, C, H, W) in [0, 1].

        The one forward pass of the model, shared by training, encoding and search: per-channel
        normalisation, then backbone and projection head (under autocast when ``amp``).
        """
        x = self.normalize(images)
        with autocast(images.device, amp):
            f = self.encoder.embed(x)
        return f.float()

    def embed_with_backbone(self, images: Tensor, amp: bool = False) -> tuple[Tensor, Tensor]:
        """``(f, u)``: the embeddings f (B, M*d) and the backbone's representation (before the
        projection head) scaled to unit length, u (B, :attr:`backbone_dim`), both float32.

        u is what an index that refines by ``backbone`` re-scores with: in contrastive
        learning the representation before the projection head keeps more of what tells two
        images apart than the head's output, which the loss makes invariant to the
        augmentations (Chen et al., "A Simple Framework for Contrastive Learning of Visual
        Representations", ICML 2020, section 4.2).
        """
        x = self.normalize(images)
        with autocast(images.device, amp):
            f, h = self.encoder.embed_with_backbone(x)
        return f.float(), torch.nn.functional.normalize(h.float(), dim=1)

    @property
    def backbone_dim(self) -> int:
        """Dimension of the backbone's representation (:meth:`embed_with_backbone`)."""
        return int(self.encoder.backbone.out_dim)

    def check_images(self, images: np.ndarray | Tensor) -> None:
        """Raise a clear error if a uint8 batch does not match the trained geometry."""
        expected = (self.image_size, self.image_size, self.channels)
        if tuple(images.shape[1:]) != expected:
            raise QuantrieveError(
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
        """Read a model file written by :meth:`save` (errors name the file once)."""
        payload = load_checkpoint(path)
        try:
            return cls.from_payload(payload)
        except (KeyError, ValueError) as exc:
            raise ModelFormatError(f"{path}: {exc}") from None


@torch.no_grad()
def embed_images(
    model: RetrievalModel,
    images: np.ndarray,
    device: torch.device,
    batch_size: int = 1024,
    amp: bool = True,
    progress: Progress | None = None,
    indices: np.ndarray | None = None,
) -> Tensor:
    """Continuous embeddings f (N, M*d) of uint8 images (N, H, W, C), on the CPU, float32.

    Args:
        progress: ``progress(done, total)`` after every batch (:mod:`quantrieve.runtime.progress`).
        indices: embed only ``images[indices]``, gathered batch by batch (a memory-mapped
            array is never copied whole).
    """
    return _embed_batches(model, images, device, batch_size, amp, progress, indices, False)[0]


@torch.no_grad()
def embed_images_with_backbone(
    model: RetrievalModel,
    images: np.ndarray,
    device: torch.device,
    batch_size: int = 1024,
    amp: bool = True,
    progress: Progress | None = None,
    indices: np.ndarray | None = None,
) -> tuple[Tensor, Tensor]:
    """``(f, u)`` of uint8 images as :meth:`RetrievalModel.embed_with_backbone`, on the CPU,
    float32; arguments as :func:`embed_images`."""
    return _embed_batches(model, images, device, batch_size, amp, progress, indices, True)


def _embed_batches(
    model: RetrievalModel,
    images: np.ndarray,
    device: torch.device,
    batch_size: int,
    amp: bool,
    progress: Progress | None,
    indices: np.ndarray | None,
    backbone: bool,
) -> tuple[Tensor, Tensor]:
    """Embeddings (and unit backbone representations when ``backbone``, else an empty
    tensor) of ``images[indices]``, batch by batch."""
    model.check_images(images)
    order = np.arange(len(images)) if indices is None else np.asarray(indices)
    was_training = model.training
    model.eval()
    embeddings, representations = [], []
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = torch.from_numpy(np.ascontiguousarray(images[rows]))
        # Contiguous NCHW: the permuted (channels-last) view takes a slower convolution path,
        # three times slower for a single query image.
        x = to_float_images(batch.to(device)).contiguous()
        if backbone:
            f, u = model.embed_with_backbone(x, amp)
            representations.append(u.cpu())
        else:
            f = model.embed(x, amp)
        embeddings.append(f.cpu())
        report(progress, start + len(rows), len(order))
    model.train(was_training)
    width = model.backbone_dim if backbone else 0
    if not embeddings:
        return torch.zeros(0, model.config.embed_dim), torch.zeros(0, width)
    u_all = torch.cat(representations) if backbone else torch.zeros(len(order), 0)
    return torch.cat(embeddings), u_all


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
