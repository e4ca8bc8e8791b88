"""What a user sees in the top 10: training probes over collections and seeds, scored with
P@10 and mAP@1000, the code usage they reach, and re-ranking candidates on their embeddings.

Collections: ``fashion-mnist`` (the Debian files; first ``--fm-queries`` test images against the
60,000 training images), and the ``.npz`` collections of ``benchmarks/own_collections.py``
(``--queries`` held out by a fixed seed, the rest is both the training set and the database).
Fashion-MNIST trains the ``fashion-mnist-cpu`` preset for ``--fm-epochs`` epochs, the others
``small-collection-cpu`` for its 30 (``glyphs`` with flips off, as the README advises for text).

Probes are config overrides on top of the preset (``PROBES``). Every (collection, probe, seed)
is one job in its own process; jobs run ``--jobs`` at a time, the first three seeds of every
probe first, and no job starts after ``--deadline`` seconds. Each job appends one JSON line to
``--results``: per ranking variant mAP@1000 and P@10, code usage of the database, and the
validation records of every epoch (mAP, P@10, distinct-code fraction, book perplexities).

Ranking variants of one trained model: ADC with the non-squared ``l2`` (the search default) and
with ``sqeuclidean``; re-ranking the top R of the ADC scan with a finer copy of each item's
embedding (``fp16``, ``int8`` per-dimension scalar, ``rpq8``: an 8-byte residual PQ code); exact
distances between float embeddings (no quantization at all). The distance the losses train
with (cosine) against the one search uses (``l2``): ADC and exact rankings by cosine. The
backbone's representation (before the projection head, fp32) as the finer copy: exact rankings
by it, and re-ranking the top R of the ADC scan by it (``backbone_cos``: cosine, i.e. L2 between
unit vectors; ``backbone_l2``); ``index_backbone_R*``: the library's own refinement (what
``quantrieve evaluate`` scores on an index encoded with ``--refine-depth``), which also re-scores
the rest of a tie group straddling place R.

``--keep DIR`` keeps every job's run folder (model, config, log) as ``DIR/COLLECTION-PROBE-SEED``;
``rescore`` scores kept runs again with the current variants, without training them again.

    python benchmarks/top10_probes.py run --data .probe/data --fm-dir DIR --results r.jsonl
    python benchmarks/top10_probes.py baselines --data .probe/data --fm-dir DIR --out b.json
    python benchmarks/top10_probes.py report r.jsonl --baselines b.json --out report.md
    python benchmarks/top10_probes.py rescore --keep DIR --results r2.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROBES: dict[str, list[str]] = {
    "base": [],
    # Codeword-usage regularisation: L_cd five times its HQC weight.
    "cd1": ["loss.w_cd=1.0"],
    # Soft-assignment temperature, sharper (closer to the hard code used in search).
    "tau05": ["model.tau_sq=0.05"],
    # 32 bits as 4 books of 256 codewords (same embedding size, 32 dims per book).
    "m4k256": ["model.num_books=4", "model.num_codewords=256", "model.codeword_dim=32"],
    # Codewords started at k-means centroids of the untrained network's embeddings.
    "kmeans": ["model.codebook_init=kmeans"],
    # Validation scores and the run keeps a moving average of the weights (decay 0.99).
    "ema": ["train.ema_decay=0.99"],
    # The kept epoch is the one with the best validation mAP@1000 + P@10 (not mAP alone).
    "select": ["train.labelled_select=map+p10"],
    # Unused codewords restarted onto batch sub-vectors (share below a tenth of 1/K).
    "restart": ["train.codeword_restart=0.1"],
    # A third more epochs (the schedule stretched with them): runs still rising at epoch 30.
    "ep40": ["train.epochs=40"],
}
SMALL_PRESET = "small-collection-cpu"
FM_PRESET = "fashion-mnist-cpu"
RERANK = (("fp16", 100), ("int8", 100), ("rpq8", 100), ("fp16", 1000))
#: Held-out queries of a collection too small for ``--queries`` (the 1,797 digits).
QUERIES = {"digits": 300}
#: Collections of symbols whose mirror images are other symbols: trained without flips.
NO_FLIPS = ("glyphs", "digits")


# ---------------------------------------------------------------------------- collections
def load_collection(name: str, data: Path, fm_dir: Path, queries: int, fm_queries: int):
    """(train/database ImageSet, query ImageSet) of a collection, fixed for every seed."""
    from quantrieve.data import ImageSet, read_dataset
    from quantrieve.data.base import one_hot

    if name == "fashion-mnist":
        parts = read_dataset("fashion-mnist", fm_dir)
        test = parts["test"]
        return parts["train"], test.subset(np.arange(min(fm_queries, len(test))))
    with np.load(data / f"{name}.npz") as npz:
        images, labels = npz["images"], npz["labels"]
        classes = [str(c) for c in npz["class_names"]]
    whole = ImageSet(
        images=images,
        labels=one_hot(labels, len(classes)),
        ids=[f"{name}:{i}" for i in range(len(images))],
        class_names=classes,
    )
    queries = QUERIES.get(name, queries)
    order = np.random.default_rng(12345).permutation(len(images))
    return whole.subset(np.sort(order[queries:])), whole.subset(np.sort(order[:queries]))


def job_overrides(
    collection: str,
    probe: str,
    seed: int,
    fm_epochs: int,
    epochs: int = 0,
    common: tuple[str, ...] = (),
) -> tuple[str, list[str]]:
    extra = [f"train.seed={seed}", *PROBES[probe], *common]
    if epochs and collection != "fashion-mnist":
        extra.insert(0, f"train.epochs={epochs}")
    if collection == "fashion-mnist":
        return FM_PRESET, [f"train.epochs={fm_epochs}", *extra]
    if collection in NO_FLIPS:
        extra.insert(0, "augment.hflip_p=0")
    return SMALL_PRESET, extra


# ---------------------------------------------------------------------------- scoring
def _score(distances, query_labels, db_labels) -> dict[str, float]:
    from quantrieve.evaluate.scoring import evaluate_distances

    result = evaluate_distances(distances, query_labels, db_labels, 1000, (10,), pr_queries=1)
    return {
        "map": round(result.map_at_k, 5),
        "p10": round(result.precision_at[10], 5),
        "k": result.k,
    }


def _kmeans(x, clusters: int, seed: int, iterations: int = 15):
    """Lloyd's k-means in torch (centroids start at distinct random points)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    centroids = x[torch.randperm(len(x), generator=g)[:clusters]].clone()
    for _ in range(iterations):
        assign = torch.cdist(x, centroids).argmin(1)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=clusters).unsqueeze(1)
        centroids = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
    return centroids, torch.cdist(x, centroids).argmin(1)


def _fine_copies(f_db, codes, codebooks, seed: int) -> dict:
    """Finer stored copies of the database embeddings, as reconstructions (N, D) float32."""
    import torch

    out = {"fp16": f_db.half().float()}
    lo, hi = f_db.amin(0), f_db.amax(0)
    scale = (hi - lo).clamp_min(1e-12) / 255
    out["int8"] = ((f_db - lo) / scale).round().clamp(0, 255) * scale + lo
    books = torch.as_tensor(codebooks).float()
    picked = books[torch.arange(books.shape[0]), torch.as_tensor(codes).long()]
    coarse = picked.reshape(len(f_db), -1)
    residual = f_db - coarse
    parts = []
    for part in residual.chunk(8, dim=1):  # 8 books of 256 words: 8 bytes per item
        centroids, assign = _kmeans(part, min(256, len(part)), seed)
        parts.append(centroids[assign])
    out["rpq8"] = coarse + torch.cat(parts, dim=1)
    return out


#: Bytes per item of each finer copy, for an embedding of D dimensions.
FINE_BYTES = {"fp16": "2 D", "int8": "D (+ 2 D floats per index)", "rpq8": "8"}


def _unit(x):
    import torch

    return torch.nn.functional.normalize(x.float(), dim=-1)


def score_model(
    f_q, f_db, codes, codebooks, q_labels, db_labels, seed: int, h_q=None, h_db=None
) -> dict:
    """Every ranking variant of one model's embeddings, codes and backbone features."""
    import torch

    from quantrieve.pq import ADCScorer, lookup_tables
    from quantrieve.pq.ranking import topk_smallest

    books = torch.as_tensor(codebooks).float()
    scorer = ADCScorer(torch.as_tensor(codes), books.shape[1])

    def adc(distance: str):
        return lambda s: scorer(lookup_tables(f_q[s], books, distance))

    results = {"adc_l2": _score(adc("l2"), q_labels, db_labels)}
    results["adc_sq"] = _score(adc("sqeuclidean"), q_labels, db_labels)
    results["float"] = _score(lambda s: torch.cdist(f_q[s], f_db), q_labels, db_labels)
    fine = _fine_copies(f_db, codes, codebooks, seed)
    for kind, depth in RERANK:
        copy = fine[kind]

        def reranked(s, copy=copy, depth=depth):
            coarse = adc("l2")(s)
            _, cand = topk_smallest(coarse, depth)
            exact = (f_q[s, None, :] - copy[cand]).pow(2).sum(-1).sqrt()
            out = coarse + exact.amax(1, keepdim=True) + 1  # everything else after the R
            return out.scatter_(1, cand, exact)

        results[f"rerank_{kind}_R{depth}"] = _score(reranked, q_labels, db_labels)

    # The training distance (cosine) for the whole ranking: reconstructions, then floats.
    recon = books[torch.arange(books.shape[0]), torch.as_tensor(codes).long()].reshape(
        len(f_db), -1
    )
    # (the scorer needs distances >= 0: 1 - cosine)
    results["adc_cos"] = _score(
        lambda s: (1 - _unit(f_q[s]) @ _unit(recon).T).clamp_min(0), q_labels, db_labels
    )
    results["float_cos"] = _score(
        lambda s: (1 - _unit(f_q[s]) @ _unit(f_db).T).clamp_min(0), q_labels, db_labels
    )
    if h_q is None:
        return results
    results["backbone_l2"] = _score(lambda s: torch.cdist(h_q[s], h_db), q_labels, db_labels)
    copies = {
        "backbone_cos": (_unit(h_q), _unit(h_db).half().float()),
        "backbone_l2": (h_q, h_db.half().float()),
        "f_cos": (_unit(f_q), _unit(f_db).half().float()),
    }
    for kind, depth in (
        ("backbone_cos", 100),
        ("backbone_cos", 300),
        ("backbone_l2", 100),
        ("f_cos", 100),
    ):
        query_copy, copy = copies[kind]

        def reranked_by(s, query_copy=query_copy, copy=copy, depth=depth):
            coarse = adc("l2")(s)
            _, cand = topk_smallest(coarse, depth)
            exact = (query_copy[s, None, :] - copy[cand]).pow(2).sum(-1).sqrt()
            out = coarse + exact.amax(1, keepdim=True) + 1
            return out.scatter_(1, cand, exact)

        results[f"rerank_{kind}_R{depth}"] = _score(reranked_by, q_labels, db_labels)
    # What `quantrieve encode --refine-depth 100` and `evaluate` do: the library's refinement by
    # the unit backbone vectors (float16), which takes in the tie group straddling place R.
    from quantrieve.evaluate.scoring import evaluate_codes

    for depth in (100, 300):
        result = evaluate_codes(
            f_q,
            codebooks,
            codes,
            q_labels,
            db_labels,
            k=1000,
            precision_at=(10,),
            pr_queries=1,
            refine=(_unit(h_db).half(), depth),
            refine_queries=_unit(h_q),
        )
        results[f"index_backbone_R{depth}"] = {
            "map": round(result.map_at_k, 5),
            "p10": round(result.precision_at[10], 5),
            "k": result.k,
        }
    return results


def backbone_features(model, images: np.ndarray, batch: int = 1024):
    """The backbone's representation (before the projection head), fp32, on the CPU."""
    import torch

    from quantrieve.models.retrieval import to_float_images

    model = model.cpu().eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch]))
            x = model.normalize(to_float_images(x).contiguous())
            out.append(model.encoder.backbone(x).float())
    return torch.cat(out)


def score_retriever(retriever, train, queries, seed: int) -> tuple[dict, np.ndarray]:
    """Scores of every variant, and the database codes, of one trained retriever."""
    import torch

    model = retriever.model
    f_q = torch.as_tensor(retriever.embed(queries))
    f_db = torch.as_tensor(retriever.embed(train))
    codes = model.quantizer.encode(f_db.to(retriever.device)).cpu().numpy()
    codebooks = model.quantizer.codebooks.detach().cpu().numpy()
    h_q = backbone_features(model, np.asarray(queries.images))
    h_db = backbone_features(model, np.asarray(train.images))
    scores = score_model(f_q, f_db, codes, codebooks, queries.labels, train.labels, seed, h_q, h_db)
    return scores, codes


def tie_groups(codes: np.ndarray) -> dict:
    """Items per distinct code: how coarse the codes are for this database."""
    rows = np.ascontiguousarray(codes)
    _, counts = np.unique(rows.view(np.dtype((np.void, rows.shape[1]))), return_counts=True)
    return {
        "distinct": len(counts),
        "items": len(codes),
        "items_per_code": round(len(codes) / len(counts), 3),
        "largest_group": int(counts.max()),
        "share_in_groups_over_10": round(float(counts[counts > 10].sum() / len(codes)), 4),
    }


# ---------------------------------------------------------------------------- one job
def run_job(spec: dict) -> dict:
    import torch

    torch.set_num_threads(1)
    from quantrieve import Retriever
    from quantrieve.evaluate.code_usage import code_usage

    train, queries = load_collection(
        spec["collection"],
        Path(spec["data"]),
        Path(spec["fm_dir"]),
        spec["queries"],
        spec["fm_queries"],
    )
    preset, overrides = job_overrides(
        spec["collection"],
        spec["probe"],
        spec["seed"],
        spec["fm_epochs"],
        spec["epochs"],
        tuple(spec["set"]),
    )
    retriever = Retriever.from_preset(preset, overrides=overrides)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        retriever.fit(train, run_dir=Path(tmp) / "run")
        seconds = time.perf_counter() - start
        log = [json.loads(line) for line in (Path(tmp) / "run" / "log.jsonl").open()]
        if spec.get("keep"):
            name = f"{spec['collection']}-{spec['probe']}-{spec['seed']}"
            shutil.copytree(
                Path(tmp) / "run",
                Path(spec["keep"]) / name,
                ignore=shutil.ignore_patterns("last.pt"),
            )
    epochs = []
    for record in log:
        if record.get("kind") == "validation":
            usage = record["code_usage"]
            epochs.append(
                {
                    "epoch": record["epoch"],
                    "map": round(record["map_at_k"], 5),
                    "p10": round(record["precision_at"].get("10", float("nan")), 5),
                    "distinct_fraction": usage["distinct_fraction"],
                    "mean_perplexity": usage["mean_perplexity"],
                    "min_perplexity": usage["min_perplexity"],
                    # label-free: augmented copies finding their originals (absent before)
                    "self_r1": record.get("self_recall_at_1"),
                    "self_r10": record.get("self_recall_at_10"),
                }
            )
    model = retriever.model
    scores, codes = score_retriever(retriever, train, queries, spec["seed"])
    usage = code_usage(codes, model.config.num_codewords)
    return {
        **spec,
        "preset": preset,
        "overrides": overrides,
        "train_seconds": round(seconds, 1),
        "best_epoch": retriever.trainer.best_epoch,
        "epochs": epochs,
        "scores": scores,
        "code_usage": {
            "distinct_fraction": round(usage.distinct_fraction, 5),
            "mean_perplexity": round(usage.mean_perplexity, 3),
            "min_perplexity": round(usage.min_perplexity, 3),
        },
        "ties": tie_groups(codes),
        "device": str(retriever.device),
        "embed_dim": int(model.config.embed_dim),
    }


# ---------------------------------------------------------------------------- scheduler
def schedule(args: argparse.Namespace) -> None:
    specs = [
        {
            "collection": c,
            "probe": p,
            "seed": s,
            "data": str(args.data),
            "fm_dir": str(args.fm_dir),
            "queries": args.queries,
            "fm_queries": args.fm_queries,
            "fm_epochs": args.fm_epochs,
            "epochs": args.epochs,
            "set": args.set,
            "keep": str(args.keep) if args.keep else None,
        }
        for s in args.seeds
        for c in args.collections
        for p in args.probes
    ]
    done = set()
    if args.results.exists():
        for line in args.results.open():
            r = json.loads(line)
            done.add((r["collection"], r["probe"], r["seed"]))
    specs = [s for s in specs if (s["collection"], s["probe"], s["seed"]) not in done]
    start = time.monotonic()
    running: list[tuple[subprocess.Popen, dict, float]] = []
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    while specs or running:
        while specs and len(running) < args.jobs and time.monotonic() - start < args.deadline:
            spec = specs.pop(0)
            command = [sys.executable, __file__, "job", json.dumps(spec), str(args.results)]
            name = f"{spec['collection']}-{spec['probe']}-{spec['seed']}.log"
            with open(args.logs / name, "w") as log:
                process = subprocess.Popen(command, env=env, stdout=log, stderr=log)
            running.append((process, spec, time.monotonic()))
            print(
                f"[{time.monotonic() - start:6.0f}s] start {spec['collection']} {spec['probe']} "
                f"seed {spec['seed']}",
                flush=True,
            )
        if specs and time.monotonic() - start >= args.deadline and not running:
            break
        time.sleep(2)
        for item in list(running):
            proc, spec, began = item
            if proc.poll() is not None:
                running.remove(item)
                print(
                    f"[{time.monotonic() - start:6.0f}s] end {spec['collection']} "
                    f"{spec['probe']} seed {spec['seed']}: rc {proc.returncode}, "
                    f"{time.monotonic() - began:.0f}s",
                    flush=True,
                )
    print(f"not started: {len(specs)}", flush=True)


def job_main(spec_json: str, results: str) -> None:
    spec = json.loads(spec_json)
    record = run_job(spec)
    line = json.dumps(record) + "\n"
    with open(results, "a") as out:  # one write per line: appends stay whole
        out.write(line)


def rescore(args: argparse.Namespace) -> None:
    """Score kept runs again (``--keep``), one JSON line per run, without training."""
    import torch

    torch.set_num_threads(args.threads)
    from quantrieve import Retriever

    done = set()
    if args.results.exists():
        done = {json.loads(line)["run"] for line in args.results.open()}
    for folder in sorted(p for p in args.keep.iterdir() if (p / "model.pt").is_file()):
        if folder.name in done:
            continue
        collection, probe, seed = folder.name.rsplit("-", 2)
        train, queries = load_collection(
            collection, args.data, args.fm_dir, args.queries, args.fm_queries
        )
        retriever = Retriever.load(folder, device="cpu")
        scores, codes = score_retriever(retriever, train, queries, int(seed))
        record = {
            "run": folder.name,
            "collection": collection,
            "probe": probe,
            "seed": int(seed),
            "best_epoch": retriever.model.training_info.get("epoch"),
            "train_seconds": None,
            "scores": scores,
            "ties": tie_groups(codes),
        }
        with args.results.open("a") as out:
            out.write(json.dumps(record) + "\n")
        print(folder.name, {k: v["p10"] for k, v in scores.items()}, flush=True)


# ---------------------------------------------------------------------------- baselines
def baselines(args: argparse.Namespace) -> None:
    from quantrieve.baselines import fit_baseline

    out: dict = {}
    for name in args.collections:
        train, queries = load_collection(
            name, args.data, args.fm_dir, args.queries, args.fm_queries
        )
        db_images, q_images = np.asarray(train.images), np.asarray(queries.images)
        rows = {}
        exact = fit_baseline("exact", db_images, q_images)
        rows["exact L2 on pixels"] = [
            _score(
                lambda s, e=exact: e.distances(s).clamp_min(0).sqrt(), queries.labels, train.labels
            )
        ]
        rows["PQ on pixels, 32 bits"] = []
        for seed in args.seeds:
            pq = fit_baseline("pq", db_images, q_images, 8, 16, "sqeuclidean", seed)
            rows["PQ on pixels, 32 bits"].append(_score(pq.distances, queries.labels, train.labels))
        out[name] = rows
        print(name, rows, flush=True)
    args.out.write_text(json.dumps(out, indent=1))


# ---------------------------------------------------------------------------- report
def _mean_sd(values: list[float]) -> str:
    a = np.array(values, dtype=float)
    if len(a) == 1:
        return f"{a[0]:.3f} (1)"
    return f"{a.mean():.3f} ± {a.std(ddof=1):.3f} ({len(a)})"


def report(args: argparse.Namespace) -> None:
    records = [json.loads(line) for line in args.results.open()]
    base = json.loads(args.baselines.read_text()) if args.baselines else {}
    lines = []
    for collection in dict.fromkeys(r["collection"] for r in records):
        lines += [
            f"### {collection}",
            "",
            "| probe | ranking | mAP@1000 | P@10 | seeds |",
            "| --- | --- | --- | --- | --- |",
        ]
        for row, scores in base.get(collection, {}).items():
            lines.append(
                f"| (no training) | {row} | {_mean_sd([s['map'] for s in scores])} | "
                f"{_mean_sd([s['p10'] for s in scores])} | |"
            )
        group = [r for r in records if r["collection"] == collection]
        for probe in dict.fromkeys(r["probe"] for r in group):
            runs = [r for r in group if r["probe"] == probe]
            for variant in runs[0]["scores"]:
                maps = [r["scores"][variant]["map"] for r in runs]
                p10s = [r["scores"][variant]["p10"] for r in runs]
                seeds = ",".join(str(r["seed"]) for r in runs)
                lines.append(
                    f"| {probe} | {variant} | {_mean_sd(maps)} | {_mean_sd(p10s)} | {seeds} |"
                )
        lines += [
            "",
            "| probe | distinct codes / items | items per code | largest tie group | "
            "best epoch | train s |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for probe in dict.fromkeys(r["probe"] for r in group):
            runs = [r for r in group if r["probe"] == probe]
            distinct = ", ".join(f"{r['ties']['distinct']}/{r['ties']['items']}" for r in runs)
            seconds = [r["train_seconds"] for r in runs if r.get("train_seconds")]
            lines.append(
                f"| {probe} | {distinct}"
                f" | {_mean_sd([r['ties']['items_per_code'] for r in runs])}"
                f" | {', '.join(str(r['ties']['largest_group']) for r in runs)}"
                f" | {', '.join(str(r['best_epoch']) for r in runs)}"
                f" | {_mean_sd(seconds) if seconds else '-'} |"
            )
        lines.append("")
    text = "\n".join(lines)
    if args.out:
        args.out.write_text(text)
    print(text)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "job":
        job_main(sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "baselines", "rescore"):
        p = sub.add_parser(name)
        p.add_argument("--data", type=Path, default=Path(".probe/data"))
        p.add_argument("--fm-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
        p.add_argument(
            "--collections",
            type=lambda s: s.split(","),
            default=["glyphs", "textures", "fashion-mnist"],
        )
        p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
        p.add_argument("--queries", type=int, default=600)
        p.add_argument("--fm-queries", type=int, default=2000)
    run = sub.choices["run"]
    run.add_argument("--probes", type=lambda s: s.split(","), default=list(PROBES))
    run.add_argument("--fm-epochs", type=int, default=6)
    run.add_argument("--epochs", type=int, default=0, help="other collections (0: preset's)")
    run.add_argument("--set", action="append", default=[], help="override for every job")
    run.add_argument("--jobs", type=int, default=8)
    run.add_argument("--deadline", type=float, default=1e9, help="seconds; no job starts later")
    run.add_argument("--results", type=Path, required=True)
    run.add_argument("--logs", type=Path, default=Path(tempfile.gettempdir()))
    run.add_argument("--keep", type=Path, help="keep every job's run folder here")
    sub.choices["baselines"].add_argument("--out", type=Path, required=True)
    again = sub.choices["rescore"]
    again.add_argument("--keep", type=Path, required=True, help="the folder run --keep filled")
    again.add_argument("--results", type=Path, required=True)
    again.add_argument("--threads", type=int, default=1)
    rep = sub.add_parser("report")
    rep.add_argument("results", type=Path)
    rep.add_argument("--baselines", type=Path)
    rep.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.command == "run":
        args.logs.mkdir(parents=True, exist_ok=True)
        schedule(args)
    elif args.command == "baselines":
        baselines(args)
    elif args.command == "rescore":
        rescore(args)
    else:
        report(args)


if __name__ == "__main__":
    main()
