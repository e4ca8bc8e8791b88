"""Random restarts of unused codewords (train.codeword_restart): which codewords move, where
to, what the optimiser forgets, and that a run with them resumes exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_RUN

from quantrieve.config import ConfigError, load_config
from quantrieve.data import read_dataset
from quantrieve.models.quantizer import ProductQuantizer
from quantrieve.runtime.checkpoint import load_checkpoint
from quantrieve.train.codeword_restarts import DECAY, CodewordRestarts
from quantrieve.train.trainer import Trainer


def _quantizer_with_a_dead_word() -> tuple[ProductQuantizer, torch.Tensor]:
    """Two books of four 2-d codewords and a batch drawn around the four words' places in both
    books; word 3 of book 1 was moved far from everything, so no image's code uses it."""
    q = ProductQuantizer(num_books=2, num_codewords=4, codeword_dim=2)
    words = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 5.0], [5.0, 5.0]])
    with torch.no_grad():
        q.codebooks.copy_(torch.stack([words, words]))
        q.codebooks[1, 3] = torch.tensor([100.0, 100.0])
    g = torch.Generator().manual_seed(0)
    picks = (torch.arange(32) % 4).unsqueeze(1).expand(32, 2)  # each place 8 times a book
    f = words[picks] + 0.05 * torch.randn(32, 2, 2, generator=g)  # (B, M, d)
    return q, f.reshape(32, 4)


def _adam_with_moments(q: ProductQuantizer) -> torch.optim.Adam:
    optimizer = torch.optim.Adam(q.parameters(), lr=0.1)
    q.codebooks.sum().backward()
    optimizer.step()
    return optimizer


def test_an_unused_codeword_moves_onto_a_batch_sub_vector() -> None:
    q, f = _quantizer_with_a_dead_word()
    optimizer = _adam_with_moments(q)
    before = q.codebooks.detach().clone()
    restarts = CodewordRestarts(q, threshold=0.5, seed=7)
    # Word 3 of book 1 gets no codes: its share 1/4 decays below 0.5 / 4 after 7 steps.
    steps = next(n for n in range(1, 50) if DECAY**n < 0.5)
    counts = [restarts.after_step(f, step, optimizer) for step in range(steps)]
    assert counts == [0] * (steps - 1) + [1]
    assert restarts.take_count() == 1 and restarts.take_count() == 0
    moved = q.codebooks[1, 3]
    assert torch.isclose(f.reshape(32, 2, 2)[:, 1], moved).all(1).any()  # onto a batch f_1
    assert restarts.usage[1, 3] == 0.25
    unmoved = torch.ones(2, 4, dtype=torch.bool)
    unmoved[1, 3] = False
    assert torch.equal(q.codebooks[unmoved], before[unmoved])
    state = optimizer.state[q.codebooks]
    for key in ("exp_avg", "exp_avg_sq"):
        assert (state[key][1, 3] == 0).all() and (state[key][unmoved] != 0).all()
    # The batch's codes now use the restarted word too.
    assert len(torch.unique(q.encode(f)[:, 1])) == 4


def test_restarts_repeat_for_the_same_seed_and_step() -> None:
    results = []
    for seed in (3, 3, 4):
        q, f = _quantizer_with_a_dead_word()
        restarts = CodewordRestarts(q, threshold=0.99, seed=seed)
        restarts.after_step(f, 5, torch.optim.Adam(q.parameters()))
        results.append(q.codebooks.detach().clone())
    assert torch.equal(results[0], results[1])
    assert not torch.equal(results[0], results[2])


def test_a_codeword_in_use_is_never_restarted() -> None:
    q, f = _quantizer_with_a_dead_word()
    restarts = CodewordRestarts(q, threshold=0.5, seed=0)
    optimizer = torch.optim.Adam(q.parameters())
    held = q.codebooks[:, :3].detach().clone()
    total = sum(restarts.after_step(f, step, optimizer) for step in range(100))
    # The words that hold images from the start never move, even after the restarted word
    # takes some of their images; the dead one moved once and stays in use.
    assert total == 1
    assert torch.equal(q.codebooks[:, :3], held)
    assert (restarts.usage > 0.5 / 4).all()


@pytest.mark.parametrize("value", ["1", "-0.1"])
def test_codeword_restart_out_of_range_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match=r"train\.codeword_restart"):
        load_config(overrides=[f"train.codeword_restart={value}"])


def test_a_run_with_restarts_logs_them_and_resumes_exactly(
    tiny_fashion: Path, tmp_path: Path
) -> None:
    train = read_dataset("fashion-mnist", tiny_fashion)["train"]
    config = load_config(
        overrides=[
            f"data.root={tiny_fashion}",
            *TINY_RUN,
            "model.num_books=2",
            "train.max_steps_per_epoch=3",
            "eval.topk=50",
            "eval.precision_at=[5]",
            "train.codeword_restart=0.9",
        ]
    )
    straight = Trainer(config, train, tmp_path / "straight")
    straight.fit()
    log = [json.loads(line) for line in (tmp_path / "straight" / "log.jsonl").open()]
    epochs = [r for r in log if r["kind"] == "epoch"]
    assert all(isinstance(r["codewords_restarted"], int) for r in epochs)
    assert sum(r["codewords_restarted"] for r in epochs) > 0  # a threshold this high restarts
    saved = load_checkpoint(tmp_path / "straight" / "last.pt")["codeword_restarts"]["usage"]
    assert torch.equal(saved, straight.restarts.usage)

    first = Trainer(config, train, tmp_path / "resumed")
    first.fit(stop_after_epochs=1)
    resumed = Trainer(config, train, tmp_path / "resumed", resume=True)
    assert torch.equal(resumed.restarts.usage, first.restarts.usage)
    resumed.fit()
    for name, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value, rtol=0, atol=0)
