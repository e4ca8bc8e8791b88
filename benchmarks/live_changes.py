"""What a live change costs as an index grows: add and delete 1 and 100 items in indexes of 60k,
1M and 10M items (latency, memory, files, restart time), and the files left by many single adds.

    python benchmarks/live_changes.py --sizes 60000,1000000,10000000 --single-adds 1000 \
        --repeats 30 --json benchmarks/results/live_changes/live_changes.json

Indexes are synthetic (8 books of 16 codewords, random codes, 28x28 one-channel pixels kept per
added item, content fingerprints, no labels, no refinement). Each size is written once as a base
index and opened; one writer then makes, the way the service and ``quantrieve add`` / ``sync``
do:

- ``first_add_ms``: the first add after opening (it copies each column once into a column with
  room to grow: :mod:`quantrieve.index.columns`);
- ``add_1``: ``--repeats`` single adds (median and max; merges of small segments included),
  then one add of 100 items;
- ``add_1_with_search_state``: what a running service pays per add, the new version and its
  search state carried over from the version before (``search_state_rebuilt_ms``: that state
  built from scratch, median of 5);
- ``delete_1``: ``--repeats`` single deletes, then one of 100 items: they hide rows, searched
  past (``search_1_query_with_hidden_ms``, one query, k = 10, median of 20), until
  ``drop_hidden_ms``: dropping the hidden rows (what a delete does once more than 1/8 of the
  rows are hidden);
- ``restart_s``: the index opened again from disk; ``segment_files`` left.

``--single-adds`` single appends are then made to a 1,000-item index, with and without the
merge policy, and its segment files counted. Memory is the process's peak resident set after
each size (``ru_maxrss``), so it only grows.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def _timed(step: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = step(*args)
    return out, time.perf_counter() - start


def _ms(seconds: list[float]) -> dict:
    return {
        "median_ms": round(1000 * statistics.median(seconds), 2),
        "max_ms": round(1000 * max(seconds), 1),
    }


def measure(path: Path, n: int, adds: int) -> dict:
    start = time.perf_counter()
    base_index(path, n)
    build = time.perf_counter() - start
    live, first_open = _timed(open_live, path)
    query = np.random.default_rng(7).normal(size=(1, M * D)).astype(np.float32)
    with IndexWriter(path) as writer:
        # the first add after opening copies each column once into one with room to grow
        live, first = _timed(writer.append, live, items(1, 0))
        singles = []
        for i in range(adds):  # merges included (every tenth add merges ten segments)
            live, seconds = _timed(writer.append, live, items(1, 1 + i))
            singles.append(seconds)
        live, hundred = _timed(writer.append, live, items(100, 99))
        # What a running service pays per add: the version and its search state, which is
        # carried over from the version before (``rebuilt``: built from scratch instead).
        live.index.searcher().prepare()
        serving, rebuilt = [], []
        for i in range(adds):
            start = time.perf_counter()
            live = writer.append(live, items(1, 1000 + i))
            live.index.searcher().prepare()
            serving.append(time.perf_counter() - start)
        for _ in range(5):
            start = time.perf_counter()
            live.index.__dict__.pop("_searcher")
            live.index.searcher().prepare()
            rebuilt.append(time.perf_counter() - start)
        # deletes hide rows (the search state is kept); one is timed with the search state
        deletes = []
        for i in range(adds):
            live, seconds = _timed(writer.delete, live, [int(live.keys[10 * i])])
            deletes.append(seconds)
        gone = [int(k) for k in live.keys[10 * adds + 1 : 10 * adds + 201 : 2]]
        live, hundred_deletes = _timed(writer.delete, live, gone)
        searches = [_timed(live.index.search, query, 10)[1] for _ in range(20)]
        hidden = live.index.num_hidden
        live, dropped = _timed(writer.delete, live, [int(live.keys[-1])], True)
        live.index.searcher().prepare()
        after_drop = [_timed(live.index.search, query, 10)[1] for _ in range(20)]
    reopened, restart = _timed(open_live, path)
    return {
        "items": n,
        "write_base_s": round(build, 2),
        "open_s": round(first_open, 3),
        "first_add_ms": round(1000 * first, 1),
        "add_1": _ms(singles),
        "add_100_ms": round(1000 * hundred, 1),
        "add_1_with_search_state": _ms(serving),
        "search_state_rebuilt_ms": round(1000 * statistics.median(rebuilt), 1),
        "delete_1": _ms(deletes),
        "delete_100_ms": round(1000 * hundred_deletes, 1),
        "hidden_rows": hidden,
        "search_1_query_with_hidden_ms": round(1000 * statistics.median(searches), 2),
        "drop_hidden_ms": round(1000 * dropped, 1),
        "search_1_query_after_drop_ms": round(1000 * statistics.median(after_drop), 2),
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
    parser.add_argument("--repeats", type=int, default=30, help="timed single adds and deletes")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    record: dict = {
        "command": f"python benchmarks/live_changes.py --sizes {args.sizes} "
        f"--single-adds {args.single_adds} --repeats {args.repeats}",
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
            row = measure(scratch / f"n{n}", n, args.repeats)
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
