"""One cell of a benchmark grid: training, encoding and scoring a deep method, or fitting and
scoring a shallow one on raw pixels; and reading finished cells back."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from quantrieve.api.retriever import Retriever
from quantrieve.baselines import BASELINES, fit_baseline
from quantrieve.config import RunConfig, num_books_for_bits
from quantrieve.evaluate import RetrievalResult, evaluate_distances
from quantrieve.experiments.grid import read_json
from quantrieve.experiments.protocols import ProtocolData
from quantrieve.runtime.device import resolve_device
from quantrieve.runtime.progress import ProgressFactory

BASELINE_DISTANCE = "sqeuclidean"


def training_stats(log_file: str | Path) -> dict[str, Any]:
    """Training time and throughput from a run's ``log.jsonl`` epoch records.

    An epoch logged twice (a stop between its log line and its checkpoint) counts once, with
    its last record. ``images_per_second`` is total images over total seconds.
    """
    epochs: dict[int, dict[str, Any]] = {}
    validations: dict[int, float] = {}
    path = Path(log_file)
    if path.is_file():
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            record = json.loads(line)
            if record.get("kind") == "epoch":
                epochs[int(record["epoch"])] = record
            elif record.get("kind") == "validation":
                validations[int(record["epoch"])] = float(record["map_at_k"])
    seconds = sum(float(r["seconds"]) for r in epochs.values())
    images = sum(float(r["seconds"]) * float(r["images_per_second"]) for r in epochs.values())
    best_epoch = max(validations, key=lambda e: validations[e]) if validations else None
    return {
        "epochs": len(epochs),
        "seconds": seconds,
        "images_per_second": images / seconds if seconds > 0 else None,
        "seconds_per_epoch": seconds / len(epochs) if epochs else None,
        "best_epoch": best_epoch,
        "best_val_map": validations.get(best_epoch) if best_epoch is not None else None,
    }


def result_from_dict(data: dict[str, Any]) -> RetrievalResult:
    """Rebuild a :class:`RetrievalResult` from its saved ``to_dict`` form."""
    return RetrievalResult(
        map_at_k=data["map_at_k"],
        k=data["k"],
        precision_at={int(n): v for n, v in data["precision_at"].items()},
        pr_precision=list(data["pr_precision"]),
        pr_recall=list(data["pr_recall"]),
        num_queries=data["num_queries"],
        num_database=data["num_database"],
        seconds=data["seconds"],
        extra=dict(data.get("extra", {})),
        pr_method=data.get("pr_method", ""),  # absent: a threshold-based curve of old
    )


def deep_cell(
    config: RunConfig,
    data: ProtocolData,
    run_dir: Path,
    log: Callable[[str], Any],
    step: ProgressFactory,
) -> dict[str, Any]:
    protocol = data.protocol
    resume = (run_dir / "last.pt").is_file()
    log(
        f"{'resuming' if resume else 'training'} {run_dir.name}: {config.model.backbone}, "
        f"{config.loss.preset}, {config.model.bits} bits, {config.train.epochs} epochs"
    )
    start = time.perf_counter()
    retriever = Retriever(config, device=config.train.device)
    retriever.fit(data.train, run_dir, resume=resume, progress=step("training"))
    index = retriever.build_index(
        data.database,
        config.eval.distance,
        source={"protocol": protocol.name, "dataset": protocol.dataset, "part": "database"},
        progress=step("embedding database"),
    )
    # The cell's own index, inside the benchmark's own folder.
    retriever.save(run_dir / "index", overwrite=True)
    result = retriever.evaluate(
        data.queries,
        protocol.topk,
        list(protocol.precision_at),
        progress=step("evaluating"),
    )
    stats = training_stats(run_dir / "log.jsonl")
    model = index.meta.get("model", {})
    # The weights actually evaluated: model.pt, the best epoch by validation mAP.
    stats["best_epoch"] = model.get("epoch", stats["best_epoch"])
    stats["best_val_map"] = model.get("val_map", stats["best_val_map"])
    return {
        "result": result.to_dict(),
        "train": stats,
        "distance": config.eval.distance,
        "run_dir": str(run_dir),
        "config": config.to_dict(),
        "device": str(resolve_device(config.train.device)),
        "wall_seconds": time.perf_counter() - start,
    }


def shallow_cell(
    method: str, bits: int, num_codewords: int, seed: int, data: ProtocolData
) -> dict[str, Any]:
    protocol = data.protocol
    coded = BASELINES[method].coded
    books = num_books_for_bits(bits, num_codewords) if coded else 1
    start = time.perf_counter()
    fitted = fit_baseline(
        method,
        data.database.images,
        data.queries.images,
        books,
        num_codewords,
        BASELINE_DISTANCE,
        seed,
    )
    fit_seconds = time.perf_counter() - start
    assert data.queries.labels is not None and data.database.labels is not None
    result = evaluate_distances(
        fitted.distances,
        data.queries.labels,
        data.database.labels,
        protocol.topk,
        protocol.precision_at,
    )
    return {
        "result": result.to_dict(),
        "train": {"seconds": fit_seconds, "images_per_second": None, "epochs": None},
        "distance": BASELINES[method].distance or BASELINE_DISTANCE,
        "num_books": books if coded else None,
        "num_codewords": num_codewords if coded else None,
        "device": "cpu",
        "wall_seconds": time.perf_counter() - start,
    }


def load_cells(out_dir: str | Path) -> list[dict[str, Any]]:
    """Every finished cell in ``out_dir/cells``, in file-name order."""
    folder = Path(out_dir) / "cells"
    return [read_json(p) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
