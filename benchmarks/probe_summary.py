"""Probes of ``small-collection-cpu`` against each other over every collection the preset is
judged on: mean of three seeds per collection, and the mean over collections, for ADC and the
refined index (mAP@1000, P@10), with the fair tie order.

Probes: ``base`` (the preset's earlier random codewords), ``kmeans`` (codewords started at
k-means centroids, the preset since then), ``ema`` (``kmeans`` and ``train.ema_decay=0.99``),
``select`` (``kmeans`` and ``train.labelled_select=map+p10``), ``restart`` (``kmeans`` and
``train.codeword_restart=0.1``), ``tau05`` (``kmeans`` and ``model.tau_sq=0.05``), ``ep40``
(``kmeans`` and ``train.epochs=40``). The solar cells and the 5,000 digits are scored through
the command line (``folder_cli.py``; refined with the default query expansion, the others
without).

    python benchmarks/probe_summary.py --json benchmarks/results/top10-probes/probe_summary.json
    python benchmarks/probe_summary.py --probes kmeans,select \
        --json benchmarks/results/top10-probes/probe_summary_select.json
    python benchmarks/probe_summary.py --probes kmeans,tau05 \
        --json benchmarks/results/top10-probes/probe_summary_tau05.json
    python benchmarks/probe_summary.py --probes kmeans,ep40 \
        --json benchmarks/results/top10-probes/probe_summary_ep40.json
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

RESULTS = Path("benchmarks/results")
PROBE_FILES = (
    RESULTS / "top10-probes/cpu_fair_ties_rescored.jsonl",  # letters, crops, digits
    RESULTS / "top10-probes/cpu_fashion_small.jsonl",  # Fashion-MNIST, 3,600 images
    RESULTS / "top10-probes/cpu_ema.jsonl",  # the four above with averaged weights
    RESULTS / "top10-probes/cpu_select.jsonl",  # the four, the epoch by mAP@1000 + P@10
    RESULTS / "top10-probes/cpu_restart.jsonl",  # the four, unused codewords restarted
    RESULTS / "top10-probes/cpu_fashion_capacity.jsonl",  # Fashion-MNIST: w_cd, tau_sq, 4x256
    RESULTS / "top10-probes/cpu_tau05.jsonl",  # letters, crops, digits: tau_sq = 0.05
    RESULTS / "top10-probes/cpu_ep40.jsonl",  # the four: 40 epochs
)
FOLDER_FILES = {  # (collection, probe): folders scored through the command line
    ("solar", "base"): RESULTS / "own-folders/solar.jsonl",
    ("solar", "kmeans"): RESULTS / "own-folders/solar_kmeans.jsonl",
    ("solar", "ema"): RESULTS / "own-folders/solar_ema.jsonl",
    ("solar", "select"): RESULTS / "own-folders/solar_select.jsonl",
    ("solar", "restart"): RESULTS / "own-folders/solar_restart.jsonl",
    ("solar", "tau05"): RESULTS / "own-folders/solar_tau05.jsonl",
    ("solar", "ep40"): RESULTS / "own-folders/solar_ep40.jsonl",
    ("mnist5k", "kmeans"): RESULTS / "own-folders/mnist5k.jsonl",
    ("mnist5k", "select"): RESULTS / "own-folders/mnist5k_select.jsonl",
    ("mnist5k", "restart"): RESULTS / "own-folders/mnist5k_restart.jsonl",
    ("mnist5k", "tau05"): RESULTS / "own-folders/mnist5k_tau05.jsonl",
}
NAMES = ("adc_map", "adc_p10", "refined_map", "refined_p10")


def collect() -> dict:
    """{collection: {probe: [(adc map, adc p10, refined map, refined p10), ...]}}"""
    runs: dict = defaultdict(lambda: defaultdict(list))
    for path in PROBE_FILES:
        if not path.is_file():
            continue
        for line in path.open():
            r = json.loads(line)
            s = r["scores"]
            adc, refined = s["adc_l2"], s["index_backbone_R100"]
            runs[r["collection"]][r["probe"]].append(
                (adc["map"], adc["p10"], refined["map"], refined["p10"])
            )
    for (collection, probe), path in FOLDER_FILES.items():
        if not path.is_file():
            continue
        for line in path.open():
            r = json.loads(line)
            runs[collection][probe].append(
                (r["adc"]["map"], r["adc"]["p10"], r["refined"]["map"], r["refined"]["p10"])
            )
    return runs


def summarise(runs: dict, probes: list[str]) -> dict:
    """Per-collection means of each probe, and the mean over the collections every probe has."""
    table = {
        collection: {
            probe: {n: round(sum(v[i] for v in rows) / len(rows), 4) for i, n in enumerate(NAMES)}
            | {"seeds": len(rows)}
            for probe, rows in by_probe.items()
            if probe in probes
        }
        for collection, by_probe in sorted(runs.items())
    }
    shared = [c for c in table if all(p in table[c] for p in probes)]
    means = {
        probe: {n: round(sum(table[c][probe][n] for c in shared) / len(shared), 4) for n in NAMES}
        for probe in probes
    }
    return {"collections": table, "mean_over_collections": means, "collections_in_mean": shared}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--probes", default="base,kmeans,ema", help="comma-separated")
    args = parser.parse_args()
    out = summarise(collect(), args.probes.split(","))
    args.json.write_text(json.dumps(out, indent=1) + "\n")
    for collection, probes in out["collections"].items():
        print(collection, probes)
    print("mean over", ", ".join(out["collections_in_mean"]), out["mean_over_collections"])


if __name__ == "__main__":
    main()
