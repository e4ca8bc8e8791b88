"""Training curves for TensorBoard, beside ``log.jsonl`` (``train.tensorboard = true``).

``log.jsonl`` stays the record of a run; this writer mirrors it as TensorBoard scalars in the
run's ``tensorboard/`` folder (``tensorboard --logdir RUN/tensorboard``). Every number of a
record becomes a scalar tagged ``<kind>/<key>`` (nested: ``validation/precision_at/10``,
``validation/code_usage/distinct_fraction``): step records against the global step, epoch and
validation records against the epoch. A resumed run rebuilds the folder from ``log.jsonl``
(which drops the interrupted epoch's records), so the curves never hold an epoch twice.

The writer is ``torch.utils.tensorboard``, which needs the ``tensorboard`` package
(``pip install 'quantrieve[tensorboard]'``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from quantrieve.config import ConfigError

#: Record fields that place a record rather than measure something.
_PLACE = ("kind", "epoch", "step")


def scalars(record: dict[str, Any]) -> Iterator[tuple[str, float, int]]:
    """The (tag, value, x) scalars of one ``log.jsonl`` record: its numbers, nested dicts
    flattened; x is the global step of a step record, else the epoch. Lists (PR curves,
    per-book perplexities) and flags are left out."""
    kind = str(record.get("kind", "record"))
    x = record.get("step") if kind == "step" else record.get("epoch")
    if not isinstance(x, int):
        return

    def walk(prefix: str, values: dict[str, Any]) -> Iterator[tuple[str, float, int]]:
        for key, value in values.items():
            if isinstance(value, bool) or value is None:
                continue
            if isinstance(value, int | float):
                yield f"{prefix}/{key}", float(value), x
            elif isinstance(value, dict):
                yield from walk(f"{prefix}/{key}", value)

    yield from walk(kind, {k: v for k, v in record.items() if k not in _PLACE})


#: The files TensorBoard's writer makes (``events.out.tfevents.<time>.<host>...``).
EVENT_FILES = "events.out.tfevents.*"


def _clear_events(folder: Path) -> None:
    """Remove the event files of an earlier writer from ``folder``; a folder holding anything
    else (files quantrieve did not write) is refused, never emptied."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise ConfigError(f"{folder}: not a folder; train.tensorboard writes its events there")
    entries = list(folder.iterdir())
    foreign = [e.name for e in entries if not (e.is_file() and e.match(EVENT_FILES))]
    if foreign:
        raise ConfigError(
            f"{folder} holds files quantrieve did not write ({', '.join(sorted(foreign)[:3])}); "
            "move them away or set train.tensorboard=false"
        )
    for entry in entries:
        entry.unlink()


class TensorBoardLog:
    """A TensorBoard event writer fed with ``log.jsonl`` records.

    Args:
        folder: the events folder (``RUN/tensorboard``); emptied first, then ``records`` (the
            log so far, for a resumed run) are written into it.
        records: records already in ``log.jsonl``.

    Raises:
        ConfigError: the ``tensorboard`` package is not installed.
    """

    def __init__(self, folder: Path, records: Iterable[dict[str, Any]] = ()) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "train.tensorboard = true needs the tensorboard package: "
                "pip install 'quantrieve[tensorboard]' (or set train.tensorboard=false)"
            ) from None
        self.folder = Path(folder)
        _clear_events(self.folder)  # derived from log.jsonl, rebuilt below
        self._writer = SummaryWriter(str(self.folder), flush_secs=30)
        for record in records:
            self.write(record, flush=False)
        self._writer.flush()

    def write(self, record: dict[str, Any], flush: bool | None = None) -> None:
        """Add one record's scalars; flushed to disk after every epoch record (or when
        ``flush`` says so)."""
        for tag, value, x in scalars(record):
            self._writer.add_scalar(tag, value, x)
        if flush or (flush is None and record.get("kind") == "epoch"):
            self._writer.flush()

    def close(self) -> None:
        self._writer.close()
