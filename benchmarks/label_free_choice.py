"""How closely the label-free validation signal tracks labelled validation, per training run.

    python benchmarks/label_free_choice.py benchmarks/results/top10-probes/cpu_results.jsonl \
        runs/fm-cpu-s0 --out benchmarks/results/label-free/report.md

For every run of ``benchmarks/top10_probes.py`` whose epochs record the label-free signal
(``self_r10``: augmented copies of validation-database images finding their originals among its
codes, :mod:`quantrieve.evaluate.self_retrieval`), over its epochs: the Spearman correlation of
``self_r10`` with validation mAP@1000 and with validation P@10; the epoch each signal would keep
(the first best); and the validation mAP and P@10 at the label-free choice against those at the
labelled choice (by mAP, what training does) and at the last epoch (what an unlabelled run kept
before). Validation numbers only: the test queries choose nothing.

An argument may also be a training run folder (``quantrieve train --out RUN``): its
``log.jsonl`` epochs (``val_map``, ``val_p10``, ``val_self``) make one run, named by its
dataset, preset and seed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def spearman(a: list[float], b: list[float]) -> float:
    """Rank correlation (average ranks for ties)."""

    def ranks(values: list[float]) -> np.ndarray:
        order = np.argsort(values, kind="stable")
        r = np.empty(len(values))
        r[order] = np.arange(len(values), dtype=float)
        x = np.asarray(values)
        for value in np.unique(x):  # ties share their mean rank
            r[x == value] = r[x == value].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def first_best(values: list[float]) -> int:
    return int(np.argmax(values))


def analyse(run: dict) -> dict | None:
    epochs = [e for e in run["epochs"] if e.get("self_r10") is not None]
    if len(epochs) < 3:
        return None
    maps = [e["map"] for e in epochs]
    p10 = [e["p10"] for e in epochs]
    free = [e["self_r10"] for e in epochs]
    by_map, by_free = first_best(maps), first_best(free)
    return {
        "run": f"{run['collection']} {run['probe']} seed {run['seed']}",
        "epochs": len(epochs),
        "rho_map": spearman(free, maps),
        "rho_p10": spearman(free, p10),
        "epoch_by_map": epochs[by_map]["epoch"],
        "epoch_by_free": epochs[by_free]["epoch"],
        "map_at_map": maps[by_map],
        "map_at_free": maps[by_free],
        "map_at_last": maps[-1],
        "p10_at_map": p10[by_map],
        "p10_at_free": p10[by_free],
        "p10_at_last": p10[-1],
    }


def run_folder(path: Path) -> dict:
    """A training run folder's epochs in the form of a probe result line."""
    config = json.loads((path / "config.json").read_text())
    record = json.loads((path / "run.json").read_text()) if (path / "run.json").is_file() else {}
    preset = next((w for w in record.get("command", "").split() if w.endswith("-cpu")), None)
    epochs = []
    for line in (path / "log.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if entry.get("kind") == "epoch" and entry.get("val_map") is not None:
            epochs.append(
                {
                    "epoch": entry["epoch"],
                    "map": entry["val_map"],
                    "p10": entry.get("val_p10"),
                    "self_r10": entry.get("val_self"),
                }
            )
    return {
        "collection": config["data"]["dataset"],
        "probe": preset or path.name,
        "seed": config["train"]["seed"],
        "epochs": epochs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="+")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = []
    for path in args.results:
        runs = (
            [run_folder(path)]
            if path.is_dir()
            else [json.loads(line) for line in path.read_text().splitlines()]
        )
        for run in runs:
            row = analyse(run)
            if row is not None:
                rows.append(row)
    lines = [
        "| run | epochs | rho(free, mAP) | rho(free, P@10) | epoch by mAP / free "
        "| val mAP at mAP / free / last | val P@10 at mAP / free / last |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['epochs']} | {r['rho_map']:.2f} | {r['rho_p10']:.2f} "
            f"| {r['epoch_by_map']} / {r['epoch_by_free']} "
            f"| {r['map_at_map']:.3f} / {r['map_at_free']:.3f} / {r['map_at_last']:.3f} "
            f"| {r['p10_at_map']:.3f} / {r['p10_at_free']:.3f} / {r['p10_at_last']:.3f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        command = "python benchmarks/label_free_choice.py " + " ".join(map(str, args.results))
        args.out.write_text(
            f"# The label-free signal against labelled validation\n\n`{command}`\n\n{text}"
        )


if __name__ == "__main__":
    main()
