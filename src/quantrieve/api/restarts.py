"""Restarts: one config trained with several seeds, the run with the best validation score kept.

On a small collection the seed matters: one of three trainings of the digits folder never
passed validation mAP@1000 0.53 where the other two reached 0.76 and 0.77
(``benchmarks/results/own-folders``). Training a few seeds and keeping the best by validation is
the remedy the README gives; :func:`fit_restarts` does it in one call. Every restart trains into
``OUT/restarts/seed-S`` on the same images, with the same held-out queries and validation split
(both drawn by ``data.split_seed``, not by the training seed), so their validation scores compare
the same queries. The chosen run's files are then copied into ``OUT`` itself, which is an
ordinary run directory for ``encode``, ``evaluate`` and ``--resume``; ``OUT/restarts.json`` lists
every restart's score.

The score of a labelled run is validation mAP@K + validation P@10 at the epoch it kept: the two
numbers a user reads. Chosen by mAP@K alone, restarts raise mAP@1000 but not the top 10; by the
sum, P@10 rises by about 0.012 at the same mAP@1000 (``docs/results.md``, "Choosing among
seeds"). An unlabelled run with ``train.unlabelled_select = self`` is scored by its label-free
self-recall (``docs/method.md``, "Choosing an epoch without labels"); one that keeps its last
epoch has no score to compare, and is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from quantrieve.api.retriever import Retriever
from quantrieve.config import RunConfig, config_differences
from quantrieve.data import ImageSet
from quantrieve.runtime.atomic import atomic_write_json
from quantrieve.runtime.checkpoint import load_checkpoint
from quantrieve.runtime.progress import Progress
from quantrieve.train.run_dir import read_log
from quantrieve.train.trainer import EpochCallback, TrainingError

#: Where the restarts of a run train, inside its directory.
RESTARTS_DIR = "restarts"
#: The summary of the restarts, in the run directory.
RESTARTS_FILE = "restarts.json"


@dataclass(frozen=True)
class Restart:
    """One training of a restarted run.

    Attributes:
        seed: its ``train.seed``.
        run_dir: where it trained (``OUT/restarts/seed-S``).
        best_epoch: the epoch it kept.
        metric: what scored it: ``val_map+val_p10`` (validation mAP@K + P@10) or ``val_self``
            (the label-free self-recall).
        score: its kept epoch's score.
        val_map, val_p10: the kept epoch's validation mAP@K and P@10 (labelled runs).
    """

    seed: int
    run_dir: Path
    best_epoch: int
    metric: str
    score: float
    val_map: float | None = None
    val_p10: float | None = None


def restart_seeds(first: int, count: int) -> list[int]:
    """The training seeds of ``count`` restarts from ``first``: first, first + 1, ..."""
    if count < 1:
        raise TrainingError(f"restarts must be >= 1, got {count}")
    return list(range(first, first + count))


def fit_restarts(
    config_for_seed: Callable[[int], RunConfig],
    images: ImageSet,
    out: str | Path,
    seeds: Sequence[int],
    resume: bool = False,
    progress: Progress | None = None,
    on_epoch: EpochCallback | None = None,
    on_restart: Callable[[Restart], None] | None = None,
) -> tuple[Retriever, list[Restart]]:
    """Train one run per seed into ``out/restarts/seed-S`` and keep the best in ``out``.

    A restart whose checkpoint has every epoch done is not trained again (its score is read
    from the checkpoint); with ``resume``, an unfinished one continues from its checkpoint.

    Returns:
        The chosen run's retriever (model loaded from ``out``), and every restart in seed
        order; the chosen one is the first with the highest score.

    Raises:
        TrainingError: No seeds, repeated seeds, or runs without a validation score.
    """
    if not seeds or len(set(seeds)) != len(seeds):
        raise TrainingError(f"restarts need distinct seeds, got {list(seeds)}")
    out = Path(out)
    _check_scored(config_for_seed(seeds[0]), images)
    copied_before = _check_out(out)
    done: list[Restart] = []
    for seed in seeds:
        config = config_for_seed(seed)
        if config.train.seed != seed:
            raise TrainingError(f"the config for seed {seed} has train.seed = {config.train.seed}")
        restart = _train_one(
            config, images, out / RESTARTS_DIR / f"seed-{seed}", resume, progress, on_epoch
        )
        done.append(restart)
        if on_restart is not None:
            on_restart(restart)
    chosen = best_restart(done)
    summary = {
        "chosen_seed": chosen.seed,
        "metric": chosen.metric,
        "restarts": [asdict(r) | {"run_dir": str(r.run_dir)} for r in done],
    }
    copying = {path.name: _digest(path) for path in sorted(chosen.run_dir.iterdir())}
    # While the files are copied, restarts.json accepts both the old and the new versions: a
    # copy cut short leaves files of one or the other, never one it cannot tell as its own.
    atomic_write_json(summary | {"copied": copied_before, "copying": copying}, out / RESTARTS_FILE)
    _copy_run(chosen.run_dir, out, copied_before)
    atomic_write_json(summary | {"copied": copying}, out / RESTARTS_FILE)
    return Retriever.load(out), done


def _train_one(
    config: RunConfig,
    images: ImageSet,
    run_dir: Path,
    resume: bool,
    progress: Progress | None,
    on_epoch: EpochCallback | None,
) -> Restart:
    checkpoint = run_dir / "last.pt"
    state = load_checkpoint(checkpoint) if checkpoint.is_file() else None
    saved = None if state is None else state.get("config")
    changed = [] if saved is None else config_differences(saved, config)
    if [key for key in changed if key != "train.epochs"]:
        raise TrainingError(
            f"{run_dir} was trained with another config (keys differ: {', '.join(changed)}); "
            "give the options it was started with, or choose a new --out"
        )
    if state is not None and state["epoch"] > config.train.epochs:
        raise TrainingError(
            f"{run_dir} has {state['epoch']} epochs done, more than train.epochs = "
            f"{config.train.epochs}; restarts of different lengths are not compared: give "
            f"--epochs {state['epoch']} or more, or choose a new --out"
        )
    if state is None or state["epoch"] < config.train.epochs:
        if state is not None and not resume:
            raise TrainingError(
                f"{run_dir} holds an unfinished restart (epoch {state['epoch']} of "
                f"{config.train.epochs}); continue it with --resume"
            )
        Retriever(config).fit(
            images,
            run_dir=run_dir,
            resume=state is not None,
            progress=progress,
            on_epoch=on_epoch,
        )
    return score_restart(run_dir)


def best_restart(restarts: Sequence[Restart]) -> Restart:
    """The restart with the highest score; of equal ones, the first given."""
    return max(restarts, key=lambda r: r.score)


def score_restart(run_dir: Path) -> Restart:
    """A finished restart's score, from its checkpoint (``last.pt``: the kept epoch and its
    scores) and its log (the kept epoch's validation P@10).

    Raises:
        TrainingError: The run was not scored on validation.
    """
    state = load_checkpoint(run_dir / "last.pt")
    best = int(state["best_epoch"])
    kept = _epoch_record(run_dir, best)
    seed = int(state["config"]["train"]["seed"])
    if state.get("best_val_map", -math.inf) > -math.inf:
        val_map = float(state["best_val_map"])
        val_p10 = kept.get("val_p10")
        if val_p10 is None:
            raise TrainingError(f"{run_dir}/log.jsonl has no validation P@10 for epoch {best}")
        return Restart(
            seed, run_dir, best, "val_map+val_p10", val_map + val_p10, val_map, float(val_p10)
        )
    if state.get("best_val_self", -math.inf) > -math.inf:
        return Restart(seed, run_dir, best, "val_self", float(state["best_val_self"]))
    raise TrainingError(NO_SCORE)


def _epoch_record(run_dir: Path, epoch: int) -> dict:
    """The last ``epoch`` record of ``epoch`` in a run's log.jsonl (empty if there is none)."""
    records = read_log(run_dir / "log.jsonl")
    kept = [r for r in records if r.get("kind") == "epoch" and r.get("epoch") == epoch]
    return kept[-1] if kept else {}


#: Why a restarted run without a validation score is refused.
NO_SCORE = (
    "restarts are compared by their validation score, and these runs have none: give the "
    "images class sub-folders (validation mAP, data.val_queries > 0), or set "
    "train.unlabelled_select=self (the label-free score); train.eval_every must be > 0"
)


def _check_out(out: Path) -> dict[str, str]:
    """Refuse an ``out`` holding anything restarts did not write: the chosen run's files are
    copied into it, and they must not replace a run or files of the user's.

    Returns:
        The names restarts copied into ``out`` before, with their digests (empty for a new
        ``out``). A copied file that changed since (say, training continued in ``out`` with
        ``--resume``) is refused: it is the user's now.
    """
    if not out.exists():
        return {}
    if not out.is_dir():
        raise TrainingError(f"{out} is a file; restarts need a run directory")
    summary_file = out / RESTARTS_FILE
    if not summary_file.is_file():
        others = sorted(p.name for p in out.iterdir() if p.name != RESTARTS_DIR)
        if others:
            raise TrainingError(
                f"{out} already holds {', '.join(others[:5])}{' ...' if len(others) > 5 else ''}, "
                "not written by --restarts; choose a new --out"
            )
        return {}
    summary = json.loads(summary_file.read_text())
    if "copied" not in summary:  # written before restarts recorded what they copied
        chosen = out / RESTARTS_DIR / f"seed-{summary['chosen_seed']}"
        return {p.name: _digest(out / p.name) for p in chosen.iterdir() if (out / p.name).exists()}
    copied: dict[str, str] = summary["copied"]
    allowed: dict[str, set[str]] = {}
    for versions in (copied, summary.get("copying", {})):
        for name, digest in versions.items():
            allowed.setdefault(name, set()).add(digest)
    present = {name: _digest(out / name) for name in allowed if (out / name).exists()}
    changed = [str(out / name) for name, digest in present.items() if digest not in allowed[name]]
    if changed:
        raise TrainingError(
            f"{', '.join(sorted(changed))} changed since --restarts copied the chosen run there "
            "(training continued in it?); nothing was replaced: choose a new --out, or move "
            "the run elsewhere"
        )
    return present


def _check_scored(config: RunConfig, images: ImageSet) -> None:
    """Refuse, before any training, runs that will not be scored on validation."""
    labelled = images.labels is not None and config.data.val_queries > 0
    if not config.train.eval_every or not (labelled or config.train.unlabelled_select == "self"):
        raise TrainingError(NO_SCORE)


def _copy_run(source: Path, out: Path, copied_before: dict[str, str]) -> None:
    """Copy the files of the run in ``source`` into ``out``, each replaced whole (a folder
    swapped in as a new copy), and remove what the previous choice copied that this run lacks.
    Nothing outside ``copied_before`` is replaced or removed."""
    names = {path.name for path in source.iterdir()}
    for name in sorted(set(copied_before) - names):
        _remove(out / name)
    for path in sorted(source.iterdir()):
        target = out / path.name
        if target.exists() and path.name not in copied_before:
            raise TrainingError(f"{target} was not written by --restarts; choose a new --out")
        if path.is_dir():
            swap = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=out))
            shutil.copytree(path, swap / path.name)
            if target.exists():
                _remove(target)
            os.replace(swap / path.name, target)
            swap.rmdir()
        else:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=out)
            os.close(fd)
            shutil.copy2(path, tmp)
            os.replace(tmp, target)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _digest(path: Path) -> str:
    """SHA-256 of a file, or of a folder's relative file names and contents."""
    digest = hashlib.sha256()
    files = [path] if not path.is_dir() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if file != path:
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with file.open("rb") as handle:
            for block in iter(lambda h=handle: h.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
