"""Fashion-MNIST's top 10 through the command line: the ``fashion-mnist-cpu`` preset as shipped,
several seeds, each scored by ADC alone, refined (R = 100, no expansion) and refined with the
default query expansion, on the 10,000 test queries against the 60,000 training images.

For each seed: ``quantrieve train --preset fashion-mnist-cpu --set train.seed=S`` (continued
with ``--resume`` where a run was stopped), ``encode --refine-depth 100`` and three ``evaluate
--part test --json``. Each seed appends one JSON line to ``--results`` with the numbers, the
training time (the sum of the epochs' wall clock, validation passes included), the kept epoch and
the warnings ``encode`` printed; a seed already in the file is skipped, so a stopped run resumes.
``--summary`` writes the means over the seeds in the file.

    python benchmarks/fashion_mnist_top10.py --seeds 0,1,2 \\
        --results benchmarks/results/fashion-mnist-top10/seeds.jsonl \\
        --summary benchmarks/results/fashion-mnist-top10/summary.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from pathlib import Path

from cli_calls import new_seeds, quantrieve, scores

PRESET = "fashion-mnist-cpu"
REFINE_DEPTH = 100


def _cpu() -> str:
    """The CPU's model name (results repeat bit for bit only on the same CPU)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _epochs(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "log.jsonl").open() if line.strip()]
    return [r for r in records if r.get("kind") == "epoch"]


def _finished(run: Path, epochs: int) -> bool:
    done = _epochs(run) if (run / "log.jsonl").is_file() else []
    return bool(done) and done[-1]["epoch"] >= epochs


def run_seed(args: argparse.Namespace, seed: int) -> dict:
    """Train (or continue), encode and score one seed; the JSON line for it."""
    run = args.runs / f"fm-cpu-s{seed}"
    index = run / "index"
    sets = [f"train.seed={seed}", *args.set]
    if not _finished(run, args.epochs):
        train = ["train", "--out", str(run)]
        if (run / "last.pt").is_file():
            train.append("--resume")
        else:
            train += ["--preset", PRESET]
            for item in sets:
                train += ["--set", item]
        quantrieve(*train)
    if not index.is_dir():
        encode = ["encode", str(run), "--out", str(index), "--refine-depth", str(REFINE_DEPTH)]
        warnings = [line for line in quantrieve(*encode).stderr.splitlines() if line.strip()]
    else:
        warnings = ["(index encoded before; its warnings were not kept)"]
    evaluate = ["evaluate", str(index), "--part", "test", "--json"]
    results = {
        "adc": json.loads(quantrieve(*evaluate, "--refine-depth", "0").stdout),
        "refined": json.loads(quantrieve(*evaluate, "--refine-expand", "0").stdout),
        "expanded": json.loads(quantrieve(*evaluate).stdout),
    }
    epochs = _epochs(run)
    meta = json.loads((index / "index.json").read_text())
    return {
        "seed": seed,
        "preset": PRESET,
        "set": sets,
        "epochs": epochs[-1]["epoch"],
        "kept_epoch": epochs[-1]["best_epoch"],
        "train_minutes": round(sum(r["seconds"] for r in epochs) / 60, 1),
        "queries": results["adc"]["num_queries"],
        "database": results["adc"]["num_database"],
        "refine_depth": meta.get("refine_depth"),
        "refine_expand": meta.get("refine_expand", 0),
        **{name: scores(result) for name, result in results.items()},
        "encode_warnings": warnings,
        "cpu": _cpu(),
    }


def summary(results: Path) -> dict:
    """Mean and standard deviation over the seeds in ``results``, per scoring."""
    rows = [json.loads(line) for line in results.open() if line.strip()]
    out: dict = {"seeds": [r["seed"] for r in rows], "results": str(results)}
    for name in ("adc", "refined", "expanded"):
        for metric in ("map", "p10"):
            values = [r[name][metric] for r in rows]
            out[f"{name}_{metric}"] = {
                "mean": round(statistics.mean(values), 4),
                "sd": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
                "values": values,
            }
    out["train_minutes"] = [r["train_minutes"] for r in rows]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated train.seed values")
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="where runs are kept")
    parser.add_argument("--epochs", type=int, default=30, help="the preset's train.epochs")
    parser.add_argument("--set", action="append", default=[], help="extra train --set KEY=V")
    parser.add_argument("--results", type=Path, required=True, help="JSON lines, one a seed")
    parser.add_argument("--summary", type=Path, help="write the means over the seeds here")
    args = parser.parse_args()
    for row in new_seeds(args.results, args.seeds, lambda seed: run_seed(args, seed)):
        print(json.dumps(row), flush=True)
    if args.summary:
        args.summary.write_text(json.dumps(summary(args.results), indent=2) + "\n")
        print(args.summary.read_text())


if __name__ == "__main__":
    main()
