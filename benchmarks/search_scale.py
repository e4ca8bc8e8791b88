"""Search at scale: quantrieve's exact ADC against faiss IndexPQ, IndexPQFastScan and IVF.

Synthetic databases of N codes with a trained model's codebooks (M books of K codewords): by
default the codes of a real index (``--like INDEX_DIR``, encoded by that model) resampled with
two of the M codewords of every item redrawn at random, so the database keeps the clusters of
real data (uniform random codes, ``--like`` omitted, have none, and no inverted file helps on
them); queries near the data (decoded items plus Gaussian noise). Per method:
build seconds, memory of the codes structure, single-query latency (median of one-by-one
queries), throughput of a batch of queries (median of ``--rounds`` batches; the exhaustive
methods take turns round by round), and recall@10 / @100 against exhaustive ADC
(quantrieve's ``sqeuclidean`` search, the ground truth). All distances are squared-L2 ADC.
Memory is what each structure holds for N items: quantrieve's uint8 codes (one byte per book)
plus its gather keys (one byte per pair of books), faiss's packed 4-bit codes, and the IVF
estimate of :func:`quantrieve.index.ivf.estimate_memory`.

    python benchmarks/search_scale.py --model runs/digits/flips-on/model.pt \
        --sizes 1000000,10000000 --json benchmarks/results/search_scale.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import torch
from record import write_record

from quantrieve.index import PQIndex
from quantrieve.index.faiss_export import to_faiss
from quantrieve.index.ivf import build_ivf, estimate_memory, search_ivf
from quantrieve.models.retrieval import RetrievalModel
from quantrieve.pq.adc import CodeSearcher


@dataclass
class CodesOnly:
    """Codebooks and codes: all the faiss builders read of an index (N item ids as strings
    would cost more memory than the codes at 10M items)."""

    codebooks: np.ndarray
    codes: np.ndarray

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def num_books(self) -> int:
        return self.codebooks.shape[0]


class ExactADC:
    """quantrieve's exhaustive search as a service runs it: a :class:`CodeSearcher` whose
    per-codes state is built once (timed as the build); top-100 by squared-L2 ADC, ties by
    index."""

    def __init__(self, codebooks: torch.Tensor, codes: torch.Tensor) -> None:
        self.searcher = CodeSearcher(codebooks, codes).prepare()
        self.nbytes = codes.numel() + self.searcher.nbytes()

    def __call__(self, queries: np.ndarray, k: int = 100) -> tuple[np.ndarray, np.ndarray]:
        dist, idx = self.searcher.search(torch.from_numpy(queries), k, "sqeuclidean")
        return dist.numpy(), idx.numpy()


def faiss_bytes(index: faiss.Index) -> int:
    """Bytes of a faiss PQ index's codes (4-bit codes packed two per byte)."""
    if isinstance(index, faiss.IndexPQFastScan):
        return int(index.codes.size())  # blocked layout, padded to whole blocks
    return int(index.code_size * index.ntotal)


def recall(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    return float(
        np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(found, truth, strict=True)])
    )


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--like", type=Path, help="index directory whose codes are resampled")
    parser.add_argument("--sizes", default="1000000,10000000")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--single", type=int, default=50, help="one-by-one queries timed")
    parser.add_argument("--rounds", type=int, default=3, help="timed batches per method")
    parser.add_argument("--nprobe", default="1,4,16,64")
    parser.add_argument(
        "--nlist-factor", type=float, default=1.0, help="IVF lists = factor * sqrt(N)"
    )
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    faiss.cvar.distance_compute_blas_threshold = 20
    codebooks = RetrievalModel.load(args.model).quantizer.codebooks.detach().numpy()
    m, k, d = codebooks.shape
    rng = np.random.default_rng(0)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        if args.like is not None:
            real = np.asarray(PQIndex.load(args.like).codes)
            codes = real[rng.integers(0, len(real), n)]
            for _ in range(2):
                book = rng.integers(0, m, n)
                codes[np.arange(n), book] = rng.integers(0, k, n, dtype=np.uint8)
        else:
            codes = rng.integers(0, k, (n, m), dtype=np.uint8)
        index = CodesOnly(codebooks, codes)
        pick = rng.integers(0, n, args.queries)
        books = np.arange(m)
        queries = codebooks[books, codes[pick].astype(np.int64)].reshape(args.queries, -1)
        queries = (queries + rng.normal(0, 0.3, queries.shape)).astype(np.float32)
        base = {"items": n, "M": m, "K": k, "queries": args.queries}
        # The exhaustive methods are timed in rounds, each method in turn per round (its single
        # queries, then its batch), so a slower or faster spell of this shared machine falls on
        # all of them; not query by query, as faiss's and torch's OpenMP threads each spin for a
        # while after their work and would slow the other's next call.
        ours, build_ours = timed(ExactADC, torch.from_numpy(codebooks), torch.from_numpy(codes))
        (_, truth), _ = timed(ours, queries)
        exact = {"quantrieve ADC (exact)": (ours, build_ours, ours.nbytes)}
        for name, fast in (("faiss IndexPQ", False), ("faiss IndexPQFastScan", True)):
            built, build_s = timed(to_faiss, index, fast)
            exact[name] = (lambda q, b=built: b.search(q, 100), build_s, faiss_bytes(built))
        single: dict[str, list[float]] = {name: [] for name in exact}
        batch: dict[str, list[float]] = {name: [] for name in exact}
        found = {}
        for _ in range(args.rounds):
            for name, (search, _, _) in exact.items():
                search(queries[:1])  # warm-up after the other method
                single[name] += [timed(search, queries[i : i + 1])[1] for i in range(args.single)]
                (_, found[name]), seconds = timed(search, queries)
                batch[name].append(seconds)
        for name, (_, build_s, nbytes) in exact.items():
            rows.append(
                {
                    **base,
                    "method": name,
                    "build_s": build_s,
                    "memory_mb": nbytes / 1e6,
                    "single_query_ms": 1e3 * float(np.median(single[name])),
                    "queries_per_s": args.queries / float(np.median(batch[name])),
                    "batch_s_rounds": batch[name],
                    "recall@10": recall(found[name], truth, 10),
                    "recall@100": recall(found[name], truth, 100),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
        del exact, built
        nlist = int(args.nlist_factor * np.sqrt(n))
        ivf, build_s = timed(build_ivf, index, nlist)
        memory = estimate_memory(n, m, int(np.log2(k)), m * d, nlist).total / 1e6
        for nprobe in (int(p) for p in args.nprobe.split(",")):
            (_, found), batch_s = timed(search_ivf, ivf, queries, 100, nprobe)
            single = [
                timed(search_ivf, ivf, queries[i : i + 1], 100, nprobe)[1]
                for i in range(args.single)
            ]
            rows.append(
                {
                    **base,
                    "method": f"faiss IVF{nlist},PQ nprobe={nprobe}",
                    "build_s": build_s,
                    "memory_mb": memory,
                    "single_query_ms": 1e3 * float(np.median(single)),
                    "queries_per_s": args.queries / batch_s,
                    "recall@10": recall(found, truth, 10),
                    "recall@100": recall(found, truth, 100),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
        del ivf, codes, index
    write_record(
        args.json,
        rows,
        codes="resampled from " + str(args.like) if args.like else "uniform random",
        faiss_threads=faiss.omp_get_max_threads(),
    )


if __name__ == "__main__":
    main()
