"""Embedding queries with the exported ONNX encoder against torch: latency and memory.

Each measurement runs in a fresh process (so its resident memory is its own): torch loads the
index's ``model.pt`` (float32, and with autocast as ``Retriever.search`` embeds on this
machine), onnxruntime loads the file ``quantrieve export-onnx`` wrote. Median latency of one
image and of a batch of ``--batch`` images (after a warm-up), peak resident memory of the
process, and the largest difference from torch's float32 embeddings.

    quantrieve export-onnx runs/fm-demo/index runs/fm-demo/encoder.onnx
    python benchmarks/onnx_embedding.py --index runs/fm-demo/index \
        --onnx runs/fm-demo/encoder.onnx --json benchmarks/results/onnx/embedding.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from record import write_record

RUN = r"""
import json, resource, statistics, sys, time
import numpy as np
engine, index, onnx_file, batch, threads = sys.argv[1:6]
batch, threads = int(batch), int(threads)
rng = np.random.default_rng(0)
if engine == "onnxruntime":
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(onnx_file, options, providers=["CPUExecutionProvider"])
    shape = session.get_inputs()[0].shape
    side, channels = int(session.get_modelmeta().custom_metadata_map["quantrieve.image_size"]), \
        int(session.get_modelmeta().custom_metadata_map["quantrieve.channels"])
    def embed(images):
        return session.run(None, {"images": images})[0]
else:
    import torch
    torch.set_num_threads(threads)
    import quantrieve as qr
    from quantrieve.models.retrieval import embed_images
    model = qr.Retriever.load(index, device="cpu").model
    side, channels = model.image_size, model.channels
    amp = engine == "torch-autocast"
    def embed(images):
        return embed_images(model, images, torch.device("cpu"), amp=amp).numpy()
images = rng.integers(0, 256, (batch, side, side, channels), dtype=np.uint8)
out = {}
for name, x in (("one", images[:1]), ("batch", images)):
    embed(x)
    times = []
    for _ in range(15 if name == "one" else 5):
        start = time.perf_counter()
        embed(x)
        times.append(time.perf_counter() - start)
    out[f"{name}_ms"] = 1e3 * statistics.median(times)
np.save(sys.argv[6], embed(images))
out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--onnx", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    import numpy as np

    args.json.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    arrays = {}
    for engine in ("torch", "torch-autocast", "onnxruntime"):
        saved = args.json.with_suffix(f".{engine}.npy")
        done = subprocess.run(
            [sys.executable, "-c", RUN, engine, str(args.index), str(args.onnx),
             str(args.batch), str(args.threads), str(saved)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        row = {"engine": engine, **json.loads(done.stdout.strip().splitlines()[-1])}
        arrays[engine] = np.load(saved)
        saved.unlink()
        rows.append(row)
    for row in rows:
        diff = np.abs(arrays[row["engine"]] - arrays["torch"]).max()
        row["max_difference_from_torch_float32"] = float(diff)
        row = {k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()}
        print(row)
    write_record(args.json, rows, batch=args.batch, threads=args.threads)


if __name__ == "__main__":
    main()
