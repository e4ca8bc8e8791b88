"""Figures and tables of results: PR curves, a top-k retrieval grid, a results table."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from rich.table import Table

from quantrieve.data import ImageSet
from quantrieve.evaluate import PR_METHOD, RetrievalResult


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


def plot_map_vs_bits(
    cells: list[dict[str, Any]], path: str | Path, title: str = "mAP vs code length"
) -> Path:
    """One line per method of mAP@K against bits; ``exact`` as a horizontal reference."""
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=120)
    by_method: dict[str, list[tuple[int, float]]] = {}
    for cell in cells:
        by_method.setdefault(cell["method"], []).append((cell["bits"], cell["result"]["map_at_k"]))
    bits_seen = sorted({c["bits"] for c in cells if c["method"] != "exact"})
    for method, points in by_method.items():
        if method == "exact":
            ax.axhline(points[0][1], color="gray", linestyle="--", label="exact (pixels)")
            continue
        points.sort()
        ax.plot([b for b, _ in points], [m for _, m in points], marker="o", label=method)
    if bits_seen:
        ax.set_xscale("log", base=2)
        ax.set_xticks(bits_seen, [str(b) for b in bits_seen])
        ax.minorticks_off()
    ax.set_xlabel("bits")
    ax.set_ylabel(f"mAP@{cells[0]['result']['k']}" if cells else "mAP")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def contact_sheet(
    rows: list[list[Any]], labels: list[str], cell: int = 96, pad: int = 6, label_height: int = 16
) -> Any:
    """One row of thumbnails per label (PIL images; None draws an empty grey cell), each
    scaled to fit a ``cell`` x ``cell`` square, under its label: a PIL RGB image."""
    from PIL import Image, ImageDraw

    columns = max((len(r) for r in rows), default=1)
    width = pad + columns * (cell + pad)
    height = pad + len(rows) * (label_height + cell + pad)
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (row, label) in enumerate(zip(rows, labels, strict=True)):
        top = pad + i * (label_height + cell + pad)
        draw.text((pad, top), label, fill="black")
        for j, image in enumerate(row):
            left, cell_top = pad + j * (cell + pad), top + label_height
            if image is None:
                draw.rectangle((left, cell_top, left + cell, cell_top + cell), fill="#ccc")
                continue
            scaled = image.copy()
            scale = cell / max(scaled.size)
            new_size = (max(1, round(scaled.width * scale)), max(1, round(scaled.height * scale)))
            scaled = scaled.resize(
                new_size, Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BILINEAR
            )
            sheet.paste(
                scaled, (left + (cell - scaled.width) // 2, cell_top + (cell - scaled.height) // 2)
            )
    return sheet
