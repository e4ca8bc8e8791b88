"""Every training inside runs made with ``quantrieve train --restarts N``, scored on its own: what
one training would have given, beside what the restarts kept (``folder_cli.py --restarts``).

For each ``RUN/restarts/seed-S`` of the given runs: ``quantrieve encode --refine-depth 100`` into
``RUN/restarts/seed-S-index`` (once), ``evaluate --json`` refined (the index's default query
expansion) and by ADC alone (``--refine-depth 0``), and the seed's kept epoch and its validation
mAP@1000. One JSON line per seed; a seed already in ``--results`` is skipped.

    python benchmarks/restart_seeds.py .probe/folders/digits-restarts-s{3,6} \\
        --results benchmarks/results/restarts/digits_single_seeds.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cli_calls import quantrieve, scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="runs trained with --restarts")
    parser.add_argument("--results", type=Path, required=True)
    args = parser.parse_args()
    done = set()
    if args.results.exists():
        done = {(r["run"], r["seed"]) for r in map(json.loads, args.results.open())}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    for run in args.runs:
        chosen = json.loads((run / "restarts.json").read_text())["chosen_seed"]
        for restart in sorted((run / "restarts").glob("seed-*[0-9]")):
            seed = int(restart.name.split("-")[1])
            if (str(run), seed) in done:
                continue
            index = restart.with_name(restart.name + "-index")
            if not index.is_dir():
                quantrieve("encode", str(restart), "--out", str(index), "--refine-depth", "100")
            refined = json.loads(quantrieve("evaluate", str(index), "--json").stdout)
            adc = json.loads(
                quantrieve("evaluate", str(index), "--json", "--refine-depth", "0").stdout
            )
            epochs = [r for r in map(json.loads, (restart / "log.jsonl").open())]
            epochs = [r for r in epochs if r.get("kind") == "epoch"]
            best = epochs[-1]["best_epoch"]
            record = {
                "run": str(run),
                "seed": seed,
                "chosen": seed == chosen,
                "best_epoch": best,
                "best_val_map": next(r["val_map"] for r in epochs if r["epoch"] == best),
                "adc": scores(adc),
                "refined": scores(refined),
                "refine_expand": refined["extra"].get("refine_expand"),
            }
            with args.results.open("a") as out:
                out.write(json.dumps(record) + "\n")
            print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
