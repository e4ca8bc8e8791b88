"""How far a collection's classes can be told apart without training: hand-made image features
(no labels, no learning), ranked exactly and scored like every quantrieve result (mAP@K and
P@10, ties in the fixed random order).

A learned code only beats the pixels where some representation of the images separates the
classes better than the pixels do. This probe asks whether one of the usual training-free ones
does: raw pixels at several sides, pixels standardised per image, the intensity histogram and
quantiles (how much of the image is dark or bright, wherever it is), HOG (edges and their
orientation, Dalal and Triggs 2005) and uniform LBP histograms (local texture, Ojala et al.
2002), each by L2 and by cosine. Queries: ``--queries`` images drawn by each of ``--draws``
seeds, the rest the database.

    python benchmarks/own_collections.py --out .probe/data --names solar
    python benchmarks/training_free_features.py .probe/data/solar.npz \
        --json benchmarks/results/own-folders/solar_training_free.json

Needs scikit-image (``pip install scikit-image``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from skimage.feature import hog, local_binary_pattern
from skimage.transform import resize

from quantrieve.evaluate.scoring import evaluate_distances

QUANTILES = np.linspace(0.01, 0.99, 50)


def _resized(images: np.ndarray, side: int) -> np.ndarray:
    """(N, side, side) float images in [0, 1], anti-aliased as a decoder would shrink them."""
    return np.stack([resize(image, (side, side), anti_aliasing=True) for image in images])


def _lbp_histogram(image: np.ndarray, radius: int) -> np.ndarray:
    codes = local_binary_pattern((image * 255).astype(np.uint8), 8, radius, "uniform")
    return np.histogram(codes, bins=10, range=(0, 10))[0] / codes.size


def features(images: np.ndarray) -> dict[str, np.ndarray]:
    """Every training-free representation of ``images`` ((N, H, W) floats in [0, 1])."""
    flat = images.reshape(len(images), -1)
    standardised = (flat - flat.mean(1, keepdims=True)) / flat.std(1, keepdims=True).clip(1e-6)
    side64 = _resized(images, 64).reshape(len(images), -1)
    side128 = _resized(images, 128)
    return {
        "pixels 32x32": _resized(images, 32).reshape(len(images), -1),
        "pixels 64x64": side64,
        "pixels 64x64, standardised per image": (
            (side64 - side64.mean(1, keepdims=True)) / side64.std(1, keepdims=True).clip(1e-6)
        ),
        "intensity histogram (32 bins)": np.stack(
            [np.histogram(row, bins=32, range=(0, 1))[0] / row.size for row in flat]
        ),
        "intensity quantiles (50)": np.quantile(flat, QUANTILES, axis=1).T,
        "intensity quantiles, standardised per image": np.quantile(
            standardised, QUANTILES, axis=1
        ).T,
        "HOG at 128x128 (16-pixel cells)": np.stack(
            [
                hog(x, orientations=9, pixels_per_cell=(16, 16), cells_per_block=(2, 2))
                for x in side128
            ]
        ),
        "LBP histogram at 128x128 (radius 1)": np.stack([_lbp_histogram(x, 1) for x in side128]),
        "LBP histogram at full size (radius 2)": np.stack([_lbp_histogram(x, 2) for x in images]),
    }


def _distances(
    queries: np.ndarray, database: np.ndarray, cosine: bool
) -> Callable[[slice], torch.Tensor]:
    if cosine:
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True).clip(1e-12)
        database = database / np.linalg.norm(database, axis=1, keepdims=True).clip(1e-12)
    q = torch.as_tensor(queries, dtype=torch.float64)
    db = torch.as_tensor(database, dtype=torch.float64)
    return lambda rows: torch.cdist(q[rows], db)


def score(
    table: np.ndarray, labels: np.ndarray, queries: int, draws: int, k: int
) -> dict[str, dict[str, float]]:
    """mAP@K and P@10 by L2 and by cosine, the mean over ``draws`` random query sets."""
    out: dict[str, dict[str, float]] = {}
    onehot = np.eye(labels.max() + 1, dtype=np.float32)[labels]
    for name, cosine in (("l2", False), ("cosine", True)):
        maps, p10s = [], []
        for draw in range(draws):
            order = np.random.default_rng(draw).permutation(len(labels))
            q, db = order[:queries], order[queries:]
            result = evaluate_distances(
                _distances(table[q], table[db], cosine),
                onehot[q],
                onehot[db],
                k=k,
                precision_at=(10,),
                pr_queries=1,
            )
            maps.append(result.map_at_k)
            p10s.append(result.precision_at[10])
        out[name] = {"map": round(float(np.mean(maps)), 4), "p10": round(float(np.mean(p10s)), 4)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("collection", type=Path, help="an own_collections.py .npz file")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--json", type=Path, help="write the table here")
    args = parser.parse_args()
    data = np.load(args.collection)
    images = data["images"].astype(np.float32).mean(axis=3) / 255.0
    labels = data["labels"]
    started = time.perf_counter()
    table = features(images)
    prior = float(((np.bincount(labels) / len(labels)) ** 2).sum())
    rows = {}
    print(
        f"{args.collection.name}: {len(labels)} images; a random ranking scores about "
        f"{prior:.3f} mAP (the sum of squared class shares)"
    )
    print("| representation | dimensions | L2 mAP@K / P@10 | cosine mAP@K / P@10 |")
    print("| --- | --- | --- | --- |")
    for name, values in table.items():
        rows[name] = {
            "dimensions": values.shape[1],
            **score(values, labels, args.queries, args.draws, args.k),
        }
        r = rows[name]
        print(
            f"| {name} | {values.shape[1]} | {r['l2']['map']:.3f} / {r['l2']['p10']:.3f} | "
            f"{r['cosine']['map']:.3f} / {r['cosine']['p10']:.3f} |",
            flush=True,
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "collection": args.collection.name,
                    "images": len(labels),
                    "queries": args.queries,
                    "draws": args.draws,
                    "k": args.k,
                    "random_ranking_map": round(prior, 4),
                    "seconds": round(time.perf_counter() - started, 1),
                    "rows": rows,
                },
                indent=1,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
