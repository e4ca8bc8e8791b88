"""The IVF index over the learned codes: exhaustive at nprobe = nlist, faiss-loadable,
memory-mapped, and its memory estimate."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest
import torch

from quantrieve.index import PQIndex
from quantrieve.index.ivf import build_ivf, estimate_memory, read_ivf, search_ivf, write_ivf
from quantrieve.pq import search_codes


@pytest.fixture(scope="module")
def index() -> PQIndex:
    rng = np.random.default_rng(0)
    codebooks = rng.normal(size=(4, 16, 4)).astype(np.float32)
    codes = rng.integers(0, 16, (3000, 4)).astype(np.uint8)
    return PQIndex(codebooks, codes, [str(i) for i in range(3000)], distance="sqeuclidean")


def _exact(index: PQIndex, queries: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Exhaustive squared-L2 ADC top-10: the ground truth."""
    return search_codes(
        torch.from_numpy(queries),
        torch.from_numpy(index.codebooks),
        torch.from_numpy(index.codes),
        10,
        "sqeuclidean",
    )


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    return np.random.default_rng(1).normal(size=(25, 16)).astype(np.float32)


def test_all_lists_probed_is_exhaustive_adc(index: PQIndex, queries: np.ndarray) -> None:
    ivf = build_ivf(index, nlist=32)
    dist, ids = search_ivf(ivf, queries, 10, nprobe=32)
    exact_d, exact_i = _exact(index, queries)
    np.testing.assert_allclose(dist, exact_d.numpy(), rtol=1e-4, atol=1e-4)
    same = [len(set(a) & set(b)) for a, b in zip(ids, exact_i.numpy(), strict=True)]
    assert np.mean(same) >= 9.9  # equal up to the order of exact ties


def test_fewer_lists_trade_recall_and_distances_stay_adc(
    index: PQIndex, queries: np.ndarray
) -> None:
    ivf = build_ivf(index, nlist=32)
    _, exact_i = _exact(index, queries)
    recalls = []
    for nprobe in (1, 4, 32):
        dist, ids = search_ivf(ivf, queries, 10, nprobe)
        hits = [len(set(a) & set(b)) / 10 for a, b in zip(ids, exact_i.numpy(), strict=True)]
        recalls.append(float(np.mean(hits)))
        # Whatever is found is ranked by its true ADC distance.
        found = ids[0][ids[0] >= 0]
        books = np.arange(4)
        decoded = index.codebooks[books, index.codes[found].astype(np.int64)].reshape(
            len(found), -1
        )
        np.testing.assert_allclose(
            dist[0][: len(found)], ((decoded - queries[0]) ** 2).sum(1), rtol=1e-4, atol=1e-4
        )
    assert recalls[0] < recalls[1] < recalls[2] == 1.0


def test_the_file_loads_in_plain_faiss_and_memory_mapped(
    index: PQIndex, queries: np.ndarray, tmp_path: Path
) -> None:
    ivf = build_ivf(index, nlist=32)
    path = write_ivf(ivf, tmp_path / "ivf.faiss")
    expected = search_ivf(ivf, queries, 10, 8)
    for loaded in (faiss.read_index(str(path)), read_ivf(path, mmap=True)):
        got = search_ivf(loaded, queries, 10, 8)
        np.testing.assert_array_equal(got[1], expected[1])
        np.testing.assert_allclose(got[0], expected[0])
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(Exception, match="not a faiss index file"):
        write_ivf(ivf, tmp_path / "notes.txt", overwrite=True)


def test_memory_estimate_matches_the_built_lists(index: PQIndex) -> None:
    ivf = build_ivf(index, nlist=32)
    lists = faiss.extract_index_ivf(ivf).invlists
    stored = sum(lists.list_size(i) for i in range(32)) * lists.code_size
    estimate = estimate_memory(len(index), 4, 4, 16, 32)
    assert estimate.codes == stored == 3000 * 2
    assert estimate.total == 3000 * (2 + 8) + 32 * 16 * 4 + 16 * 16 * 4


def test_fast_scan_export_is_approximate_but_close(index: PQIndex, queries: np.ndarray) -> None:
    """IndexPQFastScan ranks with 8-bit look-up tables: not exact, measured here."""
    from quantrieve.index.faiss_export import to_faiss

    fast = to_faiss(index, fast_scan=True)
    dist, ids = fast.search(queries, 10)
    exact_d, exact_i = _exact(index, queries)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact_i.numpy(), strict=True)])
    assert recall >= 0.8  # approximate: 8-bit tables
    np.testing.assert_allclose(dist[:, 0], exact_d.numpy()[:, 0], rtol=0.1)
