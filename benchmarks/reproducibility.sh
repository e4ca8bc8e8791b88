#!/bin/bash
# Does a run repeat bit for bit with other jobs on the cores, and with another thread count?
#   bash benchmarks/reproducibility.sh [DATA_DIR] [OUT]
# Three short trainings of the demo preset (one epoch of 40 steps, validation on 1,000 queries):
# 2 threads alone, 2 threads while a busy loop occupies a core, 1 thread. Prints each run's
# thread count, a hash of its logged step losses, its epoch loss and validation mAP.
set -euo pipefail
DATA=${1:-/usr/share/datasets/fashion-mnist}
OUT=${2:-runs/reproducibility}
QR=${QR:-.venv/bin/quantrieve}
PY=${PY:-.venv/bin/python}
run() {
  $QR train --preset fashion-mnist-demo --epochs 1 --set train.max_steps_per_epoch=40 \
    --set train.warmup_epochs=0 --data-dir "$DATA" --out "$OUT/$1" > "$OUT/$1.txt" 2>&1
}
mkdir -p "$OUT"
OMP_NUM_THREADS=2 run alone_2threads
$PY -c "import time; end = time.time() + 600
while time.time() < end: pass" &
HOG=$!
trap 'kill $HOG 2>/dev/null || true' EXIT
OMP_NUM_THREADS=2 run shared_2threads
kill $HOG
OMP_NUM_THREADS=1 run alone_1thread
for r in alone_2threads shared_2threads alone_1thread; do
  $PY - "$OUT/$r" <<'PY'
import hashlib, json, sys
from pathlib import Path
run = Path(sys.argv[1])
record = json.loads((run / "run.json").read_text())
lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
steps = "".join(repr(x["loss"]) for x in lines if x["kind"] == "step")
epoch = [x for x in lines if x["kind"] == "epoch"][-1]
print(f"{run.name}: torch_threads {record['environment']['torch_threads']}, step losses "
      f"sha256 {hashlib.sha256(steps.encode()).hexdigest()[:16]}, epoch loss "
      f"{epoch['loss']:.10f}, val mAP {epoch['val_map']:.10f}, {epoch['seconds']:.1f} s")
PY
done
