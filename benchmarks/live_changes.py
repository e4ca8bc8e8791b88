"""What a live change costs as an index grows: add 1 and 100 items to indexes of 60k, 1M and
10M items (latency, memory, files, restart time), and the files left by many single adds.

    python benchmarks/live_changes.py --sizes 60000,1000000,10000000 --single-adds 1000 \
        --json benchmarks/results/live_changes/live_changes.json

Indexes are synthetic (8 books of 16 codewords, random codes, 28x28 one-channel pixels kept per
added item, content fingerprints, no labels, no refinement). Each size is written once as a base
index; then one writer appends 1 item (five times; the median is reported) and 100 items, the
way the service and ``quantrieve add`` do, and the index is opened again from disk (restart).
``--single-adds`` single appends are then made to the smallest index, with and without the merge
policy, and its segment files counted. ``add_1_with_search_state_ms`` is what a running service
pays for one add (the new version and its search state, carried over from the version before),
``search_state_rebuilt_ms`` what building that state from scratch costs (medians of 5). Memory
is the process's peak resident set after each size (``ru_maxrss``), so it only grows.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from quantrieve.index.live import open_live
from quantrieve.index.pq_index import PQIndex
from quantrieve.index.segment_files import NewItems
from quantrieve.index.writer import IndexWriter

M, K, D = 8, 16, 4


def items(n: int, seed: int) -> NewItems:
    rng = np.random.default_rng(seed)
    return NewItems(
        codes=rng.integers(0, K, (n, M)).astype(np.uint8),
        pixels=rng.integers(0, 255, (n, 28, 28, 1)).astype(np.uint8),
        raw=[b"x" * 2000] * n,
        names=[f"new{i}.png" for i in range(n)],
        content=rng.integers(0, 2**63, n).astype(np.uint64),
    )


def base_index(path: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    index = PQIndex(
        codebooks=rng.normal(size=(M, K, D)).astype(np.float32),
        codes=rng.integers(0, K, (n, M)).astype(np.uint8),
        ids=[f"img{i:08d}.jpg" for i in range(n)],
        content=rng.integers(0, 2**63, n).astype(np.uint64),
    )
    index.save(path)


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(path: Path, n: int) -> dict:
    start = time.perf_counter()
    base_index(path, n)
    build = time.perf_counter() - start
    start = time.perf_counter()
    live = open_live(path)
    first_open = time.perf_counter() - start
    singles = []
    with IndexWriter(path) as writer:
        for i in range(5):
            start = time.perf_counter()
            live = writer.append(live, items(1, i))
            singles.append(time.perf_counter() - start)
        start = time.perf_counter()
        live = writer.append(live, items(100, 99))
        hundred = time.perf_counter() - start
        start = time.perf_counter()
        live = writer.delete(live, [int(live.keys[0])])
        delete = time.perf_counter() - start
        # What a running service pays per add: the version and its search state, which is
        # carried over from the version before (``rebuilt``: built from scratch instead).
        live.index.searcher().prepare()
        serving, rebuilt = [], []
        for i in range(5):
            start = time.perf_counter()
            live = writer.append(live, items(1, 10 + i))
            live.index.searcher().prepare()
            serving.append(time.perf_counter() - start)
        for _ in range(5):
            start = time.perf_counter()
            live.index.__dict__.pop("_searcher")
            live.index.searcher().prepare()
            rebuilt.append(time.perf_counter() - start)
    start = time.perf_counter()
    reopened = open_live(path)
    restart = time.perf_counter() - start
    return {
        "items": n,
        "write_base_s": round(build, 2),
        "open_s": round(first_open, 3),
        "add_1_ms": round(1000 * statistics.median(singles), 1),
        "add_100_ms": round(1000 * hundred, 1),
        "delete_1_ms": round(1000 * delete, 1),
        "add_1_with_search_state_ms": round(1000 * statistics.median(serving), 1),
        "search_state_rebuilt_ms": round(1000 * statistics.median(rebuilt), 1),
        "restart_s": round(restart, 3),
        "segment_files": len(list((path / "segments").glob("seg-*.npz"))),
        "items_after": len(reopened),
        "peak_rss_mb": round(peak_mb()),
    }


def single_adds(path: Path, adds: int, merge_factor: int) -> dict:
    base_index(path, 1000)
    live = open_live(path)
    start = time.perf_counter()
    with IndexWriter(path, merge_factor=merge_factor) as writer:
        for i in range(adds):
            live = writer.append(live, items(1, i))
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    open_live(path)
    return {
        "adds": adds,
        "merge_factor": merge_factor,
        "segment_files": len(list((path / "segments").glob("seg-*.npz"))),
        "mean_add_ms": round(1000 * seconds / adds, 2),
        "restart_s": round(time.perf_counter() - start, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="60000,1000000,10000000")
    parser.add_argument("--single-adds", type=int, default=1000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    record: dict = {
        "command": f"python benchmarks/live_changes.py --sizes {args.sizes} "
        f"--single-adds {args.single_adds}",
        "sizes": [],
        "single_adds": [],
    }
    scratch = Path(tempfile.mkdtemp(prefix="live-changes-"))
    try:
        for factor in (10, 0):
            row = single_adds(scratch / f"small-{factor}", args.single_adds, factor)
            record["single_adds"].append(row)
            print(row, flush=True)
        for n in [int(s) for s in args.sizes.split(",")]:
            row = measure(scratch / f"n{n}", n)
            record["sizes"].append(row)
            print(row, flush=True)
            shutil.rmtree(scratch / f"n{n}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
