"""A small collection of one's own images: the 1,797 8x8 handwritten digits of scikit-learn.

Writes the digits as a class-folder of PNGs (upscaled by the reader to the preset's 32x32),
then, through the command line exactly as a user would: trains the `small-collection-cpu`
preset with 300 held-out queries, with horizontal flips on (the preset) and off, encodes,
evaluates the held-out queries (mAP@1000, capped at the database size) and scores faiss PQ on
raw pixels of the same images at the same bit budget. Results go to a JSON file.

Needs scikit-learn (its digits ship with the package; nothing is downloaded):
``pip install scikit-learn``. About 5 minutes on 2 CPU threads.

    python benchmarks/small_collection_digits.py --out runs/digits \
        --json benchmarks/results/small_collection_digits.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image


def write_digits(folder: Path) -> int:
    """The digits as folder/<digit>/<n>.png, grayscale, 0-16 scaled to 0-255."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        pixels = (image * (255 / 16)).round().astype(np.uint8)
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels, "L").save(folder / str(label) / f"{i:04d}.png")
    return len(digits.images)


def quantrieve(*args: str) -> str:
    """Run the CLI; return its stdout (JSON where asked)."""
    command = [sys.executable, "-m", "quantrieve", *args]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/digits"))
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--holdout", type=int, default=300)
    args = parser.parse_args()
    photos = args.out / "digits"
    count = write_digits(photos) if not photos.exists() else None
    results: dict = {"images": count, "holdout": args.holdout, "runs": {}}
    for name, flips in (("flips-on", None), ("flips-off", "augment.hflip_p=0")):
        run = args.out / name
        start = time.perf_counter()
        extra = ["--set", flips] if flips else []
        if not (run / "model.pt").exists():
            quantrieve(
                "train",
                "--preset",
                "small-collection-cpu",
                "--data-dir",
                str(photos),
                "--holdout",
                str(args.holdout),
                "--out",
                str(run),
                *extra,
            )
        if not (run / "index").exists():
            quantrieve("encode", str(run), "--out", str(run / "index"))
        result = json.loads(quantrieve("evaluate", str(run / "index"), "--json"))
        record = json.loads((run / "index" / "index.json").read_text())["model"]
        results["runs"][name] = {
            "map": result["map_at_k"],
            "k": result["k"],
            "precision_at": result["precision_at"],
            "queries": result["num_queries"],
            "database": result["num_database"],
            "best_epoch": record.get("epoch"),
            "val_map": record.get("val_map"),
            "seconds": time.perf_counter() - start,
        }
    pq = json.loads(quantrieve("baseline", "pq", "--run", str(args.out / "flips-on"), "--json"))
    results["pq_pixels"] = {"map": pq["map_at_k"], "k": pq["k"], "bits": pq["bits"]}
    results["command"] = " ".join(["python", *sys.argv])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
