"""Consistent contrastive regularisation L_cc of HQC [Wu et al., BMVC 2023, global part]."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from quantrieve.losses.contrastive import _check_pair

_MASKED = -1.0e4  # finite, so 0 * (masked log-prob) stays 0 in the KL sums


def negatives_mask(batch_size: int, device: torch.device | None = None) -> Tensor:
    """(B, 2B) boolean: True where column j is a negative for image i (j not in {i, i+B})."""
    cols = torch.arange(2 * batch_size, device=device)
    rows = torch.arange(batch_size, device=device).unsqueeze(1)
    return (cols != rows) & (cols != rows + batch_size)


def consistent_contrastive(u_a: Tensor, u_b: Tensor, temperature: float = 0.2) -> Tensor:
    """L_cc: both views of an image should see the in-batch negatives alike.

    For image i, s^a_i holds the cosine similarities of u^a_i to the 2B-2 negatives (every view
    but i^a and i^b) and s^b_i those of u^b_i to the same negatives in the same order.
    P_i = softmax(s^a_i / tau), Q_i = softmax(s^b_i / tau), and

        L_cc = mean_i [ 1/2 KL(Q_i || P_i) + 1/2 KL(P_i || Q_i) ].

    Args:
        u_a, u_b: (B, D) fused features of the two views (``f + z`` by default).
        temperature: tau_cc (0.2).
    """
    _check_pair(u_a, u_b)
    batch = u_a.shape[0]
    u = F.normalize(torch.cat([u_a, u_b]).float(), dim=1)
    sims = u @ u.T / temperature  # (2B, 2B)
    keep = negatives_mask(batch, u.device)
    log_p = torch.log_softmax(sims[:batch].masked_fill(~keep, _MASKED), dim=1)
    log_q = torch.log_softmax(sims[batch:].masked_fill(~keep, _MASKED), dim=1)
    p, q = log_p.exp(), log_q.exp()
    kl_qp = (q * (log_q - log_p)).masked_fill(~keep, 0).sum(1)
    kl_pq = (p * (log_p - log_q)).masked_fill(~keep, 0).sum(1)
    return (0.5 * kl_qp + 0.5 * kl_pq).mean()
