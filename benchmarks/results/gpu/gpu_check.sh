#!/usr/bin/env bash
# quantrieve GPU check, run from the repository root on the device machine:
#   bash .devsrc/gpu_check.sh
# .devsrc = `git archive HEAD` + data/fashion-mnist; .whl = kornia, kornia_rs, faiss-cpu wheels.
# Steps: install wheels -> versions -> pytest -> epoch_time probes (AMP on/off x batch 128/512)
# -> train preset fashion-mnist-cpu on cuda (epochs capped to fit the time budget)
# -> encode train part -> evaluate test part (mAP@1000). Env: DEVICE (cuda), QUICK=1 (tiny CPU dry run).
set -uo pipefail
T0=$(date +%s)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-0}
BUDGET=${BUDGET:-430}          # seconds from start by which training must be done
exec > >(tee "$OUT/console.log") 2>&1
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }

cd "$ROOT"
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || { echo "wheel install failed"; exit 3; }
  export PYTHONPATH=/tmp/site:$ROOT/.devsrc/src
else
  export PYTHONPATH=$ROOT/.devsrc/src
fi
PY=${PY:-python3}
cd "$ROOT/.devsrc"
QRC='import sys; sys.argv[0] = "quantrieve"; from quantrieve.cli import main; main()'
qr() { "$PY" -c "$QRC" "$@"; }

el "== environment"
nvidia-smi || echo "no nvidia-smi"
"$PY" - <<'PYEOF'
import platform, torch, numpy, kornia, faiss
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "cudnn", torch.backends.cudnn.version(), "numpy", numpy.__version__,
      "kornia", kornia.__version__, "faiss", faiss.__version__)
print("cuda available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-",
      "bf16", torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
      "threads", torch.get_num_threads())
PYEOF
"$PY" -c 'import quantrieve.cli as c; print("quantrieve code:", c.__file__)'
qr --help > /dev/null && echo "cli ok"

el "== tests"
timeout -k 10 ${TEST_TIMEOUT:-150} "$PY" -m pytest -q -p no:cacheprovider -o addopts= \
  --maxfail=25 -rfE 2>&1 | tee "$OUT/tests.log"
echo "pytest rc=$?" | tee -a "$OUT/tests.log"

el "== throughput probes (benchmarks/epoch_time.py)"
mkdir -p /tmp/probe
if [ "$QUICK" = 1 ]; then PSTEPS=3; PIMG=3000; else PSTEPS=50; PIMG=60000; fi
for amp in true false; do
  for bs in 128 512; do
    extra=(); [ "$amp$bs" = true128 ] && extra=(--validate)
    timeout -k 5 90 "$PY" benchmarks/epoch_time.py --preset fashion-mnist-cpu --shape 28,28,1 \
      --images $PIMG --steps $PSTEPS "${extra[@]}" --out /tmp/probe/amp_${amp}_b${bs}.json \
      --set train.device=$DEVICE --set train.amp=$amp --set train.batch_size=$bs > /dev/null \
      || echo "probe amp=$amp b=$bs failed rc=$?"
    el "probe amp=$amp b=$bs done"
  done
done
"$PY" - "$OUT/probes.json" <<'PYEOF'
import json, sys, glob
rows = {}
for f in sorted(glob.glob("/tmp/probe/*.json")):
    rows[f.split("/")[-1][:-5]] = json.load(open(f))
json.dump(rows, open(sys.argv[1], "w"), indent=2)
for k, r in rows.items():
    v = r.get("validation", {}).get("seconds")
    print(f"{k}: {r['seconds_per_step']*1000:.2f} ms/step, {r['images_per_second']:.0f} img/s, "
          f"epoch {r['epoch_minutes']*60:.1f} s" + (f", validation {v:.1f} s" if v else ""))
PYEOF

el "== choose epochs"
NOW=$(date +%s)
EPOCHS=$("$PY" - $(( T0 + BUDGET - NOW )) <<'PYEOF'
import json, sys
budget = int(sys.argv[1])
try:
    r = json.load(open("/tmp/probe/amp_true_b128.json"))
    epoch = 1.2 * (r["seconds_per_step"] * 468 + r["validation"]["seconds"]) + 1.0
except Exception:
    epoch = 15.0
print(max(2, min(30, int(budget // epoch))), file=sys.stdout)
print(f"training budget {budget} s, estimated {epoch:.1f} s/epoch", file=sys.stderr)
PYEOF
)
[ "$QUICK" = 1 ] && EPOCHS=2
echo "EPOCHS=$EPOCHS (preset: 30)"
TSETS=(--set train.device=$DEVICE --set train.epochs=$EPOCHS)
[ "$QUICK" = 1 ] && TSETS+=(--set train.max_steps_per_epoch=3 --set data.train_limit=2000)
TLIMIT=$(( T0 + BUDGET + 30 - $(date +%s) )); [ $TLIMIT -lt 60 ] && TLIMIT=60

el "== train (limit ${TLIMIT}s): quantrieve train --preset fashion-mnist-cpu --data-dir data/fashion-mnist --out /tmp/run ${TSETS[*]}"
rm -rf /tmp/run
timeout -k 10 $TLIMIT "$PY" -c "$QRC" train --preset fashion-mnist-cpu \
  --data-dir data/fashion-mnist --out /tmp/run "${TSETS[@]}"
echo "train rc=$?"
el "== encode"
qr encode /tmp/run --out /tmp/run/index --data-dir data/fashion-mnist --part train --device $DEVICE
echo "encode rc=$?"
el "== evaluate"
qr evaluate /tmp/run/index --data-dir data/fashion-mnist --part test --device $DEVICE --json \
  > "$OUT/evaluate.json"
echo "evaluate rc=$?"
cat "$OUT/evaluate.json" | head -c 600; echo
for f in run.json config.json log.jsonl; do cp /tmp/run/$f "$OUT/" || echo "missing $f"; done
"$PY" - <<'PYEOF'
import json
for line in open("/tmp/run/log.jsonl"):
    r = json.loads(line)
    if r.get("kind") == "epoch":
        print(f"epoch {r['epoch']}: {r['seconds']:.2f} s, {r['images_per_second']:.0f} img/s, "
              f"loss {r['loss']:.4f}, val mAP {r['val_map']}")
PYEOF
el "== done"
sleep 2
