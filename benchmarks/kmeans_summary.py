"""The ``model.codebook_init=kmeans`` probe against the preset's random codewords, over every
collection ``small-collection-cpu`` was judged on: mean of three seeds per collection, and the
mean over collections, for ADC and the refined index (mAP@1000, P@10), with the fair tie order.

    python benchmarks/kmeans_summary.py --json benchmarks/results/top10-probes/kmeans_summary.json
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
)
FOLDER_FILES = {  # solar cells through the command line
    "base": RESULTS / "own-folders/solar.jsonl",
    "kmeans": RESULTS / "own-folders/solar_kmeans.jsonl",
}


def collect() -> dict:
    """{collection: {probe: [(adc map, adc p10, refined map, refined p10), ...]}}"""
    runs: dict = defaultdict(lambda: defaultdict(list))
    for path in PROBE_FILES:
        for line in path.open():
            r = json.loads(line)
            s = r["scores"]
            adc, refined = s["adc_l2"], s["index_backbone_R100"]
            runs[r["collection"]][r["probe"]].append(
                (adc["map"], adc["p10"], refined["map"], refined["p10"])
            )
    for probe, path in FOLDER_FILES.items():
        for line in path.open():
            r = json.loads(line)
            runs["solar"][probe].append(
                (r["adc"]["map"], r["adc"]["p10"], r["refined"]["map"], r["refined"]["p10"])
            )
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    names = ("adc_map", "adc_p10", "refined_map", "refined_p10")
    table = {}
    for collection, probes in sorted(collect().items()):
        table[collection] = {
            probe: {n: round(sum(v[i] for v in rows) / len(rows), 4) for i, n in enumerate(names)}
            | {"seeds": len(rows)}
            for probe, rows in probes.items()
        }
    means = {
        probe: {n: round(sum(table[c][probe][n] for c in table) / len(table), 4) for n in names}
        for probe in ("base", "kmeans")
    }
    out = {"collections": table, "mean_over_collections": means}
    args.json.write_text(json.dumps(out, indent=1) + "\n")
    for collection, probes in table.items():
        print(collection, probes["base"], probes["kmeans"])
    print("mean", means)


if __name__ == "__main__":
    main()
