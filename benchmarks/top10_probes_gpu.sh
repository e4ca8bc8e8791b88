#!/usr/bin/env bash
# benchmarks/top10_probes.py on a borrowed GPU machine, in one call of at most ~9 minutes.
# Made here first (ignored folder .probe/, carried to the machine):
#   python benchmarks/own_collections.py --out .probe/data
#   cp /usr/share/datasets/fashion-mnist/*.gz .probe/fm/
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 -d .probe/whl kornia==0.9.0 kornia_rs==0.2.0
# Run there from the repository root: bash benchmarks/top10_probes_gpu.sh  (OUT = results folder)
set -uo pipefail
OUT=${OUT:-/tmp/probe_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .probe/whl/*.whl || { echo "wheel install failed"; exit 3; }
export PYTHONPATH=/tmp/site:$PWD/src
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
python3 -c 'import torch, kornia; print("torch", torch.__version__, "kornia", kornia.__version__, torch.cuda.get_device_name(0))' | tee -a "$OUT/device.txt"
# fp32 on the GPU: at these model sizes bf16 autocast only adds cast kernels
# (benchmarks/results/gpu: 33 against 43 ms per step at batch 128).
timeout -k 10 "${PROBE_SECONDS:-520}" python3 benchmarks/top10_probes.py run --data .probe/data \
  --fm-dir .probe/fm --jobs "${JOBS:-12}" --deadline "${DEADLINE:-300}" --set train.amp=false \
  --results "$OUT/results.jsonl" --logs /tmp/probe_logs 2>&1 | tee "$OUT/schedule.log"
tail -n 3 /tmp/probe_logs/*.log > "$OUT/job_tails.txt" 2>&1
