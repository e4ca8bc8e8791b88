"""What choosing among seeds by validation (``quantrieve train --restarts N``) is worth, read
from trainings already made: for every group of three seeds of one collection and one probe in
the ``top10_probes.py`` results (and the ``folder_cli.py`` results), the test scores of the seed
with the best validation mAP@1000 (what ``--restarts 3`` keeps) against the mean of the three
(what one training gives on average). No training is run.

    python benchmarks/restart_choice.py --runs .probe/folders \
        --json benchmarks/results/restarts/choice.json

``--runs``: the folder of ``folder_cli.py``'s run directories, for its results measured before it
recorded each seed's validation score (read from the run's ``log.jsonl``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import mean

PROBES = Path("benchmarks/results/top10-probes")
FOLDERS = Path("benchmarks/results/own-folders")
#: Test scores compared, in order of preference: the library's refined ranking, else ADC.
KEYS = ("index_backbone_R100", "adc_l2")


def _probe_groups() -> dict[tuple[str, str, str], list[dict]]:
    groups: dict[tuple[str, str, str], list[dict]] = {}
    seen: set[tuple[str, str, int]] = set()
    for path in sorted(PROBES.glob("cpu_*.jsonl")):
        for record in map(json.loads, path.open()):
            if not record.get("epochs"):
                continue  # rescored lines: no validation curve
            key = (record["collection"], record["probe"], record["seed"])
            if key in seen:  # the same training listed in two files
                continue
            seen.add(key)
            best = [e for e in record["epochs"] if e["epoch"] == record["best_epoch"]]
            for score in KEYS:
                if score in record["scores"]:
                    entry = {
                        "seed": record["seed"],
                        "val_map": best[0]["map"],
                        "score": score,
                        "map": record["scores"][score]["map"],
                        "p10": record["scores"][score]["p10"],
                    }
                    groups.setdefault((path.name, record["collection"], record["probe"]), [])
                    groups[(path.name, record["collection"], record["probe"])].append(entry)
                    break
    return groups


def _logged_val_map(runs: Path | None, collection: str, seed: int) -> float | None:
    """The kept epoch's validation mAP in a folder_cli run's log, if the run is there."""
    log = None if runs is None else runs / f"{collection}-s{seed}" / "log.jsonl"
    if log is None or not log.is_file():
        return None
    records = [json.loads(line) for line in log.open()]
    best = [r for r in records if r.get("kind") == "epoch"][-1]["best_epoch"]
    return next(r["val_map"] for r in records if r.get("kind") == "epoch" and r["epoch"] == best)


def _folder_groups(runs: Path | None) -> dict[tuple[str, str, str], list[dict]]:
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for path in sorted(FOLDERS.glob("*.jsonl")):
        for record in map(json.loads, path.open()):
            if record.get("best_val_map") is None:
                record["best_val_map"] = _logged_val_map(runs, record["collection"], record["seed"])
            if record["best_val_map"] is None:
                continue  # no validation score recorded and no run to read it from
            groups.setdefault((path.name, record["collection"], "cli"), []).append(
                {
                    "seed": record["seed"],
                    "val_map": record["best_val_map"],
                    "score": "refined",
                    "map": record["refined"]["map"],
                    "p10": record["refined"]["p10"],
                }
            )
    return groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--runs", type=Path, default=None, help="folder_cli.py's --runs")
    args = parser.parse_args()
    rows = []
    for (source, collection, probe), seeds in {
        **_probe_groups(),
        **_folder_groups(args.runs),
    }.items():
        if len(seeds) != 3 or len({s["score"] for s in seeds}) != 1:
            continue
        chosen = max(seeds, key=lambda s: (s["val_map"], -s["seed"]))
        rows.append(
            {
                "source": source,
                "collection": collection,
                "probe": probe,
                "score": seeds[0]["score"],
                "val_maps": [round(s["val_map"], 4) for s in seeds],
                "mean": {
                    "map": round(mean(s["map"] for s in seeds), 4),
                    "p10": round(mean(s["p10"] for s in seeds), 4),
                },
                "chosen_seed": chosen["seed"],
                "chosen": {"map": round(chosen["map"], 4), "p10": round(chosen["p10"], 4)},
                "worst": {
                    "map": round(min(s["map"] for s in seeds), 4),
                    "p10": round(min(s["p10"] for s in seeds), 4),
                },
            }
        )
    gain = {
        metric: round(mean(r["chosen"][metric] - r["mean"][metric] for r in rows), 4)
        for metric in ("map", "p10")
    }
    ahead = {
        metric: sum(r["chosen"][metric] > r["mean"][metric] for r in rows)
        for metric in ("map", "p10")
    }
    out = {"groups": len(rows), "mean_gain": gain, "groups_ahead": ahead, "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1) + "\n")
    for r in rows:
        print(
            f"{r['collection']:>9} {r['probe']:>7} {r['score']:>20}  mean {r['mean']['map']:.3f}"
            f" / {r['mean']['p10']:.3f}  chosen {r['chosen']['map']:.3f} / "
            f"{r['chosen']['p10']:.3f}  val {r['val_maps']}"
        )
    print(json.dumps({k: out[k] for k in ("groups", "mean_gain", "groups_ahead")}))


if __name__ == "__main__":
    main()
