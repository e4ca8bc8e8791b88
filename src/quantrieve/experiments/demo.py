"""The demo: a short HQC run on Fashion-MNIST, end to end, against faiss PQ on pixels."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quantrieve.api import Retriever, run_parts
from quantrieve.baselines import fit_baseline
from quantrieve.config import settings_from_text
from quantrieve.evaluate import RetrievalResult, evaluate_distances
from quantrieve.experiments.figures import plot_pr_curves, plot_retrieval_grid, pr_title
from quantrieve.runtime.atomic import atomic_write_json
from quantrieve.runtime.outputs import OutputKind, refuse_foreign
from quantrieve.runtime.progress import ProgressFactory
from quantrieve.train.trainer import EpochCallback

DEMO_KIND = OutputKind("demo folder", "demo.json")


def run_demo(
    out: str | Path,
    preset: str = "fashion-mnist-demo",
    data_dir: str | None = None,
    overrides: list[str] | None = None,
    stage: Callable[[str], Any] | None = None,
    progress: ProgressFactory | None = None,
    on_epoch: EpochCallback | None = None,
) -> dict:
    """Train HQC briefly on Fashion-MNIST, index the 60,000 training images, evaluate the
    10,000 test queries (mAP@1000), draw a top-10 grid and compare with faiss PQ on pixels.

    Args:
        stage: called with a one-line title as each of the four steps starts.
        progress: gives the ``progress(done, total)`` callback of a named step.
        on_epoch: called with each training epoch's summary (loss, validation mAP).

    Returns:
        The summary written to ``results.json`` (rows of the results table, files, seconds).
    """
    start = time.perf_counter()
    out = Path(out)
    say = stage or (lambda _: None)
    step = progress or (lambda _: None)
    settings = {"data.root": data_dir} if data_dir else {}
    settings.update(settings_from_text(overrides or []))  # the user's --set wins
    retriever = Retriever.from_preset(preset, overrides=settings)
    config = retriever.config
    # The demo folder is the demo's own: a rerun continues it, any other folder is refused.
    refuse_foreign(out, DEMO_KIND, hint="runs/demo")
    command = ([f"data.root={data_dir}"] if data_dir else []) + list(overrides or [])
    atomic_write_json({"preset": preset, "overrides": command}, out / DEMO_KIND.marker)
    parts = run_parts(retriever)
    train, test = parts.get("train"), parts.get("test")
    run_dir = out / "train"
    resume = (run_dir / "last.pt").exists()
    say(f"1/4 training ({preset}, {config.model.bits} bits)")
    retriever.fit(train, run_dir, resume=resume, progress=step("training"), on_epoch=on_epoch)

    say(f"2/4 encoding the {len(train):,} training images as the database")
    index = retriever.build_index(
        train,
        config.eval.distance,
        source=parts.source("train"),
        progress=step("embedding database"),
    )
    retriever.save(out / "index", overwrite=True)
    say(f"3/4 evaluating the {len(test):,} test queries")
    f = retriever.embed(test, progress=step("embedding queries"))
    hqc = retriever.evaluate(
        test, 1000, [10, 100, 1000], embeddings=torch.from_numpy(f), progress=step("evaluating")
    )
    rng = np.random.default_rng(0)
    shown = np.sort(rng.choice(len(test), size=min(8, len(test)), replace=False))
    _, neighbours = index.search(f[shown], k=10)
    grid = plot_retrieval_grid(
        test.subset(shown), train, neighbours.numpy(), out / "retrieval_grid.png"
    )

    say("4/4 faiss PQ on raw pixels, same M and K")
    m, k = config.model.num_books, config.model.num_codewords
    pq_distance = "sqeuclidean"
    pq = fit_baseline("pq", train.images, test.images, m, k, pq_distance)
    assert test.labels is not None and train.labels is not None
    pq_result = evaluate_distances(
        pq.distances, test.labels, train.labels, 1000, progress=step("evaluating PQ")
    )
    bits = f"{index.bits}" if index.bits == pq.bits else f"{index.bits} (HQC) / {pq.bits} (PQ)"
    curves = plot_pr_curves(
        {f"HQC {index.bits} bits": hqc, f"PQ on pixels {pq.bits} bits": pq_result},
        out / "pr_curve.png",
        pr_title(
            f"{config.data.dataset} ({len(test):,} test queries vs {len(train):,} training images)",
            bits,
            f"HQC {index.distance} ADC, PQ {pq_distance} ADC",
        ),
    )
    rows = [
        _row(f"HQC ({config.model.backbone}, {config.train.epochs} epochs)", index.bits, hqc),
        _row("faiss PQ on raw pixels", pq.bits, pq_result),
    ]
    summary = {
        "protocol": f"{config.data.dataset}: {len(test):,} test queries vs {len(train):,} "
        f"training images, mAP@{hqc.k}",
        "table_title": f"{len(test):,} queries x {len(train):,} database items",
        "rows": rows,
        "hqc": hqc.to_dict(),
        "pq_pixels": pq_result.to_dict(),
        "files": {
            "model": str(run_dir / "model.pt"),
            "index": str(out / "index"),
            "retrieval_grid": str(grid),
            "pr_curve": str(curves),
        },
        "seconds": time.perf_counter() - start,
    }
    atomic_write_json(summary, out / "results.json")
    return summary


def _row(method: str, bits: int, result: RetrievalResult) -> dict:
    return {
        "method": method,
        "bits": bits,
        "map": result.map_at_k,
        "k": result.k,
        "precision_at": {str(n): v for n, v in result.precision_at.items()},
        "eval_seconds": result.seconds,
    }
