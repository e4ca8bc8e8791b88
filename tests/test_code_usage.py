"""Code usage: collapsed codes are measured and warned about in training, validation and encode."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, TINY_RUN, encode_index

from quantrieve.config import ModelConfig, load_config
from quantrieve.data import ImageSet, read_dataset
from quantrieve.errors import QuantrieveWarning
from quantrieve.evaluate.code_usage import check_code_usage, code_usage
from quantrieve.index.pq_index import PQIndex
from quantrieve.models.retrieval import RetrievalModel, embed_images
from quantrieve.train.trainer import Trainer


def test_identical_codes_are_degenerate_with_a_warning() -> None:
    usage = code_usage(np.full((200, 4), 3, dtype=np.uint8), 16)
    assert usage.distinct_codes == 1 and usage.perplexity == [1.0] * 4
    assert usage.used_codewords == [1] * 4 and usage.degenerate
    found = usage.warnings()
    assert found[0] == "only 1 distinct code for 200 items (0.5% of the 200 possible)"
    assert found[1].startswith("4 of 4 books (book 0, 1, 2, 3) effectively use fewer than 2 of")
    assert usage.to_dict()["degenerate"] is True
    # The advice names the causes measured: too few steps, too high a rate, too sharp a
    # soft assignment (docs/results.md, "The sharper soft assignment on every collection").
    message = usage.message("encoded database")
    advice = message.removeprefix(f"encoded database: codes have collapsed: {'; '.join(found)}; ")
    assert advice != message
    assert "train.batch_size" in advice and "train.lr" in advice and "model.tau_sq" in advice
    with pytest.warns(QuantrieveWarning, match=r"encoded database: codes have collapsed: only 1"):
        check_code_usage(np.zeros((200, 4), dtype=np.uint8), 16, "encoded database")


def test_uniform_random_codes_use_the_whole_code_space() -> None:
    rng = np.random.default_rng(0)
    usage = code_usage(rng.integers(0, 16, (20_000, 4)).astype(np.uint8), 16)
    assert not usage.degenerate and usage.warnings() == []
    assert usage.perplexity == pytest.approx([16.0] * 4, abs=0.1)
    assert usage.mean_perplexity == pytest.approx(16.0, abs=0.1)
    assert usage.distinct_fraction > 0.2 and usage.used_codewords == [16] * 4
    # One-bit books: the most a book can reach is 2, so the bound is lowered.
    assert not code_usage(rng.integers(0, 2, (1000, 8)), 2).degenerate
    # A tensor (any device) is accepted.
    assert code_usage(torch.from_numpy(rng.integers(0, 16, (500, 2))), 16).num_items == 500
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_code_usage(rng.integers(0, 16, (500, 2)), 16, "codes")


def test_one_collapsed_book_is_named() -> None:
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 16, (1000, 4)).astype(np.uint8)
    codes[:, 2] = 5
    codes[:3, 2] = 6  # used, but almost never: perplexity ~1.02
    usage = code_usage(codes, 16)
    assert usage.distinct_codes > 100 and usage.used_codewords[2] == 2
    assert usage.degenerate
    assert usage.warnings() == [
        "1 of 4 books (book 2) effectively use fewer than 2 of their 16 codewords (lowest usage "
        f"perplexity {usage.perplexity[2]:.2f})"
    ]


def test_tiny_or_empty_code_sets_and_bad_input() -> None:
    assert not code_usage(np.zeros((1, 4), dtype=np.uint8), 16).degenerate
    assert not code_usage(np.zeros((0, 4), dtype=np.uint8), 16).degenerate
    assert code_usage(np.array([[0], [0]]), 16).degenerate
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 16\)"):
        code_usage(np.array([[16]]), 16)
    with pytest.raises(ValueError, match=r"codes must be \(N, M\)"):
        code_usage(np.zeros(5), 16)


def _config(root: Path, *extra: str):
    return load_config(overrides=[f"data.root={root}", *TINY_RUN, "model.num_books=2", *extra])


def test_few_steps_per_epoch_and_a_large_validation_share_are_warned(
    tiny_fashion: Path, tmp_path: Path
) -> None:
    train = read_dataset("fashion-mnist", tiny_fashion)["train"]
    with pytest.warns(QuantrieveWarning) as record:
        Trainer(_config(tiny_fashion, "train.batch_size=128"), train, tmp_path / "a")
    (message,) = [str(w.message) for w in record]
    steps = TINY.train // 128
    assert message.startswith(f"{TINY.train} training images make only {steps} steps per epoch at ")
    assert f"train.batch_size=128 ({steps * TINY.epochs} in all)" in message
    assert "lower train.batch_size (e.g. 32) or raise train.epochs" in message
    with pytest.warns(QuantrieveWarning) as record:
        Trainer(_config(tiny_fashion, "data.val_queries=200"), train, tmp_path / "b")
    (message,) = [str(w.message) for w in record]
    assert message == (
        f"data.val_queries=200 takes 62% of the {TINY.train} training images, leaving a "
        f"validation database of {TINY.train - 200}: model selection on it is noisy and mAP@K is "
        "capped by its size; lower data.val_queries (e.g. 32)"
    )
    with warnings.catch_warnings():  # the tiny test run itself: 10 steps, 12 % validation
        warnings.simplefilter("error")
        Trainer(_config(tiny_fashion), train, tmp_path / "c")


def test_training_logs_code_usage_and_warns_when_codes_collapse(
    tiny_fashion: Path, tmp_path: Path
) -> None:
    train = read_dataset("fashion-mnist", tiny_fashion)["train"]
    config = _config(tiny_fashion, "train.epochs=1", "train.warmup_epochs=0")
    # Identical images: every view and every item gets one code.
    blank = ImageSet(np.zeros_like(train.images), train.labels, train.ids)
    trainer = Trainer(config, blank, tmp_path / "blank")
    with pytest.warns(QuantrieveWarning) as record:
        trainer.fit()
    (message,) = [str(w.message) for w in record]  # one warning, at the end of training
    assert message.startswith("epoch 1, validation database: codes have collapsed: only 1 ")
    log = [json.loads(x) for x in (tmp_path / "blank" / "log.jsonl").read_text().splitlines()]
    (epoch,) = [r for r in log if r["kind"] == "epoch"]
    (validation,) = [r for r in log if r["kind"] == "validation"]
    assert epoch["code_usage"]["degenerate"] and epoch["code_usage"]["distinct_codes"] == 1
    assert epoch["code_usage"]["num_items"] == TINY.steps * TINY.batch  # each batch's 1st view
    assert validation["code_usage"]["num_items"] == TINY.train - TINY.val_queries
    assert validation["code_usage"]["distinct_codes"] == 1
    # Without labels there is no validation: the training batches' codes are judged.
    unlabelled = ImageSet(blank.images, None, blank.ids)
    trainer = Trainer(config, unlabelled, tmp_path / "unlabelled")
    with pytest.warns(QuantrieveWarning, match=r"epoch 1, training batches: codes have collapsed"):
        trainer.fit()


def test_encode_records_code_usage_in_index_json(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = RetrievalModel(ModelConfig(width=4, num_books=2, codeword_dim=4), 8, 1, [0.5], [0.25])
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50, 8, 8, 1), dtype=np.uint8)
    # An untrained model maps noise to nearly one point; codewords at 16 items' embeddings
    # spread the codes as a trained one would.
    f = embed_images(model, images, torch.device("cpu"))
    model.quantizer.codebooks.data = f[:16].reshape(16, 2, 4).transpose(0, 1).contiguous()
    model.save(tmp_path / "model.pt")
    database = ImageSet(images, None, [str(i) for i in range(50)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        index = encode_index(tmp_path / "model.pt", database, tmp_path / "ix", device="cpu")
    usage = PQIndex.load(tmp_path / "ix").meta["code_usage"]
    assert usage == index.meta["code_usage"] and usage["num_items"] == 50
    assert len(usage["perplexity"]) == 2 and usage["distinct_codes"] >= 16
    assert usage["degenerate"] is False
    blank = ImageSet(np.zeros_like(images), None, database.ids)
    with pytest.warns(QuantrieveWarning, match="encoded database: codes have collapsed"):
        encode_index(tmp_path / "model.pt", blank, tmp_path / "ix2", device="cpu")
    assert PQIndex.load(tmp_path / "ix2").meta["code_usage"]["degenerate"] is True
