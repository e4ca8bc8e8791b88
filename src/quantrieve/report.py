"""Figures and the demo: PR curves, a top-k retrieval grid, and the end-to-end Fashion-MNIST run."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from rich.table import Table

from quantrieve.atomic import atomic_write_json
from quantrieve.data import ImageSet
from quantrieve.evaluate import PR_METHOD, RetrievalResult
from quantrieve.progress import console, stdout
from quantrieve.runtime.outputs import OutputKind, refuse_foreign

DEMO_KIND = OutputKind("demo folder", "demo.json")


def pr_title(dataset: str, bits: str | int, distance: str) -> str:
    """The title of a PR plot: what the curves compare (dataset, code length, distance)."""
    lines = (dataset, f"{bits} bits; distance: {distance}")
    return "\n".join(textwrap.fill(line, 72) for line in lines)


def plot_pr_curves(results: dict[str, RetrievalResult], path: str | Path, title: str) -> Path:
    """One precision-recall curve per named result, in one PNG.

    The curves are the evaluator's P-R by ranking (interpolated precision at fixed recall
    levels, averaged over queries; :mod:`quantrieve.evaluate.retrieval`); each legend entry
    gives the result's mAP@K and how many queries the curve averages.

    Args:
        results: legend label -> result.
        path: the PNG to write.
        title: dataset, code length and distance of the curves (see :func:`pr_title`).

    Raises:
        ValueError: a result's curve was not computed by ranking (``pr_method``), e.g. one
            saved by a version that used distance thresholds: it is not comparable.
    """
    stale = [name for name, r in results.items() if r.pr_method != PR_METHOD]
    if stale:
        raise ValueError(
            f"{', '.join(stale)}: PR curve computed at shared distance thresholds by an older "
            "version; re-evaluate to plot it"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5.5, 4.6), dpi=120)
    for name, result in results.items():
        label = (
            f"{name} (mAP@{result.k} {result.map_at_k:.3f}; "
            f"PR over {int(result.extra.get('pr_queries', 0)):,} queries)"
        )
        ax.plot(result.pr_recall, result.pr_precision, marker=".", label=label)
    ax.set_xlabel("recall")
    ax.set_ylabel("interpolated precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title(title, fontsize=9)
    fig.text(
        0.5,
        0.01,
        "per query: max precision over its rank cut-offs with recall >= r; mean over queries",
        ha="center",
        fontsize=6.5,
        color="0.35",
    )
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_retrieval_grid(
    queries: ImageSet,
    database: ImageSet,
    neighbours: np.ndarray,
    path: str | Path,
) -> Path:
    """A row per query: the query, then its ranked results framed green (relevant) or red.

    Args:
        queries: the query images (with labels, to colour the frames).
        database: the database images.
        neighbours: (Q, k) database indices, best first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    num_q, k = neighbours.shape
    fig, axes = plt.subplots(num_q, k + 1, figsize=(1.1 * (k + 1), 1.2 * num_q), dpi=110)
    axes = np.atleast_2d(axes)
    gray = queries.images.shape[-1] == 1
    for r in range(num_q):
        cells = [(queries.images[r], None, "query")] + [
            (database.images[j], _relevant(queries, database, r, j), f"#{i + 1}")
            for i, j in enumerate(neighbours[r])
        ]
        for c, (image, relevant, title) in enumerate(cells):
            ax = axes[r, c]
            ax.imshow(image[..., 0] if gray else image, cmap="gray" if gray else None)
            ax.set_xticks([])
            ax.set_yticks([])
            colour = "black" if relevant is None else ("tab:green" if relevant else "tab:red")
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(2.5 if relevant is not None else 1)
            if r == 0:
                ax.set_title(title, fontsize=8)
        if queries.labels is not None and queries.class_names:
            names = [queries.class_names[i] for i in np.flatnonzero(queries.labels[r])]
            axes[r, 0].set_ylabel(", ".join(names), fontsize=7)
    fig.suptitle("top results per query (green: shares a label, red: does not)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _relevant(queries: ImageSet, database: ImageSet, q: int, item: int) -> bool | None:
    if queries.labels is None or database.labels is None:
        return None
    return bool((queries.labels[q] & database.labels[item]).any())


def results_table(rows: list[dict], title: str) -> Table:
    """A rich table of method / bits / mAP@K / precision@N / seconds rows."""
    table = Table(title=title)
    k = rows[0]["k"] if rows else 1000
    for column in ("method", "bits", f"mAP@{k}", "P@10", "P@100", "eval s"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for row in rows:
        table.add_row(
            row["method"],
            str(row["bits"]),
            f"{row['map']:.4f}",
            f"{row['precision_at'].get('10', float('nan')):.4f}",
            f"{row['precision_at'].get('100', float('nan')):.4f}",
            f"{row['eval_seconds']:.1f}",
        )
    return table


def run_demo(
    out: str | Path,
    preset: str = "fashion-mnist-demo",
    data_dir: str | None = None,
    overrides: list[str] | None = None,
) -> dict:
    """Train HQC briefly on Fashion-MNIST, index the 60,000 training images, evaluate the
    10,000 test queries (mAP@1000), draw a top-10 grid and compare with faiss PQ on pixels."""
    from quantrieve.baselines import fit_baseline
    from quantrieve.config import load_config
    from quantrieve.data import read_dataset
    from quantrieve.pipeline import (
        embed_queries,
        encode_index,
        evaluate_distances,
        evaluate_index,
        train_run,
    )

    start = time.perf_counter()
    out = Path(out)
    extra = ([f"data.root={data_dir}"] if data_dir else []) + list(overrides or [])
    config = load_config(preset, overrides=extra)
    # The demo folder is the demo's own: a rerun continues it, any other folder is refused.
    refuse_foreign(out, DEMO_KIND, hint="runs/demo")
    atomic_write_json({"preset": preset, "overrides": extra}, out / DEMO_KIND.marker)
    parts = read_dataset(config.data.dataset, config.data.root)
    train, test = parts["train"], parts["test"]
    run_dir = out / "train"
    resume = (run_dir / "last.pt").exists()
    console.rule(f"1/4 training ({preset}, {config.model.bits} bits)")
    train_run(config, run_dir, resume=resume, train_set=train)

    console.rule(f"2/4 encoding the {len(train):,} training images as the database")
    index = encode_index(
        run_dir / "model.pt",
        train,
        out / "index",
        config.eval.distance,
        source={"dataset": config.data.dataset, "root": config.data.root, "part": "train"},
        overwrite=True,
    )
    console.rule(f"3/4 evaluating the {len(test):,} test queries")
    f = embed_queries(out / "index", test.images)
    hqc = evaluate_index(index, f, test.labels, 1000, [10, 100, 1000])
    rng = np.random.default_rng(0)
    shown = np.sort(rng.choice(len(test), size=min(8, len(test)), replace=False))
    _, neighbours = index.search(f[shown], k=10)
    grid = plot_retrieval_grid(
        test.subset(shown), train, neighbours.numpy(), out / "retrieval_grid.png"
    )

    console.rule("4/4 faiss PQ on raw pixels, same M and K")
    m, k = config.model.num_books, config.model.num_codewords
    pq_distance = "sqeuclidean"
    pq = fit_baseline("pq", train.images, test.images, m, k, pq_distance)
    pq_result = evaluate_distances(pq.distances, test.labels, train.labels, 1000)
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
    stdout.print(results_table(rows, f"{len(test):,} queries x {len(train):,} database items"))
    console.print(
        f"outputs in {out}/: results.json, retrieval_grid.png, pr_curve.png, index/, train/"
    )
    console.print(f"total {summary['seconds'] / 60:.1f} min")
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
