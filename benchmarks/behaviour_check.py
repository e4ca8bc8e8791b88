"""Record what a restructuring must not change: a tiny benchmark grid, the README's Python
example and the service's answers, on generated data, as one JSON file.

Run it with the code before and after the change (the same machine, thread count and data) and
compare the two files; they must be equal except for the fields listed in ``VOLATILE``.

    git archive OLD | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old/src python benchmarks/behaviour_check.py --out /tmp/before.json
    python benchmarks/behaviour_check.py --out /tmp/after.json
    python benchmarks/behaviour_check.py --compare /tmp/before.json /tmp/after.json

The data comes from ``tests/conftest.py::make_idx_dataset`` (the tests' tiny Fashion-MNIST-format
folder) and, for the image-folder example, the same images written as PNG files.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# Fields that legitimately differ between two runs of the same code (times, paths, versions).
VOLATILE = {
    "seconds", "time", "elapsed", "created", "git", "path", "uptime_seconds", "version",
    "milliseconds", "images_per_second", "root", "train_seconds", "encode_seconds",
    "index_dir", "latency_ms", "resident_memory_bytes", "date", "git_commit", "run_dir",
    "seconds_per_epoch", "wall_seconds",
}  # fmt: skip

# The tiny grid of benchmarks/results/behaviour_unchanged/README.md.
GRID = [
    "--protocol", "fashion-mnist", "--methods", "hqc,spq", "--bits", "8",
    "--preset", "fashion-mnist-cpu",
    "--set", "model.width=8", "--set", "model.proj_hidden=32", "--set", "model.codeword_dim=4",
    "--set", "train.batch_size=32", "--set", "train.epochs=6", "--set", "train.warmup_epochs=1",
    "--set", "data.val_queries=40", "--set", "augment.crop_scale_min=0.5",
    "--set", "model.num_codewords=16", "--set", "train.lr=3e-3", "--set", "train.amp=false",
]  # fmt: skip


def _quantrieve(*args: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from quantrieve.cli import main; sys.argv[0] = 'quantrieve'; main()"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, check=True
    )


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def tiny_grid(data: Path, out: Path) -> dict[str, Any]:
    """Cells' metrics and every logged training line of the tiny grid."""
    _quantrieve("benchmark", *GRID, "--data-dir", str(data), "--out", str(out))
    record: dict[str, Any] = {}
    for cell in sorted((out / "cells").glob("*.json")):
        record[f"cells/{cell.name}"] = _strip(json.loads(cell.read_text()))
    for log in sorted(out.rglob("log.jsonl")):
        lines = [_strip(json.loads(line)) for line in log.read_text().splitlines() if line]
        record[str(log.relative_to(out))] = lines
    return record


def image_folder(data: Path, folder: Path) -> Path:
    """The tiny IDX training images as PNG files in one sub-folder per class."""
    import numpy as np
    from PIL import Image

    from quantrieve.data import read_dataset

    train = read_dataset("fashion-mnist", data)["train"]
    for row, (pixels, label) in enumerate(zip(train.images, train.labels, strict=True)):
        target = folder / f"class{int(np.flatnonzero(label)[0])}"
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.squeeze()).save(target / f"{row:04d}.png")
    return folder


def python_example(folder: Path, out: Path) -> dict[str, Any]:
    """The README's Python example, three epochs, fp32 (``train.amp=false``), with the batch size
    and validation queries its warnings advise for so few images (else every code collapses)."""
    import torch

    import quantrieve as qr

    torch.manual_seed(0)
    photos = qr.read_dataset("image-folder", folder, image_size=32)["all"]
    queries, database = qr.hold_out(photos, 40, seed=0)
    retriever = qr.Retriever.from_preset(
        "small-collection-cpu",
        epochs=3,
        device="cpu",
        overrides=["train.amp=false", "train.batch_size=28", "data.val_queries=28"],
    )
    retriever.fit(database)
    retriever.build_index(database)
    result = retriever.search(queries.images[:3], k=5)
    evaluation = retriever.evaluate(queries, k=100)
    retriever.save(out)
    return {
        "hits": [[repr(hit) for hit in hits] for hits in result.hits],
        "map_at_100": float(evaluation.map_at_k),
        "codes_sha256": hashlib.sha256((out / "codes.npy").read_bytes()).hexdigest(),
    }


def service_answers(index_dir: Path) -> dict[str, Any]:
    """The service's JSON answers to a fixed sequence of requests (search, add, delete)."""
    import numpy as np
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    import quantrieve as qr
    from quantrieve.serve import ServeOptions, create_app

    def png(row: int) -> bytes:
        image = np.random.default_rng(row).integers(0, 60, (12, 12)).astype(np.uint8)
        image[row : row + 2] = 230
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        return buffer.getvalue()

    key = "behaviour-key-123"
    answers: dict[str, Any] = {}
    query = np.stack([np.asarray(Image.open(io.BytesIO(png(r))).resize((32, 32))) for r in (2, 7)])[
        ..., None
    ]
    embeddings = qr.Retriever.load(index_dir, device="cpu").embed(query).tolist()
    with TestClient(create_app(index_dir, ServeOptions(api_key=key))) as client:
        headers = {"X-API-Key": key}
        upload = [("images", (f"q{r}.png", png(r), "image/png")) for r in (1, 5)]
        requests = [
            ("health", lambda: client.get("/health")),
            ("search_images", lambda: client.post("/search", files=upload, data={"k": "5"})),
            ("search_items", lambda: client.post("/search", json={"items": [0, 3], "k": 5})),
            ("search_embeddings", lambda: client.post("/search", json={"embeddings": embeddings})),
            ("item", lambda: client.get("/items/2")),
            ("add", lambda: client.post("/items", files=upload, headers=headers)),
            ("delete", lambda: client.delete("/items/3", headers=headers)),
            ("search_after", lambda: client.post("/search", json={"items": [0], "k": 5})),
            ("deleted_item", lambda: client.get("/items/3")),
            ("no_key", lambda: client.delete("/items/4")),
            ("bad_k", lambda: client.post("/search", json={"items": [0], "k": 0})),
            ("stats", lambda: client.get("/stats")),
        ]
        for name, call in requests:
            response = call()
            answers[name] = {"status": response.status_code, "body": _strip(response.json())}
    return answers


def run(out_file: Path) -> None:
    from conftest import make_idx_dataset

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        os.environ["QUANTRIEVE_CACHE_DIR"] = str(tmp_path / "cache")
        data = make_idx_dataset(tmp_path / "fm", 320, 60)
        record = {"tiny_grid": tiny_grid(data, tmp_path / "grid")}
        example_dir = tmp_path / "photos-index"
        record["python_example"] = python_example(
            image_folder(data, tmp_path / "photos"), example_dir
        )
        record["service"] = service_answers(example_dir)
    out_file.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")


def compare(before: Path, after: Path) -> int:
    old, new = _strip(json.loads(before.read_text())), _strip(json.loads(after.read_text()))
    differences = []

    def walk(a: Any, b: Any, where: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                walk(a.get(key, "<missing>"), b.get(key, "<missing>"), f"{where}.{key}")
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                walk(x, y, f"{where}[{i}]")
        elif a != b:
            differences.append(f"{where}: {a!r} != {b!r}")

    walk(old, new, "")
    for line in differences:
        print(line)
    print(f"{len(differences)} differences")
    return 1 if differences else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--compare", nargs=2, type=Path)
    parser.add_argument(
        "--tests-dir",
        type=Path,
        default=ROOT / "tests",
        help="where conftest.py (the data generator) is: pass the old one to keep the data fixed",
    )
    args = parser.parse_args()
    if args.compare:
        sys.exit(compare(*args.compare))
    if not args.out:
        parser.error("--out or --compare")
    import torch

    sys.path.insert(0, str(args.tests_dir))
    torch.set_num_threads(1)
    run(args.out)


if __name__ == "__main__":
    main()
