"""Training curves for TensorBoard: the log's numbers as scalars, rebuilt on resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_training import _Interrupt, tiny_config

from quantrieve.config import ConfigError
from quantrieve.data import read_dataset
from quantrieve.train.tensorboard import scalars
from quantrieve.train.trainer import Trainer


def _events(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def test_scalars_flatten_numbers_and_place_them_by_step_or_epoch() -> None:
    step = {"kind": "step", "epoch": 2, "step": 30, "loss": 1.5, "lr": 0.001, "note": "x"}
    assert sorted(scalars(step)) == [("step/loss", 1.5, 30), ("step/lr", 0.001, 30)]
    validation = {
        "kind": "validation",
        "epoch": 2,
        "map_at_k": 0.5,
        "precision_at": {"10": 0.7},
        "pr_precision": [0.9, 0.8],
        "code_usage": {"distinct_fraction": 0.25, "degenerate": False},
    }
    assert sorted(scalars(validation)) == [
        ("validation/code_usage/distinct_fraction", 0.25, 2),
        ("validation/map_at_k", 0.5, 2),
        ("validation/precision_at/10", 0.7, 2),
    ]
    assert list(scalars({"kind": "extended", "from_epochs": 3})) == []  # no epoch: no place


def test_a_run_writes_its_log_for_tensorboard_and_a_resume_rebuilds_it(
    tiny_fashion: Path, tmp_path: Path
) -> None:
    pytest.importorskip("tensorboard")
    train = read_dataset("fashion-mnist", tiny_fashion)["train"]
    config = tiny_config(tiny_fashion, "train.max_steps_per_epoch=2", "train.tensorboard=true")
    run = tmp_path / "run"
    interrupted = Trainer(config, train, run, progress=_Interrupt(after=3))
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()  # dies in epoch 2, after its first steps were logged
    resumed = Trainer(config, train, run, resume=True)
    resumed.fit()
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    expected: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        for tag, value, x in scalars(record):
            expected.setdefault(tag, []).append((x, value))
    found = _events(run / "tensorboard")
    assert set(found) == set(expected) and "validation/map_at_k" in found
    for tag, points in expected.items():
        assert [x for x, _ in found[tag]] == [x for x, _ in points], tag  # each once
        assert [v for _, v in found[tag]] == pytest.approx([v for _, v in points]), tag
    epochs = [x for x, _ in found["epoch/loss"]]
    assert epochs == list(range(1, config.train.epochs + 1))


def test_without_the_package_the_option_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import builtins

    from quantrieve.train.tensorboard import TensorBoardLog

    real = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(ConfigError, match=r"quantrieve\[tensorboard\]"):
        TensorBoardLog(tmp_path / "tb")


def test_a_folder_with_other_files_is_refused_not_emptied(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from quantrieve.train.tensorboard import TensorBoardLog

    folder = tmp_path / "tensorboard"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"notes\.txt"):
        TensorBoardLog(folder)
    assert (folder / "notes.txt").read_text() == "mine"
    (folder / "notes.txt").unlink()
    first = TensorBoardLog(folder, [{"kind": "epoch", "epoch": 1, "loss": 2.0}])
    first.close()
    TensorBoardLog(folder).close()  # its own event files are replaced
    assert len(list(folder.iterdir())) == 1
