"""The full HQC network: backbone -> projection head -> embedding f -> product quantizer."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from quantrieve.config import ModelConfig
from quantrieve.models.backbones import build_backbone
from quantrieve.models.quantizer import ProductQuantizer


class ProjectionHead(nn.Module):
    """Linear(dim_in, hidden) -> ReLU -> Linear(hidden, M*d); f is not normalised."""

    def __init__(self, dim_in: int, hidden: int, dim_out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim_in, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim_out)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def reference_init(encoder: QuantizationEncoder) -> None:
    """The HQC authors' initialisation of the head and codebooks (``model.init = reference``).

    Their codebooks are one (K, M*d) matrix under Xavier-uniform, bound sqrt(6 / (K + M*d)),
    where Xavier over our (M, K, d) tensor has bound sqrt(6 / (K*d + M*d)): 1.6x smaller at
    M = 8, K = 16, d = 16. The head's first linear layer is drawn from N(0, 0.01^2).
    """
    quantizer = encoder.quantizer
    m, k, d = quantizer.codebooks.shape
    with torch.no_grad():
        flat = torch.empty(k, m * d)
        nn.init.xavier_uniform_(flat)
        quantizer.codebooks.copy_(flat.reshape(k, m, d).transpose(0, 1))
        first = encoder.head.net[0]
        assert isinstance(first, nn.Linear)
        nn.init.normal_(first.weight, std=0.01)


class QuantizationEncoder(nn.Module):
    """Maps images to embeddings f and soft-quantized z; encodes to uint8 PQ codes.

    Args:
        config: Backbone, head and quantizer sizes.
        in_channels: Channels of the input images.
    """

    def __init__(self, config: ModelConfig, in_channels: int) -> None:
        super().__init__()
        # Convolutions run in channels-last layout by default: oneDNN (CPU, bf16) and cuDNN
        # (AMP) have faster kernels for it (README, "Speed").
        self.memory_format = (
            torch.channels_last if config.channels_last else torch.contiguous_format
        )
        self.backbone = build_backbone(
            config.backbone, in_channels, config.width, config.stages
        ).to(memory_format=self.memory_format)
        self.head = ProjectionHead(self.backbone.out_dim, config.proj_hidden, config.embed_dim)
        self.quantizer = ProductQuantizer(
            config.num_books, config.num_codewords, config.codeword_dim, config.tau_sq
        )
        if config.init == "reference":
            reference_init(self)

    def embed(self, x: Tensor) -> Tensor:
        """Continuous embedding f (B, M*d): the query side of retrieval."""
        return self.head(self.backbone(x.contiguous(memory_format=self.memory_format)))

    def embed_with_backbone(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(f, h): the embedding and the backbone's representation h (B, backbone dim) it is
        projected from, in one pass."""
        h = self.backbone(x.contiguous(memory_format=self.memory_format))
        return self.head(h), h

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Returns (f, z): the embedding and its soft quantization."""
        f = self.embed(x)
        return f, self.quantizer(f)
