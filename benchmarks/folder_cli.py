"""A user's own folder, scored the way the README's "Your own images" tells a user to: the
command line only, several training seeds.

For each seed: ``quantrieve train --preset PRESET --data-dir FOLDER --holdout N``, ``encode
--refine-depth R``, ``evaluate --json`` (refined, and ``--refine-depth 0``: ADC alone), and the
pixel baselines ``baseline exact|pq --run --json`` on the same held-out queries and database.
Each seed appends one JSON line to ``--results`` (the numbers, the code usage ``encode`` saved,
and the warnings it printed); a seed already in the file is skipped, so a stopped run resumes.

    python benchmarks/own_collections.py --out .probe/data --names solar --folders
    python benchmarks/folder_cli.py .probe/data/solar --name solar --seeds 0,1,2 \
        --results benchmarks/results/own-folders/solar.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from cli_calls import new_seeds, quantrieve, scores


def run_seed(args: argparse.Namespace, seed: int) -> dict:
    run = args.runs / f"{args.name}-s{seed}"
    index = run / "index"
    sets = [f"train.seed={seed}", *args.set]
    started = time.perf_counter()
    if not (run / "model.pt").is_file():
        train = ["train", "--preset", args.preset, "--data-dir", str(args.folder)]
        train += ["--holdout", str(args.holdout), "--out", str(run)]
        if args.restarts > 1:
            train += ["--restarts", str(args.restarts)]
        for item in sets:
            train += ["--set", item]
        quantrieve(*train)
    trained = time.perf_counter() - started
    if not index.is_dir():
        encode = quantrieve(
            "encode", str(run), "--out", str(index), "--refine-depth", str(args.refine)
        )
        warnings = [line for line in encode.stderr.splitlines() if line.strip()]
    else:
        warnings = ["(index encoded before; its warnings were not kept)"]
    refined = json.loads(quantrieve("evaluate", str(index), "--json").stdout)
    adc = json.loads(quantrieve("evaluate", str(index), "--json", "--refine-depth", "0").stdout)
    baselines = {
        method: scores(
            json.loads(quantrieve("baseline", method, "--run", str(run), "--json").stdout)
        )
        for method in ("exact", "pq")
    }
    meta = json.loads((index / "index.json").read_text())
    log = [json.loads(line) for line in (run / "log.jsonl").open()]
    val_maps = {r["epoch"]: r["val_map"] for r in log if r.get("kind") == "epoch"}
    best_epoch = [r for r in log if r.get("kind") == "epoch"][-1]["best_epoch"]
    return {
        "collection": args.name,
        "seed": seed,
        "preset": args.preset,
        "set": sets,
        "holdout": args.holdout,
        "restarts": args.restarts,
        "restart_chosen_seed": (
            json.loads((run / "restarts.json").read_text())["chosen_seed"]
            if (run / "restarts.json").is_file()
            else None
        ),
        "refine_expand": meta.get("refine_expand", 0),
        "refine_depth": args.refine,
        "train_seconds": round(trained, 1),
        "best_epoch": best_epoch,
        "best_val_map": val_maps.get(best_epoch),
        "queries": refined["num_queries"],
        "database": refined["num_database"],
        "adc": scores(adc),
        "refined": scores(refined),
        "pixels_exact": baselines["exact"],
        "pixels_pq": baselines["pq"],
        "code_usage": meta.get("code_usage"),
        "encode_warnings": warnings,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="a folder of class sub-folders of images")
    parser.add_argument("--name", required=True)
    parser.add_argument("--preset", default="small-collection-cpu")
    parser.add_argument("--holdout", type=int, default=500)
    parser.add_argument("--refine", type=int, default=100)
    parser.add_argument(
        "--restarts", type=int, default=1, help="train --restarts N (seeds s, s + 1, ...)"
    )
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--set", action="append", default=[], help="a config override")
    parser.add_argument("--runs", type=Path, default=Path(".probe/folders"))
    parser.add_argument("--results", type=Path, required=True)
    args = parser.parse_args()
    for record in new_seeds(args.results, args.seeds, lambda seed: run_seed(args, seed)):
        print(
            json.dumps(
                {k: record[k] for k in ("seed", "adc", "refined", "pixels_exact", "pixels_pq")}
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
