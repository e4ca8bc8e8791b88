"""Refinement (the head of a ranking re-scored with stored float16 vectors), copies first, and the
coarse-codes warning."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch
from conftest import TINY
from typer.testing import CliRunner

import quantrieve as qr
from quantrieve.cli import app
from quantrieve.evaluate import evaluate_codes
from quantrieve.evaluate.code_usage import TIE_GROUP, check_code_usage, code_usage
from quantrieve.index.compaction import compact
from quantrieve.index.faiss_export import to_faiss
from quantrieve.index.format import IndexFormatError
from quantrieve.index.live import open_live
from quantrieve.index.pq_index import PQIndex
from quantrieve.index.segment_files import NewItems
from quantrieve.index.writer import IndexWriter
from quantrieve.pq import refine_head, refine_ranking

M, K, D_SUB = 4, 16, 8


def _quantize(f: np.ndarray, books: np.ndarray) -> np.ndarray:
    parts = f.reshape(len(f), M, D_SUB)
    return np.stack(
        [((parts[:, m, None, :] - books[m][None]) ** 2).sum(-1).argmin(1) for m in range(M)], 1
    ).astype(np.uint8)


def _index(n: int = 400, seed: int = 0, depth: int = 50, refine: bool = True) -> PQIndex:
    rng = np.random.default_rng(seed)
    books = rng.normal(size=(M, K, D_SUB)).astype(np.float32)
    f = rng.normal(size=(n, M * D_SUB)).astype(np.float32)
    return PQIndex(
        books,
        _quantize(f, books),
        [f"item{i}" for i in range(n)],
        refine=f.astype(np.float16) if refine else None,
        refine_depth=depth,
    )


def _reference_head(queries, candidates, fine, depth, distance):
    """Slow float64 reference: each query's first `depth` candidates sorted by (d, item)."""
    out_d, out_i = [], []
    for q, row in zip(queries.double(), candidates.tolist(), strict=True):
        scored = []
        for item in row[:depth]:
            d = float(((q - fine[item].double()) ** 2).sum())
            scored.append((d**0.5 if distance == "l2" else d, item))
        scored.sort()
        out_d.append([d for d, _ in scored])
        out_i.append([i for _, i in scored])
    return torch.tensor(out_d, dtype=torch.float64), torch.tensor(out_i)


@pytest.mark.parametrize("distance", ["l2", "sqeuclidean"])
@pytest.mark.parametrize("depth", [1, 7, 30, 100])
def test_refine_head_matches_a_float64_reference(distance: str, depth: int) -> None:
    gen = torch.Generator().manual_seed(depth)
    fine = torch.randn(200, 12, generator=gen).half()
    fine[50] = fine[10]  # an exact tie: the lower item number first
    queries = torch.randn(9, 12, generator=gen)
    candidates = torch.stack([torch.randperm(200, generator=gen)[:30] for _ in range(9)])
    others = [i for i in torch.randperm(200, generator=gen).tolist() if i not in (10, 50)]
    candidates[0] = torch.tensor([50, 10, *others[:28]])
    d, i = refine_head(queries, candidates, fine, depth, distance)
    ref_d, ref_i = _reference_head(queries, candidates, fine, depth, distance)
    assert torch.equal(i, ref_i)
    torch.testing.assert_close(d.double(), ref_d, rtol=1e-5, atol=1e-5)
    full_d, full_i = refine_ranking(
        queries, torch.arange(30.0).expand(9, 30), candidates, fine, depth, distance
    )
    width = min(depth, 30)
    assert torch.equal(full_i[:, width:], candidates[:, width:])  # the rest keeps ADC order
    assert torch.equal(full_d[:, width:], torch.arange(30.0).expand(9, 30)[:, width:])


def test_refine_head_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="distance"):
        refine_head(
            torch.zeros(1, 4), torch.zeros(1, 2, dtype=torch.long), torch.zeros(3, 4), 2, "cosine"
        )
    with pytest.raises(ValueError, match="must agree"):
        refine_head(torch.zeros(1, 5), torch.zeros(1, 2, dtype=torch.long), torch.zeros(3, 4), 2)


def test_refinement_reorders_a_known_tie_and_off_is_adc_bit_for_bit() -> None:
    books = np.zeros((M, K, D_SUB), dtype=np.float32)
    books[:, 1] = 5.0
    codes = np.zeros((6, M), dtype=np.uint8)
    codes[5] = 1  # items 0-4 share a code: tied by ADC
    fine = np.zeros((6, M * D_SUB), dtype=np.float32)
    fine[:5, 0] = [0.9, 0.7, 0.5, 0.1, 0.3]
    fine[5] = 5.0  # far from the query, as its code is
    plain = PQIndex(books, codes, [str(i) for i in range(6)])
    refined = PQIndex(books, codes, [str(i) for i in range(6)], refine=fine, refine_depth=4)
    query = torch.zeros(1, M * D_SUB)
    _, adc = plain.search(query, 6)
    assert adc.tolist() == [[0, 1, 2, 3, 4, 5]]  # ties by position
    d, items = refined.search(query, 6)
    # The first R = 4 ADC results (0-3) and the rest of their tie group (4) re-scored:
    # 3 (0.1), 4 (0.3), 2 (0.5), 1 (0.7), 0 (0.9); then 5, which has another code.
    assert items.tolist() == [[3, 4, 2, 1, 0, 5]]
    assert d[0, :5].tolist() == pytest.approx([0.1, 0.3, 0.5, 0.7, 0.9], abs=1e-3)
    assert d[0, 5] == plain.search(query, 6)[0][0, 5]  # an ADC distance, as ranked by ADC
    d0, items0 = refined.search(query, 6, refine_depth=0)
    d_plain, _ = plain.search(query, 6)
    assert torch.equal(items0, adc) and torch.equal(d0, d_plain)
    _, deeper = refined.search(query, 3, refine_depth=6)
    assert deeper.tolist() == [[3, 4, 2]]
    # A top 2 at R = 2: the ranking is fetched 4 * R wide, so the head takes in the tie group
    # and item 4 (the second closest) is not lost to its position.
    assert refined.search(query, 2, refine_depth=2)[1].tolist() == [[3, 4]]
    # The head grows to TIE_SPAN * R at most: at R = 1 the first four of the group (0-3).
    assert refined.search(query, 6, refine_depth=1)[1].tolist() == [[3, 2, 1, 0, 4, 5]]
    for depth, k in ((4, 6), (2, 2), (1, 6)):  # numpy (the torch-free service) does the same
        want = refined.search(query, k, refine_depth=depth)
        got = refined.search_numpy(query.numpy(), k, refine_depth=depth)
        assert got[1].tolist() == want[1].tolist()
        np.testing.assert_allclose(got[0], want[0].numpy(), atol=1e-6)
    with pytest.raises(qr.QuantrieveError, match=">= 0"):
        refined.search(query, 3, refine_depth=-1)


def test_an_index_without_refinement_searches_as_its_searcher() -> None:
    index = _index(refine=False)
    queries = torch.randn(20, M * D_SUB, generator=torch.Generator().manual_seed(1))
    for distance in ("l2", "sqeuclidean"):
        d, i = index.search(queries, 10, distance)
        d_ref, i_ref = index.searcher().search(queries, 10, distance)
        assert torch.equal(i, i_ref) and torch.equal(d, d_ref)


def test_refinement_is_saved_checked_and_stated(tmp_path: Path) -> None:
    index = _index()
    index.save(tmp_path / "ix")
    meta = json.loads((tmp_path / "ix" / "index.json").read_text())
    assert meta["has_refine"] and meta["refine_depth"] == 50 and meta["refine_dtype"] == "float16"
    assert "refine.npy" in meta["checksums"]
    loaded = PQIndex.load(tmp_path / "ix")
    q = torch.from_numpy(np.asarray(index.refine[:5], dtype=np.float32))
    assert torch.equal(loaded.search(q, 10)[1], index.search(q, 10)[1])
    assert PQIndex.load(tmp_path / "ix", mmap=True).search(q, 10)[1].tolist() == (
        index.search(q, 10)[1].tolist()
    )
    plain = _index(refine=False)
    plain.save(tmp_path / "plain")
    assert "has_refine" not in json.loads((tmp_path / "plain" / "index.json").read_text())
    tampered = np.load(tmp_path / "ix" / "refine.npy")
    tampered[0, 0] += 1
    np.save(tmp_path / "ix" / "refine.npy", tampered)
    with pytest.raises(IndexFormatError, match="checksum"):
        PQIndex.load(tmp_path / "ix")
    with pytest.raises(IndexFormatError, match="float16"):
        PQIndex(index.codebooks, index.codes, index.ids, refine=np.zeros((3, 2), np.float16))


def test_added_deleted_and_compacted_items_keep_their_embeddings(tmp_path: Path) -> None:
    index = _index(n=300)
    index.save(tmp_path / "ix")
    rng = np.random.default_rng(5)
    new_f = rng.normal(size=(3, M * D_SUB)).astype(np.float32)
    items = NewItems(
        codes=_quantize(new_f, index.codebooks),
        pixels=np.zeros((3, 4, 4, 1), np.uint8),
        raw=[b"a", b"b", b"c"],
        names=["a", "b", "c"],
        refine=new_f.astype(np.float16),
    )
    with IndexWriter(tmp_path / "ix") as writer:
        live = writer.append(open_live(tmp_path / "ix"), items)
        live = writer.delete(live, [0, 1])
    for version in (PQIndex.load(tmp_path / "ix"), compact(tmp_path / "ix") and None):
        if version is None:
            version = PQIndex.load(tmp_path / "ix")
        assert len(version) == 301 and version.refine.shape == (301, M * D_SUB)
        _, found = version.search(torch.from_numpy(new_f), 1)
        assert [version.ids[r] for r in found[:, 0].tolist()] == [
            f"added:{k}" for k in (300, 301, 302)
        ]
    with IndexWriter(tmp_path / "ix") as writer, pytest.raises(IndexFormatError, match="refine"):
        writer.append(
            open_live(tmp_path / "ix"),
            NewItems(codes=items.codes, pixels=items.pixels, raw=items.raw, names=items.names),
        )


def test_evaluation_with_refinement_scores_the_rankings_search_returns() -> None:
    index = _index(n=300, depth=20)
    rng = np.random.default_rng(3)
    labels = np.eye(5, dtype=bool)[rng.integers(0, 5, 300)]
    queries = torch.from_numpy(rng.normal(size=(40, M * D_SUB)).astype(np.float32))
    q_labels = np.eye(5, dtype=bool)[rng.integers(0, 5, 40)]
    result = evaluate_codes(
        queries,
        index.codebooks,
        index.codes,
        q_labels,
        labels,
        k=50,
        precision_at=(10,),
        refine=(index.refine, 20),
        ties=torch.arange(300),  # ties by row, as a search ranks them
    )
    _, ranked = index.search(queries, 50)
    rel = (q_labels[:, None, :] & labels[ranked.numpy()]).any(-1)
    hits = rel.cumsum(1)
    ap = [
        (hits[q][rel[q]] / (np.flatnonzero(rel[q]) + 1)).sum() / max(1, rel[q].sum())
        for q in range(40)
    ]
    assert result.map_at_k == pytest.approx(float(np.mean(ap)), abs=1e-6)  # float32 sums
    assert result.precision_at[10] == pytest.approx(rel[:, :10].mean(), abs=1e-6)
    assert result.extra["refine_depth"] == 20
    # By default ties are ranked in a fixed order that ignores the rows' order: the same
    # refined head (its tie groups are taken in whole), a different order of tied items after.
    fair = evaluate_codes(
        queries,
        index.codebooks,
        index.codes,
        q_labels,
        labels,
        50,
        (10,),
        refine=(index.refine, 20),
    )
    assert fair.precision_at[10] == pytest.approx(result.precision_at[10], abs=1e-6)
    off = evaluate_codes(
        queries, index.codebooks, index.codes, q_labels, labels, k=50, precision_at=(10,)
    )
    assert "refine_depth" not in off.extra


def test_faiss_export_of_a_refining_index_returns_its_top_10() -> None:
    index = _index(n=500, depth=40)
    exported = to_faiss(index)
    assert isinstance(exported, faiss.IndexRefine) and exported.k_factor == 4
    queries = np.asarray(index.refine[:30], dtype=np.float32) + 0.01
    _, faiss_items = exported.search(queries, 10)
    _, ours = index.search(torch.from_numpy(queries), 10, "sqeuclidean")
    assert (faiss_items == ours.numpy()).all()
    assert isinstance(to_faiss(index, refine=False), faiss.IndexPQ)


def test_a_query_that_is_indexed_comes_first() -> None:
    index = _index(n=50, refine=False)
    index.content = np.arange(50, dtype=np.uint64) + 1000
    queries = torch.from_numpy(np.zeros((2, M * D_SUB), np.float32))
    _, adc = index.search(queries, 5)
    target = int(adc[0, 3])  # fourth by ADC
    index.content[7] = index.content[target]  # a second copy of the same pixels
    prints = np.array([index.content[target], 99], dtype=np.uint64)
    d, items = index.search(queries, 5, fingerprints=prints)
    assert items[0, :2].tolist() == sorted([7, target]) and d[0, :2].tolist() == [0.0, 0.0]
    rest = [i for i in adc[0].tolist() if i not in (7, target)]
    assert items[0, 2:].tolist() == rest[:3]
    assert torch.equal(items[1], adc[1])  # no copy: unchanged


def test_coarse_codes_warn_with_numbers_and_fine_codes_do_not() -> None:
    rng = np.random.default_rng(0)
    fine = rng.integers(0, 16, (1000, 8)).astype(np.uint8)
    assert not code_usage(fine, 16).coarse
    coarse = fine.copy()
    coarse[:300] = coarse[0]  # 30 % of the items share one code
    usage = code_usage(coarse, 16)
    assert usage.coarse and usage.largest_group == 300 and usage.tied_share == pytest.approx(0.3)
    assert not usage.degenerate
    with pytest.warns(qr.QuantrieveWarning, match=r"coarse for 1,000 items.*300.*--refine-depth"):
        check_code_usage(coarse, 16, "encoded database")
    with pytest.warns(qr.QuantrieveWarning, match="re-scores its first 100 results"):
        check_code_usage(coarse, 16, "encoded database", refine_depth=100)
    border = fine.copy()
    border[:TIE_GROUP] = border[0]  # a group of exactly 10 is not larger than the top 10
    with warnings.catch_warnings():
        warnings.simplefilter("error", qr.QuantrieveWarning)
        check_code_usage(border, 16, "encoded database")


def test_encode_with_refinement_through_the_command_line(tiny_index: Path, tmp_path: Path) -> None:
    run = tiny_index.parent / "run"
    out = tmp_path / "refined"
    result = CliRunner().invoke(
        app,
        [
            "encode",
            str(run),
            "--out",
            str(out),
            "--refine-depth",
            "30",
            "--refine-source=embedding",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "embedding vectors re-scoring the first 30 results" in result.output
    refined = PQIndex.load(out)
    plain = PQIndex.load(tiny_index)
    assert np.array_equal(refined.codes, plain.codes) and refined.refine_depth == 30
    retriever = qr.Retriever.load(out)
    embeddings = retriever.embed(np.zeros((1, TINY.size, TINY.size, 1), np.uint8))
    assert refined.refine.shape == (len(plain), embeddings.shape[1])
    args = ["evaluate", str(out), "--json", "--precision-at", "10"]
    on = json.loads(CliRunner().invoke(app, args, catch_exceptions=False).stdout)
    off = json.loads(CliRunner().invoke(app, [*args, "--refine-depth", "0"]).stdout)
    base = json.loads(
        CliRunner()
        .invoke(app, ["evaluate", str(tiny_index), "--json", "--precision-at", "10"])
        .stdout
    )
    assert on["extra"]["refine_depth"] == 30 and "refine_depth" not in off["extra"]
    assert off["map_at_k"] == base["map_at_k"] and off["precision_at"] == base["precision_at"]
    hits = json.loads(
        CliRunner()
        .invoke(app, ["search", str(out), "--rows", "0,1", "--part", "train", "--json"])
        .stdout
    )
    assert [h["results"][0]["item"] for h in hits] == [0, 1]  # indexed queries come first


def test_refined_search_of_no_queries_and_of_more_than_the_index() -> None:
    index = _index(n=30, depth=100)
    d, items = index.search(torch.zeros(0, M * D_SUB), 5)
    assert len(d) == len(items) == 0
    d, items = index.search(torch.zeros(2, M * D_SUB), 50)
    assert items.shape == (2, 30) and sorted(items[0].tolist()) == list(range(30))


def _ranking_np(*args):
    from quantrieve.pq.numpy_search import refine_ranking_np

    return refine_ranking_np(*args)


def test_rows_without_a_finite_place_r_are_left_as_they_are() -> None:
    """Every item excluded (infinite ADC distance, e.g. the query itself in a one-item index)
    leaves no head to re-score: both refiners return the ranking unchanged, and a query of the
    wrong width is still refused."""
    fine = torch.randn(3, 4).half()
    inf = torch.full((2, 3), float("inf"))
    items = torch.tensor([[0, 1, 2], [2, 1, 0]])
    d, i = refine_ranking(torch.zeros(2, 4), inf, items, fine, 2)
    assert torch.equal(i, items) and torch.isinf(d).all()
    d_np, i_np = _ranking_np(np.zeros((2, 4)), inf.numpy(), items.numpy(), fine.numpy(), 2, "l2")
    assert np.array_equal(i_np, items.numpy()) and np.isinf(d_np).all()
    with pytest.raises(ValueError, match="must agree"):
        refine_ranking(torch.zeros(2, 5), inf, items, fine, 2)
    with pytest.raises(ValueError, match="must agree"):
        _ranking_np(np.zeros((2, 5)), inf.numpy(), items.numpy(), fine.numpy(), 2, "l2")


@pytest.mark.parametrize("distance", ["l2", "sqeuclidean"])
def test_heads_rescored_in_blocks_of_queries_match_one_block(
    distance: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The head's fine distances are computed a few queries at a time (bounded memory): the
    ranking is bit for bit that of one block, in torch and in numpy."""
    import quantrieve.pq.numpy_search as numpy_search
    import quantrieve.pq.refine as refine

    gen = torch.Generator().manual_seed(3)
    fine = torch.randn(300, 16, generator=gen).half()
    queries = torch.randn(23, 16, generator=gen)
    adc = torch.randint(0, 40, (23, 120), generator=gen).float().sort(1).values  # many ties
    items = torch.stack([torch.randperm(300, generator=gen)[:120] for _ in range(23)])
    whole = refine_ranking(queries, adc, items, fine, 30, distance)
    whole_np = _ranking_np(queries.numpy(), adc.numpy(), items.numpy(), fine.numpy(), 30, distance)
    monkeypatch.setattr(refine, "REFINE_BLOCK_VALUES", 16 * 60 * 2)  # blocks of about 2 queries
    monkeypatch.setattr(numpy_search, "REFINE_BLOCK_VALUES", 16 * 60 * 2)
    blocked = refine_ranking(queries, adc, items, fine, 30, distance)
    blocked_np = _ranking_np(
        queries.numpy(), adc.numpy(), items.numpy(), fine.numpy(), 30, distance
    )
    assert torch.equal(whole[1], blocked[1]) and torch.equal(whole[0], blocked[0])
    assert np.array_equal(whole_np[1], blocked_np[1]) and np.array_equal(whole_np[0], blocked_np[0])
    assert not torch.equal(whole[1], items)  # the heads were re-ordered
