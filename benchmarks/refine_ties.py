"""Refinement with and without the tie group at place R taken in (``quantrieve.pq.refine``).

For kept probe runs (``benchmarks/top10_probes.py run --keep DIR``), the library's evaluation of
an index refining by the backbone (what ``quantrieve evaluate`` scores), at several depths R,
once as shipped (the head takes in the rest of a tie group straddling place R, up to
``TIE_SPAN * R`` results) and once with ``TIE_SPAN = 1`` (a fixed depth: the group is cut at
place R by item order, as faiss's ``IndexRefine`` does). Small R on coarse codes is where the
two differ: a tie group larger than R.

    python benchmarks/refine_ties.py --keep .probe/keep-base --data .probe/data \
        --depths 10,30,100 --json benchmarks/results/refine/ties.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from top10_probes import _unit, backbone_features, load_collection, tie_groups


def score(retriever, train, queries, depths: list[int]) -> dict:
    """mAP@1000 and P@10 of the refined index at each depth, with the tie span 4 and 1."""
    import torch

    import quantrieve.pq.refine as refine_module
    import quantrieve.pq.settings as settings
    from quantrieve.evaluate.scoring import evaluate_codes

    model = retriever.model
    f_q = torch.as_tensor(retriever.embed(queries))
    f_db = torch.as_tensor(retriever.embed(train))
    codes = model.quantizer.encode(f_db).numpy()
    books = model.quantizer.codebooks.detach().numpy()
    h_q = _unit(backbone_features(model, np.asarray(queries.images)))
    h_db = _unit(backbone_features(model, np.asarray(train.images))).half()
    shipped = settings.TIE_SPAN
    out: dict = {"ties": tie_groups(codes)}
    for span in (shipped, 1):
        settings.TIE_SPAN = refine_module.TIE_SPAN = span
        try:
            for depth in depths:
                result = evaluate_codes(
                    f_q,
                    books,
                    codes,
                    queries.labels,
                    train.labels,
                    k=1000,
                    precision_at=(10,),
                    pr_queries=1,
                    refine=(h_db, depth),
                    refine_queries=h_q,
                )
                out[f"span{span}_R{depth}"] = {
                    "map": round(result.map_at_k, 5),
                    "p10": round(result.precision_at[10], 5),
                }
        finally:
            settings.TIE_SPAN = refine_module.TIE_SPAN = shipped
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=Path(".probe/data"))
    parser.add_argument("--fm-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--queries", type=int, default=600)
    parser.add_argument("--fm-queries", type=int, default=2000)
    parser.add_argument("--depths", default="10,30,100")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()

    import torch

    from quantrieve import Retriever

    torch.set_num_threads(args.threads)
    depths = [int(d) for d in args.depths.split(",")]
    runs = {}
    for folder in sorted(p for p in args.keep.iterdir() if (p / "model.pt").is_file()):
        collection, _, _ = folder.name.rsplit("-", 2)
        train, queries = load_collection(
            collection, args.data, args.fm_dir, args.queries, args.fm_queries
        )
        retriever = Retriever.load(folder, device="cpu")
        runs[folder.name] = score(retriever, train, queries, depths)
        print(folder.name, json.dumps(runs[folder.name]), flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"depths": depths, "runs": runs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
