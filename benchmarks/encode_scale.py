"""Encoding throughput and peak memory of `quantrieve encode` on image folders of growing size.

For each size N, a folder of N generated 28x28 grayscale PNGs (10 class folders) is written
once, then `quantrieve encode` runs as a child process with a model of the
`fashion-mnist-cpu` architecture (untrained weights: encoding cost does not depend on them)
twice: first with a cold decode cache (decode + embed + encode), then again into a new index
with the cache warm (embed + encode only). Reported per run: wall seconds, images per second,
and the child's peak resident memory (ru_maxrss). Memory must stay flat as N grows: images are
read from the memory-mapped decode cache chunk by chunk and only the codes are held.

    python benchmarks/encode_scale.py --sizes 25000,50000,100000 --work /tmp/encode-scale \
        --json benchmarks/results/encode_scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from quantrieve.config import load_config
from quantrieve.models.retrieval import RetrievalModel


def write_folder(folder: Path, count: int, seed: int = 0) -> None:
    """``count`` 28x28 grayscale PNGs in 10 class folders (a bar whose row is the class)."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        label = i % 10
        image = rng.integers(0, 60, (28, 28), dtype=np.uint8)
        image[2 + 2 * label : 4 + 2 * label] = 220
        target = folder / str(label) / f"{i:07d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, "L").save(target)


def encode(model: Path, folder: Path, out: Path, cache: Path) -> dict:
    """One `quantrieve encode` child process: wall time and peak RSS."""
    env = {**os.environ, "QUANTRIEVE_CACHE_DIR": str(cache)}
    command = [
        sys.executable,
        "-m",
        "quantrieve",
        "encode",
        str(model),
        "--dataset",
        "image-folder",
        "--data-dir",
        str(folder),
        "--part",
        "all",
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    start = time.perf_counter()
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)  # this child's own peak, not a running maximum
    seconds = time.perf_counter() - start
    if status != 0:
        raise RuntimeError(f"encode failed: {child.stderr.read().decode() if child.stderr else ''}")
    return {"seconds": seconds, "peak_rss_mib": usage.ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="25000,50000,100000")
    parser.add_argument("--work", type=Path, default=Path("/tmp/encode-scale"))
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    config = load_config("fashion-mnist-cpu")
    torch.manual_seed(0)
    model_file = args.work / "model.pt"
    RetrievalModel(config.model, 28, 1, [0.2], [0.3]).save(model_file)
    rows = []
    for size in sorted(int(s) for s in args.sizes.split(",")):
        folder = args.work / f"images-{size}"
        if not folder.exists():
            write_folder(folder, size)
        cache = args.work / f"cache-{size}"
        shutil.rmtree(cache, ignore_errors=True)
        for kind in ("cold", "warm"):
            out = args.work / f"index-{size}-{kind}"
            shutil.rmtree(out, ignore_errors=True)
            run = encode(model_file, folder, out, cache)
            rows.append(
                {"images": size, "cache": kind, **run, "images_per_second": size / run["seconds"]}
            )
            print(json.dumps(rows[-1]), flush=True)
    record = {
        "command": " ".join(["python", *sys.argv]),
        "torch_threads": torch.get_num_threads(),
        "note": "peak_rss_mib: the encode process's own ru_maxrss (os.wait4)",
        "rows": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
