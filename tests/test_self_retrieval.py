"""The label-free validation signal: ranks of originals for their copies, ties at their
average position, and a trainer that records it without changing its training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quantrieve.evaluate.self_retrieval import self_retrieval


def test_ranks_count_ties_at_their_average_position() -> None:
    # Two books of 4 codewords in 1-d: codeword k of each book is the value k.
    codebooks = torch.arange(4, dtype=torch.float32).repeat(2, 1)[:, :, None]
    codes = torch.tensor([[0, 0], [1, 1], [1, 1], [1, 1], [3, 3]], dtype=torch.uint8)
    copies = torch.tensor([[0.1, 0.0], [1.0, 1.0], [2.9, 3.0]])
    found = self_retrieval(copies, codebooks, codes, np.array([0, 2, 4]))
    # Row 0 and row 4 rank first; row 2 shares its code with rows 1 and 3: (0 + (3 + 1) / 2) = 2.
    assert found.recall_at_1 == 2 / 3 and found.recall_at_10 == 1.0
    assert abs(found.mean_rank - (1 + 2 + 1) / 3) < 1e-9 and found.queries == 3
    # A copy nearer another item than its original: its original's rank counts those before it.
    far = self_retrieval(torch.tensor([[3.0, 3.0]]), codebooks, codes, np.array([0]))
    assert far.mean_rank == 5.0 and far.recall_at_1 == 0.0
    assert set(found.to_dict()) == {
        "self_recall_at_1",
        "self_recall_at_10",
        "self_mean_rank",
        "self_queries",
    }


def test_every_validation_records_it(tiny_index) -> None:
    import json

    log = (tiny_index.parent / "run" / "log.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in log]
    validations = [r for r in records if r.get("kind") == "validation"]
    epochs = {r["epoch"]: r for r in records if r.get("kind") == "epoch"}
    assert validations
    for record in validations:
        assert 0.0 <= record["self_recall_at_1"] <= record["self_recall_at_10"] <= 1.0
        assert record["self_mean_rank"] >= 1.0 and record["self_queries"] > 0
        assert epochs[record["epoch"]]["val_self"] == record["self_recall_at_10"]


@pytest.mark.slow  # two tiny trainings
def test_an_unlabelled_run_can_keep_its_best_label_free_epoch(tiny_fashion, tmp_path) -> None:
    """``train.unlabelled_select=self``: the kept epoch is the first best self recall@10."""
    import json

    from conftest import TINY_RUN

    import quantrieve as qr

    images = qr.read_dataset("fashion-mnist", tiny_fashion)["train"]
    unlabelled = qr.ImageSet(images.images, None, list(images.ids))
    overrides = [*TINY_RUN, "train.epochs=3", "train.unlabelled_select=self"]
    retriever = qr.Retriever.from_preset(
        "fashion-mnist-cpu", overrides=overrides, device="cpu"
    ).fit(unlabelled, run_dir=tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").open()]
    scores = {r["epoch"]: r["self_recall_at_10"] for r in records if r["kind"] == "validation"}
    assert sorted(scores) == [1, 2, 3] and "map_at_k" not in records[-2]
    best = max(scores, key=lambda epoch: (scores[epoch], -epoch))
    assert retriever.model.training_info["epoch"] == best
    # The default keeps the last epoch, as before; measuring changes nothing in the training.
    last = qr.Retriever.from_preset(
        "fashion-mnist-cpu", overrides=[*TINY_RUN, "train.epochs=3"], device="cpu"
    ).fit(unlabelled, run_dir=tmp_path / "last")
    assert last.model.training_info["epoch"] == 3
    plain = [json.loads(line) for line in (tmp_path / "last" / "log.jsonl").open()]
    losses = [r["loss"] for r in records if r["kind"] == "epoch"]
    assert losses == [r["loss"] for r in plain if r["kind"] == "epoch"]
