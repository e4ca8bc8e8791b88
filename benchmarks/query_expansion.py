"""Query expansion of the refined head (``refine_expand`` = n), measured on trained models.

Two sources, one JSON line per model and expansion:

- ``indexes``: index directories encoded with ``--refine-depth`` (a user's folder through
  ``benchmarks/folder_cli.py``, or a preset's run), scored by ``quantrieve evaluate --json
  --refine-expand n`` on the queries their runs held out (or ``--part``);
- ``kept``: the runs ``benchmarks/top10_probes.py run --keep`` kept, scored on their
  collection's held-out queries with the library's evaluation (refined by the unit backbone
  vectors, R = 100, the tie group at place R taken in), as ``encode --refine-depth 100``.

    python benchmarks/query_expansion.py indexes .probe/folders/digits-s*/index \\
        --expand 0,1,2,3,5 --results benchmarks/results/query-expansion/folders.jsonl
    python benchmarks/query_expansion.py kept .probe/keep-kmeans --data .probe/data \\
        --expand 0,1,2,3,5 --results benchmarks/results/query-expansion/probes.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from cli_calls import quantrieve, scores

EXPANSIONS = "0,1,2,3,5"


def _done(results: Path) -> set[tuple[str, int]]:
    if not results.exists():
        return set()
    return {(r["model"], r["expand"]) for r in map(json.loads, results.open()) if r}


def _append(results: Path, record: dict) -> None:
    results.parent.mkdir(parents=True, exist_ok=True)
    with results.open("a") as out:
        out.write(json.dumps(record) + "\n")
    print(json.dumps(record), flush=True)


def indexes(args: argparse.Namespace) -> None:
    """``quantrieve evaluate`` of each index at each expansion."""
    done = _done(args.results)
    for index in args.index:
        for n in args.expand:
            if (str(index), n) in done:
                continue
            command = ["evaluate", str(index), "--json", "--refine-expand", str(n)]
            if args.part:
                command += ["--part", args.part]
            result = json.loads(quantrieve(*command).stdout)
            _append(
                args.results,
                {
                    "model": str(index),
                    "expand": n,
                    "refine_depth": result["extra"].get("refine_depth"),
                    "queries": result["num_queries"],
                    "database": result["num_database"],
                    **scores(result),
                },
            )


def kept(args: argparse.Namespace) -> None:
    """The library's refined evaluation of each kept probe run at each expansion."""
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).parent))
    from top10_probes import backbone_features, load_collection

    from quantrieve import Retriever
    from quantrieve.evaluate.scoring import evaluate_codes

    done = _done(args.results)
    for folder in sorted(p for p in args.keep.iterdir() if (p / "model.pt").is_file()):
        if all((folder.name, n) in done for n in args.expand):
            continue
        collection, probe, seed = folder.name.rsplit("-", 2)
        train, queries = load_collection(
            collection, args.data, args.fm_dir, args.queries, args.fm_queries
        )
        retriever = Retriever.load(folder, device="cpu")
        model = retriever.model
        f_q = torch.as_tensor(retriever.embed(queries))
        f_db = torch.as_tensor(retriever.embed(train))
        codes = model.quantizer.encode(f_db).numpy()
        books = model.quantizer.codebooks.detach().cpu().numpy()
        unit = torch.nn.functional.normalize
        h_q = unit(backbone_features(model, np.asarray(queries.images)), dim=-1)
        h_db = unit(backbone_features(model, np.asarray(train.images)), dim=-1).half()
        for n in args.expand:
            if (folder.name, n) in done:
                continue
            result = evaluate_codes(
                f_q,
                books,
                codes,
                queries.labels,
                train.labels,
                k=1000,
                precision_at=(10,),
                pr_queries=1,
                refine=(h_db, args.depth),
                refine_queries=h_q,
                refine_expand=n,
            )
            _append(
                args.results,
                {
                    "model": folder.name,
                    "collection": collection,
                    "probe": probe,
                    "seed": int(seed),
                    "expand": n,
                    "refine_depth": args.depth,
                    "queries": len(queries),
                    "database": len(train),
                    "map": round(result.map_at_k, 4),
                    "p10": round(result.precision_at[10], 4),
                },
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    expand = {"type": lambda s: [int(x) for x in s.split(",")], "default": EXPANSIONS}
    one = sub.add_parser("indexes")
    one.add_argument("index", type=Path, nargs="+")
    one.add_argument("--part", default=None, help="default: the queries the run held out")
    two = sub.add_parser("kept")
    two.add_argument("keep", type=Path)
    two.add_argument("--data", type=Path, default=Path(".probe/data"))
    two.add_argument("--fm-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    two.add_argument("--queries", type=int, default=600)
    two.add_argument("--fm-queries", type=int, default=2000)
    two.add_argument("--depth", type=int, default=100)
    two.add_argument("--threads", type=int, default=1)
    for p in (one, two):
        p.add_argument("--expand", **expand)
        p.add_argument("--results", type=Path, required=True)
    args = parser.parse_args()
    if isinstance(args.expand, str):
        args.expand = [int(x) for x in args.expand.split(",")]
    indexes(args) if args.command == "indexes" else kept(args)


if __name__ == "__main__":
    main()
