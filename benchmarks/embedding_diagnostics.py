"""Where retrieval quality is lost: the same validation queries ranked by PQ codes (both
distances), by the continuous embedding f, and by the backbone features before the head; then,
for the codes (``l2``), mAP per query class and which classes fill the top 10 of each class.

    .venv/bin/python benchmarks/embedding_diagnostics.py RUN_DIR [--out FILE.json]

RUN_DIR is a training run (model.pt + splits.npz); only the training images are used (the
run's validation queries against the rest), never the test queries.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from quantrieve.config import config_from_dict
from quantrieve.data import read_dataset
from quantrieve.data.splits import load_split
from quantrieve.evaluate import evaluate_retrieval
from quantrieve.models.retrieval import RetrievalModel, embed_images, to_float_images
from quantrieve.pq import (
    ADCScorer,
    lookup_tables,
    query_chunks,
    squared_l2_distances,
    topk_smallest,
)


@torch.no_grad()
def backbone_features(model: RetrievalModel, images: np.ndarray, rows: np.ndarray) -> torch.Tensor:
    out = []
    for start in range(0, len(rows), 1024):
        batch = torch.from_numpy(np.ascontiguousarray(images[rows[start : start + 1024]]))
        out.append(model.encoder.backbone(model.normalize(to_float_images(batch))).float())
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--topk", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    config = config_from_dict(json.loads((args.run_dir / "config.json").read_text()))
    train = read_dataset(config.data.dataset, config.data.root)["train"]
    model = RetrievalModel.load(args.run_dir / "model.pt").eval()
    split = load_split(args.run_dir)
    q_idx, db_idx = split["val_query"], split["val_database"]
    labels = torch.from_numpy(train.labels)
    q_labels, db_labels = labels[q_idx], labels[db_idx]
    device = torch.device("cpu")
    fq = embed_images(model, train.images, device, indices=q_idx)
    fd = embed_images(model, train.images, device, indices=db_idx)
    codebooks = model.quantizer.codebooks.detach().float()
    scorer = ADCScorer(model.quantizer.encode(fd), model.config.num_codewords)
    hq = F.normalize(backbone_features(model, train.images, q_idx), dim=1)
    hd = F.normalize(backbone_features(model, train.images, db_idx), dim=1)
    nq, nd = F.normalize(fq, dim=1), F.normalize(fd, dim=1)
    rankings = {
        "pq_codes_l2": lambda s: scorer(lookup_tables(fq[s], codebooks, "l2")),
        "pq_codes_sqeuclidean": lambda s: scorer(lookup_tables(fq[s], codebooks, "sqeuclidean")),
        "embedding_f_euclidean": lambda s: squared_l2_distances(fq[s], fd),
        "embedding_f_cosine": lambda s: squared_l2_distances(nq[s], nd),
        "backbone_cosine": lambda s: squared_l2_distances(hq[s], hd),
    }
    result = {
        "run": str(args.run_dir),
        "bits": model.config.bits,
        "queries": len(q_idx),
        "database": len(db_idx),
        "topk": args.topk,
    }
    for name, fn in rankings.items():
        result[f"map_{name}"] = evaluate_retrieval(fn, q_labels, db_labels, args.topk).map_at_k
        print(f"{name:24s} mAP@{args.topk} = {result[f'map_{name}']:.4f}", flush=True)
    code_distances = rankings["pq_codes_l2"]
    result.update(per_class(code_distances, q_labels, db_labels, args.topk, train.class_names))
    for name, row in result["per_class"].items():
        mistakes = ", ".join(f"{other} {share:.2f}" for other, share in row["top10_wrong"])
        print(f"  {name:14s} mAP@{args.topk} = {row['map']:.4f}; wrong top-10 from: {mistakes}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


def per_class(
    distances, q_labels: torch.Tensor, db_labels: torch.Tensor, topk: int, names: list[str]
) -> dict:
    """mAP@topk of each query class, and the share of its top-10 neighbours from each other class.

    Single-label data only: returns an empty result when some image has not exactly one label.
    """
    if not (bool((q_labels.sum(1) == 1).all()) and bool((db_labels.sum(1) == 1).all())):
        print("  per-class breakdown skipped: the labels are not single-label")
        return {"per_class": {}, "top10_confusion": []}
    depth = min(10, len(db_labels))
    q_class, db_class = q_labels.float().argmax(1), db_labels.float().argmax(1)
    num_classes = q_labels.shape[1]
    if len(names) != num_classes:
        names = [str(c) for c in range(num_classes)]
    neighbours = torch.cat(
        [
            db_class[topk_smallest(distances(s), depth)[1]]
            for s in query_chunks(len(q_class), len(db_class))
        ]
    )
    confusion = torch.zeros(num_classes, num_classes)
    confusion.index_put_(
        (q_class.repeat_interleave(depth), neighbours.flatten()),
        torch.ones(neighbours.numel()),
        accumulate=True,
    )
    confusion /= confusion.sum(1, keepdim=True).clamp_min(1)
    rows = {}
    for c in range(num_classes):
        members = (q_class == c).nonzero().squeeze(1)
        if len(members) == 0:
            continue
        class_map = evaluate_retrieval(
            lambda s, m=members: distances(m[s]), q_labels[members], db_labels, topk
        ).map_at_k
        wrong = [(names[o], float(confusion[c, o])) for o in range(num_classes) if o != c]
        wrong = [w for w in sorted(wrong, key=lambda w: -w[1]) if w[1] >= 0.01][:3]
        rows[names[c]] = {
            "queries": len(members),
            "map": class_map,
            "top10_same_class": float(confusion[c, c]),
            "top10_wrong": wrong,
        }
    return {"per_class": rows, "top10_confusion": confusion.tolist()}


if __name__ == "__main__":
    main()
