"""mAP@K, precision@N and the PR curve of quantrieve.evaluate, by hand and against numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quantrieve.evaluate import average_precision_at_k, evaluate_retrieval, relevance_matrix


def _fn(dist: np.ndarray):
    """Distance callback over a fixed (Q, N) matrix."""
    table = torch.from_numpy(np.asarray(dist, dtype=np.float32))
    return lambda chunk: table[chunk]


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
    result = evaluate_retrieval(
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
    with_empty = evaluate_retrieval(_fn(_DIST), _onehot([0, 1, 2], 3), db, k=2, precision_at=(2,))
    without = evaluate_retrieval(_fn(_DIST[:2]), _onehot([0, 1], 3), db, k=2, precision_at=(2,))
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
    result = evaluate_retrieval(_fn(dist), queries, db, k=5, precision_at=(1, 3))
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
    result = evaluate_retrieval(
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
    result = evaluate_retrieval(
        _fn(dist), torch.from_numpy(q_lab), torch.from_numpy(db_lab), k=50, precision_at=(5, 20)
    )
    ref_map, ref_prec = reference_metrics(dist, relevant, 50, (5, 20))
    assert result.map_at_k == pytest.approx(ref_map, abs=1e-5)
    assert result.precision_at[5] == pytest.approx(ref_prec[5], abs=1e-5)
    assert result.precision_at[20] == pytest.approx(ref_prec[20], abs=1e-5)


def test_evaluate_chunking_invariance() -> None:
    """A tiny chunk budget (one query per chunk) gives the same mAP and precision@N.

    The PR curve is not compared: its thresholds come from the first chunk by design.
    """
    dist, q_cls, db_cls = _random_problem(seed=11, queries=20, items=40)
    args = (_fn(dist), _onehot(q_cls, 5), _onehot(db_cls, 5))
    calls: list[slice] = []

    def counting(chunk: slice) -> torch.Tensor:
        calls.append(chunk)
        return args[0](chunk)

    small = evaluate_retrieval(counting, *args[1:], k=15, precision_at=(3, 10), chunk_budget=7)
    large = evaluate_retrieval(args[0], *args[1:], k=15, precision_at=(3, 10))
    assert len(calls) == 20  # budget 7 < 40 items: one query per chunk
    assert small.map_at_k == pytest.approx(large.map_at_k, abs=1e-6)
    for n in (3, 10):
        assert small.precision_at[n] == pytest.approx(large.precision_at[n], abs=1e-6)


def test_pr_curve_shape_and_range() -> None:
    """Equal lengths, recall non-decreasing, values in [0, 1]; end point is the whole database."""
    dist, q_cls, db_cls = _random_problem(seed=5, queries=20, items=60)
    result = evaluate_retrieval(
        _fn(dist), _onehot(q_cls, 5), _onehot(db_cls, 5), k=10, precision_at=(5,), pr_points=12
    )
    prec, rec = np.array(result.pr_precision), np.array(result.pr_recall)
    assert len(prec) == len(rec) >= 2
    assert ((prec >= 0) & (prec <= 1)).all() and ((rec >= 0) & (rec <= 1)).all()
    assert (np.diff(rec) >= -1e-12).all()
    relevant = q_cls[:, None] == db_cls[None, :]
    # the last threshold is the largest distance of the (single) chunk: everything retrieved
    assert rec[-1] == pytest.approx(relevant.any(1).mean(), abs=1e-9)
    assert prec[-1] == pytest.approx(relevant.mean(1).mean(), abs=1e-6)
    assert result.to_dict()["precision_at"] == {"5": result.precision_at[5]}


def test_evaluate_invalid_inputs() -> None:
    """No queries, or a distance callback of the wrong shape, raise ValueError."""
    db = _onehot(_DB, 3)
    with pytest.raises(ValueError):
        evaluate_retrieval(_fn(np.zeros((0, 4))), db[:0], db, k=2, precision_at=(1,))
    with pytest.raises(ValueError):
        evaluate_retrieval(_fn(np.zeros((3, 3))), _onehot([0, 1, 2], 3), db, k=2, precision_at=(1,))


def test_evaluate_without_precision_cutoffs() -> None:
    """An empty precision_at still gives mAP@K (and no precision entries)."""
    result = evaluate_retrieval(
        _fn(_DIST), _onehot([0, 1, 2], 3), _onehot(_DB, 3), k=2, precision_at=()
    )
    assert result.map_at_k == pytest.approx(1 / 3, abs=1e-6)
    assert result.precision_at == {}
