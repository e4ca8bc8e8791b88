"""Instance-contrastive losses with in-batch negatives.

Convention for every loss in this package: the two views of a batch of B images are stacked as
2B rows, view a first; the twin of row r is row (r + B) mod 2B. The functions take the whole
(gathered) batch, so a multi-process version can all-gather and call them unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def twin_index(batch_size: int, device: torch.device | None = None) -> Tensor:
    """Index of the other view of each of the 2B rows: (r + B) mod 2B."""
    return (torch.arange(2 * batch_size, device=device) + batch_size) % (2 * batch_size)


def _check_pair(a: Tensor, b: Tensor) -> None:
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"expected two (B, D) tensors of equal shape, got {a.shape}, {b.shape}")
    if a.shape[0] < 2:
        raise ValueError("in-batch negatives need a batch of at least 2 images")


def nt_xent(a: Tensor, b: Tensor, temperature: float = 0.5) -> Tensor:
    """NT-Xent (normalised temperature-scaled cross entropy), SimCLR [Chen et al., ICML 2020].

    For each of the 2B rows, the positive is its twin and the other 2B-2 rows are negatives;
    similarities are cosine, divided by ``temperature``. Used for L_icf (on f) and L_icz (on z)
    of HQC [Wu et al., BMVC 2023, eq. for the global instance-contrastive terms].

    Args:
        a: (B, D) first views.
        b: (B, D) second views, row i the twin of ``a[i]``.
        temperature: tau_ic.

    Returns:
        Scalar loss, the mean over the 2B anchors.
    """
    _check_pair(a, b)
    x = F.normalize(torch.cat([a, b]).float(), dim=1)
    logits = x @ x.T / temperature
    logits.fill_diagonal_(float("-inf"))
    return F.cross_entropy(logits, twin_index(a.shape[0], a.device))


def cross_quantized_contrastive(
    f_a: Tensor, f_b: Tensor, z_a: Tensor, z_b: Tensor, temperature: float = 0.5
) -> Tensor:
    """SPQ's cross-quantized contrastive loss [Jang & Cho, ICCV 2021, eq. 5].

    NT-Xent between the embedding of one view and the soft-quantized vector of the other,
    both ways, summed as in SPQ: ``nt_xent(f_a, z_b) + nt_xent(f_b, z_a)``.

    Args:
        f_a, f_b: (B, D) embeddings of the two views.
        z_a, z_b: (B, D) soft-quantized vectors of the two views.
        temperature: tau of SPQ (0.5).
    """
    return nt_xent(f_a, z_b, temperature) + nt_xent(f_b, z_a, temperature)
