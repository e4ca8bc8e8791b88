"""Decoding speed of an image folder: cold and warm, 1 and 2 workers, and the time to pick up
new files in a large folder (the decode cache rebuilds incrementally).

    python benchmarks/decode_speed.py --folder /tmp/decode-photos --files 100000 \
        --sample 5000 --json benchmarks/results/decode/decode_speed.json

The folder is generated (JPEG photos-like images: smooth colour gradients, shapes and noise,
``--width`` x ``--height``, quality 85) unless it already holds the requested files. Each timing
uses a fresh cache folder; "warm" reads a folder whose cache entry is up to date (the files are
only stat-ed). Times are wall-clock on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from quantrieve.data.folder import read_image_folder


def make_photo(path: Path, seed: int, width: int, height: int) -> None:
    """A JPEG with a colour gradient, a few shapes and sensor-like noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    start, end = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = (x / width * rng.uniform(0.2, 1) + y / height * rng.uniform(0.2, 1))[..., None] / 2
    pixels = start * (1 - t) + end * t + rng.normal(0, 6, (height, width, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x0, y0 = int(rng.integers(0, width - 8)), int(rng.integers(0, height - 8))
        x1, y1 = x0 + int(rng.integers(8, width // 2)), y0 + int(rng.integers(8, height // 2))
        draw.ellipse((x0, y0, x1, y1), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    image.save(path, quality=85)


def make_folder(folder: Path, count: int, width: int, height: int, first: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(first, first + count):
        path = folder / f"{i // 1000:03d}" / f"img{i:07d}.jpg"
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            make_photo(path, i, width, height)
        paths.append(path)
    return paths


def timed_read(folder: Path, cache: Path, workers: int, size: int) -> tuple[float, int]:
    start = time.perf_counter()
    images = read_image_folder(
        folder, image_size=size, cache_dir=cache, layout="flat", workers=workers
    )["all"]
    return time.perf_counter() - start, len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=Path("/tmp/decode-photos"))
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--sample", type=int, default=5_000, help="files of the 1/2-worker runs")
    parser.add_argument("--new", type=int, default=100, help="files added to the large folder")
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--height", type=int, default=120)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows: list[dict] = []
    scratch = Path(tempfile.mkdtemp(prefix="decode-speed-"))
    try:
        sample = scratch / "sample"
        for path in make_folder(args.folder, args.sample, args.width, args.height):
            target = sample / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target)
        for workers in (1, 2):
            cache = scratch / f"cache-{workers}"
            cold, n = timed_read(sample, cache, workers, args.image_size)
            warm, _ = timed_read(sample, cache, workers, args.image_size)
            for kind, seconds in (("cold", cold), ("warm", warm)):
                rows.append(
                    {"files": n, "workers": workers, "cache": kind, "seconds": round(seconds, 3),
                     "images_per_second": round(n / seconds, 1)}
                )  # fmt: skip
                print(rows[-1], flush=True)

        make_folder(args.folder, args.files, args.width, args.height)
        cache = scratch / "cache-large"
        cold, n = timed_read(args.folder, cache, 2, args.image_size)
        warm, _ = timed_read(args.folder, cache, 2, args.image_size)
        added = make_folder(args.folder, args.new, args.width, args.height, first=args.files)
        grown, n_grown = timed_read(args.folder, cache, 2, args.image_size)
        for path in added:  # leave the folder as it was generated
            path.unlink()
        rows.append(
            {"files": n, "workers": 2, "cache": "cold", "seconds": round(cold, 2),
             "images_per_second": round(n / cold, 1)}
        )  # fmt: skip
        rows.append({"files": n, "workers": 2, "cache": "warm", "seconds": round(warm, 2)})
        rows.append(
            {"files": n_grown, "workers": 2, "cache": f"{args.new} files added",
             "seconds": round(grown, 2)}
        )  # fmt: skip
        for row in rows[-3:]:
            print(row, flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    record = {
        "command": "python benchmarks/decode_speed.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "json"),
        "image": f"{args.width}x{args.height} JPEG -> {args.image_size}px",
        "cpus": len(os.sched_getaffinity(0)),
        "rows": rows,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
