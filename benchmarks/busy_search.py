"""One query's exact ADC search over 4M random 32-bit codes, timed five times: run it with and
without another process busy on the cores, and with ``OMP_WAIT_POLICY`` unset, ``ACTIVE`` or
``PASSIVE``, to see what spinning OpenMP threads cost a search on a busy machine.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/busy_search.py --threads 2
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from quantrieve.index.pq_index import PQIndex


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--items", type=int, default=4_000_000)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    books = rng.normal(size=(8, 16, 16)).astype(np.float32)
    codes = rng.integers(0, 16, (args.items, 8), dtype=np.uint8)
    index = PQIndex(books, codes, [""] * args.items)
    index.searcher().prepare()
    query = torch.from_numpy(rng.normal(size=(1, 128)).astype(np.float32))
    index.search(query, 10)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        index.search(query, 10)
        times.append(round((time.perf_counter() - start) * 1e3))
    policy = os.environ.get("OMP_WAIT_POLICY", "unset")
    print(f"threads {args.threads}, OMP_WAIT_POLICY {policy}: ms per search {times}")


if __name__ == "__main__":
    main()
