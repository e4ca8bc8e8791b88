"""mAP@K, precision@N and the PR curve of quantrieve.evaluate, by hand and against numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quantrieve.evaluate import average_precision_at_k, evaluate_retrieval, relevance_matrix
from quantrieve.evaluate.retrieval import tie_order


def _fn(dist: np.ndarray):
    """Distance callback over a fixed (Q, N) matrix."""
    table = torch.from_numpy(np.asarray(dist, dtype=np.float32))
    return lambda chunk: table[chunk]


def _by_row(distances, query_labels, db_labels, *args, **kwargs):
    """evaluate_retrieval with ties ranked by database row, the order of the hand-made
    references below (the default tie order is tested on its own)."""
    return evaluate_retrieval(
        distances, query_labels, db_labels, *args, ties=torch.arange(len(db_labels)), **kwargs
    )


def _onehot(classes: list[int] | np.ndarray, num_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.as_tensor(classes), num_classes)


@pytest.mark.parametrize(
    ("relevance", "expected"),
    [
        ([1, 0, 1], 5 / 6),
        ([0, 0, 0], 0.0),
        ([1, 1, 1], 1.0),
        ([0, 1], 0.5),
        ([0, 0, 1, 1], (1 / 3 + 2 / 4) / 2),
        ([1], 1.0),
    ],
)
def test_average_precision_hand_cases(relevance: list[int], expected: float) -> None:
    """AP = sum_j rel_j P@j / R_K, 0 when nothing relevant."""
    ap = average_precision_at_k(torch.tensor([relevance], dtype=torch.bool))
    assert ap.shape == (1,)
    assert ap.item() == pytest.approx(expected, abs=1e-6)


def test_average_precision_batched_rows_independent() -> None:
    """Rows are scored independently in one call."""
    rel = torch.tensor([[1, 0, 1], [0, 0, 0], [1, 1, 1], [0, 1, 0]], dtype=torch.bool)
    ap = average_precision_at_k(rel)
    np.testing.assert_allclose(ap.numpy(), [5 / 6, 0.0, 1.0, 0.5], atol=1e-6)


def test_relevance_matrix_multi_label() -> None:
    """Relevant means sharing at least one label."""
    queries = torch.tensor([[1, 1, 0], [0, 0, 1], [0, 0, 0]])
    db = torch.tensor([[1, 0, 0], [0, 1, 1], [0, 0, 1], [0, 0, 0]])
    expected = [[True, True, False, False], [False, True, True, False], [False] * 4]
    assert relevance_matrix(queries, db).tolist() == expected


# db classes: item0 c0, item1 c1, item2 c1, item3 c0
_DB = [0, 1, 1, 0]
_DIST = [
    [0.5, 0.5, 0.1, 0.9],  # q0 (c0): ranking 2, 0, 1, 3 -> rel 0 1 0 1
    [0.2, 0.2, 0.9, 0.9],  # q1 (c1): ranking 0, 1, 2, 3 -> rel 0 1 1 0
    [0.3, 0.1, 0.2, 0.4],  # q2 (c2): nothing relevant
]


@pytest.mark.parametrize("budget", [1, 4, 2**24])
def test_evaluate_ties_broken_by_database_index(budget: int) -> None:
    """At K = 2 only the lower-index item of a distance tie fits; mAP, P@N by hand.

    q0: top-2 (2, 0) -> AP 1/2 (reversed tie (2, 1) would give 0).
    q1: top-2 (0, 1) -> AP 1/2 (reversed tie (1, 0) would give 1).
    q2: no relevant item -> AP 0, still counted: mAP = 1/3.
    """
    result = _by_row(
        _fn(_DIST),
        _onehot([0, 1, 2], 3),
        _onehot(_DB, 3),
        k=2,
        precision_at=(1, 2, 4),
        chunk_budget=budget,
    )
    assert result.map_at_k == pytest.approx(1 / 3, abs=1e-6)
    assert result.k == 2
    assert result.num_queries == 3 and result.num_database == 4
    assert result.precision_at[1] == pytest.approx(0.0, abs=1e-6)
    assert result.precision_at[2] == pytest.approx(1 / 3, abs=1e-6)
    assert result.precision_at[4] == pytest.approx(1 / 3, abs=1e-6)


def test_evaluate_query_without_relevant_items_counts_as_zero() -> None:
    """Dropping the unmatched query raises the mean from 1/3 to 1/2."""
    db = _onehot(_DB, 3)
    with_empty = _by_row(_fn(_DIST), _onehot([0, 1, 2], 3), db, k=2, precision_at=(2,))
    without = _by_row(_fn(_DIST[:2]), _onehot([0, 1], 3), db, k=2, precision_at=(2,))
    assert with_empty.map_at_k == pytest.approx(1 / 3, abs=1e-6)
    assert without.map_at_k == pytest.approx(1 / 2, abs=1e-6)


def test_evaluate_multi_label() -> None:
    """Multi-hot labels: relevant when at least one label is shared.

    q0 = {0, 1}; db: {1, 2}, {2}, {0}, {0, 1, 2}, {}; distances rank 1, 4, 0, 3, 2 ->
    rel 0 0 1 1 1: AP@5 = (1/3 + 2/4 + 3/5) / 3, P@1 = 0, P@3 = 1/3.
    q1 = {2}; same ranking -> rel 1 0 1 1 0: AP@5 = (1 + 2/3 + 3/4) / 3, P@1 = 1, P@3 = 2/3.
    """
    db = torch.tensor([[0, 1, 1], [0, 0, 1], [1, 0, 0], [1, 1, 1], [0, 0, 0]])
    queries = torch.tensor([[1, 1, 0], [0, 0, 1]])
    dist = [[0.3, 0.1, 0.5, 0.4, 0.2]] * 2
    result = _by_row(_fn(dist), queries, db, k=5, precision_at=(1, 3))
    ap0 = (1 / 3 + 2 / 4 + 3 / 5) / 3
    ap1 = (1 + 2 / 3 + 3 / 4) / 3
    assert result.map_at_k == pytest.approx((ap0 + ap1) / 2, abs=1e-6)
    assert result.precision_at[1] == pytest.approx(0.5, abs=1e-6)
    assert result.precision_at[3] == pytest.approx((1 / 3 + 2 / 3) / 2, abs=1e-6)


def _random_problem(seed: int, queries: int = 50, items: int = 300, classes: int = 5):
    rng = np.random.default_rng(seed)
    q_cls = rng.integers(0, classes, queries)
    db_cls = rng.integers(0, classes, items)
    # distances on a coarse grid (many ties), lower for same-class pairs (a useful ranking)
    dist = rng.integers(0, 40, (queries, items)).astype(np.float32)
    dist -= 10 * (q_cls[:, None] == db_cls[None, :])
    dist = np.clip(dist, 0, None) / 8
    return dist, q_cls, db_cls


def reference_metrics(dist: np.ndarray, relevant: np.ndarray, k: int, cutoffs) -> tuple:
    """Per query: stable argsort, then AP@K and P@N by loops."""
    aps, precisions = [], {n: [] for n in cutoffs}
    for i in range(len(dist)):
        order = np.argsort(dist[i], kind="stable")
        rel = relevant[i, order]
        hits, total = 0, 0.0
        for j in range(min(k, len(order))):
            if rel[j]:
                hits += 1
                total += hits / (j + 1)
        aps.append(total / hits if hits else 0.0)
        for n in cutoffs:
            precisions[n].append(rel[:n].mean())
    return float(np.mean(aps)), {n: float(np.mean(v)) for n, v in precisions.items()}


@pytest.mark.parametrize("k", [1, 10, 100, 300])
@pytest.mark.parametrize("budget", [7, 2**24])
def test_evaluate_matches_numpy_reference(k: int, budget: int) -> None:
    """mAP@K and P@N equal a slow per-query numpy loop on tie-heavy random data."""
    dist, q_cls, db_cls = _random_problem(seed=k)
    relevant = q_cls[:, None] == db_cls[None, :]
    cutoffs = (1, 10, 50)
    result = _by_row(
        _fn(dist),
        _onehot(q_cls, 5),
        _onehot(db_cls, 5),
        k=k,
        precision_at=cutoffs,
        chunk_budget=budget,
    )
    ref_map, ref_prec = reference_metrics(dist, relevant, k, cutoffs)
    assert result.map_at_k == pytest.approx(ref_map, abs=1e-5)
    for n in cutoffs:
        assert result.precision_at[n] == pytest.approx(ref_prec[n], abs=1e-5)


def test_evaluate_matches_numpy_reference_multi_label() -> None:
    """Same comparison with random multi-hot labels (some queries share nothing)."""
    rng = np.random.default_rng(3)
    q_lab = (rng.random((30, 5)) < 0.25).astype(np.int64)
    db_lab = (rng.random((200, 5)) < 0.25).astype(np.int64)
    dist = (rng.integers(0, 30, (30, 200)) / 7).astype(np.float32)
    relevant = (q_lab @ db_lab.T) > 0
    result = _by_row(
        _fn(dist), torch.from_numpy(q_lab), torch.from_numpy(db_lab), k=50, precision_at=(5, 20)
    )
    ref_map, ref_prec = reference_metrics(dist, relevant, 50, (5, 20))
    assert result.map_at_k == pytest.approx(ref_map, abs=1e-5)
    assert result.precision_at[5] == pytest.approx(ref_prec[5], abs=1e-5)
    assert result.precision_at[20] == pytest.approx(ref_prec[20], abs=1e-5)


def test_evaluate_chunking_invariance() -> None:
    """A tiny chunk budget (one query per chunk) gives the same mAP, precision@N and PR curve."""
    dist, q_cls, db_cls = _random_problem(seed=11, queries=20, items=40)
    args = (_fn(dist), _onehot(q_cls, 5), _onehot(db_cls, 5))
    calls: list[slice] = []

    def counting(chunk: slice) -> torch.Tensor:
        calls.append(chunk)
        return args[0](chunk)

    small = _by_row(counting, *args[1:], k=15, precision_at=(3, 10), chunk_budget=7)
    large = _by_row(args[0], *args[1:], k=15, precision_at=(3, 10))
    assert len(calls) == 20  # budget 7 < 40 items: one query per chunk
    assert small.map_at_k == pytest.approx(large.map_at_k, abs=1e-6)
    for n in (3, 10):
        assert small.precision_at[n] == pytest.approx(large.precision_at[n], abs=1e-6)
    np.testing.assert_allclose(small.pr_precision, large.pr_precision, atol=1e-12)
    assert small.pr_recall == large.pr_recall


def reference_pr(dist: np.ndarray, relevant: np.ndarray, levels: int) -> tuple[np.ndarray, int]:
    """Per query: stable argsort, precision and hits at every cut-off, then the max precision
    over the cut-offs with recall >= each level (as integers: hits * steps >= level * R).
    Returns the mean over the queries with a relevant item, and how many had none."""
    steps = levels - 1
    curves, empty = [], 0
    for i in range(len(dist)):
        rel = relevant[i, np.argsort(dist[i], kind="stable")]
        total = int(rel.sum())
        if total == 0:
            empty += 1
            continue
        hits = np.cumsum(rel)
        precision = hits / np.arange(1, len(rel) + 1)
        curves.append(
            [
                max(p for h, p in zip(hits, precision, strict=True) if h * steps >= lv * total)
                for lv in range(levels)
            ]
        )
    return np.mean(curves, axis=0), empty


@pytest.mark.parametrize("levels", [2, 11, 21])
@pytest.mark.parametrize("budget", [7, 500, 2**24])
def test_pr_curve_matches_numpy_reference(levels: int, budget: int) -> None:
    """Interpolated precision at every recall level equals a slow per-query loop, on tie-heavy
    random data (budget 500: several queries per chunk, one per PR block)."""
    dist, q_cls, db_cls = _random_problem(seed=levels, queries=40, items=120)
    relevant = q_cls[:, None] == db_cls[None, :]
    result = _by_row(
        _fn(dist),
        _onehot(q_cls, 5),
        _onehot(db_cls, 5),
        k=10,
        precision_at=(5,),
        pr_levels=levels,
        pr_queries=0,
        chunk_budget=budget,
    )
    ref, empty = reference_pr(dist, relevant, levels)
    np.testing.assert_allclose(result.pr_precision, ref, atol=1e-6)
    np.testing.assert_allclose(result.pr_recall, np.linspace(0, 1, levels), atol=1e-12)
    assert result.extra == {
        "pr_queries": 40 - empty,
        "pr_queries_without_relevant": empty,
        "ties": "given",
    }
    assert result.pr_method == "rank-interpolated"
    assert (np.diff(result.pr_precision) <= 1e-12).all()  # interpolated: never rises


def test_pr_curve_through_small_buckets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Buckets of about 4 items (made tiny here) give the same curve as the slow reference:
    ties inside a bucket keep their column order, a bucket never splits equal distances, and
    a row of nothing but ties is ranked whole."""
    from quantrieve.evaluate import retrieval

    monkeypatch.setattr(retrieval, "_BUCKET_ITEMS", 4)
    dist, q_cls, db_cls = _random_problem(seed=3, queries=12, items=400)
    dist[0] = 0.0  # one row of nothing but ties
    relevant = q_cls[:, None] == db_cls[None, :]
    result = _by_row(
        _fn(dist), _onehot(q_cls, 5), _onehot(db_cls, 5), k=10, precision_at=(5,), pr_queries=0
    )
    ref, _ = reference_pr(dist, relevant, 21)
    np.testing.assert_allclose(result.pr_precision, ref, atol=1e-6)


def _curve_rows(kind: str, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    relevant = rng.random(n) < 0.1
    dist = (rng.random(n) * 30 + 10).astype(np.float32)
    if kind == "signal":  # relevant items nearer, as after training
        dist -= relevant * rng.random(n).astype(np.float32) * 15
    elif kind == "ties":
        dist = np.round(dist * 4) / 4
    elif kind == "inf":  # excluded pairs are at +inf
        dist[rng.integers(0, n, 5)] = np.inf
    elif kind == "one-relevant":
        relevant[:] = False
        relevant[rng.integers(0, n)] = True
    elif kind == "all-relevant":
        relevant[:] = True
    elif kind == "equal":
        dist[:] = 3.0
    elif kind == "all-inf":
        dist[:] = np.inf
    return dist.astype(np.float32), relevant


@pytest.mark.parametrize(
    "kind",
    ["random", "signal", "ties", "inf", "one-relevant", "all-relevant", "equal", "all-inf"],
)
def test_interpolated_precision_of_wide_rows_is_exact(kind: str) -> None:
    """Rows of 20,000 items (about 300 buckets): bit-identical to the float32 precision of a
    full stable ranking, at every level."""
    from quantrieve.evaluate import interpolated_precision

    rng = np.random.default_rng(len(kind))
    rows = [_curve_rows(kind, rng, 20_000) for _ in range(3)]
    dist = np.stack([d for d, _ in rows])
    relevant = np.stack([r for _, r in rows])
    got = interpolated_precision(torch.from_numpy(dist), torch.from_numpy(relevant), 20).numpy()
    for row in range(3):
        rel = relevant[row, np.argsort(dist[row], kind="stable")]
        hits = np.cumsum(rel)[rel]
        precision = hits.astype(np.float32) / (np.flatnonzero(rel) + 1).astype(np.float32)
        level = hits * 20 // len(hits)
        expected = np.array([precision[level >= lv].max() for lv in range(21)], np.float64)
        np.testing.assert_array_equal(got[row], expected)


def test_interpolated_precision_ranks_few_items(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bounds leave most of a wide row unranked: under 10% of 200,000 random items go
    through the exact ranking (the point of the algorithm)."""
    from quantrieve.evaluate import interpolated_precision, retrieval

    ranked: list[int] = []
    sort_chosen = retrieval._sort_chosen

    def counting(keys: np.ndarray) -> np.ndarray:
        ranked.append(len(keys))
        return sort_chosen(keys)

    monkeypatch.setattr(retrieval, "_sort_chosen", counting)
    dist, relevant = _curve_rows("random", np.random.default_rng(0), 200_000)
    interpolated_precision(torch.from_numpy(dist)[None], torch.from_numpy(relevant)[None], 20)
    assert len(ranked) == 1 and 0 < ranked[0] < 20_000


def test_pr_curve_matches_numpy_reference_multi_label_and_subset() -> None:
    """Multi-hot labels with queries that share nothing; ``pr_queries`` picks evenly spaced
    queries (every 3rd of 30 for 10)."""
    rng = np.random.default_rng(4)
    q_lab = (rng.random((30, 5)) < 0.25).astype(np.int64)
    db_lab = (rng.random((200, 5)) < 0.25).astype(np.int64)
    dist = (rng.integers(0, 30, (30, 200)) / 7).astype(np.float32)
    relevant = (q_lab @ db_lab.T) > 0
    args = (_fn(dist), torch.from_numpy(q_lab), torch.from_numpy(db_lab))
    every = _by_row(*args, k=50, precision_at=(5,), pr_queries=0)
    ref, empty = reference_pr(dist, relevant, 21)
    assert empty > 0  # the case is exercised
    np.testing.assert_allclose(every.pr_precision, ref, atol=1e-6)
    assert every.extra == {
        "pr_queries": 30 - empty,
        "pr_queries_without_relevant": empty,
        "ties": "given",
    }
    subset = _by_row(*args, k=50, precision_at=(5,), pr_queries=10)
    ref, empty = reference_pr(dist[::3], relevant[::3], 21)
    np.testing.assert_allclose(subset.pr_precision, ref, atol=1e-6)
    assert subset.extra == {
        "pr_queries": 10 - empty,
        "pr_queries_without_relevant": empty,
        "ties": "given",
    }


def test_pr_curve_by_hand_multi_label() -> None:
    """The multi-label case above at recall levels 0, 1/2, 1.

    q0: rel 0 0 1 1 1 (R = 3): precision at its relevant items 1/3, 2/4, 3/5; the max over
    recall >= 0, >= 1/2 (2nd item on) and >= 1 (3rd item) is 3/5 each time.
    q1: rel 1 0 1 1 0: precision 1, 2/3, 3/4 -> 1, 3/4, 3/4. Mean: 0.8, 0.675, 0.675.
    """
    db = torch.tensor([[0, 1, 1], [0, 0, 1], [1, 0, 0], [1, 1, 1], [0, 0, 0]])
    queries = torch.tensor([[1, 1, 0], [0, 0, 1]])
    dist = [[0.3, 0.1, 0.5, 0.4, 0.2]] * 2
    result = _by_row(_fn(dist), queries, db, k=5, precision_at=(1,), pr_levels=3)
    assert result.pr_recall == [0.0, 0.5, 1.0]
    np.testing.assert_allclose(result.pr_precision, [0.8, 0.675, 0.675], atol=1e-6)


def test_pr_curve_leaves_out_queries_without_relevant_items() -> None:
    """q2 of the tie case has no relevant item, hence no recall: the curve is that of q0 and
    q1 alone (mAP counts q2 as 0), and ``extra`` counts q2 as left out.

    q0: rel 0 1 0 1 -> precision 1/2, 2/4; q1: rel 0 1 1 0 -> 1/2, 2/3. Every level: the mean
    of the maxima, (1/2 + 2/3) / 2.
    """
    db = _onehot(_DB, 3)
    kwargs = {"k": 2, "precision_at": (2,), "pr_levels": 5}
    with_empty = _by_row(_fn(_DIST), _onehot([0, 1, 2], 3), db, **kwargs)
    without = _by_row(_fn(_DIST[:2]), _onehot([0, 1], 3), db, **kwargs)
    assert with_empty.pr_precision == without.pr_precision
    np.testing.assert_allclose(with_empty.pr_precision, [(1 / 2 + 2 / 3) / 2] * 5, atol=1e-6)
    assert with_empty.extra == {"pr_queries": 2, "pr_queries_without_relevant": 1, "ties": "given"}
    assert without.extra == {"pr_queries": 2, "pr_queries_without_relevant": 0, "ties": "given"}
    nothing = _by_row(_fn(_DIST[2:]), _onehot([2], 3), db, **kwargs)
    assert nothing.pr_precision == nothing.pr_recall == []
    assert nothing.extra == {"pr_queries": 0, "pr_queries_without_relevant": 1, "ties": "given"}


def test_pr_curve_higher_ap_at_every_query_gives_higher_curve() -> None:
    """The issue's case: ranking A beats ranking B in AP at every query, so A's curve lies on or
    above B's at every recall level, and clearly above somewhere.

    A is B with some relevant items moved forward (none moved back), so no relevant item's
    precision drops. A's distances are scaled per query by 10^-3 to 10^3, B's are not: distance
    thresholds shared by all queries would mix those scales, each query's own ranking does not.
    """
    rng = np.random.default_rng(0)
    num_q, num_db = 40, 200
    db_cls = np.arange(num_db) % 4
    q_cls = rng.integers(0, 4, num_q)
    relevant = q_cls[:, None] == db_cls[None, :]
    order_b = np.stack([rng.permutation(num_db) for _ in range(num_q)])  # ranked item ids
    order_a = order_b.copy()
    for i in range(num_q):
        # move a third of the relevant items (never the first-ranked one) forward by 1 to 30
        # places: each passes only irrelevant or relevant items, which move back by one
        places = np.flatnonzero(relevant[i, order_b[i]])[1:]
        for p in np.sort(rng.choice(places, size=len(places) // 3, replace=False)):
            to = max(0, p - int(rng.integers(1, 31)))
            order_a[i, to : p + 1] = np.roll(order_a[i, to : p + 1], 1)
    scales = 10.0 ** rng.uniform(-3, 3, num_q)
    place = np.arange(1, num_db + 1, dtype=np.float64)
    dist_a = np.empty((num_q, num_db), dtype=np.float32)
    dist_b = np.empty_like(dist_a)
    for i in range(num_q):  # the item ranked r-th (from 1) is at distance r (times the scale)
        dist_a[i, order_a[i]] = place * scales[i]
        dist_b[i, order_b[i]] = place
    labels = (_onehot(q_cls, 4), _onehot(db_cls, 4))
    a = _by_row(_fn(dist_a), *labels, k=num_db, precision_at=(10,))
    b = _by_row(_fn(dist_b), *labels, k=num_db, precision_at=(10,))
    rows = np.arange(num_q)[:, None]
    ap_a = average_precision_at_k(torch.from_numpy(relevant[rows, order_a]))
    ap_b = average_precision_at_k(torch.from_numpy(relevant[rows, order_b]))
    assert (ap_a > ap_b).all()  # the premise, at every query
    assert a.map_at_k == pytest.approx(ap_a.mean().item(), abs=1e-6)
    assert b.map_at_k == pytest.approx(ap_b.mean().item(), abs=1e-6)
    prec_a, prec_b = np.array(a.pr_precision), np.array(b.pr_precision)
    assert (prec_a >= prec_b - 1e-9).all()
    assert (prec_a > prec_b + 0.02).any()
    # a ranking metric: rescaling each query's distances changes nothing
    unscaled = _by_row(_fn(dist_a / scales[:, None]), *labels, k=num_db)
    np.testing.assert_allclose(unscaled.pr_precision, a.pr_precision, atol=1e-12)


def test_evaluate_invalid_inputs() -> None:
    """No queries, or a distance callback of the wrong shape, raise ValueError."""
    db = _onehot(_DB, 3)
    with pytest.raises(ValueError):
        evaluate_retrieval(_fn(np.zeros((0, 4))), db[:0], db, k=2, precision_at=(1,))
    with pytest.raises(ValueError):
        evaluate_retrieval(_fn(np.zeros((3, 3))), _onehot([0, 1, 2], 3), db, k=2, precision_at=(1,))
    with pytest.raises(ValueError):
        evaluate_retrieval(_fn(_DIST), _onehot([0, 1, 2], 3), db, k=2, pr_levels=1)


def test_evaluate_without_precision_cutoffs() -> None:
    """An empty precision_at still gives mAP@K (and no precision entries)."""
    result = _by_row(_fn(_DIST), _onehot([0, 1, 2], 3), _onehot(_DB, 3), k=2, precision_at=())
    assert result.map_at_k == pytest.approx(1 / 3, abs=1e-6)
    assert result.precision_at == {}


def test_default_tie_order_is_a_fixed_permutation_of_the_database() -> None:
    """By default ties are ranked in tie_order(N): the same as ranking the permuted
    database by row; fixed from call to call, whatever the labels."""
    dist, q_cls, db_cls = _random_problem(seed=5)
    perm = tie_order(dist.shape[1])
    assert sorted(perm.tolist()) == list(range(dist.shape[1]))
    assert torch.equal(perm, tie_order(dist.shape[1]))
    with pytest.raises(ValueError, match="permutation"):
        evaluate_retrieval(_fn(dist), _onehot(q_cls, 5), _onehot(db_cls, 5), ties=perm.clamp(1))
    default = evaluate_retrieval(_fn(dist), _onehot(q_cls, 5), _onehot(db_cls, 5), k=50)
    permuted = _by_row(
        _fn(dist[:, perm.numpy()]), _onehot(q_cls, 5), _onehot(db_cls[perm], 5), k=50
    )
    assert default.map_at_k == pytest.approx(permuted.map_at_k, abs=1e-6)
    assert default.precision_at == pytest.approx(permuted.precision_at, abs=1e-6)
    assert default.pr_precision == pytest.approx(permuted.pr_precision, abs=1e-6)
    assert default.extra["ties"] == "tie_order(seed=0)" and permuted.extra["ties"] == "given"


def test_a_class_sorted_database_of_tied_items_scores_chance_not_its_order() -> None:
    """Collapsed codes (every distance equal) on a database stored class by class, as an image
    folder is read: ties by row would put the queries' majority class first."""
    db_cls = np.repeat([0, 1], [700, 300])  # sorted by class
    q_cls = np.repeat([0, 1], [70, 30])
    dist = np.zeros((100, 1000), np.float32)
    labels = (_onehot(q_cls, 2), _onehot(db_cls, 2))
    by_row = _by_row(_fn(dist), *labels, k=100, precision_at=(100,))
    assert by_row.precision_at[100] == pytest.approx(0.7)  # class-0 queries: all hits
    fair = evaluate_retrieval(_fn(dist), *labels, k=100, precision_at=(100,))
    chance = 0.7 * 0.7 + 0.3 * 0.3  # a query's class share of the database, on average
    assert fair.precision_at[100] == pytest.approx(chance, abs=0.05)
    assert fair.map_at_k < by_row.map_at_k - 0.05  # 0.62 against 0.70


@pytest.mark.parametrize("width", [50, 5000])  # the direct and the sampled top-k
def test_top_k_with_a_tie_rank_is_the_top_k_of_the_permuted_row(width: int) -> None:
    from quantrieve.pq import topk_smallest

    rng = np.random.default_rng(width)
    dist = torch.from_numpy((rng.integers(0, 6, (7, width)) / 3).astype(np.float32))
    order = tie_order(width, seed=3)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(width)
    d, ranks = topk_smallest(dist, 20, rank)
    want_d, want = topk_smallest(dist.index_select(1, order), 20)
    assert torch.equal(d, want_d) and torch.equal(ranks, want)
    assert torch.equal(dist.gather(1, order[ranks]), d)  # the ranks map back to the columns
