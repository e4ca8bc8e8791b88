"""Filtered exact search: only the items a filter keeps (labels, an id prefix), at 1M and 10M.

The codes, codebooks and queries of ``benchmarks/fastscan.py`` (M = 8, K = 16, clustered
codes). A filter keeps a random ``share`` of the items (a label spread over the collection).
Per size and share, the time per query for one query at a time (median over ``--singles``)
and for a batch of ``--batch`` queries, by:

- ``masked``: every item scored by the exact gather, the others set to infinity, then the
  top-k (what a caller without filter support would do);
- ``subset``: the gather over the kept rows alone (its columns built once);
- ``scan``: the certified 4-bit scan with the other items dropped from its candidates;
- ``auto``: what :meth:`CodeSearcher.search` picks (``FILTER_SCAN_MIN_FRACTION``) with a
  :class:`RowFilter` built once (a repeated filter: the service, :meth:`PQIndex.filter_rows`);
- ``auto_new``: the same with the filter's state built for every search (a new filter).

Every method's items and distances are checked identical to ``masked``. Run it alone on the
machine (other processes make both timings noisy):

    python benchmarks/filtered_search.py --sizes 1000000,10000000 --threads 1 \
        --json benchmarks/results/fastscan/filtered.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from fastscan import make_data
from record import write_record

from quantrieve.pq import adc as adc_module
from quantrieve.pq.adc import CodeSearcher, GatherADC, lookup_tables
from quantrieve.pq.ranking import query_chunks, topk_smallest


def _per_query_ms(search: Any, queries: torch.Tensor, singles: int) -> tuple[float, float]:
    search(queries[:1])  # warm
    one = []
    for q in queries[:singles]:
        start = time.perf_counter()
        search(q[None])
        one.append(time.perf_counter() - start)
    many = queries[singles:]
    start = time.perf_counter()
    search(many)
    return 1e3 * statistics.median(one), 1e3 * (time.perf_counter() - start) / len(many)


@dataclass
class Filtered:
    """One database and one filter: the four ways to search it."""

    books: torch.Tensor
    codes: torch.Tensor
    kept: torch.Tensor
    k: int
    searcher: CodeSearcher

    def __post_init__(self) -> None:
        self.allowed = torch.zeros(len(self.codes), dtype=torch.bool)
        self.allowed[self.kept] = True
        self.gather = self.searcher._gatherer()
        self.part = GatherADC(self.codes.index_select(0, self.kept), 16)
        self.filter = self.searcher.row_filter(self.kept)

    def tables(self, x: torch.Tensor) -> torch.Tensor:
        return lookup_tables(x, self.books, "sqeuclidean")

    def masked(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = []
        for chunk in query_chunks(len(x), len(self.codes), 2**26):
            dist = self.gather(self.tables(x[chunk])).masked_fill(~self.allowed, torch.inf)
            out.append(topk_smallest(dist, self.k))
        return torch.cat([d for d, _ in out]), torch.cat([i for _, i in out])

    def subset(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d, cols = topk_smallest(self.part(self.tables(x)), self.k)
        return d, self.kept[cols]

    def scan(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fast = self.searcher._fastscan()
        tables = self.tables(x)
        found = fast.search(
            tables, self.k, self.gather.rows, self.gather, self.allowed, len(self.kept)
        )
        return found.distances, found.indices

    def auto(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.searcher.search(x, self.k, "sqeuclidean", self.filter)

    def auto_new(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.searcher.search(x, self.k, "sqeuclidean", self.kept)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000000,10000000")
    parser.add_argument("--shares", default="0.001,0.01,0.05,0.2,0.5")
    parser.add_argument("--singles", type=int, default=20)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--centres", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    for n in (int(s) for s in args.sizes.split(",")):
        codebooks, codes, queries = make_data(n, args.batch + args.singles, args.centres, args.seed)
        books, codes_t = torch.from_numpy(codebooks), torch.from_numpy(codes)
        q = torch.from_numpy(queries)
        searcher = CodeSearcher(books, codes_t).prepare()
        for share in (float(s) for s in args.shares.split(",")):
            g = torch.Generator().manual_seed(args.seed)
            kept = (torch.rand(n, generator=g) < share).nonzero().squeeze(1)
            ways = Filtered(books, codes_t, kept, args.k, searcher)
            reference = ways.masked(q)
            row: dict[str, Any] = {"items": n, "share": share, "kept": len(kept), "k": args.k}
            for name in ("masked", "subset", "scan", "auto", "auto_new"):
                fn = getattr(ways, name)
                d, i = fn(q)
                if not (torch.equal(i, reference[1]) and torch.equal(d, reference[0])):
                    raise SystemExit(f"{name} differs from the masked exact search ({n}, {share})")
                one, batch = _per_query_ms(fn, q, args.singles)
                row[f"{name}_one_ms"] = round(one, 3)
                row[f"{name}_batch_ms"] = round(batch, 3)
            print(row, flush=True)
            rows.append(row)
    write_record(
        args.json,
        rows,
        filter_scan_min_fraction=adc_module.FILTER_SCAN_MIN_FRACTION,
        identical=True,
    )


if __name__ == "__main__":
    main()
