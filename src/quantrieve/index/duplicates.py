"""Groups of duplicate and near-duplicate images in an index.

Two items are *near-duplicates* when the cosine similarity of their embeddings (the float16
copies an index keeps for refinement, ``refine.npy``) is at least ``min_similarity``; items with
equal pixels (equal fingerprints, ``content.npy``) are always duplicates. Groups grow by merging
(a union-find), but two groups merge only when their first items (their *leaders*) are
near-duplicates as well: a chain of small steps (A like B, B like C, ...) does not join images
that are not alike, as plain connected components would.

Comparing every pair is quadratic; instead the candidates of an item are the items whose PQ code
equals its code in all books but at most one (multi-probe hashing on the codes the index already
holds: one pass with the full code, one per book with that book masked). A copy that is resized,
re-compressed or lightly edited keeps most of its codewords, so it shares one of these keys with
the original; each candidate pair is then verified with the embeddings. Buckets are compared
block by block, so memory stays bounded; the work grows with the sum of squared bucket sizes,
which is why very coarse codes (a few codes for many items) make it slow, not wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from quantrieve.errors import QuantrieveError

#: Default least cosine similarity of two near-duplicates' embeddings (measured on planted
#: duplicates: ``benchmarks/duplicates.py``, see ``docs/results.md``).
DEFAULT_MIN_SIMILARITY = 0.99
#: Rows compared at a time inside one bucket (a BLOCK x BLOCK float32 matrix).
BLOCK = 2048
#: Buckets up to this size are compared together, as arrays of pairs, PAIR_CHUNK at a time.
SMALL_BUCKET = 8
PAIR_CHUNK = 1 << 16

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class DuplicateGroup:
    """Rows of an index that are copies or near-copies of one another.

    Attributes:
        rows: the rows, ascending.
        exact: whether all of them have the same pixels.
        min_similarity: the lowest cosine similarity of a pair that joined the group (1.0 for
            exact copies).
    """

    rows: np.ndarray
    exact: bool
    min_similarity: float

    def __len__(self) -> int:
        return len(self.rows)


class _UnionFind:
    """Groups of rows; a group's root is its first row (its leader)."""

    def __init__(self, n: int, unit: np.ndarray | None = None, bound: float = 1.0) -> None:
        self.unit, self.bound = unit, bound
        self.parent = np.arange(n, dtype=np.int64)
        self.weakest = np.ones(n, dtype=np.float64)  # per root: lowest similarity that joined

    def find(self, row: int) -> int:
        parent = self.parent
        root = row
        while parent[root] != root:
            root = parent[root]
        while parent[row] != root:  # path compression
            parent[row], row = root, parent[row]
        return root

    def union(self, a: int, b: int, similarity: float, exact: bool = False) -> None:
        """Merge the groups of ``a`` and ``b`` (pixel copies always; near-duplicates when the
        groups' leaders are alike too)."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if not exact and self.unit is not None and self.unit[ra] @ self.unit[rb] < self.bound:
            return
        root, child = min(ra, rb), max(ra, rb)
        self.parent[child] = root
        self.weakest[root] = min(self.weakest[root], self.weakest[child], similarity)


def _bucket_bounds(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order, starts, sizes): rows sorted by key, and where each run of equal keys starts."""
    flat = np.ascontiguousarray(keys).view(np.dtype((np.void, keys.shape[1]))).ravel()
    order = np.argsort(flat, kind="stable")
    sorted_keys = flat[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    return order, starts, np.diff(np.r_[starts, len(order)])


def _buckets(keys: np.ndarray) -> list[np.ndarray]:
    """Rows grouped by equal key rows (only groups of two or more)."""
    order, starts, sizes = _bucket_bounds(keys)
    return [order[s : s + n] for s, n in zip(starts, sizes, strict=True) if n > 1]


def _compare_buckets(
    unit: np.ndarray,
    keys: np.ndarray,
    min_similarity: float,
    groups: _UnionFind,
    skip: np.ndarray | None = None,
) -> None:
    """Compare the rows within every bucket of equal ``keys``: small buckets (most of them)
    all at once, as arrays of pairs; large ones block by block (:func:`_join_similar`)."""
    order, starts, sizes = _bucket_bounds(keys)
    for size in range(2, SMALL_BUCKET + 1):
        first = starts[sizes == size]
        if not len(first):
            continue
        rows = np.sort(order[first[:, None] + np.arange(size)], axis=1)  # (buckets, size)
        i, j = np.triu_indices(size, k=1)
        a, b = rows[:, i].ravel(), rows[:, j].ravel()  # pairs, bucket by bucket
        if skip is not None:
            differ = skip[a] != skip[b]
            a, b = a[differ], b[differ]
        for chunk in range(0, len(a), PAIR_CHUNK):
            ca, cb = a[chunk : chunk + PAIR_CHUNK], b[chunk : chunk + PAIR_CHUNK]
            similarity = np.einsum("nd,nd->n", unit[ca], unit[cb])
            for k in np.flatnonzero(similarity >= min_similarity).tolist():
                groups.union(int(ca[k]), int(cb[k]), float(similarity[k]))
    for s, n in zip(starts[sizes > SMALL_BUCKET], sizes[sizes > SMALL_BUCKET], strict=True):
        _join_similar(unit, order[s : s + n], min_similarity, groups, skip)


def _unit(embeddings: np.ndarray) -> np.ndarray:
    vectors = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def _join_similar(
    unit: np.ndarray,
    rows: np.ndarray,
    min_similarity: float,
    groups: _UnionFind,
    skip: np.ndarray | None = None,
) -> None:
    """Union every pair of ``rows`` whose embeddings' cosine similarity reaches the bound, but
    not pairs with equal ``skip`` values (pairs an earlier pass has compared already)."""
    rows = np.sort(rows)
    for start in range(0, len(rows), BLOCK):
        left = rows[start : start + BLOCK]
        for other in range(start, len(rows), BLOCK):
            right = rows[other : other + BLOCK]
            similarity = unit[left] @ unit[right].T
            if other == start:  # each pair once, no row with itself
                similarity[np.tril_indices(len(left))] = -2.0
            if skip is not None:
                similarity[skip[left][:, None] == skip[right][None, :]] = -2.0
            a, b = np.nonzero(similarity >= min_similarity)
            for i, j in zip(a.tolist(), b.tolist(), strict=True):
                groups.union(int(left[i]), int(right[j]), float(similarity[i, j]))


def find_duplicates(
    codes: np.ndarray,
    embeddings: np.ndarray | None,
    fingerprints: np.ndarray | None = None,
    min_similarity: float = DEFAULT_MIN_SIMILARITY,
    progress: Progress | None = None,
) -> list[DuplicateGroup]:
    """Groups of duplicate and near-duplicate rows (see the module docstring).

    Args:
        codes: uint8 (N, M) PQ codes of the index.
        embeddings: (N, D) embeddings (float16 or float32), or None to find exact copies only.
        fingerprints: uint64 (N,) pixel fingerprints, or None.
        min_similarity: least cosine similarity of two near-duplicates, in (-1, 1]; 1.0
            finds exact copies (equal fingerprints) alone.
        progress: called as ``progress(done, total)`` over the hashing passes.

    Returns:
        The groups of two or more rows, largest first (then by first row).

    Raises:
        QuantrieveError: shapes that do not agree, a bound out of range, or neither embeddings
            nor fingerprints to compare.
    """
    codes = np.asarray(codes)
    n = len(codes)
    if codes.ndim != 2:
        raise QuantrieveError(f"codes must be (N, M), got shape {codes.shape}")
    if embeddings is not None and len(embeddings) != n:
        raise QuantrieveError(f"{len(embeddings)} embeddings for {n} codes")
    if fingerprints is not None and len(fingerprints) != n:
        raise QuantrieveError(f"{len(fingerprints)} fingerprints for {n} codes")
    if embeddings is None and fingerprints is None:
        raise QuantrieveError(
            "near-duplicates need the index's embeddings (encode with --refine-depth) or its "
            "pixel fingerprints; this index has neither"
        )
    if not -1.0 < min_similarity <= 1.0:
        raise QuantrieveError(f"min_similarity must be in (-1, 1], got {min_similarity}")
    if min_similarity >= 1.0:
        embeddings = None  # equal embeddings of different pixels are not copies
    unit = None if embeddings is None else _unit(embeddings)
    groups = _UnionFind(n, unit, min_similarity)
    if fingerprints is not None:
        fingerprints = np.asarray(fingerprints, dtype=np.uint64)
        for rows in _buckets(fingerprints.view(np.uint8).reshape(n, 8)):
            for row in rows[1:]:
                groups.union(int(rows[0]), int(row), 1.0, exact=True)
    if unit is not None:
        # Pass 0: equal codes. Pass b: codes equal but in book b, pairs that differ there.
        masks: list[int | None] = [None, *range(codes.shape[1] if codes.shape[1] > 1 else 0)]
        for done, masked in enumerate(masks, start=1):
            if masked is None:
                _compare_buckets(unit, codes, min_similarity, groups)
            else:
                keys, book = np.delete(codes, masked, axis=1), codes[:, masked]
                _compare_buckets(unit, keys, min_similarity, groups, skip=book)
            if progress is not None:
                progress(done, len(masks))
    roots = np.array([groups.find(row) for row in range(n)], dtype=np.int64)
    result = []
    for rows in _buckets(roots[:, None].view(np.uint8).reshape(n, 8)):
        rows = np.sort(rows)
        exact = fingerprints is not None and len(np.unique(fingerprints[rows])) == 1
        result.append(DuplicateGroup(rows, exact, float(groups.weakest[roots[rows[0]]])))
    result.sort(key=lambda g: (-len(g), int(g.rows[0])))
    return result


def group_records(
    groups: list[DuplicateGroup], items: np.ndarray, ids: list[str]
) -> list[dict[str, object]]:
    """The groups as records (one per group, largest first): ``group`` (1-based), ``size``,
    ``exact``, ``min_similarity``, the stable ``items`` numbers and their ``ids``."""
    return [
        {
            "group": number,
            "size": len(group),
            "exact": group.exact,
            "min_similarity": round(group.min_similarity, 6),
            "items": [int(items[row]) for row in group.rows],
            "ids": [ids[row] for row in group.rows],
        }
        for number, group in enumerate(groups, start=1)
    ]
