"""Restarts (``quantrieve train --restarts N``): several seeds, the best by validation kept."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, TINY_RUN, as_sets
from typer.testing import CliRunner

import quantrieve as qr
from quantrieve.api.restarts import best_restart, fit_restarts, restart_seeds, score_restart
from quantrieve.cli import app
from quantrieve.config import apply_overrides, settings_from_text
from quantrieve.data import ImageSet
from quantrieve.train.trainer import TrainingError

# k-means-started codewords and a high rate: tiny runs whose seeds score differently
SETS = [*TINY_RUN, f"model.num_books={TINY.books}", "model.codebook_init=kmeans", "train.lr=0.01"]


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").open()]


def test_train_with_restarts_keeps_the_best_seed_by_validation(
    tiny_fashion: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--data-dir", str(tiny_fashion), "--restarts", "3"]
    args += as_sets([*SETS, "train.seed=6"])
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "restarts.json").read_text())
    assert [r["seed"] for r in summary["restarts"]] == [6, 7, 8]
    scores = {}
    for seed in (6, 7, 8):
        run = out / "restarts" / f"seed-{seed}"
        assert json.loads((run / "config.json").read_text())["train"]["seed"] == seed
        epochs = [r for r in _log(run) if r.get("kind") == "epoch"]
        kept = next(r for r in epochs if r["epoch"] == epochs[-1]["best_epoch"])
        # the two numbers a user reads, at the epoch the run kept
        scores[seed] = kept["val_map"] + kept["val_p10"]
        # the same validation split for every seed: their scores compare the same queries
        with np.load(run / "splits.npz") as a, np.load(out / "restarts/seed-6/splits.npz") as b:
            assert all(np.array_equal(a[k], b[k]) for k in a.files)
    listed = {r["seed"]: r["score"] for r in summary["restarts"]}
    assert listed == pytest.approx(scores)
    chosen = max(scores, key=lambda s: (scores[s], -s))
    assert summary["chosen_seed"] == chosen and summary["metric"] == "val_map+val_p10"
    assert len(set(scores.values())) > 1  # the seeds did differ
    assert chosen != 6  # on these tiny runs the best is not simply the first seed
    # OUT is the chosen run: its model, config and log, ready for encode
    picked = out / "restarts" / f"seed-{chosen}"
    for name in ("model.pt", "config.json", "log.jsonl", "last.pt"):
        assert (out / name).read_bytes() == (picked / name).read_bytes()
    text = " ".join(result.output.split())
    assert f"kept seed {chosen} of 3" in text
    encoded = CliRunner().invoke(app, ["encode", str(out), "--out", str(tmp_path / "index")])
    assert encoded.exit_code == 0, encoded.output
    # Finished restarts are not trained again: the same command reads their checkpoints.
    stamps = {s: (out / f"restarts/seed-{s}/log.jsonl").stat().st_mtime_ns for s in (6, 7, 8)}
    again = CliRunner().invoke(app, args, catch_exceptions=False)
    assert again.exit_code == 0, again.output
    assert {
        s: (out / f"restarts/seed-{s}/log.jsonl").stat().st_mtime_ns for s in (6, 7, 8)
    } == stamps
    assert json.loads((out / "restarts.json").read_text())["chosen_seed"] == chosen


def _images(labelled: bool = True) -> ImageSet:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, TINY.classes, 200)
    images = rng.integers(0, 60, (200, TINY.size, TINY.size, 1)).astype(np.uint8)
    for i, c in enumerate(labels):
        images[i, int(c) : int(c) + 2] = 230
    return ImageSet(
        images=images,
        labels=np.eye(TINY.classes, dtype=bool)[labels] if labelled else None,
        ids=[str(i) for i in range(200)],
        class_names=[str(c) for c in range(TINY.classes)] if labelled else [],
    )


def _config_for(extra: list[str]):
    base = qr.Retriever.from_preset(overrides=[*SETS, *extra]).config

    def config_for(seed: int):
        return apply_overrides(base, settings_from_text([f"train.seed={seed}"]))

    return config_for


def test_an_unfinished_restart_is_refused_without_resume_and_continued_with_it(
    tmp_path: Path,
) -> None:
    images = _images()
    short = _config_for(["train.epochs=1", "train.warmup_epochs=0"])
    fit_restarts(short, images, tmp_path, [0, 1])
    longer = _config_for([f"train.epochs={TINY.epochs + 1}", "train.warmup_epochs=0"])
    with pytest.raises(TrainingError, match="--resume"):
        fit_restarts(longer, images, tmp_path, [0, 1])
    other = _config_for(["train.epochs=1", "train.warmup_epochs=0", "train.lr=0.002"])
    with pytest.raises(TrainingError, match=r"train\.lr"):  # a finished restart is not reused
        fit_restarts(other, images, tmp_path, [0, 1])
    retriever, done = fit_restarts(longer, images, tmp_path, [0, 1], resume=True)
    for restart in done:
        epochs = [r["epoch"] for r in _log(restart.run_dir) if r.get("kind") == "epoch"]
        assert epochs == list(range(1, TINY.epochs + 2))  # epoch 1 kept, the rest added
    assert retriever.model is not None


def test_runs_without_a_validation_score_are_refused_before_training(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="unlabelled_select=self"):
        fit_restarts(_config_for([]), _images(labelled=False), tmp_path, [0, 1])
    assert not (tmp_path / "restarts").exists()
    with pytest.raises(TrainingError, match="distinct seeds"):
        fit_restarts(_config_for([]), _images(), tmp_path, [3, 3])
    with pytest.raises(TrainingError, match=">= 1"):
        restart_seeds(0, 0)
    assert restart_seeds(4, 3) == [4, 5, 6]


def test_unlabelled_restarts_are_compared_by_the_label_free_score(tmp_path: Path) -> None:
    config_for = _config_for(["train.unlabelled_select=self"])
    _, done = fit_restarts(config_for, _images(labelled=False), tmp_path, [0, 1])
    assert [r.metric for r in done] == ["val_self", "val_self"]
    summary = json.loads((tmp_path / "restarts.json").read_text())
    best = max(done, key=lambda r: r.score)
    assert summary["chosen_seed"] == best.seed and summary["metric"] == "val_self"


def test_restarts_under_torchrun_are_refused(
    tiny_fashion: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    args = ["train", "--out", str(tmp_path / "run"), "--data-dir", str(tiny_fashion)]
    refused = CliRunner().invoke(app, [*args, "--restarts", "2", *as_sets(SETS)])
    assert isinstance(refused.exception, TrainingError) and "torchrun" in str(refused.exception)
    assert not (tmp_path / "run").exists()


def test_restarts_never_replace_a_run_they_did_not_write(tmp_path: Path) -> None:
    """The chosen run is copied into OUT: an OUT holding another run, or any file of the
    user's, is refused before anything is trained or written."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "model.pt").write_bytes(b"a run of the user's")
    with pytest.raises(TrainingError, match=r"model\.pt"):
        fit_restarts(_config_for([]), _images(), out, [0, 1])
    assert sorted(p.name for p in out.iterdir()) == ["model.pt"]
    assert (out / "model.pt").read_bytes() == b"a run of the user's"


def _finished_run(folder: Path, seed: int, val_map: float, val_p10: float) -> Path:
    """A run folder as a finished labelled training leaves it: its checkpoint names the kept
    epoch (2) and its mAP, its log that epoch's P@10."""
    import torch

    folder.mkdir(parents=True)
    config = qr.Retriever.from_preset(overrides=[*SETS, f"train.seed={seed}"]).config
    state = {"epoch": 3, "best_epoch": 2, "best_val_map": val_map, "config": config.to_dict()}
    torch.save(state, folder / "last.pt")
    lines = [
        {"kind": "epoch", "epoch": e, "val_map": val_map - 0.1 * (e != 2), "val_p10": p}
        for e, p in ((1, 0.9), (2, val_p10), (3, 0.9))
    ]
    (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return folder


def test_restarts_are_scored_by_validation_map_plus_p10_at_the_kept_epoch(tmp_path: Path) -> None:
    """Seed 0 has the better mAP@K, seed 1 the better top 10 and the better sum: seed 1 is
    kept (by mAP@K alone it would be seed 0)."""
    first = score_restart(_finished_run(tmp_path / "a", 0, val_map=0.62, val_p10=0.70))
    second = score_restart(_finished_run(tmp_path / "b", 1, val_map=0.60, val_p10=0.80))
    assert (first.seed, first.best_epoch, first.metric) == (0, 2, "val_map+val_p10")
    assert first.score == pytest.approx(1.32) and second.score == pytest.approx(1.40)
    assert (second.val_map, second.val_p10) == (pytest.approx(0.60), pytest.approx(0.80))
    assert best_restart([first, second]) is second
    tie = score_restart(_finished_run(tmp_path / "c", 2, val_map=0.70, val_p10=0.62))
    assert tie.score == first.score and best_restart([first, tie]) is first  # the first of ties


def test_a_restarted_run_continued_in_out_is_not_replaced(tmp_path: Path) -> None:
    """Restarts copy the chosen run into OUT and record what they copied: once the user has
    trained on in OUT (``--resume --epochs``), a later ``--restarts`` call refuses to replace it,
    and files the user put in OUT (an index encoded there) are never touched."""
    images = _images()
    short = _config_for(["train.epochs=1", "train.warmup_epochs=0"])
    out = tmp_path / "run"
    fit_restarts(short, images, out, [0, 1])
    summary = json.loads((out / "restarts.json").read_text())
    assert "copying" not in summary and set(summary["copied"]) >= {"model.pt", "last.pt"}
    (out / "index").mkdir()
    (out / "index" / "index.json").write_text("the user's index")
    continued = (out / "last.pt").read_bytes() + b"another epoch"
    (out / "last.pt").write_bytes(continued)
    with pytest.raises(TrainingError, match=r"last\.pt changed since --restarts"):
        fit_restarts(short, images, out, [0, 1])
    assert (out / "last.pt").read_bytes() == continued
    assert (out / "index" / "index.json").read_text() == "the user's index"


def test_a_new_choice_replaces_only_what_restarts_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A later call that keeps another seed swaps the copied run for the new one whole; the
    user's index inside OUT stays."""
    import quantrieve.api.restarts as restarts

    images = _images()
    short = _config_for(["train.epochs=1", "train.warmup_epochs=0"])
    out = tmp_path / "run"
    fit_restarts(short, images, out, [0, 1])
    first = json.loads((out / "restarts.json").read_text())["chosen_seed"]
    (out / "index").mkdir()
    (out / "index" / "index.json").write_text("the user's index")
    # keep the seed that was not kept before (the score rule is tested above)
    monkeypatch.setattr(restarts, "best_restart", lambda rs: next(r for r in rs if r.seed != first))
    fit_restarts(short, images, out, [0, 1])
    summary = json.loads((out / "restarts.json").read_text())
    second = summary["chosen_seed"]
    assert second != first and "copying" not in summary
    picked = out / "restarts" / f"seed-{second}"
    for path in picked.iterdir():
        if path.is_file():
            assert (out / path.name).read_bytes() == path.read_bytes(), path.name
    assert set(summary["copied"]) == {p.name for p in picked.iterdir()}
    assert (out / "index" / "index.json").read_text() == "the user's index"
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no copy left over


def test_restarts_longer_than_the_config_are_refused(tmp_path: Path) -> None:
    images = _images()
    longer = _config_for(["train.epochs=2", "train.warmup_epochs=0"])
    fit_restarts(longer, images, tmp_path, [0])
    shorter = _config_for(["train.epochs=1", "train.warmup_epochs=0"])
    with pytest.raises(TrainingError, match=r"more than train\.epochs = 1"):
        fit_restarts(shorter, images, tmp_path, [0])
