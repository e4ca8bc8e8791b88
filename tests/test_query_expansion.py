"""Query expansion of the refined head (``refine_expand``): a known re-order, a float64
reference, torch and numpy alike, saved in index.json, and through evaluation and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import quantrieve as qr
from quantrieve.api import run_images
from quantrieve.cli import app
from quantrieve.evaluate import evaluate_codes
from quantrieve.index.format import IndexFormatError
from quantrieve.index.live import open_live
from quantrieve.index.pq_index import PQIndex
from quantrieve.index.segment_files import NewItems
from quantrieve.index.writer import IndexWriter
from quantrieve.pq import refine_ranking
from quantrieve.pq.numpy_search import refine_ranking_np
from quantrieve.pq.settings import DEFAULT_REFINE_EXPAND

M, K, D_SUB = 2, 16, 2


def _line_index(expand: int = 0) -> tuple[PQIndex, torch.Tensor]:
    """Six items on one line that share a code (ADC ties them all), refined by their
    positions; the query at 0. The closest, +1.0, and its neighbour +1.5 lie on one side,
    -1.1 alone on the other."""
    books = np.zeros((M, K, D_SUB), dtype=np.float32)
    books[:, 1] = 50.0
    codes = np.zeros((7, M), dtype=np.uint8)
    codes[6] = 1  # far away, after the tie group
    fine = np.zeros((7, M * D_SUB), dtype=np.float32)
    fine[:6, 0] = [3.0, -1.1, 1.5, 1.0, -2.5, 2.0]
    fine[6, 0] = 50.0
    index = PQIndex(
        books, codes, [str(i) for i in range(7)], refine=fine, refine_depth=6, refine_expand=expand
    )
    return index, torch.zeros(1, M * D_SUB)


def test_expansion_reorders_a_known_head_and_zero_is_plain_refinement() -> None:
    plain, query = _line_index()
    d, items = plain.search(query, 7)
    # refined by the distance to the query: 1.0, -1.1, 1.5, 2.0, -2.5, 3.0; then the far item
    assert items.tolist() == [[3, 1, 2, 5, 4, 0, 6]]
    # Expanded by the first result (+1.0): the query becomes 0.5, and +1.5 and +2.0 overtake
    # -1.1, whose side the closest result is not on.
    d_x, items_x = plain.search(query, 7, refine_expand=1)
    assert items_x.tolist() == [[3, 2, 5, 1, 0, 4, 6]]
    assert d_x[0, :6].tolist() == pytest.approx([0.5, 1.0, 1.5, 1.6, 2.5, 3.0], abs=2e-3)
    assert d_x[0, 6] == d[0, 6]  # after the head: the ADC distance, unchanged
    # Expanded by the first two (+1.0, -1.1): the mean (0 + 1.0 - 1.1) / 3 stays near 0.
    assert plain.search(query, 7, refine_expand=2)[1].tolist() == [[3, 1, 2, 5, 4, 0, 6]]
    # An index that expands by default, and the override back to plain refinement.
    expanding, _ = _line_index(expand=1)
    assert expanding.search(query, 7)[1].tolist() == items_x.tolist()
    d0, items0 = expanding.search(query, 7, refine_expand=0)
    assert torch.equal(items0, items) and torch.equal(d0, d)
    # ADC alone is not expanded
    assert expanding.search(query, 7, refine_depth=0)[1].tolist() == [[0, 1, 2, 3, 4, 5, 6]]
    # numpy, the torch-free service, ranks the same
    for n in (0, 1, 2, 6):
        want_d, want_i = plain.search(query, 7, refine_expand=n)
        got_d, got_i = plain.search_numpy(query.numpy(), 7, refine_expand=n)
        assert got_i.tolist() == want_i.tolist()
        np.testing.assert_allclose(got_d, want_d.numpy(), atol=1e-6)


def _reference(queries, adc, candidates, fine, depth, expand):
    """Slow float64 reference of a head without ties at place R: refine, average the query
    with its first `expand` results, refine again."""
    out = []
    fine = fine.double()
    for q, row in zip(queries.double(), candidates.tolist(), strict=True):
        head = row[:depth]
        first = sorted(head, key=lambda i: (float((q - fine[i]).pow(2).sum()), i))
        mean = (q + sum(fine[i] for i in first[:expand])) / (1 + min(expand, len(head)))
        again = sorted(head, key=lambda i: (float((mean - fine[i]).pow(2).sum()), i))
        out.append(again + row[depth:])
    return out


@pytest.mark.parametrize("expand", [1, 3, 10])
@pytest.mark.parametrize("distance", ["l2", "sqeuclidean"])
def test_expansion_matches_a_float64_reference_in_torch_and_numpy(
    expand: int, distance: str
) -> None:
    gen = torch.Generator().manual_seed(expand)
    fine = torch.randn(300, 12, generator=gen).half()
    queries = torch.randn(17, 12, generator=gen)
    adc = torch.arange(80.0).expand(17, 80).contiguous()  # no ties: the head is the first R
    candidates = torch.stack([torch.randperm(300, generator=gen)[:80] for _ in range(17)])
    want = _reference(queries, adc, candidates, fine, 25, expand)
    d, items = refine_ranking(queries, adc, candidates, fine, 25, distance, expand)
    assert items.tolist() == want
    d_np, items_np = refine_ranking_np(
        queries.numpy(), adc.numpy(), candidates.numpy(), fine.numpy(), 25, distance, expand
    )
    assert items_np.tolist() == want
    np.testing.assert_allclose(d_np, d.numpy(), rtol=1e-5, atol=1e-6)
    plain = refine_ranking(queries, adc, candidates, fine, 25, distance)
    assert not torch.equal(plain[1], items)  # expansion moved something
    assert torch.equal(items[:, 25:], candidates[:, 25:])  # nothing after the head moves
    with pytest.raises(ValueError, match="expand"):
        refine_ranking(queries, adc, candidates, fine, 25, distance, -1)
    with pytest.raises(ValueError, match="expand"):
        refine_ranking_np(
            queries.numpy(), adc.numpy(), candidates.numpy(), fine.numpy(), 25, distance, -1
        )


def test_excluded_items_never_expand_a_query() -> None:
    """Items at an infinite ADC distance (deleted, or the query itself in evaluation) are not
    in the head, so they cannot pull the query: a row whose head is one item expands by it
    alone, and a row with no head is left as it is."""
    fine = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [10.0, 0.0]]).half()
    adc = torch.tensor([[1.0, 2.0, 3.0, float("inf")], [float("inf")] * 4])
    items = torch.tensor([[1, 2, 0, 3], [0, 1, 2, 3]])
    query = torch.zeros(2, 2)
    d, got = refine_ranking(query, adc, items, fine, 3, "l2", expand=3)
    # head of row 0: items 1, 2, 0 (not 3); mean (0 + 0 + 1 + 3) / 4 = 1.0
    assert got[0].tolist() == [1, 0, 2, 3]
    assert d[0, :3].tolist() == pytest.approx([0.0, 1.0, 2.0], abs=1e-3)
    assert got[1].tolist() == [0, 1, 2, 3] and torch.isinf(d[1]).all()


def test_expansion_is_saved_carried_by_changes_and_refused_when_negative(tmp_path: Path) -> None:
    index, query = _line_index(expand=2)
    index.save(tmp_path / "ix")
    meta = json.loads((tmp_path / "ix" / "index.json").read_text())
    assert meta["refine_expand"] == 2 and meta["refine_depth"] == 6
    loaded = PQIndex.load(tmp_path / "ix")
    assert loaded.refine_expand == 2
    assert torch.equal(loaded.search(query, 7)[1], index.search(query, 7)[1])
    # An index written before expansion (no key) does not expand.
    del meta["refine_expand"]
    (tmp_path / "ix" / "index.json").write_text(json.dumps(meta))
    assert PQIndex.load(tmp_path / "ix", verify=False).refine_expand == 0
    meta["refine_expand"] = 2
    (tmp_path / "ix" / "index.json").write_text(json.dumps(meta))
    # A live version (items added by the service) keeps the setting.
    new = np.zeros((1, M * D_SUB), np.float32)
    new[0, 0] = 0.9
    items = NewItems(
        codes=np.zeros((1, M), np.uint8),
        pixels=np.zeros((1, 4, 4, 1), np.uint8),
        raw=[b"x"],
        names=["x"],
        refine=new.astype(np.float16),
    )
    with IndexWriter(tmp_path / "ix") as writer:
        live = writer.append(open_live(tmp_path / "ix"), items)
    assert live.index.refine_expand == 2
    assert live.index.search(query, 2)[1].tolist() == [[7, 3]]  # item 7, the new 0.9
    with pytest.raises(IndexFormatError, match="refine_expand"):
        PQIndex(index.codebooks, index.codes, index.ids, refine_expand=-1)
    with pytest.raises(qr.QuantrieveError, match=">= 0"):
        index.search(query, 3, refine_expand=-1)
    with pytest.raises(qr.QuantrieveError, match=">= 0"):
        index.search_numpy(query.numpy(), 3, refine_expand=-1)


def test_evaluation_with_expansion_scores_the_rankings_search_returns() -> None:
    rng = np.random.default_rng(4)
    books = rng.normal(size=(4, 16, 4)).astype(np.float32)
    f = rng.normal(size=(300, 16)).astype(np.float32)
    parts = f.reshape(300, 4, 4)
    codes = np.stack(
        [((parts[:, m, None] - books[m][None]) ** 2).sum(-1).argmin(1) for m in range(4)], 1
    ).astype(np.uint8)
    index = PQIndex(
        books, codes, [str(i) for i in range(300)], refine=f.astype(np.float16), refine_depth=20
    )
    labels = np.eye(5, dtype=bool)[rng.integers(0, 5, 300)]
    queries = torch.from_numpy(rng.normal(size=(40, 16)).astype(np.float32))
    q_labels = np.eye(5, dtype=bool)[rng.integers(0, 5, 40)]
    for n in (0, 3):
        result = evaluate_codes(
            queries,
            books,
            codes,
            q_labels,
            labels,
            k=50,
            precision_at=(10,),
            refine=(index.refine, 20),
            ties=torch.arange(300),
            refine_expand=n,
        )
        _, ranked = index.search(queries, 50, refine_expand=n)
        rel = (q_labels[:, None, :] & labels[ranked.numpy()]).any(-1)
        assert result.precision_at[10] == pytest.approx(rel[:, :10].mean(), abs=1e-6)
        assert result.extra["refine_expand"] == n


def test_encode_and_evaluate_with_expansion_through_the_command_line(
    tiny_index: Path, tmp_path: Path
) -> None:
    run = tiny_index.parent / "run"
    out = tmp_path / "expanded"
    refused = CliRunner().invoke(
        app, ["encode", str(run), "--out", str(out), "--refine-expand", "3"]
    )
    assert refused.exit_code != 0 and "--refine-depth" in str(refused.exception)
    args = ["encode", str(run), "--out", str(out), "--refine-depth", "30", "--refine-expand", "3"]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "expanded by the first 3" in " ".join(result.output.split())  # the console wraps
    assert PQIndex.load(out).refine_expand == 3
    # --refine-depth alone expands by the default; --refine-expand 0 turns it off
    default = tmp_path / "default"
    args = ["encode", str(run), "--out", str(default), "--refine-depth", "30"]
    assert CliRunner().invoke(app, args, catch_exceptions=False).exit_code == 0
    assert PQIndex.load(default).refine_expand == DEFAULT_REFINE_EXPAND == 3
    off_dir = tmp_path / "off"
    args = [
        "encode",
        str(run),
        "--out",
        str(off_dir),
        "--refine-depth",
        "30",
        "--refine-expand",
        "0",
    ]
    assert CliRunner().invoke(app, args, catch_exceptions=False).exit_code == 0
    assert PQIndex.load(off_dir).refine_expand == 0
    evaluate = ["evaluate", str(out), "--json", "--precision-at", "10"]
    on = json.loads(CliRunner().invoke(app, evaluate, catch_exceptions=False).stdout)
    off = json.loads(CliRunner().invoke(app, [*evaluate, "--refine-expand", "0"]).stdout)
    assert on["extra"]["refine_expand"] == 3 and off["extra"]["refine_expand"] == 0
    text = CliRunner().invoke(app, ["evaluate", str(out), "--precision-at", "10"]).output
    assert "first 30 refined, expanded by 3" in " ".join(text.split())


def test_search_takes_the_expansion_from_the_index_or_the_command_line(
    tiny_index: Path, tmp_path: Path
) -> None:
    run = tiny_index.parent / "run"
    out = tmp_path / "expanded"
    args = ["encode", str(run), "--out", str(out), "--refine-depth", "30"]
    assert CliRunner().invoke(app, args, catch_exceptions=False).exit_code == 0
    retriever = qr.Retriever.load(out)
    queries = run_images(out, part="test").images[:12]
    rows = ",".join(str(r) for r in range(12))
    search = ["search", str(out), "--rows", rows, "--part", "test", "--json", "-k", "10"]
    for extra, n in (([], None), (["--refine-expand", "0"], 0), (["--refine-expand", "5"], 5)):
        printed = CliRunner().invoke(app, [*search, *extra], catch_exceptions=False)
        got = [[h["item"] for h in q["results"]] for q in json.loads(printed.stdout)]
        want = retriever.search(queries, k=10, refine_expand=n).indices.tolist()
        assert got == want, extra
    plain = retriever.search(queries, k=10, refine_expand=0).indices
    assert not np.array_equal(plain, retriever.search(queries, k=10).indices)
