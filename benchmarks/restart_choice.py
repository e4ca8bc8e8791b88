"""What choosing among seeds by validation (``quantrieve train --restarts N``) is worth, read
from trainings already made, under three rules: the seed with the best validation mAP@1000, the
best validation P@10, or the best sum of the two (what ``--restarts`` uses), each at the epoch
the training kept, against the mean of the seeds (what one training gives on average). No
training is run.

Groups of three seeds of one collection and one probe: the ``top10_probes.py`` results, the
``folder_cli.py`` results (their validation scores read from the runs' ``log.jsonl`` under
``--runs`` where the results file lacks them), and the trainings inside the ``--restarts`` runs
(``restart_seeds.py``'s results; their logs are under the paths it names).

    python benchmarks/restart_choice.py --runs .probe/folders \\
        --json benchmarks/results/restarts/choice.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import mean

PROBES = Path("benchmarks/results/top10-probes")
FOLDERS = Path("benchmarks/results/own-folders")
SINGLE_SEEDS = Path("benchmarks/results/restarts/digits_single_seeds.jsonl")
#: Test scores compared, in order of preference: the library's refined ranking, else ADC.
KEYS = ("index_backbone_R100", "adc_l2")
#: The choice rules: a seed's key from its validation mAP@1000 and P@10 at its kept epoch.
RULES = {
    "val_map": lambda s: s["val_map"],
    "val_p10": lambda s: s["val_p10"],
    "val_map+val_p10": lambda s: s["val_map"] + s["val_p10"],
}

#: Probes that retrain the same trajectories as another probe (only the kept epoch differs).
SAME_TRAININGS = ("select",)

Groups = dict[tuple[str, str, str], list[dict]]


def _probe_groups() -> Groups:
    groups: Groups = {}
    seen: set[tuple[str, str, int]] = set()
    for path in sorted(PROBES.glob("cpu_*.jsonl")):
        for record in map(json.loads, path.open()):
            if not record.get("epochs") or record["probe"] in SAME_TRAININGS:
                continue  # rescored lines (no validation curve), or trainings counted already
            key = (record["collection"], record["probe"], record["seed"])
            if key in seen:  # the same training listed in two files
                continue
            seen.add(key)
            kept = next(e for e in record["epochs"] if e["epoch"] == record["best_epoch"])
            score = next(k for k in KEYS if k in record["scores"])
            groups.setdefault((path.name, record["collection"], record["probe"]), []).append(
                {
                    "seed": record["seed"],
                    "val_map": kept["map"],
                    "val_p10": kept["p10"],
                    "score": score,
                    "map": record["scores"][score]["map"],
                    "p10": record["scores"][score]["p10"],
                }
            )
    return groups


def _kept_validation(log: Path) -> tuple[float, float] | None:
    """(validation mAP, P@10) of the epoch a run kept, from its log; None without the log."""
    if not log.is_file():
        return None
    epochs = [r for r in map(json.loads, log.open()) if r.get("kind") == "epoch"]
    kept = next(r for r in epochs if r["epoch"] == epochs[-1]["best_epoch"])
    return kept["val_map"], kept["val_p10"]


def _refined_entry(record: dict, validation: tuple[float, float], score: str) -> dict:
    """One seed of a command-line result line: its kept epoch's validation and refined scores."""
    return {
        "seed": record["seed"],
        "val_map": validation[0],
        "val_p10": validation[1],
        "score": score,
        "map": record["refined"]["map"],
        "p10": record["refined"]["p10"],
    }


def _folder_groups(runs: Path | None) -> Groups:
    groups: Groups = {}
    for path in sorted(FOLDERS.glob("*.jsonl")):
        for record in map(json.loads, path.open()):
            if record.get("restarts", 1) > 1 or runs is None:
                continue  # a restarted run is a choice already, not one training
            if any(item.startswith("train.labelled_select") for item in record["set"]):
                continue  # the same trainings as the preset's, another epoch kept
            name = f"{record['collection']}-s{record['seed']}"
            validation = _kept_validation(runs / name / "log.jsonl")
            if validation is None:
                continue
            groups.setdefault((path.name, record["collection"], "cli"), []).append(
                _refined_entry(record, validation, "refined")
            )
    return groups


def _restart_groups() -> Groups:
    groups: Groups = {}
    if not SINGLE_SEEDS.is_file():
        return groups
    for record in map(json.loads, SINGLE_SEEDS.open()):
        log = Path(record["run"]) / "restarts" / f"seed-{record['seed']}" / "log.jsonl"
        validation = _kept_validation(log)
        if validation is None:
            continue
        groups.setdefault((SINGLE_SEEDS.name, "digits", record["run"]), []).append(
            _refined_entry(record, validation, "refined, expanded")
        )
    return groups


def _summary(rows: list[dict], rule: str) -> dict:
    gains = {m: [r["chosen"][rule][m] - r["mean"][m] for r in rows] for m in ("map", "p10")}
    return {
        "mean_gain": {m: round(mean(g), 4) for m, g in gains.items()},
        "groups_ahead": {m: sum(x > 0 for x in g) for m, g in gains.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--runs", type=Path, default=None, help="folder_cli.py's --runs")
    args = parser.parse_args()
    rows = []
    every = {**_probe_groups(), **_folder_groups(args.runs), **_restart_groups()}
    for (source, collection, probe), seeds in every.items():
        if len(seeds) != 3:
            continue
        chosen = {}
        for rule, key in RULES.items():
            pick = max(seeds, key=lambda s, key=key: (key(s), -s["seed"]))
            chosen[rule] = {"seed": pick["seed"], "map": pick["map"], "p10": pick["p10"]}
        rows.append(
            {
                "source": source,
                "collection": collection,
                "probe": probe,
                "score": seeds[0]["score"],
                "validation": [[round(s["val_map"], 4), round(s["val_p10"], 4)] for s in seeds],
                "mean": {
                    "map": round(mean(s["map"] for s in seeds), 4),
                    "p10": round(mean(s["p10"] for s in seeds), 4),
                },
                "chosen": chosen,
            }
        )
    out = {"groups": len(rows), "rules": {rule: _summary(rows, rule) for rule in RULES}}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out | {"rows": rows}, indent=1) + "\n")
    for r in rows:
        picks = "  ".join(
            f"{rule} {c['map']:.3f} / {c['p10']:.3f}" for rule, c in r["chosen"].items()
        )
        print(
            f"{r['collection']:>12} {r['probe'][-18:]:>18}  mean {r['mean']['map']:.3f} / "
            f"{r['mean']['p10']:.3f}  {picks}"
        )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
