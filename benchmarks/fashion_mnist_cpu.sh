#!/usr/bin/env bash
# The CPU preset at 16 / 32 / 64 bits on Fashion-MNIST: train (no labels), encode the 60,000
# training images, evaluate the 10,000 test queries once (mAP@1000). Results land in
# benchmarks/results/fashion-mnist-cpu/. Usage: bash benchmarks/fashion_mnist_cpu.sh [BITS ...]
set -euo pipefail
cd "$(dirname "$0")/.."
Q=${QUANTRIEVE:-.venv/bin/quantrieve}
OUT=benchmarks/results/fashion-mnist-cpu
mkdir -p "$OUT"
bits_list=("$@")
[ ${#bits_list[@]} -eq 0 ] && bits_list=(16 32 64)
for b in "${bits_list[@]}"; do
  run=runs/fashion-mnist-cpu-${b}
  start=$(date +%s)
  if [ -e "$run/last.pt" ]; then
    $Q train --out "$run" --resume
  else
    $Q train --preset fashion-mnist-cpu --bits "$b" --out "$run"
  fi
  train_s=$(( $(date +%s) - start ))
  $Q encode "$run" --out "$run/index"
  $Q evaluate "$run/index" --part test --topk 1000 --plot "$OUT/pr-${b}bits.png" --json \
    > "$OUT/hqc-${b}bits.json"
  cp "$run/config.json" "$OUT/hqc-${b}bits-config.json"
  cp "$run/run.json" "$OUT/hqc-${b}bits-run.json"
  grep '"kind": "epoch"' "$run/log.jsonl" > "$OUT/hqc-${b}bits-epochs.jsonl"
  echo "{\"bits\": $b, \"train_wall_seconds\": $train_s}" > "$OUT/hqc-${b}bits-time.json"
done
