#!/usr/bin/env bash
# The test suite and a throughput probe of the committed code on a GPU machine.
# Made here:   rm -rf .devsrc && mkdir .devsrc && git archive HEAD | tar -x -C .devsrc
#              (+ .whl: cp312 wheels of kornia, kornia_rs, faiss-cpu, fastapi, starlette,
#               pydantic, pydantic_core, annotated-types, annotated-doc, typing-inspection,
#               uvicorn, python-multipart)
# Run there:   bash .devsrc/benchmarks/gpu_tests.sh   (from the repository root; OUT=results)
set -uo pipefail
ROOT=$(pwd)
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
exec > >(tee "$OUT/console.log") 2>&1
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || { echo "wheel install failed"; exit 3; }
export PYTHONPATH=/tmp/site:$ROOT/.devsrc/src
cd "$ROOT/.devsrc"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0))'
python3 -c 'import quantrieve.cli as c; print("quantrieve code:", c.__file__)'
echo "== tests (CUDA visible: tests on device auto run there)"
timeout -k 10 ${TEST_TIMEOUT:-240} python3 -m pytest -q -p no:cacheprovider -o addopts= \
  --maxfail=25 -rfEs --deselect tests/test_serve_browser.py 2>&1 | tail -40 | tee "$OUT/tests.log"
echo "== throughput, fashion-mnist-cpu, batch 128, AMP on / off"
for amp in true false; do
  timeout -k 5 60 python3 benchmarks/epoch_time.py --preset fashion-mnist-cpu --shape 28,28,1 \
    --images 60000 --steps 50 --out "$OUT/epoch_time_amp_$amp.json" \
    --set train.device=cuda --set train.amp=$amp > /dev/null 2>&1
  python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[2], round(r['seconds_per_step']*1e3,1), 'ms/step', round(r['images_per_second']), 'img/s')" "$OUT/epoch_time_amp_$amp.json" "amp=$amp" || true
done
