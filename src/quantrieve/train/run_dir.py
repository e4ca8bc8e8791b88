"""The folder of one training run: its files, the checks before writing into it, its log.

Layout::

    config.json     resolved config        run.json      seed, versions, git commit, device
    splits.npz/json validation split       log.jsonl     every logged step and epoch
    holdout.npz/json held-out queries      last.pt       resumable checkpoint
    model.pt        best model by validation mAP

Rank 0 of a data-parallel run writes the folder; the other ranks only read it (to resume). A
run without a folder (``path=None``) keeps its log and its best weights in memory.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from quantrieve.config import RunConfig
from quantrieve.errors import QuantrieveError
from quantrieve.models.retrieval import RetrievalModel
from quantrieve.runtime.atomic import atomic_write_json, atomic_write_text
from quantrieve.runtime.checkpoint import atomic_save, load_checkpoint
from quantrieve.runtime.outputs import OutputKind, refuse_foreign
from quantrieve.train.tensorboard import TensorBoardLog


class TrainingError(QuantrieveError, RuntimeError):
    """Training cannot start or continue (bad run directory, diverged loss, ...)."""


def _is_run(folder: Path) -> bool:
    try:
        record = json.loads((folder / "run.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and "seed" in record and "versions" in record


RUN_KIND = OutputKind("training run", "run.json", _is_run)


class RunDir:
    """Where a training run keeps its files, and who writes them.

    Args:
        path: The run's folder (created by :meth:`prepare`); ``None``: the run lives in memory.
        main: Whether this process is rank 0, the one that writes and logs.
    """

    def __init__(self, path: str | Path | None, main: bool = True) -> None:
        self.path = None if path is None else Path(path)
        self.main = main
        #: The log of a run without a folder (rank 0 only).
        self.log_records: list[dict[str, Any]] = []
        #: The kept weights when they are not written to ``model.pt``.
        self.best_state: dict[str, Any] | None = None
        self._tensorboard: TensorBoardLog | None = None

    @property
    def out(self) -> Path | None:
        """The folder this process writes into: the run's folder on rank 0, else None."""
        return self.path if self.main else None

    @property
    def config_file(self) -> Path:
        """``config.json``: the resolved config (rewritten when the run is extended)."""
        return self._file("config.json")

    @property
    def record_file(self) -> Path:
        """``run.json``: seed, versions, git commit, device, data."""
        return self._file("run.json")

    @property
    def checkpoint(self) -> Path:
        """``last.pt``: the resumable state after the latest finished epoch."""
        return self._file("last.pt")

    @property
    def model_file(self) -> Path:
        """``model.pt``: the kept model (best validation epoch)."""
        return self._file("model.pt")

    @property
    def log_file(self) -> Path:
        """``log.jsonl``: one JSON record per logged step, validation and epoch."""
        return self._file("log.jsonl")

    def _file(self, name: str) -> Path:
        if self.path is None:
            raise TrainingError(f"a run without a folder has no {name}")
        return self.path / name

    def prepare(self, resume: bool) -> None:
        """Check the folder before anything is written: a run is continued only with
        ``resume``, never overwritten; a folder of anything else is refused. Creates it."""
        if self.path is None:
            if resume:
                raise TrainingError("resume needs a run directory")
            return
        if not self.main:
            return
        exists = self.checkpoint.exists()
        if exists and not resume:
            raise TrainingError(
                f"{self.path} already holds a run (last.pt); pass --resume to continue it "
                "or choose another --out"
            )
        if resume and not exists:
            raise TrainingError(f"--resume given but {self.checkpoint} does not exist")
        # A folder of anything but a run (the user's files, an index, a parent of runs) is
        # never written into: config.json, model.pt, ... could replace files of the same name.
        refuse_foreign(self.path, RUN_KIND, hint=f"{self.path / 'run'}")
        self.path.mkdir(parents=True, exist_ok=True)

    def save_config(self, config: RunConfig) -> None:
        """Write ``config.json`` (rank 0 of a run with a folder; else nothing)."""
        if self.out is not None:
            config.save(self.config_file)

    def save_record(self, record: dict[str, Any]) -> None:
        """Write ``run.json``: seed, versions, device, data (rank 0 of a run with a folder)."""
        if self.out is not None:
            atomic_write_json(record, self.record_file)

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Replace ``last.pt`` atomically (rank 0 of a run with a folder; else nothing)."""
        if self.out is not None:
            atomic_save(state, self.checkpoint)

    def load_checkpoint(self) -> dict[str, Any]:
        """The state saved in ``last.pt`` (every rank reads it to resume)."""
        return load_checkpoint(self.checkpoint)

    def log(self, record: dict[str, Any]) -> None:
        """Append ``record`` to ``log.jsonl`` (or to :attr:`log_records` without a folder);
        only rank 0 logs."""
        if not self.main:
            return
        if self.path is None:
            self.log_records.append(record)
            return
        with open(self.log_file, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self._tensorboard is not None:
            self._tensorboard.write(record)

    def open_tensorboard(self) -> None:
        """Mirror the log as TensorBoard scalars in ``tensorboard/`` from now on, starting
        with what ``log.jsonl`` already holds (:mod:`quantrieve.train.tensorboard`; rank 0 of
        a run with a folder, else nothing)."""
        if self.out is None:
            return
        self._tensorboard = TensorBoardLog(self._file("tensorboard"), read_log(self.log_file))

    def close_tensorboard(self) -> None:
        """Write out and close the TensorBoard events (if any)."""
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None

    def drop_unfinished_epoch_records(self, epoch: int) -> None:
        """Remove log records after ``epoch``, the last finished one (the interrupted epoch is
        trained again), and a last line cut short by the interruption."""
        if self.out is None or not self.log_file.is_file():
            return
        path = self.log_file
        lines = path.read_text().splitlines()
        kept = []
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("epoch", 0) <= epoch:
                kept.append(line)
        if len(kept) != len(lines):
            atomic_write_text("".join(line + "\n" for line in kept), path)

    def keep(self, model: RetrievalModel, extra: dict[str, Any]) -> None:
        """Keep ``model``'s current weights as the run's model: ``model.pt`` on rank 0 of a run
        with a folder, else a copy in memory (:attr:`best_state`)."""
        if self.out is not None:
            model.save(self.model_file, extra)
        else:
            self.best_state = copy.deepcopy(model.state_dict())
        model.training_info = dict(extra)

    def kept_model(self, live: RetrievalModel) -> RetrievalModel:
        """The kept model on the CPU in eval mode (``live``'s weights if none was kept);
        ``live`` is left as it is."""
        model = copy.deepcopy(live).cpu()
        if self.best_state is not None:
            model.load_state_dict(self.best_state)
        elif self.path is not None and self.model_file.is_file():
            return RetrievalModel.load(self.model_file)
        return model.eval()


def read_log(log_file: Path) -> list[dict[str, Any]]:
    """The records of a run's ``log.jsonl``, without a line an interruption cut short (and
    none where there is no log yet)."""
    if not log_file.is_file():
        return []
    records = []
    for line in log_file.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
