"""Exact search at FastScan speed: quantrieve's exact ADC, the certified 4-bit scan
(:mod:`quantrieve.pq.fastscan`), faiss IndexPQ and IndexPQFastScan, in one run.

Synthetic 4-bit codes (M = 8 books of K = 16 codewords, 32 bits) with random Gaussian
codebooks: ``--centres`` random codes, each item one of them with two books redrawn at random
(clusters, like real data), queries near items (decoded plus noise). Per size: single-query
latency (median over ``--singles`` queries one by one) and the time per query of one batch of
``--batch`` queries (``--big-batch`` from 5M items on), for each method; the certified scan's
scans per query (rounds) and the queries it scored exhaustively; the memory each structure
holds; faiss FastScan's recall@10 against the exact top-10. The certified scan's results are
checked identical to the exact search's (items and distances). Distance ``sqeuclidean`` for
every method (faiss's); ``--distance l2`` adds the certified scan with quantrieve's ``l2``.

    python benchmarks/fastscan.py --sizes 1000000,10000000 \
        --json benchmarks/results/fastscan/fastscan.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
from record import write_record

from quantrieve.pq import adc as adc_module
from quantrieve.pq.adc import CodeSearcher, lookup_tables

M, K, D = 8, 16, 8


def make_data(n: int, num_queries: int, centres: int, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    codebooks = rng.standard_normal((M, K, D)).astype(np.float32)
    centre_codes = rng.integers(0, K, (centres, M), dtype=np.uint8)
    codes = centre_codes[rng.integers(0, centres, n)]
    for _ in range(2):
        book = rng.integers(0, M, n)
        codes[np.arange(n), book] = rng.integers(0, K, n, dtype=np.uint8)
    picks = codes[rng.integers(0, n, num_queries)]
    queries = codebooks[np.arange(M), picks].reshape(num_queries, M * D)
    queries = queries + 0.5 * rng.standard_normal(queries.shape).astype(np.float32)
    return codebooks, np.ascontiguousarray(codes), queries.astype(np.float32)


def faiss_indexes(codebooks: np.ndarray, codes: np.ndarray) -> tuple[Any, Any]:
    """faiss IndexPQ holding these very codes and codebooks, and its FastScan copy."""
    pq_index = faiss.IndexPQ(M * D, M, 4)
    faiss.copy_array_to_vector(codebooks.ravel(), pq_index.pq.centroids)
    pq_index.is_trained = True
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)
    faiss.copy_array_to_vector(packed.ravel(), pq_index.codes)
    pq_index.ntotal = len(codes)
    return pq_index, faiss.IndexPQFastScan(pq_index)


def timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def search_all(search: Any, queries: torch.Tensor, singles: int) -> tuple[float, float]:
    """Median single-query ms over the first ``singles`` queries, and batch ms per query over
    the rest."""
    search(queries[:1])  # warm
    one = [timed(lambda q=q: search(q[None])) for q in queries[:singles]]
    many = queries[singles:]
    return 1e3 * statistics.median(one), 1e3 * timed(lambda: search(many)) / len(many)


def measure(n: int, args: argparse.Namespace) -> dict[str, Any]:
    """One database size: every method's latencies, the scan's rounds, memory, build times."""
    batch = args.batch if n < 5_000_000 else args.big_batch
    codebooks, codes, queries = make_data(n, batch + args.singles, args.centres, args.seed)
    cb, co, qs = torch.from_numpy(codebooks), torch.from_numpy(codes), torch.from_numpy(queries)
    exact = CodeSearcher(cb, co, fastscan=False)
    fast = CodeSearcher(cb, co)
    build = {"exact": timed(exact.prepare), "certified": timed(fast.prepare)}
    start = time.perf_counter()
    pq_index, fs_index = faiss_indexes(codebooks, codes)
    build["faiss_pq_and_fastscan"] = time.perf_counter() - start
    methods = {
        "exact": lambda q: exact.search(q, args.k, args.distance),
        "certified": lambda q: fast.search(q, args.k, args.distance),
    }
    if args.distance == "sqeuclidean":
        methods["faiss_pq"] = lambda q: pq_index.search(q.numpy(), args.k)
        methods["faiss_fastscan"] = lambda q: fs_index.search(q.numpy(), args.k)
    row: dict[str, Any] = {"items": n, "k": args.k, "batch": batch}
    for name, search in methods.items():
        single, per_query = search_all(search, qs, args.singles)
        row[f"{name}_single_ms"] = single
        row[f"{name}_batch_ms_per_query"] = per_query
        print(f"N={n:>10,} {name:>15}: single {single:8.2f} ms, batch {per_query:8.2f} ms/query")
    want = exact.search(qs, args.k, args.distance)
    got = fast.search(qs, args.k, args.distance)
    row["identical"] = bool(torch.equal(want[0], got[0]) and torch.equal(want[1], got[1]))
    gather = fast._gatherer()
    stats = fast._fastscan().search(
        lookup_tables(qs, cb, args.distance), args.k, gather.rows, gather
    )
    row["rounds_mean"] = float(stats.rounds.double().mean())
    row["rounds_max"] = int(stats.rounds.max())
    row["exhaustive_queries"] = int(stats.exhaustive.sum())
    _, fs_ids = fs_index.search(queries, args.k)
    exact_ids = want[1].numpy()
    hits = [len(set(a) & set(b)) for a, b in zip(fs_ids.tolist(), exact_ids.tolist(), strict=True)]
    row["faiss_fastscan_recall_at_k_vs_exact"] = sum(hits) / exact_ids.size
    row["memory_bytes"] = {
        "codes": codes.nbytes,
        "exact_state": exact.nbytes(),
        "certified_state": fast.nbytes(),
        "faiss_pq": pq_index.codes.size(),
        "faiss_fastscan": fs_index.codes.size(),
    }
    row["build_s"] = build
    print(
        f"  rounds mean {row['rounds_mean']:.2f} max {row['rounds_max']}, identical "
        f"{row['identical']}, exhaustive {row['exhaustive_queries']}"
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000000,10000000")
    parser.add_argument("--singles", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--big-batch", type=int, default=100)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--centres", type=int, default=20000)
    parser.add_argument("--distance", default="sqeuclidean")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    faiss.omp_set_num_threads(torch.get_num_threads())
    adc_module.FASTSCAN_MIN_ITEMS = 0  # measure the scan at every size (the crossover)
    rows = [measure(int(s), args) for s in args.sizes.split(",")]
    if args.json:
        threads = faiss.omp_get_max_threads()
        write_record(args.json, rows, distance=args.distance, faiss_threads=threads)


if __name__ == "__main__":
    main()
