"""Product quantizer with trainable codebooks (docs/method.md, Model; SPQ 2021, HQC 2023).

An embedding f of dimension M*d is cut into M sub-vectors f_m. Each book m has K codewords
c_mk (codebooks of shape (M, K, d), all trainable). Soft quantization:

    a_mk = softmax_k(-||f_m - c_mk||^2 / tau_sq),   z_m = sum_k a_mk c_mk

and the hard code b_m = argmin_k ||f_m - c_mk||^2, stored as uint8. Bits = M * log2(K).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from quantrieve.pq import code_bits, is_codeword_count, lookup_tables


class ProductQuantizer(nn.Module):
    """Trainable product quantizer.

    Args:
        num_books: M, the number of sub-spaces.
        num_codewords: K, codewords per book; a power of two <= 256 (codes are uint8).
        codeword_dim: d, the dimension of each sub-space.
        tau_sq: Temperature of the soft assignment over squared distances.
    """

    def __init__(
        self, num_books: int, num_codewords: int, codeword_dim: int, tau_sq: float = 0.2
    ) -> None:
        super().__init__()
        if num_books < 1:
            raise ValueError(f"num_books must be >= 1, got {num_books}")
        if not is_codeword_count(num_codewords):
            raise ValueError(
                f"num_codewords must be a power of two in [2, 256], got {num_codewords}"
            )
        if codeword_dim < 1:
            raise ValueError(f"codeword_dim must be >= 1, got {codeword_dim}")
        if tau_sq <= 0:
            raise ValueError(f"tau_sq must be > 0, got {tau_sq}")
        self.num_books = num_books
        self.num_codewords = num_codewords
        self.codeword_dim = codeword_dim
        self.tau_sq = tau_sq
        self.codebooks = nn.Parameter(torch.empty(num_books, num_codewords, codeword_dim))
        nn.init.xavier_uniform_(self.codebooks)

    @torch.no_grad()
    def init_from_embeddings(
        self, f: Tensor, generator: torch.Generator, iterations: int = 20
    ) -> None:
        """Set each book's codewords to k-means centroids of the sub-vectors f_m (Lloyd's
        algorithm from k-means++ starting points, Arthur and Vassilvitskii, SODA 2007; an empty
        cluster keeps its centroid).

        Args:
            f: (N, M*d) embeddings, N >= K.
            generator: draws the starting points (seeded by the caller).
        """
        parts = self.split(f.float()).transpose(0, 1)  # (M, N, d)
        if parts.shape[1] < self.num_codewords:
            raise ValueError(f"k-means needs >= {self.num_codewords} embeddings, got {len(f)}")
        for m, points in enumerate(parts):
            centroids = _kmeans_plus_plus(points, self.num_codewords, generator)
            for _ in range(iterations):
                assign = torch.cdist(points, centroids).argmin(1)
                sums = torch.zeros_like(centroids).index_add_(0, assign, points)
                counts = torch.bincount(assign, minlength=self.num_codewords).unsqueeze(1)
                centroids = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
            self.codebooks[m].copy_(centroids.to(self.codebooks.dtype))

    @property
    def bits(self) -> int:
        """Code length: M * log2(K)."""
        return code_bits(self.num_books, self.num_codewords)

    @property
    def dim(self) -> int:
        return self.num_books * self.codeword_dim

    def split(self, f: Tensor) -> Tensor:
        """(B, M*d) to (B, M, d)."""
        if f.shape[-1] != self.dim:
            raise ValueError(f"expected embeddings of dimension {self.dim}, got {f.shape[-1]}")
        return f.reshape(*f.shape[:-1], self.num_books, self.codeword_dim)

    def squared_distances(self, f: Tensor) -> Tensor:
        """||f_m - c_mk||^2 for every book and codeword: (B, M*d) -> (B, M, K), in float32.

        The same computation as a search's look-up tables, so training and retrieval agree.
        """
        self.split(f)  # shape check with a clear message
        return lookup_tables(f, self.codebooks, "sqeuclidean")

    def soft_assign(self, f: Tensor) -> Tensor:
        """Soft assignment a_mk = softmax_k(-||f_m - c_mk||^2 / tau_sq): (B, M, K)."""
        return torch.softmax(-self.squared_distances(f) / self.tau_sq, dim=-1)

    def forward(self, f: Tensor) -> Tensor:
        """Soft-quantized z = concat_m sum_k a_mk c_mk, same shape as f (differentiable).

        Computed in float32 even under autocast: the softmax over distances / tau_sq is
        sensitive to bf16 rounding.
        """
        with torch.autocast(device_type=f.device.type, enabled=False):
            assign = self.soft_assign(f.float())  # (B, M, K)
            z = torch.einsum("bmk,mkd->bmd", assign, self.codebooks.float())
        return z.reshape(f.shape)

    @torch.no_grad()
    def encode(self, f: Tensor) -> Tensor:
        """Hard codes b_m = argmin_k ||f_m - c_mk||^2 as uint8: (B, M*d) -> (B, M)."""
        return self.squared_distances(f.float()).argmin(-1).to(torch.uint8)

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """Codewords of the hard codes, concatenated: (B, M) uint8 -> (B, M*d)."""
        if codes.shape[-1] != self.num_books:
            raise ValueError(f"expected codes with {self.num_books} books, got {codes.shape[-1]}")
        idx = codes.long()
        books = torch.arange(self.num_books, device=codes.device)
        return self.codebooks[books, idx].reshape(*codes.shape[:-1], self.dim)


def _kmeans_plus_plus(points: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k starting centroids: the first a random point, each next one a point drawn with
    probability proportional to its squared distance from the nearest centroid so far."""
    first = torch.randint(len(points), (1,), generator=generator)
    chosen = [points[first.to(points.device)]]
    nearest = torch.cdist(points, chosen[0]).squeeze(1) ** 2
    for _ in range(k - 1):
        weights = nearest.cpu().double()
        if float(weights.sum()) <= 0:  # every point is a centroid already: take any
            weights = torch.ones_like(weights)
        pick = torch.multinomial(weights, 1, generator=generator)
        chosen.append(points[pick.to(points.device)])
        nearest = torch.minimum(nearest, torch.cdist(points, chosen[-1]).squeeze(1) ** 2)
    return torch.cat(chosen).clone()
