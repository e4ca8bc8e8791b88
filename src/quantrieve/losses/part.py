"""Part consistent quantization terms of HQC [Wu et al., BMVC 2023, part-level terms]:
part neighbour consistency L_pn and codeword diversity L_cd.

Both are computed for all M books at once with batched matrix products instead of a Python
loop over books. ``benchmarks/loss_speed.py`` measures both against a loop: on a 2-core CPU the
batched L_cd is several times faster, while L_pn costs about the same either way (its top-N and
log-sum-exp touch the same M x 2B x 2B similarities in both forms).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _books(x: Tensor, num_books: int) -> Tensor:
    """(N, M*d) to L2-normalised (M, N, d)."""
    if x.ndim != 2 or x.shape[1] % num_books:
        raise ValueError(f"expected (N, M*d) with M = {num_books}, got {tuple(x.shape)}")
    parts = x.float().reshape(x.shape[0], num_books, -1).transpose(0, 1)
    return F.normalize(parts, dim=-1)


def part_neighbour_consistency(
    z_a: Tensor, z_b: Tensor, num_books: int, top_n: int = 20, temperature: float = 0.5
) -> Tensor:
    """L_pn: in every sub-quantized space, an anchor's N nearest candidates are soft positives.

    For book m and anchor r among the 2B views, the candidates are the other 2B-2 views (self
    and own twin excluded), s the cosine similarities of the z_m sub-vectors, and

        l_r = -log( sum_{top-N s} exp(s / tau) / sum_{all candidates} exp(s / tau) ),

    averaged over anchors and books. With N >= 2B-2 every candidate is positive and l = 0.

    Args:
        z_a, z_b: (B, M*d) soft-quantized vectors of the two views.
        num_books: M.
        top_n: N, the number of nearest candidates taken as positives (20).
        temperature: tau_pn (0.5).
    """
    if z_a.shape != z_b.shape:
        raise ValueError(f"views differ in shape: {tuple(z_a.shape)} vs {tuple(z_b.shape)}")
    batch = z_a.shape[0]
    if batch < 2:
        raise ValueError("in-batch candidates need a batch of at least 2 images")
    z = _books(torch.cat([z_a, z_b]), num_books)  # (M, 2B, d)
    sims = torch.bmm(z, z.transpose(1, 2)) / temperature  # (M, 2B, 2B)
    # Exclude self (main diagonal) and twin (diagonals at +-B) in place: 6B entries per book.
    for offset in (0, batch, -batch):
        sims.diagonal(offset=offset, dim1=1, dim2=2).fill_(float("-inf"))
    n = min(top_n, 2 * batch - 2)
    positives = torch.logsumexp(sims.topk(n, dim=-1).values, dim=-1)
    return (torch.logsumexp(sims, dim=-1) - positives).mean()


def codeword_diversity(f: Tensor, codebooks: Tensor, eps: float = 1e-5) -> Tensor:
    """L_cd: negative entropy of the average codeword usage per book.

    p_i = softmax_k(cos(f_m,i, c_mk)) (no temperature) for every view i, pbar = mean_i p_i and

        L_cd = (1/M) sum_m sum_k pbar_mk log(pbar_mk + eps).

    Minimising it spreads the usage over the K codewords of every book.

    Args:
        f: (N, M*d) embeddings of all views (N = 2B).
        codebooks: (M, K, d).
    """
    if codebooks.ndim != 3:
        raise ValueError(f"codebooks must be (M, K, d), got {tuple(codebooks.shape)}")
    num_books, _, dim = codebooks.shape
    if f.ndim != 2 or f.shape[1] != num_books * dim:
        raise ValueError(
            f"embeddings must be (N, {num_books * dim}) for codebooks {tuple(codebooks.shape)}, "
            f"got {tuple(f.shape)}"
        )
    parts = _books(f, num_books)  # (M, N, d)
    words = F.normalize(codebooks.float(), dim=-1)
    usage = torch.softmax(torch.bmm(parts, words.transpose(1, 2)), dim=-1).mean(1)  # (M, K)
    return (usage * torch.log(usage + eps)).sum(-1).mean()
