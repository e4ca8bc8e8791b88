"""Duplicate groups: exact copies by fingerprint, near-duplicates by embedding similarity among
code-sharing candidates, checked against a brute-force reference."""

from __future__ import annotations

import csv
import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from quantrieve.errors import QuantrieveError
from quantrieve.index import duplicates as dup
from quantrieve.index.duplicates import find_duplicates

BOOKS, WORDS, SUB = 4, 8, 4


def quantize(vectors: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    parts = vectors.reshape(len(vectors), BOOKS, SUB)
    dists = ((parts[:, :, None, :] - codebooks[None]) ** 2).sum(-1)
    return dists.argmin(-1).astype(np.uint8)


def planted(seed: int = 0, n: int = 300, copies: int = 40, noise: float = 0.02):
    rng = np.random.default_rng(seed)
    codebooks = rng.normal(size=(BOOKS, WORDS, SUB)).astype(np.float32)
    base = rng.normal(size=(n, BOOKS * SUB)).astype(np.float32)
    originals = rng.choice(n, copies, replace=False)
    near = base[originals] + rng.normal(0, noise, (copies, BOOKS * SUB)).astype(np.float32)
    vectors = np.concatenate([base, near])
    return vectors, quantize(vectors, codebooks), originals


def brute_force(codes: np.ndarray, vectors: np.ndarray, bound: float) -> set[tuple[int, ...]]:
    """Components of the pairs the documented rule accepts: codes differing in at most one
    book and cosine similarity >= bound, by comparing every pair."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    n = len(codes)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(n):
        for j in range(i + 1, n):
            if (codes[i] != codes[j]).sum() <= 1 and unit[i] @ unit[j] >= bound:
                parent[max(find(i), find(j))] = min(find(i), find(j))
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return {tuple(g) for g in groups.values() if len(g) > 1}


@pytest.mark.parametrize("bound", [0.9, 0.99])
def test_groups_equal_the_brute_force_components(bound: float, monkeypatch) -> None:
    vectors, codes, _ = planted()
    expected = brute_force(codes, vectors, bound)
    found = {tuple(g.rows.tolist()) for g in find_duplicates(codes, vectors, min_similarity=bound)}
    assert found == expected and expected
    # Every bucket compared block by block, in blocks of 3 rows: the same groups.
    monkeypatch.setattr(dup, "BLOCK", 3)
    monkeypatch.setattr(dup, "SMALL_BUCKET", 1)
    blocked = find_duplicates(codes, vectors.astype(np.float16), min_similarity=bound)
    assert {tuple(g.rows.tolist()) for g in blocked} == expected


def test_planted_copies_are_found_and_distinct_images_are_not() -> None:
    vectors, codes, originals = planted(seed=1)
    groups = find_duplicates(codes, vectors, min_similarity=0.99)
    pairs = {(int(g.rows[0]), int(g.rows[-1])) for g in groups if len(g) == 2}
    n = len(vectors) - len(originals)
    found = sum((int(o), n + i) in pairs for i, o in enumerate(originals))
    assert found >= 0.9 * len(originals)  # small noise rarely moves more than one codeword
    assert all(len(g) == 2 and g.min_similarity >= 0.99 and not g.exact for g in groups)


def test_exact_copies_by_fingerprint_even_without_embeddings() -> None:
    codes = np.zeros((6, BOOKS), dtype=np.uint8)  # one code for all: codes alone say nothing
    fingerprints = np.array([7, 9, 7, 3, 9, 7], dtype=np.uint64)
    groups = find_duplicates(codes, None, fingerprints)
    assert [(g.rows.tolist(), g.exact, g.min_similarity) for g in groups] == [
        ([0, 2, 5], True, 1.0),
        ([1, 4], True, 1.0),
    ]
    # With embeddings, a near-copy joins an exact group, which is then no longer exact.
    vectors = np.eye(6, dtype=np.float32)
    vectors[3] = vectors[0] + 0.01
    groups = find_duplicates(codes, vectors, fingerprints, min_similarity=0.95)
    assert groups[0].rows.tolist() == [0, 2, 3, 5] and not groups[0].exact
    assert 0.95 <= groups[0].min_similarity < 1.0


def test_bad_arguments_are_refused() -> None:
    codes = np.zeros((3, 2), dtype=np.uint8)
    with pytest.raises(QuantrieveError, match="encode with --refine-depth"):
        find_duplicates(codes, None, None)
    with pytest.raises(QuantrieveError, match="min_similarity"):
        find_duplicates(codes, np.ones((3, 4)), min_similarity=1.5)
    with pytest.raises(QuantrieveError, match="2 embeddings for 3 codes"):
        find_duplicates(codes, np.ones((2, 4)))


def test_the_command_writes_groups_and_a_contact_sheet(
    tiny_index: Path, tiny_fashion: Path, tmp_path: Path
) -> None:
    """An index encoded with embeddings; an exact copy of item 5 added through the service: the
    command groups them under their stable item numbers, as JSONL and CSV, and draws them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    from quantrieve.cli import app
    from quantrieve.data import read_dataset
    from quantrieve.serve import ServeOptions, create_app

    index_dir = tmp_path / "index"
    run = CliRunner().invoke(
        app,
        ["encode", str(tiny_index.parent / "run"), "--out", str(index_dir), "--refine-depth", "10"],
        catch_exceptions=False,
    )
    assert run.exit_code == 0, run.output
    pixels = np.asarray(read_dataset("fashion-mnist", tiny_fashion)["train"].images[5]).squeeze()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    with TestClient(create_app(index_dir, ServeOptions(api_key="k" * 12))) as client:
        added = client.post(
            "/items",
            files=[("images", ("copy.png", buffer.getvalue(), "image/png"))],
            headers={"X-API-Key": "k" * 12},
        )
        assert added.status_code == 201, added.text
        new_item = added.json()["added"][0]["item"]

    out = tmp_path / "groups.jsonl"
    sheet = tmp_path / "sheet.png"
    args = ["duplicates", str(index_dir), "--out", str(out), "--sheet", str(sheet)]
    result = CliRunner().invoke(app, [*args, "--min-similarity", "1.0"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    groups = [json.loads(line) for line in out.read_text().splitlines()]
    assert groups[0]["items"] == [5, new_item] and groups[0]["exact"]
    assert groups[0]["ids"][1] == f"added:{new_item}"
    assert all(g["exact"] for g in groups)  # at similarity 1.0: pixel copies only
    with Image.open(sheet) as drawn:
        assert drawn.format == "PNG" and drawn.width > 2 * 96
    # Again, as CSV, at the default bound (near-copies too): the copy stays with item 5.
    csv_out = tmp_path / "groups.csv"
    result = CliRunner().invoke(app, ["duplicates", str(index_dir), "--out", str(csv_out)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(csv_out.open()))
    group_of = {int(r["item"]): r["group"] for r in rows}
    assert group_of[5] == group_of[new_item]
    refused = CliRunner().invoke(app, [*args[:2], "--out", str(tmp_path / "g.txt")])
    assert "must end in .jsonl or .csv" in str(refused.exception)
    again = CliRunner().invoke(app, args)
    assert "--overwrite" in str(again.exception)
