"""The epoch rule ``train.labelled_select=map+p10`` against ``map``, paired on the same trainings.

The ``select`` probe's runs (``cpu_select.jsonl``) log every epoch's validation mAP@1000 and P@10
under today's evaluation. For each run: the epoch the ``map`` rule would keep on that same curve.
Where it is the epoch the run kept, both rules give this run's scores; where it differs, the
earlier ``kmeans`` run of the same seed (the same trajectory: ``small-collection-cpu`` as
shipped, the same CPU family) must have kept that epoch, and its scores are the ``map`` rule's.
A seed for which neither holds is reported and left out.

    python benchmarks/select_paired.py --json benchmarks/results/top10-probes/select_paired.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import mean

PROBES = Path("benchmarks/results/top10-probes")
BASELINES = (PROBES / "cpu_fair_ties_rescored.jsonl", PROBES / "cpu_fashion_small.jsonl")


def _scores(record: dict) -> dict:
    s = record["scores"]
    return {
        "adc_map": s["adc_l2"]["map"],
        "adc_p10": s["adc_l2"]["p10"],
        "refined_map": s["index_backbone_R100"]["map"],
        "refined_p10": s["index_backbone_R100"]["p10"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    earlier = {}
    for path in BASELINES:
        for r in map(json.loads, path.open()):
            if r["probe"] == "kmeans":
                earlier[(r["collection"], r["seed"])] = r
    pairs, unpaired = {}, []
    for r in map(json.loads, (PROBES / "cpu_select.jsonl").open()):
        by_map = max(r["epochs"], key=lambda e: (e["map"], -e["epoch"]))["epoch"]
        key = (r["collection"], r["seed"])
        if by_map == r["best_epoch"]:
            base = _scores(r)
        elif key in earlier and earlier[key]["best_epoch"] == by_map:
            base = _scores(earlier[key])
        else:
            unpaired.append(key)
            continue
        pairs.setdefault(r["collection"], []).append(
            {
                "seed": r["seed"],
                "epochs": [by_map, r["best_epoch"]],
                "map": base,
                "map+p10": _scores(r),
            }
        )
    table = {
        c: {
            rule: {n: round(mean(p[rule][n] for p in rows), 4) for n in rows[0][rule]}
            for rule in ("map", "map+p10")
        }
        | {"seeds": len(rows), "epochs_differ": sum(p["epochs"][0] != p["epochs"][1] for p in rows)}
        for c, rows in sorted(pairs.items())
    }
    overall = {
        rule: {
            n: round(mean(table[c][rule][n] for c in table), 4)
            for n in table[next(iter(table))][rule]
        }
        for rule in ("map", "map+p10")
    }
    out = {"collections": table, "mean_over_collections": overall, "unpaired": unpaired}
    out["pairs"] = pairs
    args.json.write_text(json.dumps(out, indent=1) + "\n")
    for c, row in table.items():
        print(c, row)
    print("mean", overall, "unpaired", unpaired)


if __name__ == "__main__":
    main()
