"""Asymmetric distance computation (ADC) with a per-query look-up table, and exact search.

The bottom layer of quantrieve: pure tensor maths, imported by models, index and evaluation.

The query stays continuous (its embedding f), database items are uint8 PQ codes. For each
query a table T (M x K) holds the distance of each query sub-vector f_m to each codeword c_mk;
an item's distance is the sum over books of T[m, b_m]. Two distances:

- ``l2``: T = ||f_m - c_mk|| (not squared), as in SPQ and the HQC reference;
- ``sqeuclidean``: T = ||f_m - c_mk||^2, standard ADC (faiss ``IndexPQ``).

Everything is batched over a chunk of queries and the whole database; no per-query Python loop.
Rankings are ascending by distance with ties broken by database index (lower index first).
"""

from __future__ import annotations

import torch
from torch import Tensor

from quantrieve.pq.ranking import query_chunks, topk_smallest

DISTANCES = ("l2", "sqeuclidean")


def lookup_tables(queries: Tensor, codebooks: Tensor, distance: str = "l2") -> Tensor:
    """Per-query look-up tables (Q, M, K) of sub-space distances.

    Args:
        queries: (Q, M*d) continuous query embeddings.
        codebooks: (M, K, d).
        distance: ``l2`` (non-squared, the papers') or ``sqeuclidean`` (standard ADC).
    """
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got '{distance}'")
    num_books, _, dim = codebooks.shape
    if queries.ndim != 2 or queries.shape[1] != num_books * dim:
        raise ValueError(
            f"queries must be (Q, {num_books * dim}) for codebooks {tuple(codebooks.shape)}, "
            f"got {tuple(queries.shape)}"
        )
    parts = queries.float().reshape(-1, num_books, dim).transpose(0, 1)  # (M, Q, d)
    books = codebooks.float()
    sq = (
        parts.pow(2).sum(-1, keepdim=True)
        - 2 * torch.bmm(parts, books.transpose(1, 2))
        + books.pow(2).sum(-1).unsqueeze(1)
    ).clamp_min(0)  # (M, Q, K)
    table = sq.sqrt() if distance == "l2" else sq
    return table.transpose(0, 1).contiguous()


def adc_distances(tables: Tensor, codes: Tensor) -> Tensor:
    """Distances (Q, N) of every query to every coded item: sum_m T[q, m, codes[n, m]].

    Loops over the M books (a handful), never over queries or items.
    """
    if tables.shape[1] != codes.shape[1]:
        raise ValueError(f"tables have {tables.shape[1]} books, codes {codes.shape[1]}")
    idx = codes.long()
    out = tables[:, 0, :].index_select(1, idx[:, 0])
    for m in range(1, codes.shape[1]):
        out += tables[:, m, :].index_select(1, idx[:, m])
    return out


class ADCScorer:
    """Fast ADC against a fixed set of codes, for scoring many query chunks.

    With ``onehot`` (the default when it fits in ``max_onehot_bytes``), the codes are expanded
    once into a one-hot matrix H (N, M*K) and distances become one matrix product
    ``T.reshape(q, M*K) @ H.T``: the sum over books of the selected table entries, computed by
    BLAS instead of M gathers. Otherwise it falls back to :func:`adc_distances`.
    """

    def __init__(self, codes: Tensor, num_codewords: int, max_onehot_bytes: int = 2**28) -> None:
        self.codes = codes
        n, m = codes.shape
        self.onehot: Tensor | None = None
        if n * m * num_codewords * 4 <= max_onehot_bytes:
            flat = codes.long() + torch.arange(m, device=codes.device) * num_codewords
            self.onehot = torch.zeros(n, m * num_codewords, device=codes.device)
            self.onehot.scatter_(1, flat, 1.0)

    def __call__(self, tables: Tensor) -> Tensor:
        """Distances (Q, N) from look-up tables (Q, M, K)."""
        if self.onehot is None:
            return adc_distances(tables, self.codes)
        return tables.reshape(len(tables), -1) @ self.onehot.T


def squared_l2_distances(queries: Tensor, database: Tensor) -> Tensor:
    """Exact squared Euclidean distances (Q, N) between float vectors, via one matmul."""
    q, x = queries.float(), database.float()
    d = q.pow(2).sum(1, keepdim=True) - 2 * q @ x.T + x.pow(2).sum(1).unsqueeze(0)
    return d.clamp_min_(0)


def search_codes(
    queries: Tensor,
    codebooks: Tensor,
    codes: Tensor,
    k: int,
    distance: str = "l2",
) -> tuple[Tensor, Tensor]:
    """Top-k coded items for each query by ADC: returns (distances, indices), both (Q, k)."""
    out_d, out_i = [], []
    scorer = ADCScorer(codes, codebooks.shape[1])
    for chunk in query_chunks(len(queries), len(codes)):
        dist = scorer(lookup_tables(queries[chunk], codebooks, distance))
        d, i = topk_smallest(dist, k)
        out_d.append(d)
        out_i.append(i)
    return torch.cat(out_d), torch.cat(out_i)
