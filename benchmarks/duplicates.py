"""Near-duplicate detection on a collection with planted copies, and its time at 1M items.

    python benchmarks/duplicates.py --model runs/fm-demo/model.pt \
        --data-dir /usr/share/datasets/fashion-mnist --originals 1000 --scale 1000000 \
        --json benchmarks/results/duplicates/planted.json

The collection: the Fashion-MNIST test images (10,000) written as PNG files, plus a copy of
``--originals`` of them, each edited in one of five ways (equal shares):

- ``resized``: enlarged 2x (bicubic), so the reader shrinks it back;
- ``recompressed``: saved as JPEG at quality 60;
- ``cropped``: a 2-pixel border cut away, then resized back;
- ``exif-rotated``: the pixels stored turned by 90 degrees with EXIF orientation 6 (PNG eXIf), so
  a reader that honours EXIF decodes the original;
- ``brightened``: +25 grey levels (clipped).

Everything is read by the image-folder reader and embedded by the model, as ``quantrieve encode
--refine-depth`` does; :func:`quantrieve.index.duplicates.find_duplicates` then groups them. A
planted copy is *found* when it lands in its original's group. Precision is over pairs inside
groups: a pair counts as right when it is a planted (original, copy) pair or two images with equal
pixels in the test set itself. The 1M-item time uses embeddings resampled from the real ones with
Gaussian noise (0.3 x the per-dimension spread) and their codes under the model's codebooks.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from itertools import combinations
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from quantrieve.api import Retriever
from quantrieve.data import read_dataset
from quantrieve.index.duplicates import find_duplicates
from quantrieve.index.format import image_fingerprints

KINDS = ("resized", "recompressed", "cropped", "exif-rotated", "brightened")


def edited(pixels: np.ndarray, kind: str) -> tuple[bytes, str]:
    """The bytes of an edited copy of a grayscale image, and its file suffix."""
    image = Image.fromarray(pixels)
    side = pixels.shape[0]
    buffer = io.BytesIO()
    if kind == "resized":
        image.resize((2 * side, 2 * side), Image.Resampling.BICUBIC).save(buffer, "PNG")
    elif kind == "recompressed":
        image.save(buffer, "JPEG", quality=60)
        return buffer.getvalue(), ".jpg"
    elif kind == "cropped":
        image.crop((2, 2, side - 2, side - 2)).resize((side, side)).save(buffer, "PNG")
    elif kind == "exif-rotated":
        exif = Image.Exif()
        exif[0x0112] = 6  # orientation: shown turned 90 degrees clockwise
        image.transpose(Image.Transpose.ROTATE_90).save(buffer, "PNG", exif=exif)
    elif kind == "brightened":
        brighter = np.clip(pixels.astype(np.int16) + 25, 0, 255).astype(np.uint8)
        Image.fromarray(brighter).save(buffer, "PNG")
    else:
        raise ValueError(kind)
    return buffer.getvalue(), ".png"


def make_collection(images: np.ndarray, folder: Path, originals: np.ndarray) -> dict[str, tuple]:
    """Write the collection; returns id -> (kind, original id) of the planted copies."""
    for row, pixels in enumerate(images):
        Image.fromarray(pixels.squeeze()).save(folder / f"t{row:05d}.png")
    planted = {}
    for i, row in enumerate(originals):
        kind = KINDS[i % len(KINDS)]
        data, suffix = edited(images[row].squeeze(), kind)
        name = f"z{i:05d}-{kind}{suffix}"
        (folder / name).write_bytes(data)
        planted[name] = (kind, f"t{row:05d}.png")
    return planted


def score(groups, ids, planted, fingerprints, kinds_found=None) -> dict:
    group_of = {}
    for number, group in enumerate(groups):
        for row in group.rows:
            group_of[ids[row]] = number
    found = {kind: 0 for kind in KINDS}
    total = {kind: 0 for kind in KINDS}
    for name, (kind, original) in planted.items():
        total[kind] += 1
        found[kind] += name in group_of and group_of.get(original) == group_of[name]
    right = wrong = 0
    for group in groups:
        for a, b in combinations(group.rows.tolist(), 2):
            pa, pb = planted.get(ids[a]), planted.get(ids[b])
            if (
                (pa and pa[1] == ids[b])
                or (pb and pb[1] == ids[a])
                or fingerprints[a] == fingerprints[b]
            ):
                right += 1
            else:
                wrong += 1
    return {
        "recall": {kind: round(found[kind] / total[kind], 3) for kind in KINDS},
        "recall_all": round(sum(found.values()) / sum(total.values()), 3),
        "pair_precision": round(right / max(1, right + wrong), 3),
        "pairs": right + wrong,
        "groups": len(groups),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--originals", type=int, default=1000)
    parser.add_argument("--bounds", default="0.9,0.95,0.97,0.98,0.99")
    parser.add_argument("--scale", type=int, default=0, help="items of the timing run (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--refine-source",
        default="embedding",
        help="the vectors compared: embedding, or backbone (unit backbone representations)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.scale and args.refine_source != "embedding":
        parser.error("--scale resamples embeddings: use it with --refine-source embedding")
    torch.set_num_threads(2)
    rng = np.random.default_rng(args.seed)
    test = read_dataset("fashion-mnist", args.data_dir)["test"]
    images = np.asarray(test.images)
    originals = np.sort(rng.choice(len(images), args.originals, replace=False))
    retriever = Retriever.load(args.model, device="cpu")
    record: dict = {"command": "python benchmarks/duplicates.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "json"
    ), "bounds": {}}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        planted = make_collection(images, folder, originals)
        collection = read_dataset(
            "image-folder", folder, image_size=images.shape[1], channels=images.shape[3]
        )["all"]
    ids = collection.ids
    start = time.perf_counter()
    codes, fine = retriever.encode_with_embeddings(
        collection.images, refine_source=args.refine_source
    )
    record["encode_seconds"] = round(time.perf_counter() - start, 1)
    fingerprints = image_fingerprints(np.asarray(collection.images))
    record["items"] = len(ids)
    for bound in [float(b) for b in args.bounds.split(",")]:
        start = time.perf_counter()
        groups = find_duplicates(codes, fine, fingerprints, min_similarity=bound)
        seconds = time.perf_counter() - start
        result = score(groups, ids, planted, fingerprints) | {"seconds": round(seconds, 2)}
        record["bounds"][str(bound)] = result
        print(bound, result, flush=True)
    if args.scale:
        fine32 = fine.astype(np.float32)
        rows = rng.integers(0, len(fine32), args.scale)
        spread = fine32.std(axis=0, keepdims=True)
        big = fine32[rows] + rng.normal(0, 1, (args.scale, fine32.shape[1])).astype(np.float32) * (
            0.3 * spread
        )
        quantizer = retriever.model.quantizer
        big_codes = np.concatenate(
            [
                quantizer.encode(torch.from_numpy(big[s : s + 65536])).numpy()
                for s in range(0, len(big), 65536)
            ]
        )
        start = time.perf_counter()
        groups = find_duplicates(big_codes, big.astype(np.float16), None)
        record["scale"] = {
            "items": args.scale,
            "seconds": round(time.perf_counter() - start, 1),
            "groups": len(groups),
            "distinct_codes": len(np.unique(big_codes, axis=0)),
        }
        print(record["scale"], flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
